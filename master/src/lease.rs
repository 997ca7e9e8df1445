//! Read leases and soft pins of one object.
//!
//! GetReplicaList grants a read lease: until it ends the object is neither evicted nor removed
//! without `force`, so a reader can finish its transfer. ExistKey only touches the object (or
//! grants a lease too, where the master is configured as Mooncake's is). The later of the lease
//! end and the last touch (plus the lease time, so both count alike) is the object's last
//! access for approximate LRU eviction. All are atomics so that readers under a shared shard
//! lock can extend them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lease and soft-pin deadlines (milliseconds on the master's clock).
#[derive(Debug, Default)]
pub struct Lease {
    until_ms: AtomicU64,
    touched_ms: AtomicU64,
    soft_pin_until_ms: AtomicU64,
}

impl Lease {
    /// No lease; last access `now`.
    pub fn new(now_ms: u64) -> Self {
        Lease {
            until_ms: AtomicU64::new(now_ms),
            touched_ms: AtomicU64::new(0),
            soft_pin_until_ms: AtomicU64::new(0),
        }
    }

    /// Extends the lease to at least `now + ttl` (never shortens it).
    pub fn grant(&self, now_ms: u64, ttl_ms: u64) {
        self.until_ms
            .fetch_max(now_ms.saturating_add(ttl_ms), Ordering::Relaxed);
    }

    /// Records an access that takes no lease: it counts for eviction order as a lease granted
    /// at `now` would, but does not keep the object from being evicted or removed.
    pub fn touch(&self, now_ms: u64, ttl_ms: u64) {
        self.touched_ms
            .fetch_max(now_ms.saturating_add(ttl_ms), Ordering::Relaxed);
    }

    /// The last access, for eviction order (see the module documentation).
    pub fn last_access_ms(&self) -> u64 {
        self.until_ms().max(self.touched_ms.load(Ordering::Relaxed))
    }

    /// Whether a reader holds a lease at `now`.
    pub fn is_leased(&self, now_ms: u64) -> bool {
        self.until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// End of the latest lease (or the last access when never leased).
    pub fn until_ms(&self) -> u64 {
        self.until_ms.load(Ordering::Relaxed)
    }

    /// Soft-pins the object until `now + ttl` (extending an existing pin).
    pub fn soft_pin(&self, now_ms: u64, ttl_ms: u64) {
        self.soft_pin_until_ms
            .fetch_max(now_ms.saturating_add(ttl_ms), Ordering::Relaxed);
    }

    /// Extends an existing soft pin on access; objects never soft-pinned stay unpinned.
    pub fn refresh_soft_pin(&self, now_ms: u64, ttl_ms: u64) {
        if self.soft_pin_until_ms.load(Ordering::Relaxed) != 0 {
            self.soft_pin(now_ms, ttl_ms);
        }
    }

    /// Whether the soft pin is active at `now`.
    pub fn is_soft_pinned(&self, now_ms: u64) -> bool {
        self.soft_pin_until_ms.load(Ordering::Relaxed) > now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_extends_but_never_shortens() {
        let l = Lease::new(100);
        assert!(!l.is_leased(100));
        l.grant(100, 50);
        assert!(l.is_leased(149) && !l.is_leased(150));
        l.grant(110, 10);
        assert_eq!(l.until_ms(), 150);
        l.touch(120, 50);
        assert!(!l.is_leased(150), "a touch is no lease");
        assert_eq!((l.until_ms(), l.last_access_ms()), (150, 170));
        l.grant(200, 50);
        assert_eq!(l.last_access_ms(), 250);
        assert!(!l.is_soft_pinned(0));
        l.refresh_soft_pin(0, 1000);
        assert!(!l.is_soft_pinned(0), "refresh does not create a pin");
        l.soft_pin(0, 1000);
        assert!(l.is_soft_pinned(999) && !l.is_soft_pinned(1000));
    }
}
