//! Client metrics: per operation kind, counts, bytes, errors by code, retries, latency and
//! batch-size histograms; a snapshot for programs and a Prometheus text rendering.
//!
//! Recording is a few atomic adds and one short histogram lock per call (not per key), so it
//! stays on in production. Percentiles come from the histograms (HdrHistogram, 3 significant
//! digits), not from a sample.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use transfer_engine::{Engine, ShmStats, WeakEngine};

/// Operation kinds metrics are kept for (one per public call family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `put` (copying).
    Put,
    /// `get` (copying).
    Get,
    /// `exists`.
    Exists,
    /// `remove`.
    Remove,
    /// `upsert`.
    Upsert,
    /// `batch_put`.
    BatchPut,
    /// `batch_get`.
    BatchGet,
    /// `batch_exists`.
    BatchExists,
    /// `batch_remove`.
    BatchRemove,
    /// `batch_upsert`.
    BatchUpsert,
    /// `put_from` (zero-copy).
    PutFrom,
    /// `get_into` (zero-copy).
    GetInto,
    /// `batch_put_from` (zero-copy).
    BatchPutFrom,
    /// `batch_get_into` (zero-copy).
    BatchGetInto,
    /// `get_size` and `batch_get_size`.
    BatchGetSize,
}

impl OpKind {
    /// Every kind, in a fixed order.
    pub const ALL: [OpKind; 15] = [
        OpKind::Put,
        OpKind::Get,
        OpKind::Exists,
        OpKind::Remove,
        OpKind::Upsert,
        OpKind::BatchPut,
        OpKind::BatchGet,
        OpKind::BatchExists,
        OpKind::BatchRemove,
        OpKind::BatchUpsert,
        OpKind::PutFrom,
        OpKind::GetInto,
        OpKind::BatchPutFrom,
        OpKind::BatchGetInto,
        OpKind::BatchGetSize,
    ];

    /// The snake_case name used in snapshots and Prometheus labels.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Exists => "exists",
            OpKind::Remove => "remove",
            OpKind::Upsert => "upsert",
            OpKind::BatchPut => "batch_put",
            OpKind::BatchGet => "batch_get",
            OpKind::BatchExists => "batch_exists",
            OpKind::BatchRemove => "batch_remove",
            OpKind::BatchUpsert => "batch_upsert",
            OpKind::PutFrom => "put_from",
            OpKind::GetInto => "get_into",
            OpKind::BatchPutFrom => "batch_put_from",
            OpKind::BatchGetInto => "batch_get_into",
            OpKind::BatchGetSize => "batch_get_size",
        }
    }
}

/// Counters and histograms of one operation kind.
struct OpMetrics {
    ops: AtomicU64,
    keys: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
    errors: Mutex<BTreeMap<i32, u64>>,
    /// Call latency in microseconds.
    latency_us: Mutex<Histogram<u64>>,
    /// Keys per call.
    batch_sizes: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("constant histogram bounds are valid")
}

impl OpMetrics {
    fn new() -> Self {
        Self {
            ops: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            latency_us: Mutex::new(histogram()),
            batch_sizes: Mutex::new(histogram()),
        }
    }
}

/// What one finished call reports.
#[derive(Clone, Debug, Default)]
pub struct CallRecord {
    /// Keys in the call.
    pub keys: u64,
    /// Payload bytes moved by the call's successful keys.
    pub bytes: u64,
    /// Reads retried on another replica.
    pub retries: u64,
    /// Error codes of the failed keys (one entry per failed key).
    pub errors: Vec<i32>,
    /// Wall time of the call.
    pub latency: Duration,
}

/// Live metrics of one client.
pub struct Metrics {
    ops: Vec<OpMetrics>,
    /// The engine whose shared-memory counters snapshots include (set once by the client;
    /// weak, so that a metrics endpoint still serving does not keep the engine running).
    engine: OnceLock<WeakEngine>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            ops: OpKind::ALL.iter().map(|_| OpMetrics::new()).collect(),
            engine: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn index(kind: OpKind) -> usize {
    OpKind::ALL.iter().position(|&k| k == kind).unwrap_or(0)
}

impl Metrics {
    /// Records one finished call of `kind`.
    pub fn record(&self, kind: OpKind, rec: &CallRecord) {
        let m = &self.ops[index(kind)];
        m.ops.fetch_add(1, Ordering::Relaxed);
        m.keys.fetch_add(rec.keys, Ordering::Relaxed);
        m.bytes.fetch_add(rec.bytes, Ordering::Relaxed);
        m.retries.fetch_add(rec.retries, Ordering::Relaxed);
        if !rec.errors.is_empty() {
            let mut errs = m.errors.lock();
            for &code in &rec.errors {
                *errs.entry(code).or_default() += 1;
            }
        }
        // Saturating records: a value beyond the histogram's range lands in its top bucket.
        let us = (rec.latency.as_micros() as u64).max(1);
        m.latency_us.lock().saturating_record(us);
        m.batch_sizes.lock().saturating_record(rec.keys.max(1));
    }

    /// Makes snapshots include `engine`'s shared-memory counters (the first engine given,
    /// while it runs).
    pub fn watch_engine(&self, engine: &Engine) {
        let _ = self.engine.set(engine.downgrade());
    }

    /// A consistent-enough copy of every counter and histogram summary.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let ops = OpKind::ALL
            .iter()
            .zip(&self.ops)
            .map(|(&kind, m)| {
                let lat = m.latency_us.lock();
                let bs = m.batch_sizes.lock();
                let q = |h: &Histogram<u64>, p: f64| {
                    if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(p)
                    }
                };
                OpSnapshot {
                    kind,
                    ops: m.ops.load(Ordering::Relaxed),
                    keys: m.keys.load(Ordering::Relaxed),
                    bytes: m.bytes.load(Ordering::Relaxed),
                    retries: m.retries.load(Ordering::Relaxed),
                    errors: m.errors.lock().clone(),
                    latency_p50_us: q(&lat, 0.50),
                    latency_p95_us: q(&lat, 0.95),
                    latency_p99_us: q(&lat, 0.99),
                    latency_sum_us: (lat.mean() * lat.len() as f64) as u64,
                    latency_buckets: LATENCY_BUCKETS_US
                        .iter()
                        .map(|&b| (b, lat.count_between(0, b)))
                        .collect(),
                    batch_size_mean: bs.mean(),
                    batch_size_max: bs.max(),
                }
            })
            .collect();
        let shm = self
            .engine
            .get()
            .and_then(WeakEngine::upgrade)
            .map(|e| e.shm_stats())
            .unwrap_or_default();
        MetricsSnapshot { ops, shm }
    }
}

/// Upper bounds (µs) of the cumulative latency buckets exported to Prometheus.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 100_000, 1_000_000,
];

/// Snapshot of one operation kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpSnapshot {
    /// Which operation.
    pub kind: OpKind,
    /// Calls finished.
    pub ops: u64,
    /// Keys across those calls.
    pub keys: u64,
    /// Payload bytes moved by successful keys.
    pub bytes: u64,
    /// Reads retried on another replica.
    pub retries: u64,
    /// Failed keys by Mooncake error code.
    pub errors: BTreeMap<i32, u64>,
    /// Median call latency (µs).
    pub latency_p50_us: u64,
    /// 95th percentile call latency (µs).
    pub latency_p95_us: u64,
    /// 99th percentile call latency (µs).
    pub latency_p99_us: u64,
    /// Sum of call latencies (µs), approximate.
    pub latency_sum_us: u64,
    /// Cumulative counts at [`LATENCY_BUCKETS_US`].
    pub latency_buckets: Vec<(u64, u64)>,
    /// Mean keys per call.
    pub batch_size_mean: f64,
    /// Most keys in one call.
    pub batch_size_max: u64,
}

/// Snapshot of all operation kinds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// One entry per [`OpKind`], in [`OpKind::ALL`] order.
    pub ops: Vec<OpSnapshot>,
    /// Transfers served through same-host shared memory (zero when off).
    pub shm: ShmStats,
}

impl MetricsSnapshot {
    /// The entry of one kind.
    pub fn op(&self, kind: OpKind) -> Option<&OpSnapshot> {
        self.ops.iter().find(|o| o.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_accumulate_per_kind() {
        let m = Metrics::default();
        for i in 1..=100u64 {
            let rec = CallRecord {
                keys: 4,
                bytes: 4096,
                retries: u64::from(i % 10 == 0),
                errors: if i % 50 == 0 {
                    vec![-704, -704]
                } else {
                    vec![]
                },
                latency: Duration::from_micros(i),
            };
            m.record(OpKind::BatchGet, &rec);
        }
        m.record(
            OpKind::Put,
            &CallRecord {
                keys: 1,
                latency: Duration::from_millis(3),
                ..Default::default()
            },
        );
        let s = m.snapshot();
        let g = s.op(OpKind::BatchGet).unwrap();
        assert_eq!((g.ops, g.keys, g.bytes, g.retries), (100, 400, 409_600, 10));
        assert_eq!(g.errors.get(&-704), Some(&4));
        assert!(
            (49..=51).contains(&g.latency_p50_us),
            "p50 {}",
            g.latency_p50_us
        );
        assert!(
            (98..=100).contains(&g.latency_p99_us),
            "p99 {}",
            g.latency_p99_us
        );
        assert_eq!(g.batch_size_max, 4);
        assert_eq!(g.latency_buckets[0], (10, 10));
        let p = s.op(OpKind::Put).unwrap();
        assert_eq!(p.ops, 1);
        assert!(p.latency_p50_us >= 2990);
        assert_eq!(s.op(OpKind::Remove).unwrap().ops, 0);
    }
}
