//! The owner's side of same-host sharing: a Unix socket in the abstract namespace that hands
//! the memfd of a shared region to a peer that asks for it by address.
//!
//! Protocol: the peer asks for a region by base address, length and registration id (three
//! little-endian u64); the owner answers with a [`MESSAGE_LEN`]-byte message, [`HERE`] with the
//! region's descriptor attached or [`NOT_SHARED`]. The owner also sends [`REVOKED`] unasked,
//! on every connection, when it unregisters a region: a peer drops that mapping before its
//! next transfer (it checks for such messages first), and the id tells apart two registrations
//! at the same address, so a peer never uses the memory of one for the other. Only processes of
//! this user are served. The peer keeps the connection open for its life: the owner's end
//! closing (process exit, engine drop) is how a peer learns that the owner is gone.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mooncake_sys::shared_memory::{
    own_uid, peer_uid, pending, send_with_fd, Pending, SharedMemory,
};
use parking_lot::Mutex;

/// Message: the region's descriptor is attached.
pub const HERE: u8 = 0;
/// Message: no shared region with that address, length and id.
pub const NOT_SHARED: u8 = 1;
/// Message: the region with this id is no longer shared.
pub const REVOKED: u8 = 2;
/// Bytes of a request.
pub const REQUEST_LEN: usize = 24;
/// Bytes of a message from the owner: its kind, then a region id (little-endian u64).
pub const MESSAGE_LEN: usize = 9;
/// Longest the owner waits to hand a message to a peer's socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// One message from the owner.
pub fn message(kind: u8, id: u64) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[0] = kind;
    m[1..].copy_from_slice(&id.to_le_bytes());
    m
}

/// Kind and region id of a message from the owner.
pub fn parse_message(m: &[u8; MESSAGE_LEN]) -> (u8, u64) {
    let mut id = [0u8; 8];
    id.copy_from_slice(&m[1..]);
    (m[0], u64::from_le_bytes(id))
}

/// One shared region as published: base address, length, registration id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionRef {
    /// First address, in the owner's address space.
    pub base: u64,
    /// Bytes.
    pub len: u64,
    /// Unique among the owner engine's registrations.
    pub id: u64,
}

/// An engine's shared regions, by base address.
#[derive(Default)]
pub struct Shared {
    next_id: u64,
    by_base: BTreeMap<u64, (u64, Arc<SharedMemory>)>,
}

impl Shared {
    /// Adds `mem` under a fresh id; false if a region starts at the same address.
    pub fn insert(&mut self, mem: Arc<SharedMemory>) -> bool {
        let base = mem.as_ptr() as u64;
        if self.by_base.contains_key(&base) {
            return false;
        }
        self.next_id += 1;
        self.by_base.insert(base, (self.next_id, mem));
        true
    }

    /// Drops the region at `base` (this side's reference to its memory); its id, if it was
    /// there.
    pub fn remove(&mut self, base: u64) -> Option<u64> {
        self.by_base.remove(&base).map(|(id, _)| id)
    }

    /// The regions, as published.
    pub fn refs(&self) -> Vec<RegionRef> {
        self.by_base
            .iter()
            .map(|(&base, (id, m))| RegionRef {
                base,
                len: m.len() as u64,
                id: *id,
            })
            .collect()
    }

    fn get(&self, r: RegionRef) -> Option<Arc<SharedMemory>> {
        self.by_base
            .get(&r.base)
            .filter(|(id, m)| *id == r.id && m.len() as u64 == r.len)
            .map(|(_, m)| m.clone())
    }
}

/// An engine's shared regions, shared with its server threads.
pub type SharedRegions = Arc<Mutex<Shared>>;

/// The sending side of one peer's connection; whoever writes holds the lock, so that answers
/// and revocations never interleave.
type Conn = Arc<Mutex<UnixStream>>;

/// The listening socket and its threads; stops them on drop.
pub struct ShmServer {
    name: String,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Conn>>>,
    accept: Option<JoinHandle<()>>,
}

impl ShmServer {
    /// Listens on the abstract socket `name` and serves `regions`.
    pub fn start(name: String, regions: SharedRegions) -> std::io::Result<ShmServer> {
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let accept = {
            let (stop, conns) = (stop.clone(), conns.clone());
            std::thread::Builder::new()
                .name("te-shm-listen".into())
                .spawn(move || accept_loop(listener, regions, stop, conns))?
        };
        Ok(ShmServer {
            name,
            stop,
            conns,
            accept: Some(accept),
        })
    }

    /// Tells every connected peer that region `id` is no longer shared. Returns once the
    /// messages are in the peers' sockets: a peer checks for them before each transfer, so a
    /// transfer it starts afterwards does not use the region. A peer that cannot take the
    /// message within [`SEND_TIMEOUT`] (its socket full: it stopped reading) loses the
    /// connection, which it takes for the owner being gone, dropping every mapping.
    pub fn revoke(&self, id: u64) {
        let conns: Vec<Conn> = {
            let mut c = self.conns.lock();
            prune_closed(&mut c);
            c.clone()
        };
        for c in conns {
            let c = c.lock();
            if send_with_fd(&c, &message(REVOKED, id), None).is_err() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Drop for ShmServer {
    fn drop(&mut self) {
        {
            // Under the lock the accept loop adds connections with, so none is added after.
            let mut conns = self.conns.lock();
            self.stop.store(true, Ordering::Release);
            // Closing every connection ends its thread and tells its peer the owner is gone.
            for c in conns.drain(..) {
                let _ = c.lock().shutdown(std::net::Shutdown::Both);
            }
        }
        // Wake the accept loop so it sees the flag.
        if let Ok(addr) = SocketAddr::from_abstract_name(self.name.as_bytes()) {
            let _ = UnixStream::connect_addr(&addr);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Forgets connections whose peers left (their threads have ended); one busy now is kept.
fn prune_closed(conns: &mut Vec<Conn>) {
    conns.retain(|s| s.try_lock().is_none_or(|s| pending(&s) != Pending::Closed));
}

fn accept_loop(
    listener: UnixListener,
    regions: SharedRegions,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Conn>>>,
) {
    let me = own_uid();
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // E.g. out of descriptors: do not spin on it.
                tracing::debug!(error = %e, "shared-memory accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        match peer_uid(&stream) {
            Ok(uid) if uid == me => {}
            Ok(uid) => {
                tracing::warn!(uid, "refused a shared-memory peer of another user");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot tell a shared-memory peer's user");
                continue;
            }
        }
        if stream.set_write_timeout(Some(SEND_TIMEOUT)).is_err() {
            continue;
        }
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        let conn: Conn = Arc::new(Mutex::new(stream));
        {
            let mut c = conns.lock();
            if stop.load(Ordering::Acquire) {
                return;
            }
            prune_closed(&mut c);
            c.push(conn.clone());
        }
        let regions = regions.clone();
        let spawned = std::thread::Builder::new()
            .name("te-shm-serve".into())
            .spawn(move || serve(reader, &conn, &regions));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a shared-memory serving thread");
        }
    }
}

/// Answers one peer's requests until it closes the connection.
fn serve(mut reader: UnixStream, conn: &Conn, regions: &SharedRegions) {
    let mut req = [0u8; REQUEST_LEN];
    loop {
        if reader.read_exact(&mut req).is_err() {
            return;
        }
        let asked = parse_request(&req);
        // The connection first: a revocation of this region (sent under the same lock) then
        // either made the lookup miss or follows this answer on the wire, never precedes it.
        let c = conn.lock();
        let region = regions.lock().get(asked);
        let sent = match &region {
            Some(m) => send_with_fd(&c, &message(HERE, asked.id), Some(m.fd())),
            None => send_with_fd(&c, &message(NOT_SHARED, asked.id), None),
        };
        if sent.is_err() {
            // Closed, so the peer learns at once instead of waiting for an answer.
            let _ = c.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// A request for region `r`.
pub fn request(r: RegionRef) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[..8].copy_from_slice(&r.base.to_le_bytes());
    b[8..16].copy_from_slice(&r.len.to_le_bytes());
    b[16..].copy_from_slice(&r.id.to_le_bytes());
    b
}

fn parse_request(b: &[u8; REQUEST_LEN]) -> RegionRef {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..(i + 1) * 8]);
        u64::from_le_bytes(w)
    };
    RegionRef {
        base: word(0),
        len: word(1),
        id: word(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        assert_eq!(parse_message(&message(REVOKED, 77)), (REVOKED, 77));
    }

    #[test]
    fn requests_round_trip() {
        let r = RegionRef {
            base: 0x7f00_1234_0000,
            len: 1 << 30,
            id: 3,
        };
        assert_eq!(parse_request(&request(r)), r);
    }

    #[test]
    fn a_region_is_found_only_by_its_own_address_length_and_id() {
        let mut shared = Shared::default();
        let a = Arc::new(SharedMemory::create("a", 4096, false).unwrap());
        assert!(shared.insert(a.clone()));
        assert!(!shared.insert(a.clone()), "same address twice");
        let r = shared.refs()[0];
        assert!(shared.get(r).is_some());
        assert!(shared.get(RegionRef { id: r.id + 1, ..r }).is_none());
        assert!(shared.get(RegionRef { len: 8192, ..r }).is_none());
        // Registered again at the same address: a new id, the old one is not served.
        shared.remove(r.base);
        assert!(shared.insert(a));
        let again = shared.refs()[0];
        assert_ne!(again.id, r.id);
        assert!(shared.get(r).is_none());
    }
}
