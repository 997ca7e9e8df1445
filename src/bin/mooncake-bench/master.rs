//! `mooncake-bench master`: batch metadata RPC throughput against a master on 127.0.0.1
//! (embedded, or `--master addr`).
//!
//! For each batch size it runs, with several client connections at once: BatchPutStart +
//! BatchPutEnd of fresh keys, then BatchGetReplicaList and BatchExistKey over those keys. The
//! master only does bookkeeping: the bench mounts a large synthetic segment and no bytes move.
//! The table also shows the process's CPU time per key (clients and embedded master together),
//! which, unlike keys/s, does not depend on what else runs on the machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use mooncake_master::service::ServiceConfig;
use mooncake_master::{
    ClientId, ErrorCode, MasterClient, MasterConfig, MasterServer, ReplicateConfig, RunningMaster,
    Segment,
};
use serde::Serialize;

/// Flags of `mooncake-bench master`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address of a running master (`host:port` or `etcd://…`); none: start an embedded one.
    #[arg(long)]
    master: Option<String>,
    /// Client connections (each its own `MasterClient`).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Keys per call.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    batch_sizes: Vec<usize>,
    /// Seconds per (op, batch) cell.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Object size put (bookkeeping only).
    #[arg(long, default_value_t = 4096)]
    value_size: u64,
    /// Worker threads of the embedded master's runtime.
    #[arg(long, default_value_t = 2)]
    master_threads: usize,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// One measured (op, batch) cell.
#[derive(Serialize, Debug, Clone)]
struct CellResult {
    op: &'static str,
    batch: usize,
    keys_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// CPU time of this process (clients and embedded master) per key; table only.
    #[serde(skip)]
    cpu_ns_per_key: Option<f64>,
}

/// CPU time (user + system, all threads) this process has used, from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

#[derive(Serialize, Debug)]
struct Report {
    results: Vec<CellResult>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Exist,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "batch_put_start+batch_put_end",
            Op::Get => "batch_get_replica_list",
            Op::Exist => "batch_exist_key",
        }
    }
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections > 0 && args.depth > 0,
        "--connections and --depth must be > 0"
    );
    anyhow::ensure!(
        args.batch_sizes.iter().all(|&b| b > 0),
        "batch sizes must be > 0"
    );
    let embedded: Option<RunningMaster> = match &args.master {
        Some(_) => None,
        None => Some(
            MasterServer::start_blocking(
                MasterConfig {
                    service: ServiceConfig {
                        // Long enough that the bench's own segment never expires mid-run.
                        client_ttl: Duration::from_secs(3600),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                args.master_threads,
            )
            .context("starting embedded master")?,
        ),
    };
    let addr = match (&args.master, &embedded) {
        (Some(a), _) => a.clone(),
        (None, Some(m)) => m.rpc_addr().to_string(),
        (None, None) => unreachable!("embedded master started above"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let results = rt.block_on(bench(&args, &addr))?;
    drop(rt);
    drop(embedded);
    if args.json {
        println!("{}", serde_json::to_string(&Report { results })?);
    } else {
        println!(
            "{:<32} {:>6} {:>14} {:>10} {:>10} {:>8} {:>14}",
            "op", "batch", "keys/s", "p50 us", "p99 us", "errors", "cpu ns/key"
        );
        for r in &results {
            let cpu = r
                .cpu_ns_per_key
                .map(|c| format!("{c:.0}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<32} {:>6} {:>14.0} {:>10.1} {:>10.1} {:>8} {:>14}",
                r.op, r.batch, r.keys_per_sec, r.p50_us, r.p99_us, r.errors, cpu
            );
        }
    }
    Ok(())
}

async fn bench(args: &Args, addr: &str) -> anyhow::Result<Vec<CellResult>> {
    let me = ClientId::new_v4();
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(
            MasterClient::connect(addr)
                .await
                .with_context(|| format!("connecting to master {addr}"))?,
        );
    }
    clients[0]
        .mount_segment(
            me,
            Segment {
                id: ClientId::new_v4(),
                name: "127.0.0.1:1".into(),
                base: 1 << 40,
                size: 1 << 44,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("mounting the bench segment: {e}"))?;
    let run_id = ClientId::new_v4().simple().to_string();
    let mut out = Vec::new();
    for &batch in &args.batch_sizes {
        // Keys written in the put cell, per connection, in call-sized chunks.
        let written: Vec<Arc<std::sync::Mutex<Vec<Vec<String>>>>> = (0..args.connections)
            .map(|_| Arc::new(std::sync::Mutex::new(Vec::new())))
            .collect();
        for op in [Op::Put, Op::Get, Op::Exist] {
            let r = cell(args, &clients, &written, op, batch, me, &run_id).await?;
            out.push(r);
        }
        clients[0]
            .remove_all(true)
            .await
            .map_err(|e| anyhow::anyhow!("remove_all: {e}"))?;
    }
    Ok(out)
}

async fn cell(
    args: &Args,
    clients: &[MasterClient],
    written: &[Arc<std::sync::Mutex<Vec<Vec<String>>>>],
    op: Op,
    batch: usize,
    me: ClientId,
    run_id: &str,
) -> anyhow::Result<CellResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let keys_done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let cpu0 = process_cpu();
    let mut tasks = Vec::new();
    for (ci, client) in clients.iter().enumerate() {
        for _ in 0..args.depth {
            let (client, stop, keys_done, errors, seq) = (
                client.clone(),
                stop.clone(),
                keys_done.clone(),
                errors.clone(),
                seq.clone(),
            );
            let mine = written[ci].clone();
            let prefix = format!("{run_id}-b{batch}-c{ci}");
            let value_size = args.value_size;
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("3 significant digits is valid");
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (n, errs) = match op {
                        Op::Put => {
                            let s = seq.fetch_add(1, Ordering::Relaxed);
                            let keys: Vec<String> =
                                (0..batch).map(|k| format!("{prefix}-{s}-{k}")).collect();
                            let items = keys.iter().map(|k| (k.clone(), value_size)).collect();
                            let errs = put(&client, me, items, keys.clone()).await;
                            mine.lock()
                                .map_err(|_| anyhow::anyhow!("poisoned"))?
                                .push(keys);
                            (batch, errs)
                        }
                        Op::Get | Op::Exist => {
                            let keys = {
                                let w = mine.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                                if w.is_empty() {
                                    return Ok::<_, anyhow::Error>(hist);
                                }
                                w[i % w.len()].clone()
                            };
                            i += 1;
                            let n = keys.len();
                            let errs = if op == Op::Get {
                                count_errors(client.batch_get_replica_list(keys).await, n)
                            } else {
                                count_errors(client.batch_exist_key(keys).await, n)
                            };
                            (n, errs)
                        }
                    };
                    hist.record(t.elapsed().as_micros() as u64)?;
                    keys_done.fetch_add(n as u64, Ordering::Relaxed);
                    errors.fetch_add(errs, Ordering::Relaxed);
                }
                Ok(hist)
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let keys = keys_done.load(Ordering::Relaxed);
    let cpu_ns_per_key = match (cpu0, process_cpu()) {
        (Some(a), Some(b)) if keys > 0 => Some((b - a).as_nanos() as f64 / keys as f64),
        _ => None,
    };
    Ok(CellResult {
        op: op.name(),
        batch,
        keys_per_sec: keys as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5) as f64,
        p99_us: hist.value_at_quantile(0.99) as f64,
        errors: errors.load(Ordering::Relaxed),
        cpu_ns_per_key,
    })
}

async fn put(
    client: &MasterClient,
    me: ClientId,
    items: Vec<(String, u64)>,
    keys: Vec<String>,
) -> u64 {
    let n = keys.len();
    let started = match client
        .batch_put_start(me, items, ReplicateConfig::default())
        .await
    {
        Ok(r) => r,
        Err(_) => return n as u64,
    };
    let mut errs = 0;
    let mut ok = Vec::with_capacity(n);
    for (k, r) in keys.into_iter().zip(started) {
        match r {
            Ok(_) => ok.push(k),
            Err(_) => errs += 1,
        }
    }
    let m = ok.len();
    if m > 0 {
        errs += count_errors(client.batch_put_end(me, ok).await, m);
    }
    errs
}

fn count_errors<T>(r: Result<Vec<Result<T, ErrorCode>>, ErrorCode>, n: usize) -> u64 {
    match r {
        Ok(v) => v.iter().filter(|r| r.is_err()).count() as u64,
        Err(_) => n as u64,
    }
}
