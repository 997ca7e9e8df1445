//! Page-aligned owned host memory, for pools and staging buffers: an anonymous mapping of its
//! own (see `mooncake_sys::host_memory` for why not the heap).

use std::ptr::NonNull;

use mooncake_sys::host_memory;

use crate::TransferError;

/// Page-aligned, zero-initialised host memory owned by this value (not registered by itself).
///
/// ```
/// let mut buf = transfer_engine::AlignedBuffer::new(8192).unwrap();
/// buf.as_mut_slice()[0] = 7;
/// assert_eq!(buf.as_ptr() as usize % 4096, 0);
/// ```
pub struct AlignedBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer exclusively owns its mapping; access goes through &self/&mut self.
unsafe impl Send for AlignedBuffer {}
// SAFETY: shared access only hands out shared slices / raw pointers.
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    /// Maps `len` zeroed bytes aligned to the page size; pages are faulted in on first touch.
    pub fn new(len: usize) -> Result<Self, TransferError> {
        Self::map(len, false)
    }

    /// Like [`Self::new`], with the pages faulted in now (best effort, see
    /// `mooncake_sys::host_memory::map`), so that the data path (a peer's WRITE landing in a
    /// pool, a staging copy) does not wait on page faults. Pools and staging buffers use this;
    /// registering with an RDMA NIC pins every page anyway. Costs time in proportion to the
    /// length (about a second per few GiB) and commits the memory at once.
    pub fn populated(len: usize) -> Result<Self, TransferError> {
        Self::map(len, true)
    }

    /// At least `len` bytes in the host's reserved huge pages (see
    /// `mooncake_sys::host_memory::map_reserved_huge`), faulted in; [`Self::len`] is `len`
    /// rounded up to the huge page size. Fails if too few reserved huge pages are free.
    pub fn reserved_huge(len: usize) -> Result<Self, TransferError> {
        let (ptr, len) = host_memory::map_reserved_huge(len).map_err(|e| {
            TransferError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot map {len} bytes in reserved huge pages: {e}"),
            ))
        })?;
        Ok(AlignedBuffer { ptr, len })
    }

    fn map(len: usize, populate: bool) -> Result<Self, TransferError> {
        if len == 0 {
            return Err(TransferError::InvalidArgument(
                "AlignedBuffer length must be > 0".into(),
            ));
        }
        let ptr = host_memory::map(len, populate).map_err(|e| {
            TransferError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot map {len} bytes: {e}"),
            ))
        })?;
        Ok(AlignedBuffer { ptr, len })
    }

    /// Start of the buffer.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Start of the buffer, writable.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Start address as the engine's `u64` address.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (zero-length buffers are refused).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: mapped in `map` with exactly this length; `self` is its only owner.
        unsafe { host_memory::unmap(self.ptr, self.len) }
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuffer")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuffer::new(10_000).unwrap();
        assert_eq!(b.as_ptr() as usize % host_memory::page_size(), 0);
        assert_eq!(b.len(), 10_000);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[9_999] = 1;
        assert_eq!(b.as_slice()[9_999], 1);
    }

    #[test]
    fn populated_is_zeroed_and_writable() {
        let mut b = AlignedBuffer::populated(1 << 20).unwrap();
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[(1 << 20) - 1] = 3;
        assert_eq!(b.as_slice()[(1 << 20) - 1], 3);
    }

    #[test]
    fn zero_length_refused() {
        assert!(matches!(
            AlignedBuffer::new(0),
            Err(TransferError::InvalidArgument(_))
        ));
    }
}
