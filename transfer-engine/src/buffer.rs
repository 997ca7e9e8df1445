//! Page-aligned owned host memory, for pools and staging buffers.

use std::alloc::Layout;
use std::ptr::NonNull;

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
    layout: Layout,
}

// SAFETY: the buffer exclusively owns its allocation; access goes through &self/&mut self.
unsafe impl Send for AlignedBuffer {}
// SAFETY: shared access only hands out shared slices / raw pointers.
unsafe impl Sync for AlignedBuffer {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

impl AlignedBuffer {
    /// Allocates `len` zeroed bytes aligned to the page size.
    pub fn new(len: usize) -> Result<Self, TransferError> {
        if len == 0 {
            return Err(TransferError::InvalidArgument(
                "AlignedBuffer length must be > 0".into(),
            ));
        }
        let layout = Layout::from_size_align(len, page_size())
            .map_err(|e| TransferError::InvalidArgument(format!("buffer of {len} bytes: {e}")))?;
        // SAFETY: layout has non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            TransferError::Io(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {len} bytes"),
            ))
        })?;
        Ok(AlignedBuffer { ptr, layout })
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
        self.layout.size()
    }

    /// Always false (zero-length buffers are refused).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuffer")
            .field("addr", &self.ptr)
            .field("len", &self.layout.size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuffer::new(10_000).unwrap();
        assert_eq!(b.as_ptr() as usize % page_size(), 0);
        assert_eq!(b.len(), 10_000);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[9_999] = 1;
        assert_eq!(b.as_slice()[9_999], 1);
    }

    #[test]
    fn zero_length_refused() {
        assert!(matches!(
            AlignedBuffer::new(0),
            Err(TransferError::InvalidArgument(_))
        ));
    }
}
