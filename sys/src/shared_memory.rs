//! Memory shared between the processes of one host: memfd-backed mappings, and passing their
//! file descriptors over Unix sockets (`SCM_RIGHTS`). Raw libc calls.
//!
//! A segment's owner creates its pool with [`SharedMemory::create`]; a peer on the same host
//! receives the descriptor with [`recv_with_fd`], maps it with [`SharedMemory::map`] and then
//! copies to and from the owner's pool itself, without waking the owner. The owner seals the
//! file's size right after sizing it, and a peer maps only a sealed file at most as long as it
//! is, so no access through a mapping can run past the file's end (which would raise SIGBUS).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;

/// A mapping of a whole memfd, shared with every process that maps the same file.
#[derive(Debug)]
pub struct SharedMemory {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes mapped: `len`, or `len` rounded up to the file's huge page size (hugetlb
    /// mappings are made and unmapped in whole huge pages).
    mapped: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory owned by this value until drop; like any registered
// memory, concurrent access to its bytes is the users' to order (the engine's transfer
// contract), and nothing here hands out references to it.
unsafe impl Send for SharedMemory {}
// SAFETY: as above; `&SharedMemory` only exposes the address, the length and the descriptor.
unsafe impl Sync for SharedMemory {}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl SharedMemory {
    /// Creates a zeroed memfd of `len` bytes named `name` (shown in `/proc/<pid>/maps`), seals
    /// its size, and maps it read-write, asking for huge pages. With `populate`, the pages are
    /// allocated now, best effort (see [`crate::host_memory::map`]).
    pub fn create(name: &str, len: usize, populate: bool) -> io::Result<SharedMemory> {
        Self::create_with(name, len, populate, false)
    }

    /// Like [`Self::create`] with the pages in the host's reserved huge pages
    /// (`/proc/sys/vm/nr_hugepages`, the default huge page size), `len` rounded up to a
    /// multiple of it ([`Self::len`] says how much), every page allocated now. Fails if too few
    /// are free (the kernel reserves them at mmap) or if they cannot be allocated (a hugetlb
    /// cgroup limit charges at first touch; kernels before 5.14 cannot populate): nothing is
    /// left mapped then, and the pool never faults later for want of pages.
    pub fn create_reserved_huge(name: &str, len: usize) -> io::Result<SharedMemory> {
        Self::create_with(
            name,
            crate::host_memory::reserved_huge_len(len)?,
            true,
            true,
        )
    }

    fn create_with(name: &str, len: usize, populate: bool, huge: bool) -> io::Result<SharedMemory> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot share zero bytes",
            ));
        }
        let size = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
        let cname = CString::new(name.replace('\0', "_"))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad memfd name"))?;
        // SAFETY: `cname` is a valid NUL-terminated string; the flags are plain bits.
        let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        if huge {
            flags |= libc::MFD_HUGETLB;
        }
        let raw = cvt(unsafe { libc::memfd_create(cname.as_ptr(), flags) })?;
        // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate and fcntl on a descriptor this function owns.
        unsafe {
            cvt(libc::ftruncate(fd.as_raw_fd(), size))?;
            cvt(libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            ))?;
        }
        // A created hugetlb file is `len` long, whole huge pages already (the caller rounded).
        let mem = Self::map_fd(fd, len, len, false)?;
        if huge {
            // Every huge page now, or no pool: one that cannot be allocated at first touch
            // (a hugetlb cgroup limit) would raise SIGBUS in whichever process touched it.
            // SAFETY: the whole of the fresh mapping; on failure `mem` is dropped (unmapped).
            unsafe { crate::host_memory::populate_strict(mem.ptr, mem.mapped)? };
        } else if populate {
            // SAFETY: the whole of a fresh, zeroed mapping nobody else has seen yet.
            unsafe { crate::host_memory::fault_in_fresh(mem.ptr, len) };
        }
        Ok(mem)
    }

    /// Maps `len` bytes of a memfd received from its owner. Refuses a file that is not sealed
    /// against shrinking or is shorter than `len`: a mapping past its end would fault. With
    /// `populate`, the page tables are filled now (one pass over the pages) rather than by a
    /// fault on the first touch of each page.
    pub fn map(fd: OwnedFd, len: usize, populate: bool) -> io::Result<SharedMemory> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map zero bytes",
            ));
        }
        // SAFETY: fcntl(F_GET_SEALS) on a descriptor this function owns.
        let seals = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory is not sealed against shrinking",
            ));
        }
        // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `st`, which lives across the call.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        if (st.st_size as u64) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared memory holds {} bytes, {len} expected", st.st_size),
            ));
        }
        // A hugetlb file reports its huge page size as the block size; its mappings are
        // whole huge pages (munmap refuses a shorter length), and its size is a multiple.
        let block = usize::try_from(st.st_blksize).unwrap_or(0);
        let mapped = if block > crate::host_memory::page_size() {
            crate::host_memory::round_up(len, block)
                .filter(|&m| m as u64 <= st.st_size as u64)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not whole huge pages"))?
        } else {
            len
        };
        Self::map_fd(fd, len, mapped, populate)
    }

    /// Maps `mapped` bytes of the file (`len`, or `len` rounded up to whole huge pages of a
    /// hugetlb file), asking for huge pages ([`crate::host_memory::advise_huge_pages`]; for
    /// a memfd the policy is `shmem_enabled`). With `populate`, fills the page tables (best
    /// effort).
    fn map_fd(fd: OwnedFd, len: usize, mapped: usize, populate: bool) -> io::Result<SharedMemory> {
        // SAFETY: the callers checked that the file is at least `mapped` bytes long.
        let ptr = unsafe {
            crate::host_memory::map_read_write(mapped, libc::MAP_SHARED, fd.as_raw_fd())?
        };
        // SAFETY: the whole of the mapping just made.
        unsafe { crate::host_memory::advise_huge_pages(ptr, mapped) };
        let mem = SharedMemory {
            ptr,
            len,
            mapped,
            fd,
        };
        if populate {
            let _ = mem.populate(0, len);
        }
        Ok(mem)
    }

    /// Fills the page tables for `[offset, offset + len)` of the mapping now, writable (one
    /// call instead of a fault per page; Linux 5.14+). Page-aligns the range outward and clips
    /// it to the mapping; an error leaves the pages to be faulted in on first touch.
    pub fn populate(&self, offset: usize, len: usize) -> io::Result<()> {
        let page = crate::host_memory::page_size();
        let start = (offset / page) * page;
        let end = offset.saturating_add(len).min(self.len);
        if start >= end {
            return Ok(());
        }
        // SAFETY: the range lies inside this live mapping (clipped above); MADV_POPULATE_WRITE
        // only faults pages in, it does not change their contents.
        cvt(unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(start).cast(),
                end - start,
                libc::MADV_POPULATE_WRITE,
            )
        })
        .map(|_| ())
    }

    /// First byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (zero-length mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, to pass to a peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map_fd`, which nothing uses after drop.
        unsafe { crate::host_memory::unmap(self.ptr, self.mapped) };
    }
}

/// Sends `data` (at least one byte) over `sock`, with `fd` attached when given.
pub fn send_with_fd(sock: &UnixStream, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a descriptor travels with at least one byte",
        ));
    }
    // Room for one descriptor, as u64s for alignment.
    let mut control = [0u64; 4];
    let mut sent = 0usize;
    while sent < data.len() {
        let mut iov = libc::iovec {
            iov_base: data[sent..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - sent,
        };
        // SAFETY: an all-zero msghdr is valid (no name, no buffers) and filled in below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // The descriptor goes with the first bytes only.
        if let (Some(fd), 0) = (fd, sent) {
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) };
            debug_assert!(space as usize <= std::mem::size_of_val(&control));
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer holds one header with one int (checked above), so
            // CMSG_FIRSTHDR is non-null and CMSG_DATA points inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
                std::ptr::write_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                    fd.as_raw_fd(),
                );
            }
        }
        // SAFETY: `msg` points at `iov` and `control`, which live across the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes from `sock` and the descriptor that came with them, if
/// any. Descriptors beyond the first are closed; end of stream before `buf` is full is
/// `UnexpectedEof`.
pub fn recv_with_fd(sock: &UnixStream, buf: &mut [u8]) -> io::Result<Option<OwnedFd>> {
    let mut got = 0usize;
    let mut fd: Option<OwnedFd> = None;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is valid and filled in below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` points at `iov` (inside `buf`) and `control`, both live across the
        // call; received descriptors are close-on-exec.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: the kernel filled `control` up to `msg_controllen`; the CMSG macros walk
        // only within it, and each SCM_RIGHTS payload holds whole ints.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let header = libc::CMSG_LEN(0) as usize;
                    let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                        / std::mem::size_of::<libc::c_int>();
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    for k in 0..count {
                        let raw = std::ptr::read_unaligned(data.add(k));
                        // Every received descriptor is ours to close; keep the first.
                        let owned = OwnedFd::from_raw_fd(raw);
                        if fd.is_none() {
                            fd = Some(owned);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the socket",
            ));
        }
        got += n as usize;
    }
    Ok(fd)
}

/// The user id of the process at the other end of `sock` (`SO_PEERCRED`).
pub fn peer_uid(sock: &UnixStream) -> io::Result<u32> {
    // SAFETY: an all-zero ucred is a valid value for getsockopt to overwrite.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which lives across the call.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// What a socket holds now, seen without blocking and without consuming anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Nothing to read yet; the peer's end is open.
    Nothing,
    /// Bytes wait to be read.
    Data,
    /// The peer closed its end (or the socket failed).
    Closed,
}

/// Looks at `sock` without blocking: data waiting, nothing, or the peer gone.
pub fn pending(sock: &UnixStream) -> Pending {
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`, which lives across the call; with
    // MSG_PEEK nothing is consumed and with MSG_DONTWAIT the call does not block.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Pending::Closed,
        n if n > 0 => Pending::Data,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Pending::Nothing,
            _ => Pending::Closed,
        },
    }
}

/// This process's user id.
pub fn own_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool in reserved huge pages is shared like any other (a peer maps the same bytes), or
    /// refused cleanly when too few are free. (CI reserves some, so the first branch runs.)
    #[test]
    fn reserved_huge_page_pools_are_shared_or_refused_cleanly() {
        use crate::host_memory::{available_reserved_huge_pages, reserved_huge_page_size};
        let _one_at_a_time = crate::host_memory::HUGE_PAGE_TESTS.lock();
        let (Some(page), Some(free)) = (reserved_huge_page_size(), available_reserved_huge_pages())
        else {
            assert!(SharedMemory::create_reserved_huge("huge", 1).is_err());
            return;
        };
        if !crate::host_memory::huge_page_overcommit() {
            assert!(SharedMemory::create_reserved_huge("too-big", (free + 8) * page).is_err());
        }
        let owner = match SharedMemory::create_reserved_huge("huge", 10) {
            Ok(m) => m,
            Err(e) => {
                // Too few, or taken by a test beside this one meanwhile.
                assert!(free < 3, "{free} free, yet: {e}");
                return;
            }
        };
        assert_eq!(owner.len(), page, "rounded up to one huge page");
        // SAFETY: fstat writes into `st`, which lives across the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstat(owner.fd().as_raw_fd(), &mut st) }).unwrap();
        assert_eq!(st.st_blksize as usize, page, "a hugetlb file");
        // SAFETY: the owner's mapping of `len` bytes.
        unsafe { *owner.as_ptr().add(page - 1) = 9 };
        let dup = owner.fd().try_clone_to_owned().unwrap();
        let peer = SharedMemory::map(dup, owner.len(), false).unwrap();
        // SAFETY: the peer's mapping of the same `len` bytes.
        assert_eq!(unsafe { *peer.as_ptr().add(page - 1) }, 9);
    }

    #[test]
    fn a_peer_maps_the_same_bytes_through_a_passed_descriptor() {
        let owner = SharedMemory::create("test-pool", 3 * 4096 + 10, true).unwrap();
        // SAFETY: a fresh mapping of that many bytes.
        let mine = unsafe { std::slice::from_raw_parts_mut(owner.as_ptr(), owner.len()) };
        assert!(mine.iter().all(|&b| b == 0));
        mine[5] = 42;
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fd(&a, b"hello", Some(owner.fd())).unwrap();
        let mut buf = [0u8; 5];
        let fd = recv_with_fd(&b, &mut buf).unwrap().expect("a descriptor");
        assert_eq!(&buf, b"hello");
        let peer = SharedMemory::map(fd, owner.len(), false).unwrap();
        peer.populate(4096, 10).unwrap();
        peer.populate(0, usize::MAX).unwrap();
        assert_ne!(peer.as_ptr(), owner.as_ptr());
        // SAFETY: the peer's mapping of the same length.
        let theirs = unsafe { std::slice::from_raw_parts_mut(peer.as_ptr(), peer.len()) };
        assert_eq!(theirs[5], 42);
        theirs[owner.len() - 1] = 7;
        assert_eq!(mine[owner.len() - 1], 7);
        assert_eq!(peer_uid(&a).unwrap(), own_uid());
    }

    #[test]
    fn mapping_more_than_the_file_or_an_unsealed_file_is_refused() {
        let owner = SharedMemory::create("short", 4096, false).unwrap();
        let dup = owner.fd().try_clone_to_owned().unwrap();
        let err = SharedMemory::map(dup, 8192, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A plain file has no seals.
        let file = tempfile_fd();
        let err = SharedMemory::map(file, 10, false).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
            ) || err.raw_os_error() == Some(libc::EINVAL),
            "{err}"
        );
    }

    fn tempfile_fd() -> OwnedFd {
        let name = CString::new("unsealed").unwrap();
        // SAFETY: a valid name; the descriptor is owned by the returned value.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: fresh descriptor nothing else owns; sized so only the seal check can refuse.
        unsafe {
            assert_eq!(libc::ftruncate(raw, 4096), 0);
            OwnedFd::from_raw_fd(raw)
        }
    }

    #[test]
    fn plain_bytes_travel_without_a_descriptor_and_eof_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fd(&a, &[1, 2, 3], None).unwrap();
        let mut buf = [0u8; 3];
        assert!(recv_with_fd(&b, &mut buf).unwrap().is_none());
        assert_eq!(buf, [1, 2, 3]);
        drop(a);
        let err = recv_with_fd(&b, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(SharedMemory::create("zero", 0, false).is_err());
    }

    #[test]
    fn data_and_a_closed_peer_are_seen_without_blocking() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(pending(&a), Pending::Nothing);
        send_with_fd(&b, &[9], None).unwrap();
        assert_eq!(pending(&a), Pending::Data);
        assert_eq!(pending(&a), Pending::Data, "peeking consumes nothing");
        let mut one = [0u8; 1];
        recv_with_fd(&a, &mut one).unwrap();
        assert_eq!(one, [9]);
        drop(b);
        assert_eq!(pending(&a), Pending::Closed);
    }
}
