//! Metadata stores: where engines publish their segment descriptors and look up their peers'.
//!
//! Three implementations: [`InMemoryMetadataStore`] (engines of one process), [`P2pMetadataStore`]
//! (the segment name is the peer's `host:port`; its listener answers with its live descriptor)
//! and [`EtcdMetadataStore`] (descriptors under a key prefix in etcd).

mod etcd;
mod in_memory;
mod p2p;

use std::sync::Arc;
use std::time::Duration;

pub use etcd::EtcdMetadataStore;
pub use in_memory::InMemoryMetadataStore;
pub use p2p::P2pMetadataStore;

use crate::descriptor::SegmentDescriptor;
use crate::{MetadataConfig, TransferError};

/// Publishes and resolves segment descriptors.
pub trait MetadataStore: Send + Sync {
    /// Publishes (or replaces) this engine's descriptor.
    fn publish(&self, descriptor: &SegmentDescriptor) -> Result<(), TransferError>;
    /// Looks up a segment's descriptor; `SegmentNotFound` if it is unknown.
    fn fetch(&self, name: &str) -> Result<SegmentDescriptor, TransferError>;
    /// Withdraws a descriptor (engine shutting down).
    fn remove(&self, name: &str) -> Result<(), TransferError>;
}

/// Builds the store a configuration names.
pub fn from_config(
    config: &MetadataConfig,
    timeout: Duration,
) -> Result<Arc<dyn MetadataStore>, TransferError> {
    Ok(match config {
        MetadataConfig::P2p => Arc::new(P2pMetadataStore::new(timeout)),
        MetadataConfig::InProcess(store) => store.clone(),
        MetadataConfig::Etcd { endpoints, prefix } => {
            Arc::new(EtcdMetadataStore::connect(endpoints, prefix, timeout)?)
        }
    })
}
