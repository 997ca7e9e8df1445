//! Measuring one (op, block size, batch size) cell with several threads.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use transfer_engine::gpu::DeviceBuffer;
use transfer_engine::{
    AlignedBuffer, Engine, Location, OpCode, SegmentHandle, TransferRequest, TransferState,
};

use super::baseline::Window;
use super::CellResult;

/// The initiator's buffer: host memory, or GPU memory (`--gpu`).
enum LocalMem {
    Host(AlignedBuffer),
    Gpu(DeviceBuffer),
}

impl LocalMem {
    fn addr(&self) -> u64 {
        match self {
            LocalMem::Host(b) => b.addr(),
            LocalMem::Gpu(d) => d.ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            LocalMem::Host(b) => b.len(),
            LocalMem::Gpu(d) => d.len(),
        }
    }
}

/// Buffers and the opened target, shared by every cell.
pub struct Setup {
    engine: Engine,
    segment: SegmentHandle,
    target_base: u64,
    target_len: u64,
    local: LocalMem,
    threads: usize,
    /// Bytes each thread cycles through on each side, at most.
    footprint: Option<u64>,
}

impl Setup {
    /// Registers `buffer` bytes of local memory (on CUDA device 0 with `gpu`) and opens the
    /// target.
    pub fn new(
        engine: &Engine,
        target: &str,
        buffer: u64,
        threads: usize,
        footprint: Option<u64>,
        gpu: bool,
    ) -> anyhow::Result<Self> {
        let local = if gpu {
            let mut d = transfer_engine::gpu::cuda()?.alloc(0, buffer as usize)?;
            d.write(0, &vec![1u8; buffer as usize])?;
            LocalMem::Gpu(d)
        } else {
            let mut b = AlignedBuffer::new(buffer as usize)?;
            // Touch every page now so page faults do not land in the first cell.
            b.as_mut_slice().fill(1);
            LocalMem::Host(b)
        };
        let location = match &local {
            LocalMem::Host(_) => Location::Host,
            LocalMem::Gpu(d) => Location::Cuda(d.device()),
        };
        // SAFETY: `local` lives in the returned Setup, whose Drop unregisters it before the
        // buffer is freed.
        unsafe { engine.register_memory(local.addr() as *mut u8, local.len(), location)? };
        let segment = engine
            .open_segment(target)
            .with_context(|| format!("opening target segment {target}"))?;
        let desc = engine.segment_descriptor(segment)?;
        let Some(region) = desc.buffers.iter().max_by_key(|b| b.len) else {
            bail!("target {target} exports no memory");
        };
        Ok(Setup {
            engine: engine.clone(),
            segment,
            target_base: region.addr,
            target_len: region.len,
            local,
            threads,
            footprint,
        })
    }

    /// Slots of `block` bytes each thread cycles through: (local, target).
    fn slots(&self, block: u64) -> (u64, u64) {
        let cap = self.footprint.map_or(u64::MAX, |f| (f / block).max(1));
        let per_local = self.local.len() as u64 / self.threads as u64;
        let per_target = self.target_len / self.threads as u64;
        (
            (per_local / block).clamp(1, cap),
            (per_target / block).clamp(1, cap),
        )
    }

    fn requests(&self, t: usize, op: OpCode, block: u64, batch: usize) -> Vec<TransferRequest> {
        let per_local = self.local.len() as u64 / self.threads as u64;
        let per_target = self.target_len / self.threads as u64;
        let (slots_local, slots_target) = self.slots(block);
        (0..batch as u64)
            .map(|k| TransferRequest {
                op,
                local_addr: self.local.addr() + t as u64 * per_local + (k % slots_local) * block,
                target: self.segment,
                target_offset: self.target_base
                    + t as u64 * per_target
                    + (k % slots_target) * block,
                len: block,
            })
            .collect()
    }

    /// Bytes of memory one side of a cell cycles through (all threads together).
    pub fn footprint(&self, block: u64, batch: usize) -> u64 {
        let (local, target) = self.slots(block);
        let slots = local.min(target);
        (batch as u64).min(slots) * block * self.threads as u64
    }

    /// The first `len` bytes of the local buffer, for the same-memory baseline stream (none
    /// for GPU memory, which a socket cannot read).
    pub fn local_window(&self, len: u64) -> Option<Window> {
        match &self.local {
            LocalMem::Host(b) => Some(Window {
                ptr: b.addr() as usize,
                len: (len as usize).min(b.len()),
            }),
            LocalMem::Gpu(_) => None,
        }
    }

    /// Runs engine batches of one cell for `duration` (after one warm-up batch if asked).
    pub fn run_engine(
        &self,
        op: OpCode,
        block: u64,
        batch: usize,
        duration: Duration,
        warm_up: bool,
    ) -> anyhow::Result<Raw> {
        if block * self.threads as u64 > self.target_len.min(self.local.len() as u64) {
            bail!(
                "block {block} does not fit the buffers of {} threads",
                self.threads
            );
        }
        let barrier = Barrier::new(self.threads);
        let per_thread = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.threads)
                .map(|t| {
                    let reqs = self.requests(t, op, block, batch);
                    let barrier = &barrier;
                    s.spawn(move || run_thread(&self.engine, &reqs, barrier, duration, warm_up))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let mut total = Raw::new()?;
        for r in per_thread {
            total.hist.add(&r.hist)?;
            total.bytes += r.bytes;
            total.ops += r.ops;
            total.errors += r.errors;
            total.secs = total.secs.max(r.secs);
        }
        Ok(total)
    }
}

/// Counters of engine batches.
pub struct Raw {
    /// Batch latencies in microseconds.
    pub hist: Histogram<u64>,
    /// Bytes completed.
    pub bytes: u64,
    /// Requests submitted.
    pub ops: u64,
    /// Requests not completed.
    pub errors: u64,
    /// Wall time.
    pub secs: f64,
}

impl Raw {
    /// Empty counters.
    pub fn new() -> anyhow::Result<Raw> {
        Ok(Raw {
            hist: Histogram::new(3)?,
            bytes: 0,
            ops: 0,
            errors: 0,
            secs: 0.0,
        })
    }

    /// Adds a later run of the same cell.
    pub fn merge(&mut self, other: Raw) -> anyhow::Result<()> {
        self.hist.add(&other.hist)?;
        self.bytes += other.bytes;
        self.ops += other.ops;
        self.errors += other.errors;
        self.secs += other.secs;
        Ok(())
    }

    /// GB/s.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e9
    }

    /// The cell's result row.
    pub fn result(&self, op: OpCode, block: u64, batch: usize) -> CellResult {
        CellResult {
            op: match op {
                OpCode::Read => "read".into(),
                OpCode::Write => "write".into(),
            },
            block_size: block,
            batch,
            gbps: self.gbps(),
            ops_per_sec: self.ops as f64 / self.secs,
            p50_us: self.hist.value_at_quantile(0.5) as f64,
            p99_us: self.hist.value_at_quantile(0.99) as f64,
            errors: self.errors,
            baseline_gbps: None,
            ratio: None,
            same_memory_gbps: None,
            ratio_same_memory: None,
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.engine.unregister_memory(self.local.addr() as *mut u8);
    }
}

fn one_batch(engine: &Engine, reqs: &[TransferRequest]) -> anyhow::Result<(u64, u64)> {
    let b = engine.allocate_batch(reqs.len())?;
    engine.submit(b, reqs)?;
    let st = engine.wait(b)?;
    engine.free_batch(b)?;
    let bytes = st.iter().map(|s| s.bytes).sum();
    let errors = st
        .iter()
        .filter(|s| s.state != TransferState::Completed)
        .count() as u64;
    Ok((bytes, errors))
}

fn run_thread(
    engine: &Engine,
    reqs: &[TransferRequest],
    barrier: &Barrier,
    duration: Duration,
    warm_up: bool,
) -> anyhow::Result<Raw> {
    if warm_up {
        one_batch(engine, reqs)?; // connections, caches
    }
    barrier.wait();
    let mut r = Raw::new()?;
    let start = Instant::now();
    loop {
        let t0 = Instant::now();
        let (bytes, errors) = one_batch(engine, reqs)?;
        r.hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        r.bytes += bytes;
        r.errors += errors;
        r.ops += reqs.len() as u64;
        if start.elapsed() >= duration {
            break;
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    Ok(r)
}
