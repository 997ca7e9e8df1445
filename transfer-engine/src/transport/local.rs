//! The local transport: requests whose target is this engine's own segment, served by memcpy
//! (with the same range check a remote target would apply); device memory on either side is
//! copied by the CUDA driver.

use std::sync::Arc;

use crate::batch::CompletionSink;
use crate::descriptor::SegmentDescriptor;
use crate::registry::MemoryRegistry;
use crate::transport::Transport;
use crate::{gpu, Location, OpCode, TransferRequest, TransferStatus};

/// Copies between registered regions of one engine.
pub struct LocalTransport {
    registry: Arc<MemoryRegistry>,
}

impl LocalTransport {
    /// A transport over `registry`.
    pub fn new(registry: Arc<MemoryRegistry>) -> Self {
        LocalTransport { registry }
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
        let mut gpu_copies: Vec<(usize, u64, gpu::GpuCopy)> = Vec::new();
        let results: Vec<_> = self.registry.with(|set| {
            items
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
                    let (src, src_loc, dst, dst_loc) = match r.op {
                        OpCode::Read => (r.target_offset, target.location, r.local_addr, local),
                        OpCode::Write => (r.local_addr, local, r.target_offset, target.location),
                    };
                    if src_loc != Location::Host || dst_loc != Location::Host {
                        if src < dst.saturating_add(r.len) && dst < src.saturating_add(r.len) {
                            return Some((
                                i,
                                TransferStatus::failed(
                                    "source and destination overlap: the GPU driver copies only disjoint ranges",
                                ),
                            ));
                        }
                        // The driver's copies of a batch run together, with one wait.
                        let copy = gpu::GpuCopy {
                            dst,
                            dst_loc,
                            src,
                            src_loc,
                            len: r.len as usize,
                        };
                        gpu_copies.push((i, r.len, copy));
                        return None;
                    }
                    // SAFETY: both ranges lie inside registered regions (the engine checked
                    // the local one, the lookup above the target one), which their owner keeps
                    // valid while registered; `copy` tolerates overlap.
                    unsafe {
                        std::ptr::copy(src as *const u8, dst as *mut u8, r.len as usize);
                    }
                    Some((i, TransferStatus::completed(r.len)))
                })
                .collect()
        });
        sink.finish_many(results);
        if gpu_copies.is_empty() {
            return;
        }
        let copies: Vec<gpu::GpuCopy> = gpu_copies.iter().map(|(_, _, c)| *c).collect();
        // SAFETY: every range lies inside a region registered at its location (checked
        // above), which its owner keeps valid while registered.
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
}
