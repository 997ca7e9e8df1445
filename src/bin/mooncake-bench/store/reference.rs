//! The two comparisons measured beside the cells: the transfer engine's own READ between the
//! same two processes (what the store's zero-copy batch read is held against), and 64
//! concurrent single-key `get` callers with auto-batching off and on.

use std::sync::Arc;
use std::time::Instant;

use store_client::Client;
use transfer_engine::{AlignedBuffer, OpCode, TransferRequest, TransferState};

use super::report::{Latencies, Measured};
use anyhow::Context;

/// `iters` engine batches of READs of exactly the objects `keys` (their first replica, as
/// the master lists them) into `dst` slots of `value_size` bytes: the transfers one zero-copy
/// batch read of the store makes, issued straight to the engine between the same processes.
pub async fn engine_read(
    client: &Client,
    keys: Vec<String>,
    dst: &AlignedBuffer,
    value_size: u64,
    iters: usize,
) -> anyhow::Result<Measured> {
    let batch = keys.len();
    anyhow::ensure!(
        value_size * batch as u64 <= dst.len() as u64,
        "engine read of {batch} x {value_size} bytes does not fit the buffer"
    );
    let lists = client
        .master()
        .batch_get_replica_list(keys)
        .await
        .map_err(|code| anyhow::anyhow!("replica lookup for the engine reference: {code}"))?;
    let mut requests = Vec::with_capacity(batch);
    for (i, list) in lists.into_iter().enumerate() {
        let list = list.map_err(|code| anyhow::anyhow!("replica lookup: {code}"))?;
        let r = list.first().context("object without a replica")?;
        let engine = client.engine().clone();
        let name = r.segment_name.clone();
        let target = tokio::task::spawn_blocking(move || engine.open_segment(&name)).await??;
        requests.push(TransferRequest {
            op: OpCode::Read,
            local_addr: dst.addr() + i as u64 * value_size,
            target,
            target_offset: r.addr,
            len: r.len.min(value_size),
        });
    }
    let engine = client.engine();
    let span: u64 = requests.iter().map(|r| r.len).sum();
    let mut m = Measured::empty();
    for _ in 0..iters {
        let t = Instant::now();
        let id = engine.allocate_batch(batch)?;
        engine.submit(id, &requests)?;
        let statuses = engine.completion(id).await?;
        engine.free_batch(id)?;
        let took = t.elapsed();
        m.elapsed += took;
        m.latencies.record(took);
        m.keys += batch as u64;
        m.bytes += span;
        let failed = statuses
            .iter()
            .filter(|s| s.state != TransferState::Completed)
            .count() as u64;
        m.errors += failed;
        m.verified &= failed == 0;
    }
    Ok(m)
}

/// Which object a concurrent getter reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Round `j` of the getters reads objects `j*tasks ..< (j+1)*tasks`, one each: like
    /// workers pulling the next blocks of a prefix that was stored in one batch.
    Sequential,
    /// Scattered objects (a fixed pseudo-random walk per getter).
    Random,
}

impl Pattern {
    fn index(self, task: usize, round: usize, tasks: usize, n: usize) -> usize {
        match self {
            Pattern::Sequential => (round * tasks + task) % n,
            Pattern::Random => (task * 7919 + round * 131) % n,
        }
    }
}

/// `tasks` concurrent callers each doing `gets_per_task` single-key gets of `keys` (values
/// `values[i]`), checking every byte. Wall-clock throughput.
pub async fn concurrent_gets(
    client: &Client,
    keys: Arc<Vec<String>>,
    values: Arc<Vec<Vec<u8>>>,
    tasks: usize,
    gets_per_task: usize,
    pattern: Pattern,
) -> Measured {
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (c, keys, values) = (client.clone(), keys.clone(), values.clone());
            tokio::spawn(async move {
                let mut lat = Latencies::new();
                let (mut errors, mut bad, mut bytes) = (0u64, 0u64, 0u64);
                for j in 0..gets_per_task {
                    let i = pattern.index(t, j, tasks, keys.len());
                    let t0 = Instant::now();
                    let r = c.get(&keys[i]).await;
                    lat.record(t0.elapsed());
                    match r.result {
                        Ok(v) if v == values[i] => bytes += v.len() as u64,
                        Ok(_) => bad += 1,
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors, bad, bytes)
            })
        })
        .collect();
    let mut m = Measured::empty();
    for h in handles {
        match h.await {
            Ok((lat, errors, bad, bytes)) => {
                m.latencies.merge(&lat);
                m.errors += errors;
                m.verified &= errors == 0 && bad == 0;
                m.bytes += bytes;
            }
            Err(_) => m.verified = false,
        }
    }
    m.elapsed = started.elapsed();
    m.keys = (tasks * gets_per_task) as u64;
    m
}
