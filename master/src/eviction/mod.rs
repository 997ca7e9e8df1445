//! Eviction: when used/capacity passes the high watermark (or an allocation fails), each shard
//! evicts a fraction of its evictable objects. Which ones is an [`EvictionPolicy`]'s choice;
//! which objects are *evictable* is decided here and never depends on the policy: complete,
//! not hard-pinned, not leased, and soft-pinned only when `allow_soft_pinned`.

mod oldest_lease;

pub use oldest_lease::OldestLease;

use crate::index::ObjectEntry;

/// An evictable object of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its key.
    pub key: String,
    /// End of its last lease (its last access).
    pub last_access_ms: u64,
    /// Its size.
    pub size: u64,
}

/// Picks the victims among a shard's candidates.
pub trait EvictionPolicy: Send + Sync + std::fmt::Debug {
    /// Reorders `candidates` so that the first `count` are the ones to evict.
    fn select(&self, candidates: &mut [Candidate], count: usize);
}

/// Whether `e` may be evicted at `now`.
pub fn is_evictable(e: &ObjectEntry, now_ms: u64, allow_soft_pinned: bool) -> bool {
    e.is_complete()
        && !e.hard_pin
        && !e.lease.is_leased(now_ms)
        && (allow_soft_pinned || !e.lease.is_soft_pinned(now_ms))
}

/// How many of `n` candidates a pass with `ratio` evicts (at least one when there are any).
pub fn victims(n: usize, ratio: f64) -> usize {
    if n == 0 {
        0
    } else {
        ((n as f64 * ratio).ceil() as usize).clamp(1, n)
    }
}
