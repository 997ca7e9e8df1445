//! One cell of the layer-wise KV workload: `keys` objects of `value_size` bytes (key names
//! `RUN/CELL/SET/Lxx/Byyyyy`: layer-major like a model's KV blocks), moved `batch` keys per
//! call by each of the six operations: put, get, put_from, get_into, exists, remove (their
//! `batch_` forms when `batch > 1`). Only the calls are timed; checking every byte is not.

use std::time::{Duration, Instant};

use store_client::{BufferSlice, Client, KeyResult, ReplicateConfig};
use transfer_engine::gpu::DeviceBuffer;
use transfer_engine::AlignedBuffer;

use super::report::{Measured, Row};
use super::sizes::Cell;

/// GPU buffers for the zero-copy calls (`--gpu`), laid out like `src` / `dst`.
pub struct GpuBufs {
    /// Holds a copy of `src`.
    pub src: DeviceBuffer,
    /// Zero-copy reads land here.
    pub dst: DeviceBuffer,
}

/// Everything a cell needs.
pub struct CellRun<'a> {
    pub client: &'a Client,
    /// Registered source buffer holding object `i` at `i * value_size`.
    pub src: &'a AlignedBuffer,
    /// Registered destination buffer for zero-copy reads (same layout).
    pub dst: &'a mut AlignedBuffer,
    pub run_id: &'a str,
    pub layers: usize,
    pub read_rounds: usize,
    pub replicate: &'a ReplicateConfig,
    pub cell: Cell,
    pub keys: usize,
    /// With `--gpu`: the zero-copy calls use these instead of `src` / `dst`.
    pub gpu: Option<&'a mut GpuBufs>,
}

/// Accumulates calls of one row.
struct Acc {
    m: Measured,
}

impl Acc {
    fn new() -> Self {
        Self {
            m: Measured::empty(),
        }
    }

    fn call(&mut self, took: Duration, keys: usize, bytes: u64) {
        self.m.elapsed += took;
        self.m.latencies.record(took);
        self.m.keys += keys as u64;
        self.m.bytes += bytes;
    }

    fn check<T>(&mut self, results: &[KeyResult<T>], ok: impl Fn(usize, &T) -> bool) {
        for (k, r) in results.iter().enumerate() {
            match &r.result {
                Ok(v) if ok(k, v) => {}
                Ok(_) => self.m.verified = false,
                Err(e) => {
                    self.m.errors += 1;
                    self.m.verified = false;
                    tracing::warn!(error = %e, "key failed");
                }
            }
        }
    }
}

impl CellRun<'_> {
    /// Name of object `i` of `set` in this cell.
    pub fn key(&self, set: &str, i: usize) -> String {
        let c = self.cell;
        format!(
            "{}/{}x{}/{set}/L{:02}/B{:05}",
            self.run_id,
            c.value_size,
            c.batch,
            i % self.layers,
            i / self.layers
        )
    }

    fn value(&self, i: usize) -> &[u8] {
        let s = self.cell.value_size as usize;
        &self.src.as_slice()[i * s..(i + 1) * s]
    }

    fn slice(base: u64, i: usize, s: u64) -> BufferSlice {
        BufferSlice::new(base + i as u64 * s, s)
    }

    /// Object `i` in the zero-copy source (GPU memory with `--gpu`).
    fn src_slice(&self, i: usize, s: u64) -> BufferSlice {
        let base = self.gpu.as_ref().map_or(self.src.addr(), |g| g.src.ptr());
        Self::slice(base, i, s)
    }

    fn chunks(&self) -> Vec<std::ops::Range<usize>> {
        (0..self.keys)
            .step_by(self.cell.batch)
            .map(|a| a..(a + self.cell.batch).min(self.keys))
            .collect()
    }

    fn names(&self, single: &'static str, batch: &'static str) -> &'static str {
        if self.cell.batch == 1 {
            single
        } else {
            batch
        }
    }

    /// Runs the six operations; `after_get_into` runs right after the zero-copy reads (the
    /// engine reference is measured there, on the same objects and processes).
    pub async fn run(&mut self, mut after_get_into: impl FnMut(&Row)) -> Vec<Row> {
        let (s, b) = (self.cell.value_size, self.cell.batch);
        let mut rows = Vec::new();
        rows.push(self.put().await.row(self.names("put", "batch_put"), s, b));
        rows.push(self.get().await.row(self.names("get", "batch_get"), s, b));
        let before = transfer_engine::gpu::stats();
        let pf = self
            .put_from()
            .await
            .row(self.names("put_from", "batch_put_from"), s, b);
        self.gpu_line(&pf, &before);
        rows.push(pf);
        let before = transfer_engine::gpu::stats();
        let gi = self
            .get_into()
            .await
            .row(self.names("get_into", "batch_get_into"), s, b);
        self.gpu_line(&gi, &before);
        after_get_into(&gi);
        rows.push(gi);
        rows.push(
            self.exists()
                .await
                .row(self.names("exists", "batch_exists"), s, b),
        );
        rows.push(
            self.remove()
                .await
                .row(self.names("remove", "batch_remove"), s, b),
        );
        rows
    }

    /// With `--gpu`: this process's staging counters for the row, on stderr (the JSON on
    /// stdout stays one object).
    fn gpu_line(&self, row: &Row, before: &transfer_engine::gpu::GpuStats) {
        if self.gpu.is_none() {
            return;
        }
        let g = transfer_engine::gpu::stats().since(before);
        eprintln!(
            "  gpu staging, {} {} x {}: {}",
            row.op,
            self.cell.value_size,
            self.cell.batch,
            g.summary()
        );
    }

    async fn put(&self) -> Measured {
        let mut acc = Acc::new();
        for r in self.chunks() {
            let keys: Vec<String> = r.clone().map(|i| self.key("put", i)).collect();
            let t = Instant::now();
            let res = if self.cell.batch == 1 {
                vec![self.client.put(&keys[0], self.value(r.start)).await]
            } else {
                let items: Vec<(&str, &[u8])> = keys
                    .iter()
                    .zip(r.clone())
                    .map(|(k, i)| (k.as_str(), self.value(i)))
                    .collect();
                self.client.batch_put_with(&items, self.replicate).await
            };
            acc.call(
                t.elapsed(),
                keys.len(),
                self.cell.value_size * keys.len() as u64,
            );
            acc.check(&res, |_, n| *n == self.cell.value_size);
        }
        acc.m
    }

    async fn get(&self) -> Measured {
        let mut acc = Acc::new();
        for _ in 0..self.read_rounds {
            for r in self.chunks() {
                let keys: Vec<String> = r.clone().map(|i| self.key("put", i)).collect();
                let t = Instant::now();
                let res = if self.cell.batch == 1 {
                    vec![self.client.get(&keys[0]).await]
                } else {
                    self.client.batch_get(&keys).await
                };
                acc.call(
                    t.elapsed(),
                    keys.len(),
                    self.cell.value_size * keys.len() as u64,
                );
                acc.check(&res, |k, v| v.as_slice() == self.value(r.start + k));
            }
        }
        acc.m
    }

    async fn put_from(&self) -> Measured {
        let mut acc = Acc::new();
        let s = self.cell.value_size;
        for r in self.chunks() {
            let items: Vec<(String, BufferSlice)> = r
                .clone()
                .map(|i| (self.key("pf", i), self.src_slice(i, s)))
                .collect();
            let t = Instant::now();
            let res = if self.cell.batch == 1 {
                vec![self.client.put_from(&items[0].0, items[0].1).await]
            } else {
                self.client.batch_put_from(&items).await
            };
            acc.call(t.elapsed(), items.len(), s * items.len() as u64);
            acc.check(&res, |_, n| *n == s);
        }
        acc.m
    }

    async fn get_into(&mut self) -> Measured {
        let mut acc = Acc::new();
        let s = self.cell.value_size;
        let bytes = self.keys * s as usize;
        let dst_base = self.gpu.as_ref().map_or(self.dst.addr(), |g| g.dst.ptr());
        for _ in 0..self.read_rounds {
            self.dst.as_mut_slice()[..bytes].fill(0);
            if let Some(g) = self.gpu.as_mut() {
                if g.dst.write(0, &self.dst.as_slice()[..bytes]).is_err() {
                    acc.m.verified = false;
                }
            }
            for r in self.chunks() {
                let items: Vec<(String, BufferSlice)> = r
                    .clone()
                    .map(|i| (self.key("pf", i), Self::slice(dst_base, i, s)))
                    .collect();
                let t = Instant::now();
                let res = if self.cell.batch == 1 {
                    vec![self.client.get_into(&items[0].0, items[0].1).await]
                } else {
                    self.client.batch_get_into(&items).await
                };
                acc.call(t.elapsed(), items.len(), s * items.len() as u64);
                acc.check(&res, |_, n| *n == s);
            }
            if let Some(g) = self.gpu.as_ref() {
                // The bytes read into GPU memory come back to the host for the check.
                if g.dst
                    .read(0, &mut self.dst.as_mut_slice()[..bytes])
                    .is_err()
                {
                    acc.m.verified = false;
                }
            }
            if self.dst.as_slice()[..bytes] != self.src.as_slice()[..bytes] {
                acc.m.verified = false;
            }
        }
        acc.m
    }

    async fn exists(&self) -> Measured {
        let mut acc = Acc::new();
        for r in self.chunks() {
            let keys: Vec<String> = r.clone().map(|i| self.key("put", i)).collect();
            let t = Instant::now();
            let res = if self.cell.batch == 1 {
                vec![self.client.exists(&keys[0]).await]
            } else {
                self.client.batch_exists(&keys).await
            };
            acc.call(t.elapsed(), keys.len(), 0);
            acc.check(&res, |_, e| *e);
        }
        acc.m
    }

    async fn remove(&self) -> Measured {
        let s = self.cell.value_size;
        // Objects written only to be removed (never read, so no read lease delays removal).
        let items: Vec<(String, BufferSlice)> = (0..self.keys)
            .map(|i| (self.key("rm", i), self.src_slice(i, s)))
            .collect();
        let mut acc = Acc::new();
        for chunk in items.chunks(256) {
            acc.check(&self.client.batch_put_from(chunk).await, |_, _| true);
        }
        for r in self.chunks() {
            let keys: Vec<&str> = items[r.clone()].iter().map(|(k, _)| k.as_str()).collect();
            let t = Instant::now();
            let res = if self.cell.batch == 1 {
                vec![self.client.remove(keys[0]).await]
            } else {
                self.client.batch_remove(&keys).await
            };
            acc.call(t.elapsed(), keys.len(), 0);
            acc.check(&res, |_, _| true);
        }
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        for chunk in keys.chunks(1024) {
            acc.check(&self.client.batch_exists(chunk).await, |_, e| !*e);
        }
        acc.m
    }

    /// Drops this cell's objects (force: ignores read leases), so the pool holds one cell.
    pub async fn cleanup(&self) {
        let keys: Vec<String> = ["put", "pf"]
            .iter()
            .flat_map(|set| (0..self.keys).map(move |i| self.key(set, i)))
            .collect();
        for chunk in keys.chunks(4096) {
            if let Err(code) = self
                .client
                .master()
                .batch_remove(chunk.to_vec(), true)
                .await
            {
                tracing::warn!(%code, "cleanup after a cell failed");
            }
        }
    }
}
