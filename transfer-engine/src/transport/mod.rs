//! Transports: what moves the bytes of a batch to or from one target segment.
//!
//! The engine checks every request before a transport sees it: the local range lies inside
//! registered memory, the length is non-zero, and the remote range lies inside a buffer of the
//! target's (freshly refreshed if need be) [`SegmentDescriptor`]. It then calls
//! [`Transport::submit`] once per target segment with the requests (and their indices in the
//! batch) for that segment.
//!
//! The contract for an implementation (`local`, `tcp`, and the RDMA transport in `crate::rdma`;
//! `shm`, which serves the requests it can for same-host peers and hands the rest back, keeps
//! the same per-request guarantees):
//! - `submit` queues work and returns without waiting for transfers (it may set up a
//!   connection to a peer it has not talked to yet, bounded by `request_timeout`).
//! - Every submitted request is finished exactly once through the [`CompletionSink`], with
//!   `Completed(len)`, `Failed(reason)` or `TimedOut`, by `request_timeout` after submission
//!   (plus the transport's own detection latency). A lost peer fails the affected requests;
//!   no request is left `Waiting` forever.
//! - After a request is reported finished, the transport no longer touches its local memory.
//! - A failing request never fails its neighbours.
//! - Requests are cut into parts with [`slicing::split`]; [`slicing::RequestJoin`] turns part
//!   outcomes into one request outcome.
//!
//! Transports may publish opaque data in the segment descriptor
//! ([`Transport::descriptor_data`], e.g. RDMA keys and GIDs) and answer handshakes from peers
//! over the engine's TCP control channel ([`Transport::handle_control`]; the initiating side
//! calls [`crate::control::transport_call`]).

pub mod inflight;
pub mod local;
pub mod parallel_copy;
pub mod shm;
pub mod slicing;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::batch::CompletionSink;
use crate::descriptor::SegmentDescriptor;
use crate::registry::{MemoryRegistry, Region};
use crate::{EngineConfig, Location, TransferError, TransferRequest};

/// What a transport gets from the engine when it is created.
#[derive(Clone, Debug)]
pub struct TransportContext {
    /// The engine's configuration.
    pub config: EngineConfig,
    /// This engine's segment name.
    pub local_name: String,
    /// This engine's TCP listener (data and control).
    pub listen_addr: SocketAddr,
    /// Memory registered with this engine.
    pub registry: Arc<MemoryRegistry>,
}

/// Moves the bytes of requests to or from one target segment. See the module doc.
pub trait Transport: Send + Sync + 'static {
    /// Short name, also the key of its data in segment descriptors (`"tcp"`, `"rdma"`).
    fn name(&self) -> &'static str;

    /// Called after `region` was added to the engine's registry; an error undoes the
    /// registration.
    fn register_memory(&self, _region: &Region) -> Result<(), TransferError> {
        Ok(())
    }

    /// Called after `region` was removed from the engine's registry (no new request can name it).
    fn unregister_memory(&self, _region: &Region) -> Result<(), TransferError> {
        Ok(())
    }

    /// Whether this transport can move bytes of memory at `location` (TCP and memcpy reach
    /// host memory only).
    fn reaches(&self, location: Location) -> bool {
        location == Location::Host
    }

    /// Opaque data to publish in this engine's descriptor under [`Transport::name`].
    fn descriptor_data(&self) -> Option<Vec<u8>> {
        None
    }

    /// Answers a peer's control message addressed to this transport (a handshake).
    fn handle_control(&self, _payload: &[u8]) -> Result<Vec<u8>, String> {
        Err(format!(
            "transport {} takes no control messages",
            self.name()
        ))
    }

    /// Queues `items` (batch index, request) for `target`; each is finished through `sink`.
    fn submit(
        &self,
        target: &Arc<SegmentDescriptor>,
        items: Vec<(usize, TransferRequest)>,
        sink: &CompletionSink,
    );
}
