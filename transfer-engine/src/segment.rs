//! Segments this engine has opened, with their cached descriptors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::descriptor::SegmentDescriptor;
use crate::{SegmentHandle, TransferError};

/// An opened segment.
#[derive(Debug)]
pub struct OpenSegment {
    /// Its name.
    pub name: String,
    /// Whether it is this engine's own segment (served by memcpy).
    pub local: bool,
    descriptor: RwLock<Arc<SegmentDescriptor>>,
}

impl OpenSegment {
    /// The cached descriptor.
    pub fn descriptor(&self) -> Arc<SegmentDescriptor> {
        self.descriptor.read().clone()
    }

    /// Replaces the cached descriptor.
    pub fn set_descriptor(&self, d: SegmentDescriptor) -> Arc<SegmentDescriptor> {
        let d = Arc::new(d);
        *self.descriptor.write() = d.clone();
        d
    }
}

/// Handles to opened segments; one handle per name.
#[derive(Debug, Default)]
pub struct SegmentTable {
    next: AtomicU64,
    by_id: RwLock<HashMap<u64, Arc<OpenSegment>>>,
    by_name: Mutex<HashMap<String, u64>>,
}

impl SegmentTable {
    /// Forgets the name `name`: its next open resolves a fresh descriptor under a new handle
    /// (the old handle keeps working with the old descriptor).
    pub fn forget(&self, name: &str) {
        self.by_name.lock().remove(name);
    }

    /// The handle of `name`, resolving its descriptor with `resolve` on first open.
    pub fn open(
        &self,
        name: &str,
        local: bool,
        resolve: impl FnOnce() -> Result<SegmentDescriptor, TransferError>,
    ) -> Result<SegmentHandle, TransferError> {
        if let Some(id) = self.by_name.lock().get(name) {
            return Ok(SegmentHandle(*id));
        }
        // Resolve without the lock: a slow peer must not stall opening other segments.
        let descriptor = resolve()?;
        let mut names = self.by_name.lock();
        if let Some(id) = names.get(name) {
            return Ok(SegmentHandle(*id));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let seg = Arc::new(OpenSegment {
            name: name.to_string(),
            local,
            descriptor: RwLock::new(Arc::new(descriptor)),
        });
        self.by_id.write().insert(id, seg);
        names.insert(name.to_string(), id);
        Ok(SegmentHandle(id))
    }

    /// The opened segment behind a handle.
    pub fn get(&self, handle: SegmentHandle) -> Option<Arc<OpenSegment>> {
        self.by_id.read().get(&handle.0).cloned()
    }

    /// The opened segment of that name, if it was opened.
    pub fn get_by_name(&self, name: &str) -> Option<Arc<OpenSegment>> {
        let id = *self.by_name.lock().get(name)?;
        self.get(SegmentHandle(id))
    }
}
