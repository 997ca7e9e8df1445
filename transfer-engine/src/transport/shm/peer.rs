//! A peer's side of same-host sharing: the connection to an owner's socket, kept open as the
//! sign that the owner lives and as the owner's channel for revocations, and the mappings of
//! the owner's regions fetched through it.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use mooncake_sys::shared_memory::{
    own_uid, peer_uid, pending, recv_with_fd, Pending, SharedMemory,
};
use parking_lot::Mutex;

use super::server::{parse_message, request, RegionRef, HERE, MESSAGE_LEN, REVOKED};

/// Page tables of a mapping are filled per chunk of this many bytes, on its first use.
const CHUNK: usize = 2 << 20;

/// A peer's mapping of one owner region. Only the chunks transfers touch get page tables
/// (filled with one call per chunk, not a fault per page): a peer that maps a large pool and
/// uses a little of it pays for that little.
pub struct Mapping {
    mem: SharedMemory,
    /// One bit per chunk: page tables filled.
    filled: Vec<AtomicU64>,
}

impl Mapping {
    fn new(mem: SharedMemory) -> Mapping {
        let chunks = mem.len().div_ceil(CHUNK);
        Mapping {
            filled: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            mem,
        }
    }

    /// First byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.mem.as_ptr()
    }

    /// Fills the page tables of the chunks `[offset, offset + len)` touches, once each.
    pub fn prepare(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let last = (offset.saturating_add(len) - 1).min(self.mem.len().saturating_sub(1));
        for chunk in offset / CHUNK..=last / CHUNK {
            let (word, bit) = (chunk / 64, 1u64 << (chunk % 64));
            let Some(w) = self.filled.get(word) else {
                return;
            };
            if w.load(Ordering::Relaxed) & bit != 0 {
                continue;
            }
            // Best effort: a failure leaves the pages to page faults. Two threads may both
            // fill one chunk; that is harmless.
            let _ = self.mem.populate(chunk * CHUNK, CHUNK);
            w.fetch_or(bit, Ordering::Relaxed);
        }
    }
}

/// One owner as seen from here.
pub struct Peer {
    state: Mutex<State>,
}

struct State {
    /// `None` once the owner is known to be gone.
    stream: Option<UnixStream>,
    /// Mappings of the owner's regions by base address, with the region they map.
    maps: HashMap<u64, (RegionRef, Arc<Mapping>)>,
    /// Ids of regions the owner revoked or refused: never asked for again.
    revoked: HashSet<u64>,
}

impl State {
    fn gone(&mut self) {
        self.stream = None;
        self.maps.clear();
    }

    fn revoke(&mut self, id: u64) {
        self.revoked.insert(id);
        self.maps.retain(|_, (r, _)| r.id != id);
    }

    /// Reads one message from the owner (blocking up to the socket's timeout).
    fn next_message(&mut self) -> io::Result<(u8, u64, Option<OwnedFd>)> {
        let stream = self
            .stream
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the owner is gone"))?;
        let mut m = [0u8; MESSAGE_LEN];
        let fd = recv_with_fd(stream, &mut m)?;
        let (kind, id) = parse_message(&m);
        Ok((kind, id, fd))
    }
}

impl Peer {
    /// Connects to the owner's abstract socket `name`; fails if no such socket exists in this
    /// network namespace (another host, or another container), or if a process of another
    /// user listens on it (the name comes from a descriptor, which anyone could publish).
    pub fn connect(name: &str, timeout: Duration) -> io::Result<Peer> {
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let stream = UnixStream::connect_addr(&addr)?;
        let uid = peer_uid(&stream)?;
        if uid != own_uid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the socket belongs to user {uid}"),
            ));
        }
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Peer {
            state: Mutex::new(State {
                stream: Some(stream),
                maps: HashMap::new(),
                revoked: HashSet::new(),
            }),
        })
    }

    /// Whether the owner still holds its end of the connection; first applies the
    /// revocations it sent, and with `published` (the regions its current descriptor lists)
    /// drops mappings of regions it no longer publishes. Once it is gone, its mappings are
    /// dropped here (the memory goes back to the kernel when no one maps it).
    pub fn alive(&self, published: Option<&[RegionRef]>) -> bool {
        let mut st = self.state.lock();
        loop {
            match st.stream.as_ref().map_or(Pending::Closed, pending) {
                Pending::Nothing => break,
                Pending::Closed => {
                    st.gone();
                    return false;
                }
                Pending::Data => match st.next_message() {
                    Ok((REVOKED, id, _)) => st.revoke(id),
                    // Answers come only to requests, which wait for them under this lock.
                    Ok(_) | Err(_) => {
                        st.gone();
                        return false;
                    }
                },
            }
        }
        if let Some(regions) = published {
            st.maps.retain(|_, (r, _)| regions.contains(r));
        }
        true
    }

    /// Mappings held now.
    pub fn mapped(&self) -> usize {
        self.state.lock().maps.len()
    }

    /// The mapping of the owner's region `r` (all of it), fetched on first use.
    pub fn mapping(&self, r: RegionRef) -> Result<Arc<Mapping>, String> {
        let mut st = self.state.lock();
        if let Some((_, m)) = st.maps.get(&r.base).filter(|(have, _)| *have == r) {
            return Ok(m.clone());
        }
        if st.revoked.contains(&r.id) {
            return Err(format!("region {:#x} is no longer shared", r.base));
        }
        let fd = match fetch(&mut st, r) {
            // Revoked while the answer was on its way: not used.
            Ok(Some(_)) if st.revoked.contains(&r.id) => None,
            Ok(fd) => fd,
            Err(e) => {
                // A broken or confused connection is not used again.
                st.gone();
                return Err(format!("asking for region {:#x}: {e}", r.base));
            }
        };
        let Some(fd) = fd else {
            st.revoke(r.id);
            return Err(format!("region {:#x} is not shared", r.base));
        };
        let len = usize::try_from(r.len).map_err(|_| "region too large".to_string());
        match len.and_then(|len| SharedMemory::map(fd, len, false).map_err(|e| e.to_string())) {
            Ok(mem) => {
                let m = Arc::new(Mapping::new(mem));
                st.maps.insert(r.base, (r, m.clone()));
                Ok(m)
            }
            Err(e) => {
                // Only this region is skipped (e.g. out of address space here).
                st.revoke(r.id);
                Err(format!("mapping region {:#x}: {e}", r.base))
            }
        }
    }
}

/// Asks for region `r`: its memfd, or `None` if the owner does not share it. Revocations that
/// arrive before the answer are applied.
fn fetch(st: &mut State, r: RegionRef) -> io::Result<Option<OwnedFd>> {
    st.stream
        .as_mut()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the owner is gone"))?
        .write_all(&request(r))?;
    loop {
        match st.next_message()? {
            (REVOKED, id, _) => st.revoke(id),
            (HERE, id, Some(fd)) if id == r.id => return Ok(Some(fd)),
            (HERE, _, _) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the owner's answer does not match the request",
                ))
            }
            _ => return Ok(None),
        }
    }
}
