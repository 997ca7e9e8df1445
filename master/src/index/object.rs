//! One object's metadata and its state machine: PROCESSING (after PutStart, not readable)
//! → COMPLETE (after PutEnd, immutable). A PROCESSING object may be taken over once its
//! writer vanished or the discard timeout passed.

use std::sync::Arc;

use crate::groups::ObjectGroup;
use crate::lease::Lease;
use crate::proto::{ClientId, ErrorCode, ReplicaDescriptor, ReplicaStatus};
use crate::segment::Replica;

/// Where an object is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectState {
    /// Being written by `writer` since `started_ms`.
    Processing {
        /// The client that called PutStart.
        writer: ClientId,
        /// When PutStart was granted.
        started_ms: u64,
    },
    /// Written and readable.
    Complete,
}

/// Metadata of one key.
#[derive(Debug)]
pub struct ObjectEntry {
    /// Object size in bytes.
    pub size: u64,
    /// Processing or complete.
    pub state: ObjectState,
    /// Its replicas (each frees its space when dropped).
    pub replicas: Vec<Replica>,
    /// Read lease and soft pin.
    pub lease: Lease,
    /// Never evicted.
    pub hard_pin: bool,
    /// The group it was put in, if any (see [`crate::groups`]).
    pub group: Option<Arc<ObjectGroup>>,
}

impl ObjectEntry {
    /// A new PROCESSING object.
    pub fn processing(
        size: u64,
        writer: ClientId,
        now_ms: u64,
        replicas: Vec<Replica>,
        hard_pin: bool,
    ) -> Self {
        ObjectEntry {
            size,
            state: ObjectState::Processing {
                writer,
                started_ms: now_ms,
            },
            replicas,
            lease: Lease::new(now_ms),
            hard_pin,
            group: None,
        }
    }

    /// Its last access for eviction order: its own, or its group's when later.
    pub fn last_access_ms(&self) -> u64 {
        let own = self.lease.last_access_ms();
        self.group
            .as_ref()
            .map_or(own, |g| own.max(g.last_access_ms()))
    }

    /// Whether it is readable.
    pub fn is_complete(&self) -> bool {
        self.state == ObjectState::Complete
    }

    /// Whether it is PROCESSING and older than `discard_ms` (so it may be taken over).
    pub fn is_stale_processing(&self, now_ms: u64, discard_ms: u64) -> bool {
        matches!(self.state, ObjectState::Processing { started_ms, .. }
            if now_ms.saturating_sub(started_ms) >= discard_ms)
    }

    /// PROCESSING → COMPLETE, by its writer only.
    pub fn complete(&mut self, client: ClientId) -> Result<(), ErrorCode> {
        match self.state {
            ObjectState::Processing { writer, .. } if writer == client => {
                self.state = ObjectState::Complete;
                Ok(())
            }
            ObjectState::Processing { .. } => Err(ErrorCode::IllegalClient),
            ObjectState::Complete => Err(ErrorCode::InvalidWrite),
        }
    }

    /// Checks that `client` may revoke it (its writer, still PROCESSING).
    pub fn check_revoke(&self, client: ClientId) -> Result<(), ErrorCode> {
        match self.state {
            ObjectState::Processing { writer, .. } if writer == client => Ok(()),
            ObjectState::Processing { .. } => Err(ErrorCode::IllegalClient),
            ObjectState::Complete => Err(ErrorCode::InvalidWrite),
        }
    }

    /// Descriptors of its replicas in mounted segments.
    pub fn descriptors(&self) -> Vec<ReplicaDescriptor> {
        let status = if self.is_complete() {
            ReplicaStatus::Complete
        } else {
            ReplicaStatus::Processing
        };
        self.replicas
            .iter()
            .filter(|r| r.is_live())
            .map(|r| r.descriptor(status))
            .collect()
    }
}
