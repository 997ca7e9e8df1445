//! Same-host shared memory: requests whose remote range lies in a peer's shared region, when
//! the peer runs on this host, are served by memcpy through a mapping of the peer's memory.
//!
//! Memory registered with [`crate::Engine::register_shared_memory`] is a memfd
//! ([`mooncake_sys::shared_memory::SharedMemory`]); the engine publishes, under the transport
//! name `"shm"`, this host's boot id, the abstract Unix socket that hands out the memfds, and the
//! shared regions. A peer engine on the same host (same boot id, the socket reachable: same
//! network namespace, and owned by the same user) maps a region once, then copies itself in the
//! submitting thread: no socket round trip and no wake-up of the owner per request, the way a
//! one-sided RDMA READ/WRITE does not involve the target's CPU. Page tables of a mapping are
//! filled per 2 MiB chunk on its first use (one call, not a fault per page), so a peer pays for
//! the part of a pool it touches.
//!
//! Everything else falls back to the network transport: a peer on another host or in another
//! namespace, memory registered the ordinary way, a region the owner stopped sharing, an owner
//! that is gone. The connection to the owner stays open. Before each transfer to an owner, the
//! peer checks it without blocking and applies the revocations the owner sent when it
//! unregistered regions; the owner's end closing (process exit, engine drop), or no answer to
//! a request for a memfd within a second, means the owner is gone, and its requests then go to
//! the network transport and fail there as they would for any dead peer (a new connection is
//! tried ten seconds later: a stall need not last). A reaper thread does the same check every
//! second for owners nothing is sent to, so a dead owner's memory is not kept alive by
//! mappings here.
//!
//! Differences from the network transports, by design: an owner that is paused (SIGSTOP) is
//! still read and written (its memory is there; over TCP the requests would time out), so the
//! master's client liveness, not the transport, decides when its segment is gone; and a
//! transfer that raced the owner's death completes into memory nobody will read again, as an
//! RDMA WRITE that raced it would have. Device memory on the local side is copied by the CUDA
//! driver, large batches through pinned staging on the copy threads ([`gpu_copy`]).

mod gpu_copy;
mod peer;
mod server;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::batch::CompletionSink;
use crate::descriptor::SegmentDescriptor;
use crate::registry::MemoryRegistry;
use crate::transport::local::{run_host_copies, Copy};
use crate::transport::parallel_copy::CopyPool;
use crate::{Location, TransferRequest};

use peer::{Mapping, Peer};
use server::RegionRef;
use server::ShmServer;
pub use server::{Shared, SharedRegions};

/// The transport's name: the key of its data in segment descriptors.
pub const NAME: &str = "shm";

/// Longest a submitting thread waits for an owner's answer (a live owner answers within
/// milliseconds; one that does not is taken for gone, and its requests go to the network
/// transport).
const MAX_OWNER_WAIT: Duration = Duration::from_secs(1);

/// How often peers that went away are looked for (their mappings hold memory).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What an owner publishes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ShmInfo {
    /// The kernel's boot id: peers with another one are on another host.
    host: String,
    /// Abstract socket name of the owner's [`ShmServer`].
    socket: String,
    /// Shared regions.
    regions: Vec<RegionRef>,
}

/// Counters of the shared-memory path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShmStats {
    /// Requests served by copying through a mapping.
    pub requests: u64,
    /// Bytes they moved.
    pub bytes: u64,
    /// Peers on this host whose regions are mapped now.
    pub peers: u64,
}

enum PeerEntry {
    Up(Arc<Peer>),
    /// Not reachable (another namespace, another user), gone, or silent past the wait limit,
    /// since then: tried again after [`RETRY_AFTER`] (a stall need not last), forgotten after
    /// [`FORGET_AFTER`].
    Down(Instant),
}

/// How long an owner that could not be used is left to the network transport.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long an owner that could not be used is remembered at all.
const FORGET_AFTER: Duration = Duration::from_secs(600);

type Peers = Arc<Mutex<HashMap<String, PeerEntry>>>;

/// The thread that looks for peers that went away even while nothing is sent to them (their
/// mappings would otherwise keep their memory); stopped on drop.
struct Reaper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    fn start(peers: Peers) -> std::io::Result<Reaper> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("te-shm-reap".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(SWEEP_EVERY);
                    sweep(&peers);
                }
            })?;
        Ok(Reaper {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Forgets the peers that went away (dropping their mappings), applies the revocations the
/// others sent, and drops entries of owners down for long. The liveness checks run outside
/// the map's lock.
fn sweep(peers: &Peers) {
    let up: Vec<(String, Arc<Peer>)> = {
        let mut map = peers.lock();
        map.retain(|_, e| !matches!(e, PeerEntry::Down(since) if since.elapsed() > FORGET_AFTER));
        map.iter()
            .filter_map(|(k, e)| match e {
                PeerEntry::Up(p) => Some((k.clone(), p.clone())),
                PeerEntry::Down(_) => None,
            })
            .collect()
    };
    let gone: Vec<String> = up
        .into_iter()
        .filter(|(_, p)| !p.alive(None))
        .map(|(k, _)| k)
        .collect();
    if gone.is_empty() {
        return;
    }
    let mut peers = peers.lock();
    for k in gone {
        peers.insert(k, PeerEntry::Down(Instant::now()));
    }
}

/// The same-host transport of one engine: serves its shared regions, maps its peers'.
pub struct ShmTransport {
    host: String,
    socket: String,
    regions: SharedRegions,
    registry: Arc<MemoryRegistry>,
    copier: Arc<CopyPool>,
    peers: Peers,
    timeout: Duration,
    requests: AtomicU64,
    bytes: AtomicU64,
    server: ShmServer,
    _reaper: Reaper,
}

/// The kernel's boot id, which names this host (and this boot of it).
fn boot_id() -> std::io::Result<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let id = id.trim();
    if id.is_empty() {
        return Err(std::io::Error::other("empty boot id"));
    }
    Ok(id.to_string())
}

impl ShmTransport {
    /// Starts serving `regions` (the engine's shared regions) on a fresh abstract socket.
    pub fn new(
        registry: Arc<MemoryRegistry>,
        copier: Arc<CopyPool>,
        regions: SharedRegions,
        timeout: Duration,
    ) -> std::io::Result<ShmTransport> {
        let host = boot_id()?;
        let nonce = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let socket = format!("mooncake-te/{}/{nonce:016x}", std::process::id());
        let server = ShmServer::start(socket.clone(), regions.clone())?;
        let peers = Peers::default();
        let reaper = Reaper::start(peers.clone())?;
        Ok(ShmTransport {
            host,
            socket,
            regions,
            registry,
            copier,
            peers,
            timeout: timeout.min(MAX_OWNER_WAIT),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            server,
            _reaper: reaper,
        })
    }

    /// Data to publish in this engine's descriptor; `None` while nothing is shared.
    pub fn descriptor_data(&self) -> Option<Vec<u8>> {
        let regions = self.regions.lock().refs();
        if regions.is_empty() {
            return None;
        }
        let info = ShmInfo {
            host: self.host.clone(),
            socket: self.socket.clone(),
            regions,
        };
        postcard::to_stdvec(&info).ok()
    }

    /// Whether `target` is a peer on this host whose shared regions this engine maps (or may
    /// map: it has not been found unusable).
    pub fn is_same_host(&self, target: &SegmentDescriptor) -> bool {
        let Some(info) = info_of(target) else {
            return false;
        };
        info.host == self.host
            && info.socket != self.socket
            && !matches!(
                self.peers.lock().get(&info.socket),
                Some(PeerEntry::Down(_))
            )
    }

    /// Tells the peers that the region with registration id `id` is no longer shared; a
    /// transfer they start after this returns does not use it.
    pub fn revoke(&self, id: u64) {
        self.server.revoke(id);
    }

    /// Counters so far.
    pub fn stats(&self) -> ShmStats {
        // Counted outside the map's lock: a peer's own lock may be held by a fetch.
        let up: Vec<Arc<Peer>> = self
            .peers
            .lock()
            .values()
            .filter_map(|e| match e {
                PeerEntry::Up(p) => Some(p.clone()),
                PeerEntry::Down(_) => None,
            })
            .collect();
        let peers = up.iter().filter(|p| p.mapped() > 0).count() as u64;
        ShmStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            peers,
        }
    }

    /// Serves the requests of `items` that it can (finishing them through `sink`) and returns
    /// the others, for the network transport. The engine has checked every local range and
    /// that every remote range lies inside a buffer of `target`.
    pub fn submit(
        &self,
        target: &SegmentDescriptor,
        items: Vec<(usize, TransferRequest)>,
        sink: &CompletionSink,
    ) -> Vec<(usize, TransferRequest)> {
        let Some(info) = info_of(target) else {
            return items;
        };
        if info.host != self.host || info.socket == self.socket {
            return items;
        }
        let Some(peer) = self.peer(&info.socket) else {
            return items;
        };
        if !peer.alive(Some(&info.regions)) {
            self.peers
                .lock()
                .insert(info.socket.clone(), PeerEntry::Down(Instant::now()));
            return items;
        }
        let devices = self.registry.has_device_memory();
        let mut copies = Vec::with_capacity(items.len());
        // Mappings in use by this batch's copies, with their regions (in first-use order).
        let mut held: Vec<(RegionRef, Arc<Mapping>)> = Vec::new();
        let mut rest = Vec::new();
        let mut bytes = 0u64;
        for (i, r) in items {
            let Some(region) = region_of(&info.regions, r.target_offset, r.len) else {
                rest.push((i, r));
                continue;
            };
            // A batch's requests mostly fall in one region: the peer is asked once for it.
            let cached = held
                .last()
                .filter(|(have, _)| *have == region)
                .map(|(_, m)| m.clone());
            let Some(map) = cached.or_else(|| peer.mapping(region).ok()) else {
                rest.push((i, r));
                continue;
            };
            // Inside the region (checked by `region_of`), and the mapping is the whole region.
            let offset = r.target_offset - region.base;
            map.prepare(offset as usize, r.len as usize);
            let remote = map.as_ptr() as u64 + offset;
            let local = if devices {
                self.registry
                    .find(r.local_addr, r.len)
                    .map_or(Location::Host, |l| l.location)
            } else {
                Location::Host
            };
            copies.push(Copy::of(i, &r, remote, Location::Host, local));
            bytes += r.len;
            if !held.last().is_some_and(|(have, _)| *have == region) {
                held.push((region, map));
            }
        }
        if !copies.is_empty() {
            self.requests
                .fetch_add(copies.len() as u64, Ordering::Relaxed);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            // SAFETY: every remote range lies inside a mapping held in `held` until after the
            // copies; every local range inside memory registered with this engine (checked by
            // the engine), which its owner keeps valid while registered.
            unsafe {
                let device = run_host_copies(copies, sink, &self.copier);
                gpu_copy::run(device, sink, &self.copier);
            }
        }
        drop(held);
        rest
    }

    /// The connection to the owner behind `socket`, made on first use and again
    /// [`RETRY_AFTER`] after it failed (outside the map's lock; if two threads connect at
    /// once, one connection is kept).
    fn peer(&self, socket: &str) -> Option<Arc<Peer>> {
        match self.peers.lock().get(socket) {
            Some(PeerEntry::Up(p)) => return Some(p.clone()),
            Some(PeerEntry::Down(since)) if since.elapsed() < RETRY_AFTER => return None,
            _ => {}
        }
        let entry = match Peer::connect(socket, self.timeout) {
            Ok(p) => PeerEntry::Up(Arc::new(p)),
            Err(e) => {
                tracing::info!(socket, error = %e, "peer on this host not reachable through shared memory for now; using the network transport");
                PeerEntry::Down(Instant::now())
            }
        };
        let mut peers = self.peers.lock();
        let slot = peers
            .entry(socket.to_string())
            .or_insert(PeerEntry::Down(Instant::now()));
        // Keep a connection another thread made meanwhile; replace an old failure.
        if !matches!(slot, PeerEntry::Up(_)) {
            *slot = entry;
        }
        match slot {
            PeerEntry::Up(p) => Some(p.clone()),
            PeerEntry::Down(_) => None,
        }
    }
}

/// What `target` publishes for this transport, if anything (readable).
fn info_of(target: &SegmentDescriptor) -> Option<ShmInfo> {
    postcard::from_bytes(target.transports.get(NAME)?).ok()
}

/// The shared region holding all of `[addr, addr + len)`, if one does.
fn region_of(regions: &[RegionRef], addr: u64, len: u64) -> Option<RegionRef> {
    let end = addr.checked_add(len)?;
    regions
        .iter()
        .copied()
        .find(|r| addr >= r.base && r.base.checked_add(r.len).is_some_and(|e| end <= e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(base: u64, len: u64) -> RegionRef {
        RegionRef { base, len, id: 1 }
    }

    #[test]
    fn a_range_is_served_only_inside_one_region() {
        let regions = [r(4096, 4096), r(1 << 20, 100)];
        let base_of = |addr, len| region_of(&regions, addr, len).map(|x| x.base);
        assert_eq!(base_of(4096, 4096), Some(4096));
        assert_eq!(base_of(5000, 10), Some(4096));
        assert_eq!(base_of(8000, 200), None, "runs past the end");
        assert_eq!(base_of(4000, 200), None, "starts before");
        assert_eq!(base_of((1 << 20) + 99, 1), Some(1 << 20));
        assert_eq!(base_of(u64::MAX - 1, 4), None, "wraps");
        assert_eq!(region_of(&[r(u64::MAX - 10, 100)], u64::MAX - 5, 2), None);
    }
}
