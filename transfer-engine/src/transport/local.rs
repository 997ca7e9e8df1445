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
        let results: Vec<_> = self.registry.with(|set| {
            items
                .into_iter()
                .map(|(i, r)| {
                    let Some(target) = set.find(r.target_offset, r.len) else {
                        return (
                            i,
                            TransferStatus::failed(format!(
                                "range [{:#x}, +{}) is not inside one registered buffer of this segment",
                                r.target_offset, r.len
                            )),
                        );
                    };
                    // The engine checked the local range; its region gives its location.
                    let local = set
                        .find(r.local_addr, r.len)
                        .map_or(Location::Host, |l| l.location);
                    let (src, src_loc, dst, dst_loc) = match r.op {
                        OpCode::Read => (r.target_offset, target.location, r.local_addr, local),
                        OpCode::Write => (r.local_addr, local, r.target_offset, target.location),
                    };
                    if src_loc != Location::Host || dst_loc != Location::Host {
                        // SAFETY: both ranges lie inside registered regions at these
                        // locations, which their owner keeps valid while registered.
                        let copied = unsafe {
                            gpu::copy(dst, dst_loc, src, src_loc, r.len as usize)
                        };
                        return match copied {
                            Ok(()) => (i, TransferStatus::completed(r.len)),
                            Err(e) => (i, TransferStatus::failed(e)),
                        };
                    }
                    // SAFETY: both ranges lie inside registered regions (the engine checked
                    // the local one, the lookup above the target one), which their owner keeps
                    // valid while registered; `copy` tolerates overlap.
                    unsafe {
                        std::ptr::copy(src as *const u8, dst as *mut u8, r.len as usize);
                    }
                    (i, TransferStatus::completed(r.len))
                })
                .collect()
        });
        sink.finish_many(results);
    }
}
