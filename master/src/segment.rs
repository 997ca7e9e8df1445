//! Mounted segments and the replicas allocated in them.
//!
//! A [`MountedSegment`] owns the allocator of its region. A [`Replica`] is an allocation in
//! one segment and frees its range when dropped, so removing an object from the index (or
//! dropping a delayed-release batch) returns its space with no separate bookkeeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::allocator::{round_up, OffsetAllocator, SpaceAllocator};
use crate::proto::{ClientId, ErrorCode, ReplicaDescriptor, ReplicaStatus, Segment, SegmentId};

/// A segment the master allocates in.
#[derive(Debug)]
pub struct MountedSegment {
    /// Segment as the client described it.
    pub segment: Segment,
    /// Host part of the name, for distinct-host placement.
    pub host: String,
    /// Client that mounted it.
    pub owner: ClientId,
    mounted: AtomicBool,
    allocatable_from_ms: AtomicU64,
    alloc: Mutex<Box<dyn SpaceAllocator>>,
}

impl MountedSegment {
    /// A fresh mounted segment with an empty allocator.
    pub fn new(segment: Segment, owner: ClientId) -> Self {
        let host = match segment.name.rsplit_once(':') {
            Some((h, _)) if !h.is_empty() => h.to_string(),
            _ => segment.name.clone(),
        };
        let alloc: Box<dyn SpaceAllocator> = Box::new(OffsetAllocator::new(segment.size));
        MountedSegment {
            segment,
            host,
            owner,
            mounted: AtomicBool::new(true),
            allocatable_from_ms: AtomicU64::new(0),
            alloc: Mutex::new(alloc),
        }
    }

    /// Whether it is still mounted (replicas in unmounted segments are never returned).
    pub fn is_mounted(&self) -> bool {
        self.mounted.load(Ordering::Acquire)
    }

    /// Whether new replicas may be placed in it at `now` (see [`SegmentRegistry::mount`]).
    pub fn is_allocatable(&self, now_ms: u64) -> bool {
        self.allocatable_from_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// (capacity, used) bytes.
    pub fn usage(&self) -> (u64, u64) {
        let a = self.alloc.lock();
        (a.capacity(), a.used())
    }

    /// Number of allocations in it: replicas, and ranges waiting for delayed release.
    pub fn allocations(&self) -> usize {
        self.alloc.lock().allocations()
    }

    /// Free fraction of the capacity.
    pub fn free_ratio(&self) -> f64 {
        let (cap, used) = self.usage();
        if cap == 0 {
            0.0
        } else {
            (cap - used) as f64 / cap as f64
        }
    }

    /// Fragmentation of the free space (see [`SpaceAllocator::fragmentation`]).
    pub fn fragmentation(&self) -> f64 {
        self.alloc.lock().fragmentation()
    }
}

/// One replica's allocation; frees its range on drop.
#[derive(Debug)]
pub struct Replica {
    segment: Arc<MountedSegment>,
    offset: u64,
    len: u64,
}

impl Replica {
    /// Allocates `len` bytes in `segment`.
    pub fn allocate(segment: &Arc<MountedSegment>, len: u64) -> Option<Replica> {
        let offset = segment.alloc.lock().allocate(len)?;
        Some(Replica {
            segment: segment.clone(),
            offset,
            len,
        })
    }

    /// Claims the exact range `[addr, addr+len)` (an address, as in a descriptor).
    pub fn reserve(segment: &Arc<MountedSegment>, addr: u64, len: u64) -> Option<Replica> {
        let offset = addr.checked_sub(segment.segment.base)?;
        if !segment.alloc.lock().reserve(offset, len) {
            return None;
        }
        Some(Replica {
            segment: segment.clone(),
            offset,
            len,
        })
    }

    /// The segment holding it.
    pub fn segment(&self) -> &Arc<MountedSegment> {
        &self.segment
    }

    /// Whether its segment is still mounted.
    pub fn is_live(&self) -> bool {
        self.segment.is_mounted()
    }

    /// First address.
    pub fn addr(&self) -> u64 {
        self.segment.segment.base + self.offset
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty (never: zero-length objects are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The descriptor clients use to read or write it.
    pub fn descriptor(&self, status: ReplicaStatus) -> ReplicaDescriptor {
        ReplicaDescriptor {
            segment_name: self.segment.segment.name.clone(),
            segment_id: self.segment.segment.id,
            addr: self.addr(),
            len: self.len,
            status,
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.segment.alloc.lock().free(self.offset);
    }
}

/// A contiguous extent of one segment from which a batch carves its objects' replicas back
/// to back, so that a client moving the batch from one buffer can merge the transfers. Each
/// carved replica is an allocation of its own; the part not carved is freed on drop.
#[derive(Debug)]
pub struct Run {
    /// The uncarved rest, its length the whole rounded allocation; `None` once used up.
    rest: Option<Replica>,
}

impl Run {
    /// Allocates `want` bytes in `segment`, or its largest free range if that is smaller
    /// but holds at least `min` bytes.
    pub fn allocate(segment: &Arc<MountedSegment>, min: u64, want: u64) -> Option<Run> {
        let (offset, len) = segment.alloc.lock().allocate_up_to(min, want)?;
        Some(Run {
            rest: Some(Replica {
                segment: segment.clone(),
                offset,
                len,
            }),
        })
    }

    /// The next `len` bytes as a replica of their own, right after the previous one; `None`
    /// when they do not fit.
    pub fn carve(&mut self, len: u64) -> Option<Replica> {
        let size = round_up(len)?;
        let rest = self.rest.as_mut()?;
        if len == 0 || size > rest.len {
            return None;
        }
        if size == rest.len {
            let mut whole = self.rest.take()?;
            whole.len = len;
            return Some(whole);
        }
        if !rest.segment.alloc.lock().split(rest.offset, size) {
            return None;
        }
        let piece = Replica {
            segment: rest.segment.clone(),
            offset: rest.offset,
            len,
        };
        rest.offset += size;
        rest.len -= size;
        Some(piece)
    }
}

/// Largest segment a client may mount (64 PiB, beyond any process's address space): sums of
/// segment sizes cannot overflow.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 56;

/// The end of `segment`'s range, if its size, name and range are acceptable.
fn checked_end(segment: &Segment) -> Result<u64, ErrorCode> {
    if segment.size == 0 || segment.size > MAX_SEGMENT_SIZE || segment.name.is_empty() {
        return Err(ErrorCode::InvalidParams);
    }
    segment
        .base
        .checked_add(segment.size)
        .ok_or(ErrorCode::InvalidParams)
}

/// The set of mounted segments.
#[derive(Debug, Default)]
pub struct SegmentRegistry {
    segments: RwLock<Vec<Arc<MountedSegment>>>,
    /// Recently unmounted segment ids → until when a remount of them may not be allocated in
    /// (readers may still hold leases on bytes the master just forgot).
    quarantine: Mutex<HashMap<SegmentId, u64>>,
}

impl SegmentRegistry {
    /// Mounts `segment` for `owner`. Remounting the same id by the same owner is a no-op.
    /// A segment unmounted less than its quarantine ago is mounted but not allocated in until
    /// the quarantine ends.
    pub fn mount(&self, owner: ClientId, segment: Segment, now_ms: u64) -> Result<(), ErrorCode> {
        self.remount(owner, segment, now_ms, 0)
    }

    /// As [`SegmentRegistry::mount`], for a segment its owner says it mounted before (with a
    /// master that may no longer exist): one this registry has never seen - neither mounted
    /// nor recently unmounted - is not allocated in before `unknown_until_ms`, since readers
    /// and writers of an earlier master may still be using its bytes.
    pub fn remount(
        &self,
        owner: ClientId,
        segment: Segment,
        now_ms: u64,
        unknown_until_ms: u64,
    ) -> Result<(), ErrorCode> {
        let end = checked_end(&segment)?;
        let mut segs = self.segments.write();
        for s in segs.iter() {
            if s.segment.id == segment.id {
                return if s.owner == owner && s.segment == segment {
                    Ok(())
                } else {
                    Err(ErrorCode::SegmentAlreadyExists)
                };
            }
            // Two segments of one holder must not share memory: space would be handed out twice.
            let other_end = s.segment.base + s.segment.size;
            if s.segment.name == segment.name && segment.base < other_end && s.segment.base < end {
                return Err(ErrorCode::SegmentAlreadyExists);
            }
        }
        let m = MountedSegment::new(segment, owner);
        let mut q = self.quarantine.lock();
        q.retain(|_, until| *until > now_ms);
        let until = q.get(&m.segment.id).copied().unwrap_or(unknown_until_ms);
        m.allocatable_from_ms.store(until, Ordering::Relaxed);
        segs.push(Arc::new(m));
        Ok(())
    }

    /// Whether `owner` could mount `segment` as far as the segment itself goes (its size, name
    /// and range, and its id not another client's), before any side effect of mounting it.
    pub fn check_mountable(&self, owner: ClientId, segment: &Segment) -> Result<(), ErrorCode> {
        checked_end(segment)?;
        let taken = self
            .segments
            .read()
            .iter()
            .any(|s| s.segment.id == segment.id && s.owner != owner);
        if taken {
            return Err(ErrorCode::SegmentAlreadyExists);
        }
        Ok(())
    }

    /// Unmounts a segment; `owner` must match unless `None`. A remount of the same id is not
    /// allocated in before `quarantine_until_ms`.
    pub fn unmount(
        &self,
        owner: Option<ClientId>,
        id: SegmentId,
        quarantine_until_ms: u64,
    ) -> Result<Arc<MountedSegment>, ErrorCode> {
        let mut segs = self.segments.write();
        let i = segs
            .iter()
            .position(|s| s.segment.id == id)
            .ok_or(ErrorCode::SegmentNotFound)?;
        if owner.is_some_and(|o| o != segs[i].owner) {
            return Err(ErrorCode::IllegalClient);
        }
        let s = segs.swap_remove(i);
        s.mounted.store(false, Ordering::Release);
        self.quarantine.lock().insert(id, quarantine_until_ms);
        Ok(s)
    }

    /// The clients holding a segment named as `segment` is, other than `segment` itself.
    pub fn owners_of_namesakes(&self, segment: &Segment) -> Vec<ClientId> {
        let mut owners: Vec<ClientId> = self
            .segments
            .read()
            .iter()
            .filter(|s| s.segment.name == segment.name && s.segment.id != segment.id)
            .map(|s| s.owner)
            .collect();
        owners.dedup();
        owners
    }

    /// Ids of the segments `owner` mounted.
    pub fn owned_by(&self, owner: ClientId) -> Vec<SegmentId> {
        self.segments
            .read()
            .iter()
            .filter(|s| s.owner == owner)
            .map(|s| s.segment.id)
            .collect()
    }

    /// The mounted segment with this id.
    pub fn get(&self, id: SegmentId) -> Option<Arc<MountedSegment>> {
        self.segments
            .read()
            .iter()
            .find(|s| s.segment.id == id)
            .cloned()
    }

    /// A snapshot of all mounted segments.
    pub fn snapshot(&self) -> Vec<Arc<MountedSegment>> {
        self.segments.read().clone()
    }

    /// Total (capacity, used) bytes.
    pub fn usage(&self) -> (u64, u64) {
        self.segments
            .read()
            .iter()
            .map(|s| s.usage())
            .fold((0u64, 0u64), |(c, u), (c2, u2)| {
                (c.saturating_add(c2), u.saturating_add(u2))
            })
    }

    /// Number of mounted segments.
    pub fn len(&self) -> usize {
        self.segments.read().len()
    }

    /// Whether none is mounted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
