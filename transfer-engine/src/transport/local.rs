//! The local transport: requests whose target is this engine's own segment, served by memcpy
//! (with the same range check a remote target would apply).

use std::sync::Arc;

use crate::batch::CompletionSink;
use crate::descriptor::SegmentDescriptor;
use crate::registry::MemoryRegistry;
use crate::transport::Transport;
use crate::{Location, OpCode, TransferRequest, TransferStatus};

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
                    let target = set.find(r.target_offset, r.len);
                    if target.is_some_and(|t| t.location != Location::Host) {
                        return (i, TransferStatus::failed("memcpy cannot reach device memory"));
                    }
                    if target.is_none() {
                        return (
                            i,
                            TransferStatus::failed(format!(
                                "range [{:#x}, +{}) is not inside one registered buffer of this segment",
                                r.target_offset, r.len
                            )),
                        );
                    }
                    let (src, dst) = match r.op {
                        OpCode::Read => (r.target_offset, r.local_addr),
                        OpCode::Write => (r.local_addr, r.target_offset),
                    };
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
