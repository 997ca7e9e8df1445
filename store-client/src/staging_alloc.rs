//! Space accounting for the staging buffer of the copying API.
//!
//! The copying calls (`put`, `get`, ...) move bytes between the caller's memory and a
//! registered staging buffer, and the engine moves them on from there. This allocator hands
//! out byte ranges of that buffer: first fit over a free list kept sorted by offset, with
//! neighbours coalesced on free. It holds offsets only; the memory lives elsewhere.

use std::collections::BTreeMap;

/// Every allocation starts on a multiple of this (keeps values cache-line aligned, and
/// back-to-back values of common sizes contiguous, which lets their transfers merge).
pub const STAGING_ALIGN: u64 = 64;

/// First-fit range allocator over `[0, capacity)`.
#[derive(Debug)]
pub struct RangeAllocator {
    capacity: u64,
    /// Free ranges: offset -> length, disjoint and never adjacent (coalesced).
    free: BTreeMap<u64, u64>,
    in_use: u64,
}

/// Rounds `len` up to the allocation granularity (0 stays 0).
pub fn aligned_len(len: u64) -> u64 {
    len.div_ceil(STAGING_ALIGN) * STAGING_ALIGN
}

impl RangeAllocator {
    /// An allocator over `capacity` bytes (rounded down to the granularity).
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity / STAGING_ALIGN * STAGING_ALIGN;
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Self {
            capacity,
            free,
            in_use: 0,
        }
    }

    /// Total bytes managed.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes currently handed out.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Reserves `len` bytes (rounded up); returns the offset, or `None` if no free range fits.
    /// A zero-length request gets offset 0 and reserves nothing.
    pub fn allocate(&mut self, len: u64) -> Option<u64> {
        let len = aligned_len(len);
        if len == 0 {
            return Some(0);
        }
        let (&off, &flen) = self.free.iter().find(|(_, &flen)| flen >= len)?;
        self.free.remove(&off);
        if flen > len {
            self.free.insert(off + len, flen - len);
        }
        self.in_use += len;
        Some(off)
    }

    /// Returns `[offset, offset+len)` (len as passed to `allocate`) to the free list.
    pub fn free(&mut self, offset: u64, len: u64) {
        let mut len = aligned_len(len);
        if len == 0 {
            return;
        }
        debug_assert!(offset + len <= self.capacity);
        self.in_use -= len;
        let mut offset = offset;
        if let Some((&prev_off, &prev_len)) = self.free.range(..offset).next_back() {
            debug_assert!(prev_off + prev_len <= offset, "double free");
            if prev_off + prev_len == offset {
                self.free.remove(&prev_off);
                offset = prev_off;
                len += prev_len;
            }
        }
        if let Some(&next_len) = self.free.get(&(offset + len)) {
            self.free.remove(&(offset + len));
            len += next_len;
        }
        self.free.insert(offset, len);
    }

    /// Largest free range (what the next allocation can get at most).
    pub fn largest_free(&self) -> u64 {
        self.free.values().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allocations_are_aligned_and_reused_after_free() {
        let mut a = RangeAllocator::new(1024);
        let x = a.allocate(10).unwrap();
        let y = a.allocate(64).unwrap();
        assert_eq!((x, y), (0, 64));
        assert_eq!(a.in_use(), 128);
        a.free(x, 10);
        assert_eq!(a.allocate(64), Some(0));
        assert_eq!(a.allocate(2000), None);
    }

    #[test]
    fn freeing_everything_coalesces_into_one_range() {
        let mut a = RangeAllocator::new(640);
        let offs: Vec<u64> = (0..10).map(|_| a.allocate(64).unwrap()).collect();
        assert_eq!(a.allocate(1), None);
        for &o in offs.iter().rev().step_by(2).chain(offs.iter().step_by(2)) {
            a.free(o, 64);
        }
        assert_eq!(a.largest_free(), 640);
        assert_eq!(a.in_use(), 0);
    }

    proptest! {
        /// Live allocations never overlap, stay inside capacity, and free space plus used space
        /// always equals capacity.
        #[test]
        fn live_ranges_are_disjoint(ops in prop::collection::vec((any::<bool>(), 1u64..300, any::<prop::sample::Index>()), 1..200)) {
            let mut a = RangeAllocator::new(4096);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (alloc, len, idx) in ops {
                if alloc || live.is_empty() {
                    if let Some(off) = a.allocate(len) {
                        let l = aligned_len(len);
                        prop_assert!(off + l <= 4096);
                        prop_assert_eq!(off % STAGING_ALIGN, 0);
                        for &(o, ol) in &live {
                            prop_assert!(off + l <= o || o + aligned_len(ol) <= off);
                        }
                        live.push((off, len));
                    }
                } else {
                    let (o, l) = live.swap_remove(idx.index(live.len()));
                    a.free(o, l);
                }
                let used: u64 = live.iter().map(|&(_, l)| aligned_len(l)).sum();
                prop_assert_eq!(a.in_use(), used);
                let free: u64 = a.free.values().sum();
                prop_assert_eq!(free + used, 4096);
            }
        }
    }
}
