//! The owner's side of same-host sharing: a Unix socket in the abstract namespace that hands
//! the memfd of a shared region to a peer that asks for it by address.
//!
//! Protocol, per request on one connection: the peer sends the region's base address and
//! length (two little-endian u64); the owner answers one byte, [`HERE`] with the region's
//! descriptor attached or [`NOT_SHARED`]. Only processes of this user are served. The peer keeps
//! the connection open for its life: the owner's end closing (process exit, engine drop) is how
//! a peer learns that the owner is gone.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mooncake_sys::shared_memory::{own_uid, peer_uid, send_with_fd, SharedMemory};
use parking_lot::Mutex;

/// Answer: the region's descriptor is attached.
pub const HERE: u8 = 0;
/// Answer: no shared region starts at that address with at least that length.
pub const NOT_SHARED: u8 = 1;
/// Bytes of a request.
pub const REQUEST_LEN: usize = 16;

/// Shared regions by base address.
pub type SharedRegions = Arc<Mutex<BTreeMap<u64, Arc<SharedMemory>>>>;

/// The listening socket and its threads; stops them on drop.
pub struct ShmServer {
    name: String,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl ShmServer {
    /// Listens on the abstract socket `name` and serves `regions`.
    pub fn start(name: String, regions: SharedRegions) -> std::io::Result<ShmServer> {
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
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
}

impl Drop for ShmServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Closing every connection ends its thread and tells its peer the owner is gone.
        for c in self.conns.lock().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
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

fn accept_loop(
    listener: UnixListener,
    regions: SharedRegions,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
) {
    let me = own_uid();
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "shared-memory accept failed");
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
        let Ok(kept) = stream.try_clone() else {
            continue;
        };
        {
            let mut c = conns.lock();
            // Forget connections whose peers left (their threads have ended).
            c.retain(|s| !mooncake_sys::shared_memory::peer_closed(s));
            c.push(kept);
        }
        let regions = regions.clone();
        let spawned = std::thread::Builder::new()
            .name("te-shm-serve".into())
            .spawn(move || serve(stream, &regions));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a shared-memory serving thread");
        }
    }
}

/// Answers one peer's requests until it closes the connection or sends garbage.
fn serve(mut stream: UnixStream, regions: &SharedRegions) {
    let mut req = [0u8; REQUEST_LEN];
    loop {
        if stream.read_exact(&mut req).is_err() {
            return;
        }
        let (base, len) = parse_request(&req);
        let region = regions
            .lock()
            .get(&base)
            .filter(|m| m.len() as u64 >= len)
            .cloned();
        let sent = match &region {
            Some(m) => send_with_fd(&stream, &[HERE], Some(m.fd())),
            None => send_with_fd(&stream, &[NOT_SHARED], None),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A request for the region at `base` of at least `len` bytes.
pub fn request(base: u64, len: u64) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[..8].copy_from_slice(&base.to_le_bytes());
    r[8..].copy_from_slice(&len.to_le_bytes());
    r
}

fn parse_request(r: &[u8; REQUEST_LEN]) -> (u64, u64) {
    let mut base = [0u8; 8];
    let mut len = [0u8; 8];
    base.copy_from_slice(&r[..8]);
    len.copy_from_slice(&r[8..]);
    (u64::from_le_bytes(base), u64::from_le_bytes(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r = request(0x7f00_1234_0000, 1 << 30);
        assert_eq!(parse_request(&r), (0x7f00_1234_0000, 1 << 30));
    }
}
