//! A metadata store shared by the engines of one process.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::MetadataStore;
use crate::descriptor::SegmentDescriptor;
use crate::TransferError;

/// Descriptors in a map; share it between engines through an `Arc`.
#[derive(Debug, Default)]
pub struct InMemoryMetadataStore {
    descriptors: Mutex<HashMap<String, SegmentDescriptor>>,
}

impl InMemoryMetadataStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl MetadataStore for InMemoryMetadataStore {
    fn publish(&self, descriptor: &SegmentDescriptor) -> Result<(), TransferError> {
        self.descriptors
            .lock()
            .insert(descriptor.name.clone(), descriptor.clone());
        Ok(())
    }

    fn fetch(&self, name: &str) -> Result<SegmentDescriptor, TransferError> {
        self.descriptors
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| TransferError::SegmentNotFound {
                name: name.to_string(),
                reason: "no engine published it in this process".into(),
            })
    }

    fn remove(&self, name: &str) -> Result<(), TransferError> {
        self.descriptors.lock().remove(name);
        Ok(())
    }
}
