//! Result rows, the human table and the `--json` object.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::reference::Pattern;

/// One measured (op, value size, batch) row.
#[derive(Serialize, Debug, Clone)]
pub struct Row {
    pub op: &'static str,
    pub value_size: u64,
    pub batch: usize,
    pub keys_per_sec: f64,
    pub gbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub verified: bool,
    /// Concurrent single-key callers (auto-batching comparison rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Whether auto-batching was on (auto-batching comparison rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_batch: Option<bool>,
    /// Which objects the concurrent getters read (auto-batching comparison rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Pattern>,
}

/// Latencies of one row's calls, in microseconds.
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Self {
        #[allow(clippy::expect_used)]
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid"))
    }

    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            0.0
        } else {
            self.0.value_at_quantile(q) as f64
        }
    }
}

/// Totals of one measured row before it becomes a [`Row`].
pub struct Measured {
    pub keys: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub latencies: Latencies,
    pub errors: u64,
    pub verified: bool,
}

impl Measured {
    /// Nothing measured yet.
    pub fn empty() -> Self {
        Self {
            keys: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            latencies: Latencies::new(),
            errors: 0,
            verified: true,
        }
    }

    pub fn row(&self, op: &'static str, value_size: u64, batch: usize) -> Row {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        Row {
            op,
            value_size,
            batch,
            keys_per_sec: self.keys as f64 / secs,
            gbps: self.bytes as f64 / secs / 1e9,
            p50_us: self.latencies.quantile(0.50),
            p99_us: self.latencies.quantile(0.99),
            errors: self.errors,
            verified: self.verified,
            concurrency: None,
            auto_batch: None,
            pattern: None,
        }
    }
}

/// The engine's own READ throughput between the same two processes.
#[derive(Serialize, Debug, Clone)]
pub struct EngineRead {
    pub value_size: u64,
    pub batch: usize,
    pub gbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl EngineRead {
    pub fn from(m: &Measured, value_size: u64, batch: usize) -> Self {
        let r = m.row("engine_read", value_size, batch);
        Self {
            value_size,
            batch,
            gbps: r.gbps,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
        }
    }
}

/// A ratio the issue asks for, with its target.
#[derive(Serialize, Debug, Clone)]
pub struct Check {
    pub name: String,
    pub value: f64,
    pub target: f64,
    pub pass: bool,
}

/// The whole `--json` object.
#[derive(Serialize, Debug)]
pub struct Report {
    pub results: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_read: Option<EngineRead>,
    pub checks: Vec<Check>,
    /// What the benchmark client moved through same-host shared memory (`--shm true`).
    pub shm: store_client::ShmStats,
}

fn human_size(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Prints the table and the checks.
pub fn print_table(report: &Report) {
    println!(
        "{:<22} {:>8} {:>6} {:>12} {:>8} {:>10} {:>10} {:>7} {:>8}",
        "op", "size", "batch", "keys/s", "GB/s", "p50 us", "p99 us", "errors", "verified"
    );
    for r in &report.results {
        let op = match (r.auto_batch, r.concurrency, r.pattern) {
            (Some(on), Some(c), Some(p)) => {
                let p = if p == Pattern::Sequential {
                    "seq"
                } else {
                    "rnd"
                };
                format!("{}x{c} {p} ab={}", r.op, if on { "on" } else { "off" })
            }
            _ => r.op.to_string(),
        };
        println!(
            "{:<22} {:>8} {:>6} {:>12.0} {:>8.3} {:>10.0} {:>10.0} {:>7} {:>8}",
            op,
            human_size(r.value_size),
            r.batch,
            r.keys_per_sec,
            r.gbps,
            r.p50_us,
            r.p99_us,
            r.errors,
            if r.verified { "yes" } else { "NO" }
        );
    }
    if let Some(e) = &report.engine_read {
        println!(
            "engine READ {} x {} between the same processes: {:.3} GB/s (p50 {:.0} us, p99 {:.0} us)",
            human_size(e.value_size),
            e.batch,
            e.gbps,
            e.p50_us,
            e.p99_us
        );
    }
    if report.shm.requests > 0 {
        println!(
            "through same-host shared memory: {} requests, {:.3} GB",
            report.shm.requests,
            report.shm.bytes as f64 / 1e9
        );
    }
    for c in &report.checks {
        println!(
            "check {:<52} {:>8.2} (target >= {:<5}) {}",
            c.name,
            c.value,
            c.target,
            if c.pass { "PASS" } else { "FAIL" }
        );
    }
}
