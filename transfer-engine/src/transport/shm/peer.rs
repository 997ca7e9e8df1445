//! A peer's side of same-host sharing: the connection to an owner's socket, kept open as the
//! sign that the owner lives, and the mappings of the owner's regions fetched through it.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use mooncake_sys::shared_memory::{peer_closed, recv_with_fd, SharedMemory};
use parking_lot::Mutex;

use super::server::{request, HERE};

/// One owner as seen from here.
pub struct Peer {
    state: Mutex<State>,
}

struct State {
    /// `None` once the owner is known to be gone.
    stream: Option<UnixStream>,
    /// Mappings of the owner's regions by base address.
    maps: HashMap<u64, Arc<SharedMemory>>,
}

impl Peer {
    /// Connects to the owner's abstract socket `name`; fails if no such socket exists in this
    /// network namespace (another host, or another container).
    pub fn connect(name: &str, timeout: Duration) -> io::Result<Peer> {
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let stream = UnixStream::connect_addr(&addr)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Peer {
            state: Mutex::new(State {
                stream: Some(stream),
                maps: HashMap::new(),
            }),
        })
    }

    /// Whether the owner still holds its end of the connection. Once it is gone, its mappings
    /// are dropped here (the memory goes back to the kernel when no one maps it).
    pub fn alive(&self) -> bool {
        let mut st = self.state.lock();
        let closed = st.stream.as_ref().is_none_or(peer_closed);
        if closed {
            st.stream = None;
            st.maps.clear();
        }
        !closed
    }

    /// Drops the mappings of regions the owner no longer shares (not in `regions`).
    pub fn retain(&self, regions: &[(u64, u64)]) {
        self.state
            .lock()
            .maps
            .retain(|base, m| regions.contains(&(*base, m.len() as u64)));
    }

    /// Mappings held now.
    pub fn mapped(&self) -> usize {
        self.state.lock().maps.len()
    }

    /// The mapping of the owner's region at `base`, exactly `len` bytes, fetched on first use.
    pub fn mapping(&self, base: u64, len: u64) -> Result<Arc<SharedMemory>, String> {
        let mut st = self.state.lock();
        if let Some(m) = st.maps.get(&base).filter(|m| m.len() as u64 == len) {
            return Ok(m.clone());
        }
        let stream = st.stream.as_mut().ok_or("the owner is gone")?;
        let fetched = fetch(stream, base, len);
        match fetched {
            Ok(m) => {
                let m = Arc::new(m);
                st.maps.insert(base, m.clone());
                Ok(m)
            }
            Err(e) => {
                // A broken or confused connection is not used again.
                if e.kind() != io::ErrorKind::NotFound {
                    st.stream = None;
                    st.maps.clear();
                }
                Err(format!("mapping region {base:#x}: {e}"))
            }
        }
    }
}

fn fetch(stream: &mut UnixStream, base: u64, len: u64) -> io::Result<SharedMemory> {
    let len_usize = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
    stream.write_all(&request(base, len))?;
    let mut answer = [0u8; 1];
    let fd = recv_with_fd(stream, &mut answer)?;
    match (answer[0], fd) {
        // Page tables filled once here, not by a fault per page on the data path.
        (HERE, Some(fd)) => SharedMemory::map(fd, len_usize, true),
        (HERE, None) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the owner answered without a descriptor",
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the owner does not share that region",
        )),
    }
}
