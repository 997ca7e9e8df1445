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

/// Maps `len` bytes of zeroed, page-aligned, private anonymous memory. With `populate` (pools
/// and staging buffers, used whole), it asks for transparent huge pages (see
/// [`advise_huge_pages`]) and faults the pages in now (as registering with an RDMA NIC would),
/// so that the data path does not stop on page faults; best effort (a host short of memory
/// may meet the OOM killer here rather than an error). Without it, pages are faulted in 4 KiB
/// at a time on first touch, so sparse use stays small.
pub fn map(len: usize, populate: bool) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot map zero bytes",
        ));
    }
    // SAFETY: an anonymous mapping touches no existing memory.
    let ptr = unsafe { map_read_write(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)? };
    if populate {
        // SAFETY: the whole of a fresh mapping of this length, which nothing else uses yet.
        unsafe {
            advise_huge_pages(ptr, len);
            fault_in_fresh(ptr, len);
        }
    }
    Ok(ptr)
}

/// Asks for transparent huge pages on `[ptr, +len)`, best effort: where the kernel's policy
/// allows it (`enabled` / `shmem_enabled` under /sys/kernel/mm/transparent_hugepage set to
/// `madvise` / `advise` or more), a pool is mapped in 2 MiB pages: 512 times fewer faults and
/// page-table entries (which matters when several same-host peers map each pool), fewer TLB
/// misses, and fewer pages for an RDMA NIC to pin. A policy of `never` leaves 4 KiB pages.
///
/// # Safety
/// `[ptr, +len)` is a mapping this process owns.
pub(crate) unsafe fn advise_huge_pages(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller's mapping; MADV_HUGEPAGE changes how pages are backed, not their
    // contents.
    let _ = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
}

/// The kernel's transparent-huge-page policy for shared memory (memfds): the selected word of
/// /sys/kernel/mm/transparent_hugepage/shmem_enabled (`never`, `advise`, `within_size`,
/// `always`, ...), or `None` if the kernel does not say.
pub fn shmem_huge_page_policy() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").ok()?;
    selected_word(&text)
}

/// The word in brackets of a sysfs choice list such as `always [never] deny`.
fn selected_word(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// Faults in `[ptr, +len)` of memory nobody has written yet: one MADV_POPULATE_WRITE, or on
/// kernels without it (before 5.14) a zero written to each page (the memory is zero already).
/// Any other failure (the memory cgroup's limit) leaves the rest to page faults rather than
/// pushing on into the OOM killer.
///
/// # Safety
/// `[ptr, +len)` is a fresh, zeroed, writable mapping this process owns and nothing uses yet.
pub(crate) unsafe fn fault_in_fresh(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller's mapping.
    match unsafe { populate_strict(ptr, len) } {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        _ => return,
    }
    let page = page_size();
    for off in (0..len).step_by(page) {
        // SAFETY: inside the caller's fresh mapping, whose bytes are all zero: writing a zero
        // changes nothing but faults the page in.
        unsafe { ptr.as_ptr().add(off).write_volatile(0) };
    }
}

/// The size of the host's default reserved huge pages (`Hugepagesize` in /proc/meminfo:
/// usually 2 MiB, 1 GiB where the kernel was booted so), or `None` if it does not say.
pub fn reserved_huge_page_size() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_kib(&meminfo, "Hugepagesize").map(|kib| kib * 1024)
}

/// `len` (at least one byte) rounded up to whole reserved huge pages.
pub(crate) fn reserved_huge_len(len: usize) -> io::Result<usize> {
    let page = reserved_huge_page_size()
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no huge page size"))?;
    round_up(len.max(1), page)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))
}

/// Reserved huge pages a new mapping can take now: `HugePages_Free` less `HugePages_Rsvd`
/// (free pages already promised to mappings not yet touched) in /proc/meminfo.
pub fn available_reserved_huge_pages() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let count = |field| meminfo_value(&meminfo, field)?.parse::<usize>().ok();
    Some(count("HugePages_Free")?.saturating_sub(count("HugePages_Rsvd").unwrap_or(0)))
}

/// The value of `field` in /proc/meminfo's format (`Hugepagesize:    2048 kB`), trimmed.
fn meminfo_value<'a>(meminfo: &'a str, field: &str) -> Option<&'a str> {
    meminfo
        .lines()
        .find_map(|line| Some(line.strip_prefix(field)?.strip_prefix(':')?.trim()))
}

/// The value in KiB of `field` in /proc/meminfo's format (`Hugepagesize:    2048 kB`).
fn meminfo_kib(meminfo: &str, field: &str) -> Option<usize> {
    meminfo_value(meminfo, field)?
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// `len` rounded up to a multiple of `page`.
pub fn round_up(len: usize, page: usize) -> Option<usize> {
    len.checked_next_multiple_of(page.max(1))
}

/// Maps at least `len` bytes (rounded up to the reserved huge page size, returned with the
/// pointer) of zeroed, private anonymous memory in the host's reserved huge pages
/// (`/proc/sys/vm/nr_hugepages`), every page allocated now ([`populate_strict`]), and not
/// inherited by child processes (a parent's write after a fork would otherwise copy a huge
/// page, which may not be there). Fails if too few are free (the kernel reserves them at
/// mmap) or if they cannot be allocated (a hugetlb cgroup limit charges at first touch):
/// nothing is left mapped then, and the memory never faults later for want of pages.
pub fn map_reserved_huge(len: usize) -> io::Result<(NonNull<u8>, usize)> {
    let len = reserved_huge_len(len)?;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB;
    // SAFETY: an anonymous mapping touches no existing memory.
    let ptr = unsafe { map_read_write(len, flags, -1)? };
    // SAFETY: the whole of the fresh mapping; MADV_DONTFORK changes only what a child gets.
    let ready = unsafe {
        let _ = libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTFORK);
        populate_strict(ptr, len)
    };
    if let Err(e) = ready {
        // SAFETY: the mapping made above, of this length, which nothing uses.
        unsafe { unmap(ptr, len) };
        return Err(e);
    }
    Ok((ptr, len))
}

/// Allocates every page of `[ptr, +len)` now with MADV_POPULATE_WRITE, or fails: for hugetlb
/// memory, where a page that cannot be allocated at first touch raises SIGBUS rather than
/// waiting, a failure must be seen here (a kernel without MADV_POPULATE_WRITE, before 5.14,
/// fails too: such pools take ordinary pages).
///
/// # Safety
/// `[ptr, +len)` is a writable mapping this process owns.
pub(crate) unsafe fn populate_strict(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    loop {
        // SAFETY: the caller's mapping; MADV_POPULATE_WRITE only faults pages in.
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_POPULATE_WRITE) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            _ => return Err(e),
        }
    }
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

/// Tests that count the host's free huge pages run one at a time.
#[cfg(test)]
pub(crate) static HUGE_PAGE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether the kernel may create surplus huge pages beyond the reserved ones (tests).
#[cfg(test)]
pub(crate) fn huge_page_overcommit() -> bool {
    std::fs::read_to_string("/proc/sys/vm/nr_overcommit_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .is_some_and(|n| n > 0)
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

    /// Either the host has enough reserved huge pages free and the mapping is made of them
    /// (held under [`HUGE_PAGE_TESTS`], like the other test of them in this crate)
    /// (the free count drops), or the call fails cleanly; asking for more than are free
    /// always fails. (CI reserves some, so the first branch runs there.)
    #[test]
    fn reserved_huge_pages_are_used_or_refused_cleanly() {
        let _one_at_a_time = HUGE_PAGE_TESTS.lock();
        let (Some(page), Some(free)) = (reserved_huge_page_size(), available_reserved_huge_pages())
        else {
            assert!(map_reserved_huge(1).is_err());
            return;
        };
        // Well beyond what is free (unless the kernel may add surplus pages).
        if !huge_page_overcommit() {
            assert!(
                map_reserved_huge((free + 8) * page).is_err(),
                "more than are free"
            );
        }
        match map_reserved_huge(page + 1) {
            Ok((ptr, len)) => {
                assert_eq!(len, 2 * page, "rounded up to whole huge pages");
                assert!(free >= 2);
                let now = available_reserved_huge_pages().unwrap();
                assert!(now <= free - 2, "{free} free before, {now} after");
                // SAFETY: a fresh mapping of `len` bytes, unmapped right after.
                unsafe {
                    let bytes = std::slice::from_raw_parts_mut(ptr.as_ptr(), len);
                    assert!(bytes.iter().all(|&b| b == 0));
                    bytes[len - 1] = 7;
                    assert_eq!(bytes[len - 1], 7);
                    unmap(ptr, len);
                }
            }
            // Too few, or taken by a test beside this one meanwhile.
            Err(e) => assert!(free < 4, "{free} free, yet: {e}"),
        }
    }

    #[test]
    fn meminfo_fields_parse_in_kib() {
        let meminfo =
            "MemTotal:       24000000 kB\nHugePages_Free:       3\nHugepagesize:       2048 kB\n";
        assert_eq!(meminfo_kib(meminfo, "Hugepagesize"), Some(2048));
        assert_eq!(meminfo_kib(meminfo, "MemTotal"), Some(24000000));
        assert_eq!(meminfo_kib(meminfo, "HugePages_Free"), None, "not in kB");
        assert_eq!(meminfo_kib(meminfo, "Hugepage"), None, "whole names only");
        assert_eq!(round_up(1, 2 << 20), Some(2 << 20));
        assert_eq!(round_up(4 << 20, 2 << 20), Some(4 << 20));
        assert_eq!(round_up(usize::MAX, 2 << 20), None);
    }

    #[test]
    fn the_selected_policy_is_the_word_in_brackets() {
        let sysfs = "always within_size advise [never] deny force\n";
        assert_eq!(selected_word(sysfs).as_deref(), Some("never"));
        assert_eq!(selected_word("[advise] never").as_deref(), Some("advise"));
        assert_eq!(selected_word("no choice"), None);
        assert_eq!(selected_word("[unclosed"), None);
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
