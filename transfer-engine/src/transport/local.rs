//! The local transport: requests whose target is this engine's own segment, served by memcpy
//! (with the same range check a remote target would apply); device memory on either side is
//! copied by the CUDA driver.

use std::sync::Arc;

use crate::batch::CompletionSink;
use crate::descriptor::SegmentDescriptor;
use crate::registry::MemoryRegistry;
use crate::transport::parallel_copy::{CopyPool, HostCopy};
use crate::transport::Transport;
use crate::{gpu, Location, OpCode, TransferRequest, TransferStatus};

/// Copies between registered regions of one engine.
pub struct LocalTransport {
    registry: Arc<MemoryRegistry>,
    copier: Arc<CopyPool>,
}

impl LocalTransport {
    /// A transport over `registry` whose large batches run on `copier`.
    pub fn new(registry: Arc<MemoryRegistry>, copier: Arc<CopyPool>) -> Self {
        LocalTransport { registry, copier }
    }

    /// The copy threads (the engine's, shared with its other memcpy transports).
    pub fn copy_pool(&self) -> &CopyPool {
        &self.copier
    }
}

impl Transport for LocalTransport {
    fn name(&self) -> &'static str {
        "local"
    }

    fn reaches(&self, location: Location) -> bool {
        gpu::reachable(location)
    }

    fn submit(
        &self,
        _target: &Arc<SegmentDescriptor>,
        items: Vec<(usize, TransferRequest)>,
        sink: &CompletionSink,
    ) {
        let devices = self.registry.has_device_memory();
        let mut copies = Vec::with_capacity(items.len());
        let (failed, device) = self.registry.with(|set| {
            let failed: Vec<_> = items
                .into_iter()
                .filter_map(|(i, r)| {
                    let Some(target) = set.find(r.target_offset, r.len) else {
                        return Some((
                            i,
                            TransferStatus::failed(format!(
                                "range [{:#x}, +{}) is not inside one registered buffer of this segment",
                                r.target_offset, r.len
                            )),
                        ));
                    };
                    // The engine checked the local range; its region gives its location (no
                    // second lookup while only host memory is registered).
                    let local = if devices {
                        set.find(r.local_addr, r.len)
                            .map_or(Location::Host, |l| l.location)
                    } else {
                        Location::Host
                    };
                    copies.push(Copy::of(i, &r, r.target_offset, target.location, local));
                    None
                })
                .collect();
            // Host copies run under the registry's read lock, so unregistering a region waits
            // for those in flight (and a registration waits for the largest copy in flight).
            // SAFETY: both ranges of every copy lie inside registered regions (the engine
            // checked the local one, the lookup above the target one), which their owner keeps
            // valid while registered.
            (failed, unsafe { run_host_copies(copies, sink, &self.copier) })
        });
        sink.finish_many(failed);
        // SAFETY: as above. The driver's copies run outside the lock (they wait for the
        // device), so unregistering does not wait for them: as for peers' transfers, an owner
        // must not unregister memory that transfers it submitted still use.
        unsafe { run_device_copies(device, sink) };
    }
}

/// One request resolved to a source and a destination address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Copy {
    /// The request's index in its batch.
    pub index: usize,
    /// Source address and where it lives.
    pub src: u64,
    pub src_loc: Location,
    /// Destination address and where it lives.
    pub dst: u64,
    pub dst_loc: Location,
    /// Bytes.
    pub len: u64,
}

impl Copy {
    /// The copy request `r` makes when its remote bytes are at `remote` (at `remote_loc`) and
    /// its local bytes at `r.local_addr` (at `local_loc`).
    pub fn of(
        index: usize,
        r: &TransferRequest,
        remote: u64,
        remote_loc: Location,
        local_loc: Location,
    ) -> Copy {
        let (src, src_loc, dst, dst_loc) = match r.op {
            OpCode::Read => (remote, remote_loc, r.local_addr, local_loc),
            OpCode::Write => (r.local_addr, local_loc, remote, remote_loc),
        };
        Copy {
            index,
            src,
            src_loc,
            dst,
            dst_loc,
            len: r.len,
        }
    }

    /// The addresses and length alone.
    pub fn plain(&self) -> HostCopy {
        HostCopy {
            src: self.src,
            dst: self.dst,
            len: self.len,
        }
    }

    /// The copy for the CUDA driver.
    pub fn gpu(&self) -> gpu::GpuCopy {
        gpu::GpuCopy {
            dst: self.dst,
            dst_loc: self.dst_loc,
            src: self.src,
            src_loc: self.src_loc,
            len: self.len as usize,
        }
    }
}

/// Runs the host-to-host copies of `copies` by memcpy (a large batch spread over `copier`'s
/// threads), finishing each through `sink`, and returns the others (those touching device
/// memory).
///
/// # Safety
/// Both ranges of every copy lie in memory that stays valid (at its location) for the call.
pub(crate) unsafe fn run_host_copies(
    copies: Vec<Copy>,
    sink: &CompletionSink,
    copier: &CopyPool,
) -> Vec<Copy> {
    let (host, device): (Vec<Copy>, Vec<Copy>) = copies
        .into_iter()
        .partition(|c| c.src_loc == Location::Host && c.dst_loc == Location::Host);
    let plain: Vec<HostCopy> = host.iter().map(Copy::plain).collect();
    // SAFETY: the caller guarantees both ranges of every copy.
    unsafe { copier.run(&plain) };
    sink.finish_many(
        host.iter()
            .map(|c| (c.index, TransferStatus::completed(c.len))),
    );
    device
}

/// Runs copies that touch device memory through the CUDA driver together, with one wait,
/// finishing each through `sink`; overlapping ranges fail (the driver copies only disjoint
/// ones).
///
/// # Safety
/// Both ranges of every copy lie in memory that stays valid (at its location) for the call.
pub(crate) unsafe fn run_device_copies(copies: Vec<Copy>, sink: &CompletionSink) {
    let mut gpu_copies: Vec<(usize, u64, gpu::GpuCopy)> = Vec::new();
    let mut overlapping = Vec::new();
    for c in copies {
        if c.src < c.dst.saturating_add(c.len) && c.dst < c.src.saturating_add(c.len) {
            overlapping.push((
                c.index,
                TransferStatus::failed(
                    "source and destination overlap: the GPU driver copies only disjoint ranges",
                ),
            ));
            continue;
        }
        gpu_copies.push((c.index, c.len, c.gpu()));
    }
    sink.finish_many(overlapping);
    if gpu_copies.is_empty() {
        return;
    }
    let copies: Vec<gpu::GpuCopy> = gpu_copies.iter().map(|(_, _, c)| *c).collect();
    // SAFETY: the caller guarantees every range at its location; overlapping pairs were
    // failed above.
    let done = unsafe { gpu::copy_many(&copies) };
    let results: Vec<_> = gpu_copies
        .iter()
        .zip(done)
        .map(|((i, len, _), d)| match d {
            Ok(()) => (*i, TransferStatus::completed(*len)),
            Err(e) => (*i, TransferStatus::failed(e)),
        })
        .collect();
    sink.finish_many(results);
}
