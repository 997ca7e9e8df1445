//! Offset allocator with power-of-two size bins: a bitmap of non-empty bins finds a fitting
//! bin in O(1) (one `trailing_zeros`), free ranges are address-ordered inside a bin and kept in
//! an offset map for O(log n) coalescing with both neighbours on free.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::SpaceAllocator;

/// Alignment of every allocation (offset and rounded length), a cache line.
pub const ALIGN: u64 = 64;
const BINS: usize = 64;
/// How many ranges of the lower ("might fit") bin are examined before moving up a bin.
const GOOD_FIT_SCAN: usize = 8;

/// See the module documentation.
#[derive(Debug)]
pub struct OffsetAllocator {
    capacity: u64,
    free_by_offset: BTreeMap<u64, u64>,
    bins: Vec<BTreeSet<u64>>,
    bitmap: u64,
    allocated: HashMap<u64, u64>,
    used: u64,
}

fn bin_of(len: u64) -> usize {
    63 - len.leading_zeros() as usize
}

/// `len` rounded up to [`ALIGN`] (`None` on overflow).
pub fn round_up(len: u64) -> Option<u64> {
    len.checked_add(ALIGN - 1).map(|l| l & !(ALIGN - 1))
}

impl OffsetAllocator {
    /// An allocator over `[0, capacity)`, capacity rounded down to [`ALIGN`].
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity & !(ALIGN - 1);
        let mut a = OffsetAllocator {
            capacity,
            free_by_offset: BTreeMap::new(),
            bins: (0..BINS).map(|_| BTreeSet::new()).collect(),
            bitmap: 0,
            allocated: HashMap::new(),
            used: 0,
        };
        if capacity > 0 {
            a.insert_free(0, capacity);
        }
        a
    }

    /// Number of separate free ranges.
    pub fn free_ranges(&self) -> usize {
        self.free_by_offset.len()
    }

    fn insert_free(&mut self, off: u64, len: u64) {
        let b = bin_of(len);
        self.free_by_offset.insert(off, len);
        self.bins[b].insert(off);
        self.bitmap |= 1 << b;
    }

    fn remove_free(&mut self, off: u64, len: u64) {
        let b = bin_of(len);
        self.free_by_offset.remove(&off);
        self.bins[b].remove(&off);
        if self.bins[b].is_empty() {
            self.bitmap &= !(1 << b);
        }
    }

    fn find(&self, size: u64) -> Option<(u64, u64)> {
        let fb = bin_of(size);
        // Ranges in bin `fb` are >= 2^fb but may still be smaller than `size`.
        for &off in self.bins[fb].iter().take(GOOD_FIT_SCAN) {
            let len = self.free_by_offset[&off];
            if len >= size {
                return Some((off, len));
            }
        }
        // Every range in a higher bin fits.
        let above = if fb + 1 >= BINS {
            0
        } else {
            self.bitmap & !((1u64 << (fb + 1)) - 1)
        };
        if above == 0 {
            return None;
        }
        let b = above.trailing_zeros() as usize;
        let off = *self.bins[b].first()?;
        Some((off, self.free_by_offset[&off]))
    }
}

impl SpaceAllocator for OffsetAllocator {
    fn allocate(&mut self, len: u64) -> Option<u64> {
        if len == 0 {
            return None;
        }
        let size = round_up(len)?;
        let (off, flen) = self.find(size)?;
        self.remove_free(off, flen);
        if flen > size {
            self.insert_free(off + size, flen - size);
        }
        self.allocated.insert(off, size);
        self.used += size;
        Some(off)
    }

    fn reserve(&mut self, offset: u64, len: u64) -> bool {
        let Some(size) = round_up(len) else {
            return false;
        };
        if len == 0 || !offset.is_multiple_of(ALIGN) {
            return false;
        }
        let Some(end) = offset.checked_add(size) else {
            return false;
        };
        if end > self.capacity {
            return false;
        }
        let Some((&bo, &bl)) = self.free_by_offset.range(..=offset).next_back() else {
            return false;
        };
        if bo + bl < end {
            return false;
        }
        self.remove_free(bo, bl);
        if offset > bo {
            self.insert_free(bo, offset - bo);
        }
        if bo + bl > end {
            self.insert_free(end, bo + bl - end);
        }
        self.allocated.insert(offset, size);
        self.used += size;
        true
    }

    fn free(&mut self, offset: u64) -> Option<u64> {
        let size = self.allocated.remove(&offset)?;
        self.used -= size;
        let (mut start, mut len) = (offset, size);
        if let Some((&po, &pl)) = self.free_by_offset.range(..offset).next_back() {
            if po + pl == offset {
                self.remove_free(po, pl);
                start = po;
                len += pl;
            }
        }
        if let Some(&nl) = self.free_by_offset.get(&(offset + size)) {
            self.remove_free(offset + size, nl);
            len += nl;
        }
        self.insert_free(start, len);
        Some(size)
    }

    fn split(&mut self, offset: u64, at: u64) -> bool {
        let Some(&size) = self.allocated.get(&offset) else {
            return false;
        };
        if at == 0 || at >= size || !at.is_multiple_of(ALIGN) {
            return false;
        }
        self.allocated.insert(offset, at);
        self.allocated.insert(offset + at, size - at);
        true
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn allocations(&self) -> usize {
        self.allocated.len()
    }

    fn used(&self) -> u64 {
        self.used
    }

    fn largest_free(&self) -> u64 {
        if self.bitmap == 0 {
            return 0;
        }
        let top = 63 - self.bitmap.leading_zeros() as usize;
        self.bins[top]
            .iter()
            .map(|o| self.free_by_offset[o])
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// Checks the allocator's invariants against an independent model of live ranges.
    struct Checked {
        inner: OffsetAllocator,
        live: BTreeMap<u64, u64>,
        /// Totals are checked on every `check_every`-th operation (they cost O(n)).
        check_every: usize,
        ops: usize,
    }

    impl Checked {
        fn new(cap: u64) -> Self {
            Checked {
                inner: OffsetAllocator::new(cap),
                live: BTreeMap::new(),
                check_every: 1,
                ops: 0,
            }
        }

        fn check_no_overlap(&self, off: u64, size: u64) {
            assert!(off.is_multiple_of(ALIGN) && off + size <= self.inner.capacity());
            if let Some((&po, &pl)) = self.live.range(..=off).next_back() {
                assert!(po + pl <= off, "overlaps previous [{po},{})", po + pl);
            }
            if let Some((&no, _)) = self.live.range(off..).next() {
                assert!(off + size <= no, "overlaps next at {no}");
            }
        }

        fn alloc(&mut self, len: u64) -> Option<u64> {
            let off = self.inner.allocate(len)?;
            let size = round_up(len).unwrap();
            self.check_no_overlap(off, size);
            self.live.insert(off, size);
            self.check_totals();
            Some(off)
        }

        fn alloc_up_to(&mut self, min: u64, want: u64) -> Option<u64> {
            let (off, size) = self.inner.allocate_up_to(min, want)?;
            assert!(size >= round_up(min).unwrap() && size <= round_up(want.max(min)).unwrap());
            self.check_no_overlap(off, size);
            self.live.insert(off, size);
            self.check_totals();
            Some(off)
        }

        /// Splits the live allocation at `off` at `at` (rounded down to ALIGN); the second
        /// piece's offset when it split.
        fn split(&mut self, off: u64, at: u64) -> Option<u64> {
            let size = self.live[&off];
            let at = at / ALIGN * ALIGN;
            let ok = self.inner.split(off, at);
            assert_eq!(ok, at > 0 && at < size, "split of {size} at {at}");
            if !ok {
                return None;
            }
            self.live.insert(off, at);
            self.live.insert(off + at, size - at);
            self.check_totals();
            Some(off + at)
        }

        fn free(&mut self, off: u64) {
            let size = self.live.remove(&off).unwrap();
            assert_eq!(self.inner.free(off), Some(size));
            assert_eq!(self.inner.free(off), None, "double free must be refused");
            self.check_totals();
        }

        fn check_totals(&mut self) {
            self.ops += 1;
            if !self.ops.is_multiple_of(self.check_every) {
                return;
            }
            assert_eq!(self.inner.used(), self.live.values().sum::<u64>());
            let free: u64 = self.inner.free_by_offset.values().sum();
            assert_eq!(free + self.inner.used(), self.inner.capacity());
            // Free ranges never touch each other (coalescing is complete).
            let mut prev_end = None;
            for (&o, &l) in &self.inner.free_by_offset {
                assert_ne!(prev_end, Some(o));
                prev_end = Some(o + l);
            }
        }
    }

    #[test]
    fn exhausts_and_reuses_freed_space() {
        let mut a = Checked::new(64 * 1024);
        let offs: Vec<u64> = (0..16).map(|_| a.alloc(4096).unwrap()).collect();
        assert_eq!(a.inner.allocate(1), None);
        a.free(offs[3]);
        assert_eq!(a.alloc(4096), Some(offs[3]));
        for o in offs {
            a.free(o);
        }
        assert_eq!(a.inner.largest_free(), 64 * 1024);
        assert_eq!(a.inner.free_ranges(), 1);
    }

    #[test]
    fn split_pieces_are_freed_independently_and_coalesce() {
        let mut a = Checked::new(64 * 1024);
        let run = a.alloc(16 * 4096).unwrap();
        // Carve the run into four 4 KiB pieces and a tail.
        let mut pieces = vec![run];
        for _ in 0..4 {
            let last = *pieces.last().unwrap();
            pieces.push(a.split(last, 4096).unwrap());
        }
        for w in pieces.windows(2) {
            assert_eq!(w[1], w[0] + 4096, "pieces are adjacent");
        }
        assert!(
            !a.inner.split(pieces[1], 4096),
            "whole piece: nothing to split"
        );
        assert!(!a.inner.split(pieces[1], 100), "misaligned");
        assert!(!a.inner.split(7, 64), "no allocation there");
        // Free the middle pieces and the tail out of order; the rest stays allocated.
        a.free(pieces[2]);
        a.free(pieces[4]);
        assert_eq!(a.inner.used(), 3 * 4096);
        a.free(pieces[1]);
        a.free(pieces[3]);
        a.free(pieces[0]);
        assert_eq!(a.inner.free_ranges(), 1);
        assert_eq!(a.alloc(64 * 1024), Some(0));
    }

    #[test]
    fn allocate_up_to_takes_the_largest_range_when_want_does_not_fit() {
        let mut a = Checked::new(64 * 1024);
        let hole = a.alloc(16 * 1024).unwrap();
        let _keep = a.alloc(4096).unwrap();
        a.free(hole);
        // Free: 16 KiB at 0 and 44 KiB after the kept block.
        let off = a.alloc_up_to(4096, 1 << 20).unwrap();
        assert_eq!(a.live[&off], 44 * 1024);
        assert_eq!(
            a.inner.allocate_up_to(32 * 1024, 1 << 20),
            None,
            "below min"
        );
        let off = a.alloc_up_to(100, 8 * 1024).unwrap();
        assert_eq!(a.live[&off], 8 * 1024);
    }

    #[test]
    fn reserve_carves_exact_ranges_and_refuses_taken_ones() {
        let mut a = OffsetAllocator::new(1 << 20);
        assert!(a.reserve(4096, 100));
        assert!(!a.reserve(4096, 64), "already reserved");
        assert!(!a.reserve(4000, 200), "overlaps the reservation");
        assert!(!a.reserve(7, 64), "misaligned");
        assert!(!a.reserve((1 << 20) - 64, 128), "out of bounds");
        assert_eq!(a.used(), 128);
        let o = a.allocate(4096).unwrap();
        assert!(o + 4096 <= 4096 || o >= 4096 + 128);
        assert_eq!(a.free(4096), Some(128));
    }

    #[test]
    fn fragmentation_under_random_churn_is_measured_and_bounded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let cap = 256 << 20;
        let mut a = Checked::new(cap);
        a.check_every = 97;
        let mut live: Vec<u64> = Vec::new();
        let mut failures = 0;
        for _ in 0..20_000 {
            // Fill to ~75%, then churn there: frees and allocations alternate at random.
            if !live.is_empty() && a.inner.used() > cap * 3 / 4 && rng.random_bool(0.5) {
                let i = rng.random_range(0..live.len());
                let off = live.swap_remove(i);
                a.free(off);
            } else {
                // KV-cache-like sizes: 4 KiB .. 1 MiB.
                let len = 4096u64 << rng.random_range(0..9);
                let len = len + rng.random_range(0..4096);
                match a.alloc(len) {
                    Some(off) => live.push(off),
                    // Only a failure with enough total free space is fragmentation's fault.
                    None if cap - a.inner.used() >= len + ALIGN => failures += 1,
                    None => {}
                }
            }
        }
        let frag = a.inner.fragmentation();
        println!(
            "fragmentation after churn: {frag:.3} (used {:.1}%, {} free ranges, \
             {failures} allocations failed despite enough free bytes)",
            a.inner.used() as f64 * 100.0 / cap as f64,
            a.inner.free_ranges()
        );
        assert!(frag < 0.9, "fragmentation {frag}");
        assert!(failures < 200, "{failures} fragmentation failures");
        for off in live {
            a.free(off);
        }
        assert_eq!(a.inner.fragmentation(), 0.0);
        assert_eq!(a.inner.largest_free(), a.inner.capacity());
    }

    proptest! {
        #[test]
        fn no_overlap_and_freed_space_is_reusable(ops in proptest::collection::vec((0u8..4, 1u64..20_000, any::<prop::sample::Index>()), 1..300)) {
            let mut a = Checked::new(1 << 20);
            let mut live = Vec::new();
            for (op, len, idx) in ops {
                match op {
                    _ if live.is_empty() => {
                        if let Some(o) = a.alloc(len) { live.push(o); }
                    }
                    0 => {
                        if let Some(o) = a.alloc(len) { live.push(o); }
                    }
                    1 => {
                        if let Some(o) = a.alloc_up_to(len, len * 8) { live.push(o); }
                    }
                    2 => {
                        // Splits a live allocation; both pieces are then freed independently.
                        let o = live[idx.index(live.len())];
                        if let Some(second) = a.split(o, len) { live.push(second); }
                    }
                    _ => {
                        let o = live.swap_remove(idx.index(live.len()));
                        a.free(o);
                    }
                }
            }
            for o in live { a.free(o); }
            prop_assert_eq!(a.inner.used(), 0);
            prop_assert_eq!(a.inner.largest_free(), a.inner.capacity());
            // All space is usable again as one range.
            prop_assert_eq!(a.inner.allocate(a.inner.capacity()), Some(0));
        }
    }
}
