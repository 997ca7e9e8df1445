//! `mooncake-bench transfer`: transfer-engine READ/WRITE throughput and latency between two
//! processes, like Mooncake's `transfer_engine_bench`, against a plain TCP stream measured
//! between the same two processes in the same run.
//!
//! With no `--target`, it spawns its own target (`mooncake-bench transfer-target`, this same
//! executable) on 127.0.0.1 and stops it at the end by closing the target's stdin.

mod baseline;
mod cell;
use crate::sizes;
mod target;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use transfer_engine::{Engine, EngineConfig, OpCode, Protocol};

pub use target::{run_target, TargetArgs};

/// Flags of `mooncake-bench transfer`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Segment name (`host:port`) of a running `mooncake-bench transfer-target`; none: spawn one.
    #[arg(long)]
    target: Option<String>,
    /// Plain-TCP baseline address of that target (it prints it); none: no baseline.
    #[arg(long)]
    baseline: Option<String>,
    /// Operations to measure.
    #[arg(long, value_delimiter = ',', default_value = "read,write")]
    ops: Vec<String>,
    /// Block (request) sizes; suffixes K, M, G (binary).
    #[arg(long, value_delimiter = ',', default_value = "4K,64K,1M,16M")]
    block_sizes: Vec<String>,
    /// Requests per batch.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    batch_sizes: Vec<usize>,
    /// Threads submitting batches concurrently.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds per (op, block, batch) cell: a third engine batches, two thirds the
    /// interleaved plain-TCP streams.
    #[arg(long, default_value_t = 2.4)]
    duration: f64,
    /// Bytes per batch at most (larger batches are cut down to fit); also the buffer size.
    #[arg(long, default_value = "256M")]
    max_batch_bytes: String,
    /// Bytes of local and of remote memory each thread cycles through (K/M/G suffixes);
    /// default: its share of the buffers. Equal to the block size, every request moves the
    /// same block, as perftest does (its buffers stay cache-hot).
    #[arg(long)]
    footprint: Option<String>,
    /// Keep the initiator's buffers in GPU memory (CUDA device 0): TCP then stages them
    /// through host memory, and the same-memory stream baseline is skipped.
    #[arg(long)]
    gpu: bool,
    #[command(flatten)]
    engine: EngineFlags,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Engine flags shared by the initiator and the target process.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineFlags {
    /// Transport: auto, tcp or rdma.
    #[arg(long, default_value = "auto")]
    protocol: String,
    /// TCP connections per peer.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// TCP stripe size.
    #[arg(long, default_value = "1M")]
    stripe: String,
}

impl EngineFlags {
    /// An engine configuration with these flags on `listen_addr`.
    fn config(&self, listen_addr: std::net::SocketAddr) -> anyhow::Result<EngineConfig> {
        Ok(EngineConfig {
            listen_addr,
            protocol: parse_protocol(&self.protocol)?,
            tcp_connections_per_peer: self.connections,
            tcp_stripe_size: sizes::parse(&self.stripe)? as usize,
            ..Default::default()
        })
    }
}

/// One measured cell.
#[derive(Serialize, Debug, Clone)]
pub struct CellResult {
    op: String,
    block_size: u64,
    batch: usize,
    gbps: f64,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// The plain TCP stream (cache-hot 1 MiB buffers, same direction), interleaved with this
    /// cell's batches.
    baseline_gbps: Option<f64>,
    /// `gbps / baseline_gbps`.
    ratio: Option<f64>,
    /// A plain TCP stream cycling through the same memory as the cell (same direction),
    /// interleaved too: what a raw socket does with cache-cold buffers of this size.
    same_memory_gbps: Option<f64>,
    /// `gbps / same_memory_gbps`.
    ratio_same_memory: Option<f64>,
}

#[derive(Serialize, Debug)]
struct BaselineResult {
    /// Cache-hot plain TCP stream (private 1 MiB buffers) over every slice of the run, the
    /// better direction.
    tcp_stream_gbps: f64,
    /// Initiator to target (none without write cells).
    sink_gbps: Option<f64>,
    /// Target to initiator (none without read cells).
    source_gbps: Option<f64>,
}

#[derive(Serialize, Debug)]
struct Report {
    results: Vec<CellResult>,
    baseline: Option<BaselineResult>,
}

fn parse_protocol(s: &str) -> anyhow::Result<Protocol> {
    Ok(match s {
        "auto" => Protocol::Auto,
        "tcp" => Protocol::Tcp,
        "rdma" => Protocol::Rdma,
        other => bail!("unknown protocol {other:?}: use auto, tcp or rdma"),
    })
}

fn parse_op(s: &str) -> anyhow::Result<OpCode> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "read" => OpCode::Read,
        "write" => OpCode::Write,
        other => bail!("unknown op {other:?}: use read and/or write"),
    })
}

/// A spawned target process, stopped when dropped.
struct SpawnedTarget {
    child: Child,
}

impl Drop for SpawnedTarget {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn spawn_target(args: &Args, size: u64) -> anyhow::Result<(SpawnedTarget, String, String)> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut child = Command::new(exe)
        .args([
            "transfer-target",
            "--size",
            &size.to_string(),
            "--protocol",
            &args.engine.protocol,
            "--connections",
            &args.engine.connections.to_string(),
            "--stripe",
            &args.engine.stripe,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the target process")?;
    let stdout = child.stdout.take().context("target stdout")?;
    let target = SpawnedTarget { child };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the target's READY line")?;
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["READY", name, baseline] => Ok((target, name.to_string(), baseline.to_string())),
        _ => bail!("target did not start: {line:?}"),
    }
}

/// Bytes and seconds of stream slices.
#[derive(Default, Clone, Copy)]
struct Tally {
    bytes: u64,
    secs: f64,
}

impl Tally {
    fn add(&mut self, (bytes, secs): (u64, f64)) {
        self.bytes += bytes;
        self.secs += secs;
    }

    fn merge(&mut self, other: Tally) {
        self.bytes += other.bytes;
        self.secs += other.secs;
    }

    fn gbps(&self) -> Option<f64> {
        (self.secs > 0.0).then(|| self.bytes as f64 / self.secs / 1e9)
    }
}

/// Measures one cell in rounds of (cache-hot stream, same-memory stream, engine batches), so
/// that all three see the same moments of a noisy machine. Returns the row and the hot
/// stream's tally.
fn measure_cell(
    setup: &cell::Setup,
    baseline_addr: Option<&str>,
    op: OpCode,
    block: u64,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<(CellResult, Tally)> {
    // Tiny footprints would make the stream write tiny chunks: stream at least 1 MiB then.
    let window = setup.footprint(block, batch).max(1 << 20);
    let dir = match op {
        OpCode::Write => baseline::Direction::Sink,
        OpCode::Read => baseline::Direction::Source,
    };
    let mut streams = match baseline_addr {
        Some(a) => Some((
            baseline::Stream::open(a, dir, None, None)?,
            match setup.local_window(window) {
                Some(w) => Some(baseline::Stream::open(a, dir, Some((0, window)), Some(w))?),
                None => None,
            },
        )),
        None => None,
    };
    // Short slices (~100 ms each) track bursty load on a shared machine.
    let rounds = ((duration.as_secs_f64() / 0.3).round() as u32).max(1);
    let slice = duration / (3 * rounds);
    let mut raw = cell::Raw::new()?;
    let (mut hot, mut same) = (Tally::default(), Tally::default());
    for round in 0..rounds {
        if let Some((h, m)) = streams.as_mut() {
            hot.add(h.run(slice)?);
            if let Some(m) = m {
                same.add(m.run(slice)?);
            }
        }
        raw.merge(setup.run_engine(op, block, batch, slice, round == 0)?)?;
    }
    let mut r = raw.result(op, block, batch);
    if let Some((h, m)) = streams {
        h.finish()?;
        if let Some(m) = m {
            m.finish()?;
        }
        r.baseline_gbps = hot.gbps();
        r.ratio = r.baseline_gbps.map(|g| r.gbps / g);
        r.same_memory_gbps = same.gbps();
        r.ratio_same_memory = r.same_memory_gbps.map(|g| r.gbps / g);
    }
    Ok((r, hot))
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ops = args
        .ops
        .iter()
        .map(|s| parse_op(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let blocks = args
        .block_sizes
        .iter()
        .map(|s| sizes::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let max_batch_bytes = sizes::parse(&args.max_batch_bytes)?;
    if args.threads == 0 || args.batch_sizes.contains(&0) || blocks.contains(&0) {
        bail!("threads, batch sizes and block sizes must be > 0");
    }
    let duration = Duration::from_secs_f64(args.duration);
    let max_block = blocks.iter().copied().max().unwrap_or(1);
    // Every thread gets room for one batch (at least one block).
    let per_thread = max_batch_bytes.max(max_block);
    let buffer = per_thread * args.threads as u64;

    let (_spawned, target_name, baseline_addr) = match &args.target {
        Some(name) => (None, name.clone(), args.baseline.clone()),
        None => {
            let (t, n, b) = spawn_target(&args, buffer)?;
            (Some(t), n, Some(b))
        }
    };
    let engine = Engine::new(args.engine.config(EngineConfig::default().listen_addr)?)?;
    let footprint = args.footprint.as_deref().map(sizes::parse).transpose()?;
    let setup = cell::Setup::new(
        &engine,
        &target_name,
        buffer,
        args.threads,
        footprint,
        args.gpu,
    )?;

    let (mut sink, mut source) = (Tally::default(), Tally::default());
    let mut results = Vec::new();
    for &op in &ops {
        for &block in &blocks {
            let mut done_batches = Vec::new();
            for &asked in &args.batch_sizes {
                let batch = asked.min((per_thread / block).max(1) as usize);
                if done_batches.contains(&batch) {
                    continue;
                }
                done_batches.push(batch);
                let gpu_before = transfer_engine::gpu::stats();
                let (r, hot) =
                    measure_cell(&setup, baseline_addr.as_deref(), op, block, batch, duration)?;
                if args.gpu {
                    let g = transfer_engine::gpu::stats().since(&gpu_before);
                    eprintln!(
                        "  gpu staging, {} {} x {batch}: {}",
                        r.op,
                        sizes::show(block),
                        g.summary()
                    );
                }
                match op {
                    OpCode::Write => sink.merge(hot),
                    OpCode::Read => source.merge(hot),
                }
                if !args.json {
                    eprintln!(
                        "  {} {} x {}: {:.3} GB/s (stream {})",
                        r.op,
                        sizes::show(block),
                        batch,
                        r.gbps,
                        r.baseline_gbps.map_or("-".into(), |g| format!("{g:.3}"))
                    );
                }
                results.push(r);
            }
        }
    }
    let baseline = match (sink.gbps(), source.gbps()) {
        (None, None) => None,
        (si, so) => Some(BaselineResult {
            tcp_stream_gbps: si.unwrap_or(0.0).max(so.unwrap_or(0.0)),
            sink_gbps: si,
            source_gbps: so,
        }),
    };
    if args.json {
        println!("{}", serde_json::to_string(&Report { results, baseline })?);
    } else {
        print_table(&args, &engine, &target_name, &results, baseline.as_ref());
    }
    Ok(())
}

fn print_table(
    args: &Args,
    engine: &Engine,
    target: &str,
    results: &[CellResult],
    baseline: Option<&BaselineResult>,
) {
    println!(
        "transfer bench: protocol {:?}, target {target}, {} thread(s), {:.1} s per cell",
        engine.protocol(),
        args.threads,
        args.duration
    );
    let show = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
    match baseline {
        Some(b) => println!(
            "plain TCP stream (cache-hot 1 MiB buffers, all slices): {:.2} GB/s \
             (initiator->target {}, target->initiator {})",
            b.tcp_stream_gbps,
            show(b.sink_gbps),
            show(b.source_gbps)
        ),
        None => println!("plain TCP stream baseline: not measured (no --baseline)"),
    }
    println!(
        "{:<6} {:>6} {:>6} {:>8} {:>11} {:>9} {:>9} {:>6} {:>7} {:>6} {:>7} {:>6}",
        "op",
        "block",
        "batch",
        "GB/s",
        "ops/s",
        "p50 us",
        "p99 us",
        "errors",
        "stream",
        "ratio",
        "same-mem",
        "ratio"
    );
    for r in results {
        println!(
            "{:<6} {:>6} {:>6} {:>8.3} {:>11.0} {:>9.1} {:>9.1} {:>6} {:>7} {:>6} {:>7} {:>6}",
            r.op,
            sizes::show(r.block_size),
            r.batch,
            r.gbps,
            r.ops_per_sec,
            r.p50_us,
            r.p99_us,
            r.errors,
            show(r.baseline_gbps),
            show(r.ratio),
            show(r.same_memory_gbps),
            show(r.ratio_same_memory),
        );
    }
    println!(
        "latency: submit to whole batch completed. stream: plain TCP stream, cache-hot 1 MiB \
         buffers; same-mem: plain TCP stream through the cell's own buffers; both same \
         direction, interleaved with the cell's batches; ratio = GB/s / that stream"
    );
}
