//! `mooncake-bench store`: the main job. Starts an embedded master (unless `--master`), a
//! pool-holding client as a child process (so every read and write crosses processes), and a
//! reading/writing client here; runs a layer-wise KV workload through every store call, single
//! and batched, checks every byte, and prints a table (or one JSON object with `--json`).
//!
//! Beside the cells it measures the transfer engine's own READ between the same processes
//! (the reference for the zero-copy batch read) and 64 concurrent single-key getters with
//! auto-batching off and on, and prints the ratios the store is held to.

mod cells;
mod data;
mod holder;
mod reference;
mod report;
mod sizes;

use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mooncake_master::{MasterConfig, MasterServer};
use store_client::{BatchPolicyConfig, Client, ClientConfig, Protocol, ReplicateConfig};
use transfer_engine::AlignedBuffer;

pub use holder::{run_holder, HolderArgs};

use cells::{CellRun, GpuBufs};
use holder::HolderProcess;
use reference::Pattern;
use report::{Check, EngineRead, Report, Row};
use sizes::{parse_cell, parse_size, Cell};

/// Flags of `mooncake-bench store`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Master address (`host:port` or `etcd://...`) of a running deployment; none: start an
    /// embedded master.
    #[arg(long)]
    master: Option<String>,
    /// Keep the zero-copy calls' buffers (put_from / get_into and their batch forms) in GPU
    /// memory (CUDA device 0); every byte is still verified on the host.
    #[arg(long)]
    gpu: bool,
    /// Pool-holding child processes to start (0 with --master: use the deployment's pool).
    #[arg(long, default_value_t = 1)]
    holders: usize,
    /// Pool memory each holder contributes (K/M/G suffixes).
    #[arg(long, default_value = "1G")]
    pool_size: String,
    /// Cells as VALUE_SIZE:BATCH (batch 1 = the single-key calls).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4K:1,4K:64,4K:1024,1M:1,1M:64"
    )]
    cells: Vec<String>,
    /// Objects per cell, at most (fewer for large values, see --max-cell-bytes).
    #[arg(long, default_value_t = 4096)]
    keys: usize,
    /// Bytes of objects per cell, at most.
    #[arg(long, default_value = "128M")]
    max_cell_bytes: String,
    /// Layers of the KV layout (keys are named layer-major: .../Lxx/Byyyyy).
    #[arg(long, default_value_t = 32)]
    layers: usize,
    /// Times each read operation goes over a cell's objects.
    #[arg(long, default_value_t = 4)]
    read_rounds: usize,
    /// Replicas per object.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Transport: auto, tcp or rdma.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Same-host shared memory between the clients (true: the holders' pools are memfds the
    /// benchmark client maps and copies to and from, as clients on one host do by default;
    /// false, the default here: every byte goes over --protocol, the path between hosts that
    /// the main job stands in for).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    shm: bool,
    /// Put the holders' pools in the host's reserved huge pages (/proc/sys/vm/nr_hugepages;
    /// they fall back to ordinary pages with a warning when too few are free).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    huge_pages: bool,
    /// Threads the benchmark client's engine spreads large memcpy batches over (same-host
    /// shared memory; 0: its default, the CPUs it may use up to 8; 1: the submitting thread).
    #[arg(long, default_value_t = 0)]
    copy_threads: usize,
    /// Concurrent single-key getters in the auto-batching comparison (0 = skip it).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Gets per getter in the auto-batching comparison.
    #[arg(long, default_value_t = 200)]
    gets_per_task: usize,
    /// Auto-batching linger time in microseconds.
    #[arg(long, default_value_t = 100)]
    linger_us: u64,
    /// Access patterns of the auto-batching comparison (each measured off and on).
    #[arg(long, value_delimiter = ',', default_value = "sequential,random")]
    ab_patterns: Vec<reference::Pattern>,
    /// Auto-batching: most calls in one batch.
    #[arg(long, default_value_t = 256)]
    ab_max_batch: usize,
    /// Auto-batching: most batches in flight at once.
    #[arg(long, default_value_t = 4)]
    ab_in_flight: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Maps a `--protocol` value.
pub(crate) fn protocol_of(s: &str) -> anyhow::Result<Protocol> {
    Ok(match s {
        "auto" => Protocol::Auto,
        "tcp" => Protocol::Tcp,
        "rdma" => Protocol::Rdma,
        other => bail!("--protocol {other:?}: expected auto, tcp or rdma"),
    })
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cells: Vec<Cell> = args
        .cells
        .iter()
        .map(|c| parse_cell(c))
        .collect::<anyhow::Result<_>>()?;
    let pool_size = parse_size(&args.pool_size)?;
    let max_cell_bytes = parse_size(&args.max_cell_bytes)?;
    anyhow::ensure!(
        args.layers > 0 && args.keys > 0 && args.read_rounds > 0,
        "--layers, --keys and --read-rounds must be > 0"
    );
    protocol_of(&args.protocol)?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let embedded = match &args.master {
        Some(_) => None,
        None => Some(
            rt.block_on(MasterServer::start(MasterConfig::default()))
                .context("starting the embedded master")?,
        ),
    };
    let master_addr = match (&args.master, &embedded) {
        (Some(a), _) => a.clone(),
        (None, Some(m)) => m.rpc_addr().to_string(),
        (None, None) => unreachable!("an embedded master exists when no address was given"),
    };
    if args.holders == 0 && args.master.is_none() {
        bail!("--holders 0 needs --master (an embedded master has no pool otherwise)");
    }
    let holders: Vec<HolderProcess> = (0..args.holders)
        .map(|_| {
            HolderProcess::spawn(
                &master_addr,
                pool_size,
                &args.protocol,
                args.shm,
                args.huge_pages,
            )
        })
        .collect::<anyhow::Result<_>>()?;
    for h in &holders {
        tracing::info!(segment = %h.info.segment, base = h.info.base, size = h.info.size, "pool holder ready");
    }
    let report = rt.block_on(bench(
        &args,
        &cells,
        &master_addr,
        max_cell_bytes,
        embedded.is_some(),
    ))?;
    drop(holders);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report::print_table(&report);
    }
    if report.results.iter().any(|r| !r.verified) {
        bail!("some operations failed or returned wrong bytes (rows with verified = false)");
    }
    Ok(())
}

/// Objects in a cell: at most `keys`, at most `max_bytes` of them, a whole number of batches.
fn keys_in(cell: Cell, keys: usize, max_bytes: u64) -> usize {
    let by_bytes = (max_bytes / cell.value_size).max(1) as usize;
    let n = keys.min(by_bytes).max(cell.batch);
    n / cell.batch * cell.batch
}

async fn bench(
    args: &Args,
    cells: &[Cell],
    master: &str,
    max_cell_bytes: u64,
    embedded: bool,
) -> anyhow::Result<Report> {
    let protocol = protocol_of(&args.protocol)?;
    let biggest = cells
        .iter()
        .map(|&c| keys_in(c, args.keys, max_cell_bytes) as u64 * c.value_size)
        .max()
        .unwrap_or(1 << 20);
    let biggest_batch = cells
        .iter()
        .map(|c| c.batch as u64 * c.value_size.next_multiple_of(64))
        .max()
        .unwrap_or(1 << 20);
    let staging = (biggest_batch * 2).max(64 << 20);
    let mut cfg = ClientConfig::new(master)
        .protocol(protocol)
        .shared_memory(args.shm)
        .segment_size(0)
        .staging_size(staging);
    cfg.engine.copy_threads = args.copy_threads;
    let client = Client::connect(cfg.clone())
        .await
        .context("connecting the benchmark client")?;
    let mut src = AlignedBuffer::new(biggest as usize)?;
    let mut dst = AlignedBuffer::new(biggest as usize)?;
    // SAFETY: both buffers live until the end of this function and are unregistered first.
    unsafe {
        client.register_buffer(src.as_mut_ptr(), src.len())?;
        client.register_buffer(dst.as_mut_ptr(), dst.len())?;
    }
    let mut gpu = if args.gpu {
        let cuda = transfer_engine::gpu::cuda()?;
        let g = GpuBufs {
            src: cuda.alloc(0, biggest as usize)?,
            dst: cuda.alloc(0, biggest as usize)?,
        };
        // SAFETY: both allocations live until the end of this function and are unregistered
        // first.
        unsafe {
            client.register_buffer(g.src.ptr() as *mut u8, g.src.len())?;
            client.register_buffer(g.dst.ptr() as *mut u8, g.dst.len())?;
        }
        Some(g)
    } else {
        None
    };
    let replicate = ReplicateConfig {
        replica_num: args.replicas,
        ..Default::default()
    };
    let run_id = format!("bench-{:08x}", rand::random::<u32>());
    let total_rows = cells.len() * 6
        + if args.concurrency > 0 {
            2 * args.ab_patterns.len()
        } else {
            0
        };
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(total_rows as u64), ProgressDrawTarget::stderr())
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    // The engine reference goes with the largest-value batched cell.
    let ref_cell = cells
        .iter()
        .copied()
        .filter(|c| c.batch > 1)
        .max_by_key(|c| (c.value_size, c.batch));
    let mut rows: Vec<Row> = Vec::new();
    let mut engine_read: Option<EngineRead> = None;
    for (ci, &cell) in cells.iter().enumerate() {
        let n = keys_in(cell, args.keys, max_cell_bytes);
        let bytes = n * cell.value_size as usize;
        for (i, chunk) in src.as_mut_slice()[..bytes]
            .chunks_mut(cell.value_size as usize)
            .enumerate()
        {
            data::fill(ci as u64 + 1, i as u64, chunk);
        }
        if let Some(g) = gpu.as_mut() {
            g.src.write(0, &src.as_slice()[..bytes])?;
        }
        progress.set_message(format!("{} B x {}", cell.value_size, cell.batch));
        let mut reference: Option<(usize, u64)> = None;
        let mut run = CellRun {
            client: &client,
            src: &src,
            dst: &mut dst,
            run_id: &run_id,
            layers: args.layers,
            read_rounds: args.read_rounds,
            replicate: &replicate,
            cell,
            keys: n,
            gpu: gpu.as_mut(),
        };
        let cell_rows = run
            .run(|_| {
                if Some(cell) == ref_cell {
                    reference = Some((args.read_rounds * n / cell.batch, cell.value_size));
                }
            })
            .await;
        // Measured right after the zero-copy batch read, before anything else changes.
        if let Some((iters, size)) = reference {
            let keys = (0..cell.batch).map(|i| run.key("pf", i)).collect();
            let m = reference::engine_read(&client, keys, run.dst, size, iters).await?;
            engine_read = Some(EngineRead::from(&m, size, cell.batch));
        }
        if embedded {
            let _ = client.master().remove_all(true).await;
        } else {
            run.cleanup().await;
        }
        progress.inc(cell_rows.len() as u64);
        rows.extend(cell_rows);
    }
    if args.concurrency > 0 {
        progress.set_message("auto-batching");
        rows.extend(auto_batching_rows(args, &cfg, &client, &run_id).await?);
        progress.inc(2 * args.ab_patterns.len() as u64);
    }
    progress.finish_and_clear();
    client.unregister_buffer(src.as_mut_ptr())?;
    client.unregister_buffer(dst.as_mut_ptr())?;
    if let Some(g) = &gpu {
        client.unregister_buffer(g.src.ptr() as *mut u8)?;
        client.unregister_buffer(g.dst.ptr() as *mut u8)?;
    }
    let shm = client.metrics().shm;
    client.close().await;
    let checks = checks(&rows, engine_read.as_ref());
    Ok(Report {
        results: rows,
        engine_read,
        checks,
        shm,
    })
}

/// The same `concurrency` single-key getters, with auto-batching off and then on.
async fn auto_batching_rows(
    args: &Args,
    cfg: &ClientConfig,
    off: &Client,
    run_id: &str,
) -> anyhow::Result<Vec<Row>> {
    const SIZE: usize = 4096;
    let n = 4096;
    let keys: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{run_id}/ab/L{:02}/B{:05}",
                i % args.layers,
                i / args.layers
            )
        })
        .collect();
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut v = vec![0u8; SIZE];
            data::fill(0xab, i as u64, &mut v);
            v
        })
        .collect();
    // One batch per round of the sequential pattern: a prefix of blocks stored together.
    let per_put = args.concurrency.clamp(1, 1024);
    for (k, v) in keys.chunks(per_put).zip(values.chunks(per_put)) {
        let items: Vec<(&String, &Vec<u8>)> = k.iter().zip(v).collect();
        let items: Vec<(&str, &[u8])> = items
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let res = off.batch_put(&items).await;
        anyhow::ensure!(
            res.iter().all(|r| r.is_ok()),
            "writing the auto-batching keys failed"
        );
    }
    let policy = BatchPolicyConfig {
        max_linger: std::time::Duration::from_micros(args.linger_us),
        max_batch: args.ab_max_batch,
        max_in_flight: args.ab_in_flight,
    };
    let on = Client::connect(cfg.clone().auto_batch(policy)).await?;
    let (keys, values) = (Arc::new(keys), Arc::new(values));
    let mut rows = Vec::new();
    for &pattern in &args.ab_patterns {
        for (client, flag) in [(off, false), (&on, true)] {
            let m = reference::concurrent_gets(
                client,
                keys.clone(),
                values.clone(),
                args.concurrency,
                args.gets_per_task,
                pattern,
            )
            .await;
            let mut row = m.row("get", SIZE as u64, 1);
            row.concurrency = Some(args.concurrency);
            row.auto_batch = Some(flag);
            row.pattern = Some(pattern);
            rows.push(row);
        }
    }
    on.close().await;
    Ok(rows)
}

fn find<'a>(rows: &'a [Row], op: &str, size: u64, batch: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.op == op && r.value_size == size && r.batch == batch && r.auto_batch.is_none())
}

/// The ratios the store is held to, for the rows this run measured.
fn checks(rows: &[Row], engine: Option<&EngineRead>) -> Vec<Check> {
    let mut out = Vec::new();
    let mut ratio = |name: String, num: Option<f64>, den: Option<f64>, target: f64| {
        if let (Some(a), Some(b)) = (num, den) {
            let value = if b > 0.0 { a / b } else { 0.0 };
            out.push(Check {
                name,
                value,
                target,
                pass: value >= target,
            });
        }
    };
    let kps = |op, size, batch| find(rows, op, size, batch).map(|r| r.keys_per_sec);
    ratio(
        "batch_get 1024x4KiB keys/s vs 1024 single gets".into(),
        kps("batch_get", 4096, 1024),
        kps("get", 4096, 1),
        20.0,
    );
    ratio(
        "batch_put 1024x4KiB keys/s vs 1024 single puts".into(),
        kps("batch_put", 4096, 1024),
        kps("put", 4096, 1),
        10.0,
    );
    if let Some(e) = engine {
        ratio(
            format!(
                "batch_get_into {}x{} GB/s vs engine READ",
                e.value_size, e.batch
            ),
            find(rows, "batch_get_into", e.value_size, e.batch).map(|r| r.gbps),
            Some(e.gbps),
            0.85,
        );
    }
    let c = rows.iter().find_map(|r| r.concurrency).unwrap_or(0);
    for p in [Pattern::Sequential, Pattern::Random] {
        let ab = |on: bool| {
            rows.iter()
                .find(|r| r.auto_batch == Some(on) && r.pattern == Some(p))
                .map(|r| r.keys_per_sec)
        };
        ratio(
            format!("auto-batching on vs off, {c} concurrent gets, {p:?}"),
            ab(true),
            ab(false),
            5.0,
        );
    }
    out
}
