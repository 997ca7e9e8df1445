//! Peer-to-peer metadata: a segment named `host:port` is asked for its descriptor directly.

use std::time::Duration;

use super::MetadataStore;
use crate::control::{self, ControlRequest, ControlResponse};
use crate::descriptor::SegmentDescriptor;
use crate::TransferError;

/// Fetches descriptors from the peers' listeners; publishing is implicit (each engine serves
/// its live descriptor).
#[derive(Debug)]
pub struct P2pMetadataStore {
    timeout: Duration,
}

impl P2pMetadataStore {
    /// A store whose handshakes give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        P2pMetadataStore { timeout }
    }
}

impl MetadataStore for P2pMetadataStore {
    fn publish(&self, _descriptor: &SegmentDescriptor) -> Result<(), TransferError> {
        Ok(())
    }

    fn fetch(&self, name: &str) -> Result<SegmentDescriptor, TransferError> {
        let not_found = |reason: String| TransferError::SegmentNotFound {
            name: name.to_string(),
            reason,
        };
        let peer = control::resolve(name).map_err(not_found)?;
        match control::call(peer, &ControlRequest::GetDescriptor, self.timeout) {
            Ok(ControlResponse::Descriptor(mut d)) => {
                d.buffers.sort_by_key(|b| b.addr);
                if d.tcp_addr.ip().is_unspecified() {
                    // A peer listening on 0.0.0.0 is reached where we just reached it.
                    d.tcp_addr.set_ip(peer.ip());
                }
                Ok(d)
            }
            Ok(other) => Err(not_found(format!("unexpected answer {other:?}"))),
            Err(e) => Err(not_found(format!("handshake with {peer}: {e}"))),
        }
    }

    fn remove(&self, _name: &str) -> Result<(), TransferError> {
        Ok(())
    }
}
