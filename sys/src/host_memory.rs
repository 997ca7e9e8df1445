//! Anonymous private mappings for pools and staging buffers, and the glibc heap tuning
//! binaries may apply at start (both raw libc calls).
//!
//! Registered memory is mapped straight from the kernel, not taken from the process's heap:
//! its lifetime is the segment's, and the heap allocator (glibc's, or a global allocator such
//! as mimalloc that asks for transparent huge pages) must not decide how its pages are faulted,
//! trimmed or compacted while peers write into it.

use std::io;
use std::ptr::NonNull;

/// The system page size (4096 if the kernel does not say).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// Maps `len` bytes of zeroed, page-aligned, private anonymous memory. With `populate`, the
/// kernel faults the pages in now (as registering with an RDMA NIC would), so that the data
/// path does not stop on page faults; it does so best effort (pages it cannot get now are
/// faulted later, and a host short of memory may meet the OOM killer here rather than an
/// error).
pub fn map(len: usize, populate: bool) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot map zero bytes",
        ));
    }
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    if populate {
        flags |= libc::MAP_POPULATE;
    }
    // SAFETY: an anonymous mapping touches no existing memory.
    unsafe { map_read_write(len, flags, -1) }
}

/// mmap of `len` read-write bytes at an address the kernel picks.
///
/// # Safety
/// `fd` is -1 with `MAP_ANONYMOUS` in `flags`, or an open file at least `len` bytes long.
pub(crate) unsafe fn map_read_write(
    len: usize,
    flags: libc::c_int,
    fd: libc::c_int,
) -> io::Result<NonNull<u8>> {
    // SAFETY: a new mapping at an address the kernel picks replaces nothing; the caller
    // vouches for the file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Unmaps a mapping made by [`map`].
///
/// # Safety
/// `ptr` and `len` must be exactly one earlier [`map`]'s result and length, not yet unmapped,
/// and nothing may use the memory afterwards.
pub unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller passes a live mapping of exactly this length.
    let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    if rc != 0 {
        // Only an invalid range fails, which the contract rules out; leaking is the safe side.
        debug_assert!(false, "munmap failed: {}", io::Error::last_os_error());
    }
}

/// Tunes glibc's heap for a process that moves batches of values through it; for binaries to
/// call at start (a library must not change its host's allocator). Returns whether it applied
/// (false off glibc).
///
/// Sets the trim threshold to 256 MiB (freed memory at the top of a heap stays mapped until
/// that much is free, per arena) and the mmap threshold to 32 MiB, glibc's maximum (chunks below
/// it come from the heap, whose freed pages are reused, instead of fresh mappings); both also
/// stop glibc's own adjustment of these thresholds. Without it, a copying batch_get's values
/// freed at once could be handed back to the kernel and faulted in again by the next batch
/// (measurements in the README, "Host memory").
pub fn tune_heap_for_batches() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called before the binary
        // starts its threads.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_zeroed_aligned_writable_memory() {
        for populate in [false, true] {
            let len = 3 * page_size() + 5;
            let p = map(len, populate).unwrap();
            assert_eq!(p.as_ptr() as usize % page_size(), 0);
            // SAFETY: a fresh mapping of len bytes, unmapped below.
            let s = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) };
            assert!(s.iter().all(|&b| b == 0));
            s[len - 1] = 9;
            assert_eq!(s[len - 1], 9);
            // SAFETY: exactly the mapping made above, no longer used.
            unsafe { unmap(p, len) };
        }
    }

    #[test]
    fn heap_tuning_applies_on_glibc() {
        assert_eq!(
            tune_heap_for_batches(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }

    #[test]
    fn zero_length_is_refused() {
        assert_eq!(
            map(0, false).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn impossible_size_is_an_error_not_a_crash() {
        assert!(map(usize::MAX / 2, false).is_err());
    }
}
