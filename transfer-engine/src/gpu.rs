//! Device (GPU) memory as the engine's transports reach it.
//!
//! Memory registered as [`Location::Cuda`] is checked against the driver at registration
//! (every byte of the range must belong to that device), and the TCP and memcpy transports
//! move its bytes with the driver's copies: a TCP WRITE from GPU memory is staged into host
//! memory before it is sent, a READ into GPU memory is received into host memory and copied
//! up, and a peer's request for an exported GPU range is served the same way. RDMA reaches GPU
//! memory only through GPUDirect RDMA (the NIC registers the device range itself), which needs
//! `nvidia-peermem` and is not staged.
//!
//! The application finishes writing a GPU buffer (synchronises its stream) before it hands the
//! buffer to a transfer, and does not touch a buffer a transfer is filling until it completes.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub use mooncake_sys::cuda::{cuda, CudaError, DeviceBuffer};
use mooncake_sys::cuda::{Cuda, PinnedBuffer};
use parking_lot::Mutex;

use crate::registry::Region;
use crate::{Location, TransferError};

/// The driver, if this process can use CUDA.
fn driver() -> Result<&'static Cuda, String> {
    cuda().map_err(|e| e.to_string())
}

/// Whether memory at `location` can be copied by this process (host memory always; device
/// memory when the CUDA driver loaded).
pub fn reachable(location: Location) -> bool {
    match location {
        Location::Host => true,
        Location::Cuda(_) => cuda().is_ok(),
    }
}

/// Where the memory at `ptr` lives: on the CUDA device the driver names, else the host (also
/// on hosts without CUDA). The first call loads the driver (fails fast on hosts without one;
/// the outcome is kept). An error when the driver is there but cannot tell: registering such
/// memory as host memory could hand a device address to a socket or a CPU copy.
pub fn location_of(ptr: u64) -> Result<Location, TransferError> {
    let Ok(cuda) = cuda() else {
        return Ok(Location::Host);
    };
    match cuda.memory_of(ptr) {
        Ok(Some(d)) => Ok(Location::Cuda(d)),
        Ok(None) => Ok(Location::Host),
        Err(e) => Err(TransferError::InvalidArgument(format!(
            "cannot tell whether {ptr:#x} is GPU memory: {e}"
        ))),
    }
}

/// The PCI address the driver gives CUDA device `device` (`0000:3B:00.0`), for placing it in
/// the PCI topology; `Err` says why not (no driver, no such device).
pub fn pci_bus_id(device: u32) -> Result<String, String> {
    driver()?.pci_bus_id(device).map_err(|e| e.to_string())
}

/// Most device allocations one registration may span.
const MAX_SPANNED_ALLOCATIONS: usize = 1 << 16;

/// Refuses a region claimed to be on a device unless the driver places every byte of it in
/// device allocations of that device with no gap between them (one allocation, or adjacent
/// mappings of one reserved range).
pub fn check_region(region: &Region) -> Result<(), TransferError> {
    let Location::Cuda(device) = region.location else {
        return Ok(());
    };
    if region.len == 0 {
        return Ok(()); // the registry refuses it with its own error
    }
    let cuda = cuda().map_err(|e| {
        TransferError::InvalidArgument(format!(
            "cannot register memory of CUDA device {device}: {e}"
        ))
    })?;
    let refuse = |why: String| {
        TransferError::InvalidArgument(format!(
            "memory [{:#x}, +{}) registered as CUDA device {device}: {why}",
            region.addr, region.len
        ))
    };
    let end = region.addr.saturating_add(region.len);
    let mut at = region.addr;
    for _ in 0..MAX_SPANNED_ALLOCATIONS {
        let (d, start, size) = cuda.allocation_of(at).ok_or_else(|| {
            let what = if at == region.addr {
                "its first byte"
            } else {
                "a byte inside it"
            };
            refuse(format!("{what} ({at:#x}) is not device memory"))
        })?;
        if d != device {
            return Err(refuse(format!("byte {at:#x} is on device {d}")));
        }
        let next = start.saturating_add(size);
        if next <= at {
            return Err(refuse(format!(
                "the driver reports an empty allocation at {at:#x}"
            )));
        }
        if next >= end {
            return Ok(());
        }
        at = next;
    }
    Err(refuse(format!(
        "it spans more than {MAX_SPANNED_ALLOCATIONS} allocations"
    )))
}

/// Process-wide counters of the GPU staging path (for benchmarks and diagnosis).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// Pinning attempts (staging pool misses), including ones that fell back to heap memory.
    pub pinned_allocs: u64,
    /// Time spent on them, µs.
    pub pinned_alloc_us: u64,
    /// Groups of copies run with one driver wait.
    pub copy_groups: u64,
    /// Copies in those groups.
    pub copies: u64,
    /// Bytes copied.
    pub copy_bytes: u64,
    /// Time from queueing a group to the end of its wait, µs.
    pub copy_us: u64,
}

impl GpuStats {
    /// One line for benchmark output: pinned allocations, copy groups and their waits.
    pub fn summary(&self) -> String {
        let groups = self.copy_groups.max(1) as f64;
        format!(
            "{} pinned allocs ({} us), {} copy groups of {:.1} copies, {:.1} MiB, {} us waiting ({:.1} us per group)",
            self.pinned_allocs,
            self.pinned_alloc_us,
            self.copy_groups,
            self.copies as f64 / groups,
            self.copy_bytes as f64 / (1 << 20) as f64,
            self.copy_us,
            self.copy_us as f64 / groups,
        )
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &GpuStats) -> GpuStats {
        GpuStats {
            pinned_allocs: self.pinned_allocs - earlier.pinned_allocs,
            pinned_alloc_us: self.pinned_alloc_us - earlier.pinned_alloc_us,
            copy_groups: self.copy_groups - earlier.copy_groups,
            copies: self.copies - earlier.copies,
            copy_bytes: self.copy_bytes - earlier.copy_bytes,
            copy_us: self.copy_us - earlier.copy_us,
        }
    }
}

static STATS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

fn count(i: usize, v: u64) {
    STATS[i].fetch_add(v, Ordering::Relaxed);
}

/// The counters so far.
pub fn stats() -> GpuStats {
    let v = |i: usize| STATS[i].load(Ordering::Relaxed);
    GpuStats {
        pinned_allocs: v(0),
        pinned_alloc_us: v(1),
        copy_groups: v(2),
        copies: v(3),
        copy_bytes: v(4),
        copy_us: v(5),
    }
}

/// Staging buffers are pinned in sizes that are powers of two, at least this.
const MIN_STAGING: usize = 64 << 10;
/// Pinned staging memory kept for reuse at most (pinning costs milliseconds).
const MAX_POOLED: usize = 256 << 20;

#[derive(Default)]
struct Pool {
    by_size: HashMap<usize, Vec<PinnedBuffer>>,
    bytes: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

enum Mem {
    Pinned(PinnedBuffer),
    Heap(Vec<u8>),
}

/// Host memory that GPU bytes pass through: pinned when the driver gives it (reused from a
/// pool), else ordinary heap memory. Dereferences to exactly the length asked for.
pub struct Staging {
    mem: Option<Mem>,
    len: usize,
}

impl Staging {
    /// Whether the buffer is pinned (else heap memory, which the driver copies through its
    /// own staging).
    pub fn is_pinned(&self) -> bool {
        matches!(self.mem, Some(Mem::Pinned(_)))
    }

    /// A staging buffer of `len` bytes for copies with `device` (contents unspecified but
    /// initialised). Pinned memory is allocated under that device's context, so a process
    /// working with one GPU never creates a context on another.
    pub fn new(device: u32, len: usize) -> Staging {
        let size = len.next_power_of_two().max(MIN_STAGING);
        let pooled = POOL.lock().as_mut().and_then(|p| {
            let b = p.by_size.get_mut(&size)?.pop()?;
            p.bytes -= size;
            Some(b)
        });
        let mem = match pooled {
            Some(b) => Mem::Pinned(b),
            None => {
                let t = Instant::now();
                let pinned = cuda().and_then(|c| c.alloc_pinned(device, size));
                count(0, 1);
                count(1, t.elapsed().as_micros() as u64);
                match pinned {
                    Ok(b) => Mem::Pinned(b),
                    Err(e) => {
                        tracing::debug!(error = %e, "pinned staging unavailable; using heap memory");
                        Mem::Heap(vec![0; len])
                    }
                }
            }
        };
        Staging {
            mem: Some(mem),
            len,
        }
    }
}

impl Deref for Staging {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.mem {
            Some(Mem::Pinned(b)) => &b[..self.len],
            Some(Mem::Heap(v)) => &v[..self.len],
            None => &[],
        }
    }
}

impl DerefMut for Staging {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.mem {
            Some(Mem::Pinned(b)) => &mut b[..self.len],
            Some(Mem::Heap(v)) => &mut v[..self.len],
            None => &mut [],
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(Mem::Pinned(b)) = self.mem.take() {
            let mut pool = POOL.lock();
            let p = pool.get_or_insert_with(Pool::default);
            if p.bytes + b.len() <= MAX_POOLED {
                p.bytes += b.len();
                p.by_size.entry(b.len()).or_default().push(b);
            }
        }
    }
}

/// Pinned staging made ready per device before its first transfer: (buffer size, count),
/// 82 MiB in all: a 64 MiB batch striped in 1 MiB parts, and the 4 MiB receive arenas of
/// 4 TCP connections streaming GPU-bound answers at once (each connection holds its arena
/// only during such a burst). Pinning costs time in proportion to the bytes, which a cold
/// pool would otherwise charge to the first large GPU transfers (measured on an H200 host
/// with `mooncake-bench store --gpu`: batch_put_from of 1 MiB x 64 ran at 0.24 of the
/// host-memory rate with no warm-up, 0.53 with 32 MiB).
const PREWARM: [(usize, usize); 3] = [(1 << 20, 64), (MIN_STAGING, 32), (4 << 20, 4)];

/// Fills the staging pool for `device` once per process (later calls return at once).
pub fn prewarm(device: u32) {
    static WARMED: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    {
        let mut warmed = WARMED.lock();
        if warmed.contains(&device) {
            return;
        }
        warmed.push(device);
    }
    // Held together so that each is a distinct allocation; dropping returns them to the pool.
    let buffers: Vec<Staging> = PREWARM
        .iter()
        .flat_map(|&(size, count)| (0..count).map(move |_| Staging::new(device, size)))
        .collect();
    drop(buffers);
}

/// Copies `len` bytes of device memory at `src` into a new staging buffer.
///
/// # Safety
/// `[src, +len)` lies in a registered region of device `device`, kept valid while registered.
pub unsafe fn read_device(device: u32, src: u64, len: usize) -> Result<Staging, String> {
    // SAFETY: forwarded.
    unsafe { read_device_many(&[(device, src, len)]) }
        .pop()
        .unwrap_or_else(|| Err("no copy was made".into()))
}

/// Copies each `(device, src, len)` into a new staging buffer, one wait per device for all
/// of its copies; one result per input, in order.
///
/// # Safety
/// As for [`read_device`], for every range.
pub unsafe fn read_device_many(reads: &[(u32, u64, usize)]) -> Vec<Result<Staging, String>> {
    let mut out: Vec<Staging> = reads.iter().map(|r| Staging::new(r.0, r.2)).collect();
    let copies: Vec<GpuCopy> = reads
        .iter()
        .zip(out.iter_mut())
        .map(|(&(device, src, len), s)| GpuCopy {
            dst: s.as_mut_ptr() as u64,
            dst_loc: Location::Host,
            src,
            src_loc: Location::Cuda(device),
            len,
        })
        .collect();
    // SAFETY: the caller vouches for the device ranges; each staging buffer is a live,
    // exclusively owned host buffer of its copy's length.
    let done = unsafe { copy_many(&copies) };
    out.into_iter()
        .zip(done)
        .map(|(s, d)| d.map(|()| s))
        .collect()
}

/// Copies each `(device, dst, bytes)` to device memory, one wait per device for all of its
/// copies; one result per input, in order.
///
/// # Safety
/// As for [`write_device`], for every range; the ranges do not overlap.
pub unsafe fn write_device_many(writes: &[(u32, u64, &[u8])]) -> Vec<Result<(), String>> {
    let copies: Vec<GpuCopy> = writes
        .iter()
        .map(|&(device, dst, bytes)| GpuCopy {
            dst,
            dst_loc: Location::Cuda(device),
            src: bytes.as_ptr() as u64,
            src_loc: Location::Host,
            len: bytes.len(),
        })
        .collect();
    // SAFETY: the caller vouches for the device ranges; the sources are live host slices.
    unsafe { copy_many(&copies) }
}

/// Copies `src` into device memory at `dst`.
///
/// # Safety
/// `[dst, +src.len())` lies in a registered region of device `device`, kept valid and
/// writable by transfers while registered.
pub unsafe fn write_device(device: u32, dst: u64, src: &[u8]) -> Result<(), String> {
    // SAFETY: forwarded.
    unsafe { write_device_many(&[(device, dst, src)]) }
        .pop()
        .unwrap_or_else(|| Err("no copy was made".into()))
}

/// One copy where at least one side is device memory.
#[derive(Clone, Copy, Debug)]
pub struct GpuCopy {
    /// Destination address.
    pub dst: u64,
    /// Where the destination lives.
    pub dst_loc: Location,
    /// Source address.
    pub src: u64,
    /// Where the source lives.
    pub src_loc: Location,
    /// Bytes.
    pub len: usize,
}

impl GpuCopy {
    /// The device whose context runs the copy (the destination's, else the source's).
    fn device(&self) -> Option<u32> {
        match (self.dst_loc, self.src_loc) {
            (Location::Cuda(d), _) | (Location::Host, Location::Cuda(d)) => Some(d),
            (Location::Host, Location::Host) => None,
        }
    }
}

/// Runs `n` rounds of driver copies on `device`, each round's host work overlapping the
/// previous round's copies (see `mooncake_sys::cuda::Cuda::copy_rounds`: `round(k)` returns
/// round k's `(dst, src, len)` copies, `landed(k)` runs once they have landed). Counted in
/// [`stats`] as one copy group per round, the time being the whole call's.
///
/// # Safety
/// As for [`copy_many`], for each round's copies, which stay valid until their `landed` call.
pub unsafe fn copy_rounds(
    device: u32,
    n: usize,
    mut round: impl FnMut(usize) -> Vec<(u64, u64, usize)>,
    landed: impl FnMut(usize),
) -> Result<(), String> {
    let driver = driver()?;
    let t = Instant::now();
    let (mut copies, mut bytes) = (0u64, 0u64);
    // SAFETY: forwarded.
    let r = unsafe {
        driver.copy_rounds(
            device,
            n,
            |k| {
                let c = round(k);
                copies += c.len() as u64;
                bytes += c.iter().map(|c| c.2 as u64).sum::<u64>();
                c
            },
            landed,
        )
    };
    count(2, n as u64);
    count(3, copies);
    count(4, bytes);
    count(5, t.elapsed().as_micros() as u64);
    r.map_err(|e| e.to_string())
}

/// Runs `copies`, one driver wait per device for all of its copies; one result per copy, in
/// order.
///
/// # Safety
/// Every range lies in a registered region at its location, kept valid while registered; no
/// destination overlaps another copy's ranges.
pub unsafe fn copy_many(copies: &[GpuCopy]) -> Vec<Result<(), String>> {
    let driver = match driver() {
        Ok(d) => d,
        Err(e) => return copies.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut devices: Vec<u32> = copies.iter().filter_map(GpuCopy::device).collect();
    devices.sort_unstable();
    devices.dedup();
    let mut outcome: HashMap<u32, Result<(), String>> = HashMap::new();
    for device in devices {
        let batch: Vec<(u64, u64, usize)> = copies
            .iter()
            .filter(|c| c.device() == Some(device))
            .map(|c| (c.dst, c.src, c.len))
            .collect();
        let t = Instant::now();
        // SAFETY: the caller vouches for every range.
        let r = unsafe { driver.copy_many(device, &batch) }.map_err(|e| e.to_string());
        count(2, 1);
        count(3, batch.len() as u64);
        count(4, batch.iter().map(|c| c.2 as u64).sum());
        count(5, t.elapsed().as_micros() as u64);
        outcome.insert(device, r);
    }
    copies
        .iter()
        .map(|c| match c.device() {
            Some(d) => outcome
                .get(&d)
                .cloned()
                .unwrap_or_else(|| Err("no copy was made".into())),
            None => Err("no device memory in this copy".into()),
        })
        .collect()
}
