//! Space allocators: one per mounted segment, handing out `[offset, offset+len)` ranges of the
//! segment. The master never touches the memory; it only keeps ranges from overlapping.

mod offset;

pub use offset::{round_up, OffsetAllocator, ALIGN};

/// Hands out non-overlapping ranges of a segment of fixed capacity.
pub trait SpaceAllocator: Send + std::fmt::Debug {
    /// Allocates `len` bytes (rounded up to the allocator's alignment); the offset, or `None`
    /// when no free range is large enough (or `len` is 0).
    fn allocate(&mut self, len: u64) -> Option<u64>;
    /// Marks a specific range as allocated (objects reported after failover). `false` when the
    /// range is not wholly free, misaligned or out of bounds.
    fn reserve(&mut self, offset: u64, len: u64) -> bool;
    /// Frees the allocation starting at `offset`; its rounded length, or `None` if there is none.
    fn free(&mut self, offset: u64) -> Option<u64>;
    /// Splits the allocation starting at `offset` into `[offset, offset+at)` and the rest, two
    /// allocations freed independently (one batch's objects carved from one extent). `false`
    /// when there is no such allocation, or `at` is misaligned or not strictly inside it.
    fn split(&mut self, offset: u64, at: u64) -> bool;
    /// Allocates `want` bytes or, when no free range is that large, the whole largest free range
    /// if it holds at least `min`; the offset and rounded length.
    fn allocate_up_to(&mut self, min: u64, want: u64) -> Option<(u64, u64)> {
        let want = round_up(want.max(min))?;
        if let Some(off) = self.allocate(want) {
            return Some((off, want));
        }
        let largest = self.largest_free();
        if largest == 0 || largest < min || largest >= want {
            return None;
        }
        self.allocate(largest).map(|off| (off, largest))
    }
    /// Bytes managed.
    fn capacity(&self) -> u64;
    /// Bytes allocated (rounded lengths).
    fn used(&self) -> u64;
    /// Number of allocations.
    fn allocations(&self) -> usize;
    /// Length of the largest free range.
    fn largest_free(&self) -> u64;
    /// `1 - largest_free / free`: 0 when all free space is one range.
    fn fragmentation(&self) -> f64 {
        let free = self.capacity() - self.used();
        if free == 0 {
            0.0
        } else {
            1.0 - self.largest_free() as f64 / free as f64
        }
    }
}
