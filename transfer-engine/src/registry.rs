//! The set of memory regions registered with an engine.
//!
//! Both sides of every transfer consult it: the initiator checks that a request's local range
//! lies inside registered memory, and a serving engine checks that a peer's range lies wholly
//! inside one region it exported before touching any byte.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::{Location, TransferError};

/// One registered region `[addr, addr + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Region {
    /// Start address.
    pub addr: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// Where the memory lives.
    pub location: Location,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr + self.len
    }

    /// Whether `[addr, addr + len)` lies wholly inside this region.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr && addr.checked_add(len).is_some_and(|end| end <= self.end())
    }
}

/// Non-overlapping regions keyed by start address.
#[derive(Debug, Default)]
pub struct RegionSet {
    regions: BTreeMap<u64, Region>,
}

impl RegionSet {
    /// Adds a region; refuses zero length, address overflow and overlap.
    pub fn insert(&mut self, region: Region) -> Result<(), TransferError> {
        if region.len == 0 {
            return Err(TransferError::InvalidArgument(
                "cannot register zero-length memory".into(),
            ));
        }
        if region.addr.checked_add(region.len).is_none() {
            return Err(TransferError::InvalidArgument(format!(
                "memory [{:#x}, +{}) wraps the address space",
                region.addr, region.len
            )));
        }
        let before = self.regions.range(..region.end()).next_back();
        if let Some((_, existing)) = before {
            if existing.end() > region.addr {
                return Err(TransferError::Overlap {
                    addr: region.addr,
                    len: region.len,
                    existing_addr: existing.addr,
                    existing_len: existing.len,
                });
            }
        }
        self.regions.insert(region.addr, region);
        Ok(())
    }

    /// Removes the region starting at `addr`.
    pub fn remove(&mut self, addr: u64) -> Result<Region, TransferError> {
        self.regions
            .remove(&addr)
            .ok_or(TransferError::NotRegistered(addr))
    }

    /// The region holding all of `[addr, addr + len)`, if one does.
    pub fn find(&self, addr: u64, len: u64) -> Option<Region> {
        let (_, r) = self.regions.range(..=addr).next_back()?;
        r.contains(addr, len).then_some(*r)
    }

    /// All regions in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Region> {
        self.regions.values()
    }
}

/// A thread-safe [`RegionSet`], shared by the engine and its transports.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    inner: RwLock<RegionSet>,
    /// Regions registered as device memory (transports skip per-request location lookups
    /// while there are none).
    devices: AtomicUsize,
}

impl MemoryRegistry {
    /// Adds a region (see [`RegionSet::insert`]).
    pub fn insert(&self, region: Region) -> Result<(), TransferError> {
        // The count changes under the write lock: whoever finds the region also sees it.
        let mut set = self.inner.write();
        set.insert(region)?;
        if region.location != Location::Host {
            self.devices.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Removes the region starting at `addr`.
    pub fn remove(&self, addr: u64) -> Result<Region, TransferError> {
        let mut set = self.inner.write();
        let region = set.remove(addr)?;
        if region.location != Location::Host {
            self.devices.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(region)
    }

    /// Whether any registered region is device memory.
    pub fn has_device_memory(&self) -> bool {
        self.devices.load(Ordering::Acquire) > 0
    }

    /// The region holding all of `[addr, addr + len)`, if one does.
    pub fn find(&self, addr: u64, len: u64) -> Option<Region> {
        self.inner.read().find(addr, len)
    }

    /// Runs `f` with the set read-locked (for many lookups under one lock).
    pub fn with<R>(&self, f: impl FnOnce(&RegionSet) -> R) -> R {
        f(&self.inner.read())
    }

    /// A copy of all regions in address order.
    pub fn snapshot(&self) -> Vec<Region> {
        self.inner.read().iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(addr: u64, len: u64) -> Region {
        Region {
            addr,
            len,
            location: Location::Host,
        }
    }

    #[test]
    fn rejects_zero_and_overlap() {
        let mut s = RegionSet::default();
        assert!(matches!(
            s.insert(r(100, 0)),
            Err(TransferError::InvalidArgument(_))
        ));
        s.insert(r(100, 100)).unwrap();
        for (a, l) in [(50, 51), (150, 10), (199, 5), (0, 1000), (100, 100)] {
            assert!(
                matches!(s.insert(r(a, l)), Err(TransferError::Overlap { .. })),
                "{a} {l}"
            );
        }
        s.insert(r(50, 50)).unwrap();
        s.insert(r(200, 1)).unwrap();
        assert!(matches!(
            s.insert(r(u64::MAX - 1, 5)),
            Err(TransferError::InvalidArgument(_))
        ));
    }

    #[test]
    fn find_requires_whole_range() {
        let mut s = RegionSet::default();
        s.insert(r(100, 100)).unwrap();
        s.insert(r(200, 100)).unwrap();
        assert_eq!(s.find(100, 100), Some(r(100, 100)));
        assert_eq!(s.find(150, 10), Some(r(100, 100)));
        assert_eq!(s.find(199, 2), None, "spanning two regions is refused");
        assert_eq!(s.find(99, 1), None);
        assert_eq!(s.find(299, 2), None);
        assert_eq!(s.find(u64::MAX, 2), None);
        assert!(matches!(
            s.remove(150),
            Err(TransferError::NotRegistered(150))
        ));
        s.remove(100).unwrap();
        assert_eq!(s.find(150, 10), None);
    }

    proptest! {
        #[test]
        fn accepted_regions_never_overlap(ops in prop::collection::vec((0u64..1000, 0u64..100), 1..60)) {
            let mut s = RegionSet::default();
            for (a, l) in ops {
                let _ = s.insert(r(a, l));
            }
            let v: Vec<_> = s.iter().copied().collect();
            for w in v.windows(2) {
                prop_assert!(w[0].end() <= w[1].addr);
            }
            for reg in &v {
                prop_assert_eq!(s.find(reg.addr, reg.len), Some(*reg));
            }
        }
    }
}
