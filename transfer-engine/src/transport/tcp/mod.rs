//! The TCP transport: pooled persistent connections per peer, many requests in flight per
//! connection, large requests striped over the pool, payloads moved straight between sockets
//! and registered memory on both sides (GPU memory is staged through host memory, see
//! [`crate::gpu`]).
//!
//! Every engine serves data connections on its listener ([`server`]); the initiating side
//! ([`connection`]) keeps `tcp_connections_per_peer` connections to each peer it talks to; a
//! submit uses as many of them as its size is worth (a small batch stays on one). A
//! watchdog thread closes a connection whose oldest request is past its deadline, which times
//! out everything in flight on it.
//!
//! Connecting happens per peer: a submit to a peer that does not answer (a dead host whose
//! packets vanish) waits for its own connect, up to `tcp_connect_timeout`, while submits to
//! other peers and the watchdog go on; submits to the same peer share that one attempt, and
//! for [`FAIL_FAST`] after a failed one they fail at once instead of trying again.
//!
//! Connections that carried nothing for `tcp_idle_timeout` are taken out of the pool by the
//! watchdog and closed once no submit holds them and nothing is in flight on them, so the
//! threads and sockets an engine keeps follow the peers it is talking to now, not every peer
//! it ever reached.

pub mod connection;
pub(crate) mod gpu_staging;
pub mod server;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::batch::CompletionSink;
use crate::descriptor::SegmentDescriptor;
use crate::registry::MemoryRegistry;
use crate::transport::slicing::{split, RequestJoin};
use crate::transport::{Transport, TransportContext};
use crate::{gpu, Location, TransferError, TransferRequest, TransferStatus};
use connection::{Connection, Part, PartDone};

/// Stripes are never cut smaller than this to spread a small submit over the pool.
const MIN_STRIPE: u64 = 64 << 10;

/// A submit uses one more connection of the pool per this many bytes. A small batch on one
/// connection wakes one sender, one server and one receiver thread; spread over the pool it
/// wakes that many of each (on both hosts), which costs more than its parallel copies gain.
const BYTES_PER_CONNECTION: u64 = 256 << 10;

/// How many of the pool's `conns` connections a submit of `total` bytes uses.
fn connections_for(total: u64, conns: usize) -> usize {
    usize::try_from(total.div_ceil(BYTES_PER_CONNECTION))
        .unwrap_or(usize::MAX)
        .clamp(1, conns.max(1))
}

/// The stripe size for a submit of `total` bytes over `conns` connections: the configured
/// stripe, or less when the submit is too small to keep every connection busy (one 1 MiB
/// request then travels as four 256 KiB stripes in parallel instead of one).
fn effective_stripe(total: u64, conns: usize, configured: u64) -> u64 {
    let spread = total / conns.max(1) as u64;
    spread.max(MIN_STRIPE.min(configured)).min(configured)
}

/// After a failed connect, submits to that peer fail at once for this long.
pub const FAIL_FAST: Duration = Duration::from_secs(1);

/// One peer's connections.
#[derive(Default)]
struct Peer {
    /// Held briefly (the watchdog reads it too).
    conns: Mutex<Vec<Arc<Connection>>>,
    /// Held while connecting, so that concurrent submits share one attempt.
    connecting: Mutex<()>,
    /// The last failed connect: until when submits fail at once, and why.
    failed: Mutex<Option<(Instant, String)>>,
}

/// A peer engine: its address and incarnation (an engine restarted on the same address is
/// another peer, with other connections).
type PeerKey = (SocketAddr, u64);

impl Peer {
    /// Whether the pool may drop its entry: no connections, nobody using or connecting it
    /// (only the pool's map holds it, checked under the map's lock, where submits get it),
    /// and no recent failure to remember.
    fn forgettable(self: &Arc<Self>, now: Instant) -> bool {
        Arc::strong_count(self) == 1
            && self.conns.lock().is_empty()
            && !matches!(&*self.failed.lock(), Some((until, _)) if now < *until)
    }
}

struct Pool {
    per_peer: usize,
    connect_timeout: Duration,
    /// Connections idle this long leave the pool (`None`: never).
    idle_timeout: Option<Duration>,
    peers: Mutex<HashMap<PeerKey, Arc<Peer>>>,
    /// Idle connections taken out of the pool, closed once nobody holds them and they are
    /// still idle (a submit that took one just before may still be using it).
    retired: Mutex<Vec<Arc<Connection>>>,
}

impl Pool {
    fn new(per_peer: usize, connect_timeout: Duration, idle_timeout: Option<Duration>) -> Pool {
        Pool {
            per_peer: per_peer.max(1),
            connect_timeout,
            idle_timeout,
            peers: Mutex::new(HashMap::new()),
            retired: Mutex::new(Vec::new()),
        }
    }

    fn peer(&self, key: PeerKey) -> Arc<Peer> {
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get(&key) {
            return p.clone();
        }
        // A new incarnation at an address: its predecessor's idle entries are useless.
        let now = Instant::now();
        peers.retain(|k, p| k.0 != key.0 || !p.forgettable(now));
        peers.entry(key).or_default().clone()
    }

    /// The live connections of `p`, if it has its full set.
    fn ready(&self, p: &Peer) -> Option<Vec<Arc<Connection>>> {
        let mut conns = p.conns.lock();
        conns.retain(|c| c.is_alive());
        (conns.len() >= self.per_peer).then(|| conns.clone())
    }

    fn connections(&self, key: PeerKey) -> Result<Vec<Arc<Connection>>, String> {
        let (addr, incarnation) = key;
        let p = self.peer(key);
        if let Some(c) = self.ready(&p) {
            return Ok(c);
        }
        let recent_failure = || match &*p.failed.lock() {
            Some((until, why)) if Instant::now() < *until => Some(format!(
                "connect to {addr} failed less than {FAIL_FAST:?} ago ({why}); not retried yet"
            )),
            _ => None,
        };
        if let Some(e) = recent_failure() {
            return Err(e);
        }
        let _connecting = p.connecting.lock();
        // Another submit may have connected, or failed, while this one waited.
        if let Some(c) = self.ready(&p) {
            return Ok(c);
        }
        if let Some(e) = recent_failure() {
            return Err(e);
        }
        let have = p.conns.lock().len();
        let mut fresh = Vec::new();
        for _ in have..self.per_peer {
            match Connection::connect(addr, incarnation, self.connect_timeout) {
                Ok(c) => fresh.push(Arc::new(c)),
                Err(e) if have == 0 && fresh.is_empty() => {
                    let why = format!("connect to {addr}: {e}");
                    *p.failed.lock() = Some((Instant::now() + FAIL_FAST, why.clone()));
                    return Err(why);
                }
                Err(e) => {
                    tracing::warn!(peer = %addr, error = %e, "extra connection failed; using fewer");
                    break;
                }
            }
        }
        *p.failed.lock() = None;
        let mut conns = p.conns.lock();
        conns.extend(fresh);
        Ok(conns.clone())
    }

    /// Every connection, retired ones included (their requests still have deadlines).
    fn all(&self) -> Vec<Arc<Connection>> {
        let peers: Vec<Arc<Peer>> = self.peers.lock().values().cloned().collect();
        let mut all: Vec<Arc<Connection>> =
            peers.iter().flat_map(|p| p.conns.lock().clone()).collect();
        all.extend(self.retired.lock().iter().cloned());
        all
    }

    /// Retires dead connections and those idle for the idle timeout at `now`, closes retired
    /// ones that nobody holds and that are quiet, and forgets peers left with nothing.
    fn reap_idle(&self, now: Instant) {
        let peers: Vec<Arc<Peer>> = self.peers.lock().values().cloned().collect();
        let mut retiring = Vec::new();
        for p in &peers {
            p.conns.lock().retain(|c| {
                let idle_out = self.idle_timeout.is_some_and(|idle| {
                    c.idle_since()
                        .is_some_and(|t| now.saturating_duration_since(t) >= idle)
                });
                // A dead one would otherwise stay until the next submit to its peer, which
                // never comes for a peer that restarted under a new incarnation.
                let stale = idle_out || !c.is_alive();
                if stale {
                    retiring.push(c.clone());
                }
                !stale
            });
        }
        drop(peers);
        let closing: Vec<Arc<Connection>> = {
            let mut retired = self.retired.lock();
            retired.extend(retiring);
            let (closing, kept) = std::mem::take(&mut *retired).into_iter().partition(|c| {
                let unheld = Arc::strong_count(c) == 1;
                // Pairs with the release of the last other handle's drop, so that its
                // submit's `queued` count is seen below.
                std::sync::atomic::fence(Ordering::Acquire);
                unheld && c.idle_since().is_some()
            });
            *retired = kept;
            closing
        };
        if !closing.is_empty() {
            tracing::debug!(connections = closing.len(), "closing idle data connections");
        }
        // Dropping them shuts the sockets and joins their threads, outside the locks.
        drop(closing);
        self.peers.lock().retain(|_, p| !p.forgettable(now));
    }
}

/// The TCP transport.
pub struct TcpTransport {
    pool: Arc<Pool>,
    registry: Arc<MemoryRegistry>,
    stripe: u64,
    timeout: Duration,
    next: AtomicUsize,
    stop: Option<Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
}

impl TcpTransport {
    /// Creates the transport and its deadline watchdog.
    pub fn new(ctx: &TransportContext) -> Result<TcpTransport, TransferError> {
        let timeout = ctx.config.request_timeout;
        let pool = Arc::new(Pool::new(
            ctx.config.tcp_connections_per_peer,
            ctx.config.tcp_connect_timeout.min(timeout),
            ctx.config.tcp_idle_timeout,
        ));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let tick = (timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(500));
        let p = pool.clone();
        let watchdog = std::thread::Builder::new()
            .name("te-tcp-watchdog".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    let now = Instant::now();
                    for c in p.all() {
                        c.check_deadline(now);
                    }
                    p.reap_idle(now);
                }
            })?;
        Ok(TcpTransport {
            pool,
            registry: ctx.registry.clone(),
            stripe: ctx.config.tcp_stripe_size.max(1) as u64,
            timeout,
            next: AtomicUsize::new(0),
            stop: Some(stop),
            watchdog: Some(watchdog),
        })
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        self.pool.peers.lock().clear();
        self.pool.retired.lock().clear();
    }
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn reaches(&self, location: Location) -> bool {
        gpu::reachable(location)
    }

    fn submit(
        &self,
        target: &Arc<SegmentDescriptor>,
        items: Vec<(usize, TransferRequest)>,
        sink: &CompletionSink,
    ) {
        let conns = match self.pool.connections((target.tcp_addr, target.incarnation)) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("segment {}: {e}", target.name);
                sink.finish_many(
                    items
                        .into_iter()
                        .map(|(i, _)| (i, TransferStatus::failed(reason.clone()))),
                );
                return;
            }
        };
        let deadline = Instant::now() + self.timeout;
        let count = items.len();
        let total = items.iter().map(|(_, r)| r.len).sum();
        let n = connections_for(total, conns.len());
        let stripe = effective_stripe(total, n, self.stripe);
        // Successive submits start on different connections of the pool.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let conns: Vec<&Arc<Connection>> =
            (0..n).map(|c| &conns[(start + c) % conns.len()]).collect();
        let mut per_conn: Vec<Vec<Part>> = (0..n).map(|_| Vec::new()).collect();
        let devices = self.registry.has_device_memory();
        for (j, (index, req)) in items.into_iter().enumerate() {
            let device = if devices {
                self.registry
                    .find(req.local_addr, req.len)
                    .and_then(|r| match r.location {
                        Location::Cuda(d) => Some(d),
                        Location::Host => None,
                    })
            } else {
                None
            };
            let part = |off: u64, len: u64, done: PartDone| Part {
                op: req.op,
                local: req.local_addr + off,
                remote: req.target_offset + off,
                len,
                device,
                deadline,
                done,
            };
            if req.len <= stripe {
                // Neighbouring small requests share a connection so they share syscalls.
                let c = j * n / count;
                let done = PartDone::Whole {
                    sink: sink.clone(),
                    index,
                };
                per_conn[c].push(part(0, req.len, done));
            } else {
                let parts = req.len.div_ceil(stripe) as usize;
                let join = Arc::new(RequestJoin::new(sink.clone(), index, req.len, parts));
                for (k, (off, len)) in split(req.len, stripe).enumerate() {
                    per_conn[(j + k) % n].push(part(off, len, PartDone::Join(join.clone())));
                }
            }
        }
        for (conn, parts) in conns.iter().zip(per_conn) {
            if parts.is_empty() {
                continue;
            }
            if let Err(parts) = conn.send(parts) {
                conn.fail(parts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A listener that never accepts, its queue filled: further connects get no answer (the
    /// kernel drops their SYNs), as with a dead host. Returns it and the filler sockets.
    fn tarpit() -> (TcpListener, Vec<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut filler = Vec::new();
        while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            filler.push(s);
            assert!(filler.len() < 10_000, "the accept queue never filled");
        }
        (l, filler)
    }

    #[test]
    fn a_peer_that_does_not_answer_holds_up_only_its_own_submits() {
        let (dead, _filler) = tarpit();
        let dead = dead.local_addr().unwrap();
        let live = TcpListener::bind("127.0.0.1:0").unwrap();
        let live_addr = live.local_addr().unwrap();
        let _acceptor = std::thread::spawn(move || {
            let mut kept = Vec::new();
            for s in live.incoming().flatten() {
                kept.push(s);
            }
        });
        let pool = Arc::new(Pool::new(2, Duration::from_secs(3), None));
        let stuck = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.connections((dead, 1)))
        };
        // Let the stuck submit start its connect.
        std::thread::sleep(Duration::from_millis(300));
        let live_conns = pool.connections((live_addr, 1)).unwrap();
        assert_eq!(live_conns.len(), 2);
        assert!(
            live_conns.iter().all(|c| c.probes_peer()),
            "keepalive on data connections"
        );
        assert_eq!(
            pool.all().len(),
            2,
            "the watchdog's view is not blocked either"
        );
        assert!(
            !stuck.is_finished(),
            "the other peer was served while the dead one was still connecting"
        );
        let Err(e) = stuck.join().unwrap() else {
            panic!("connected to a peer that never answers")
        };
        assert!(e.contains(&dead.to_string()), "{e}");
        // Right after, the dead peer fails at once, without another attempt.
        let Err(again) = pool.connections((dead, 1)) else {
            panic!("connected to a peer that never answers")
        };
        assert!(again.contains("not retried yet"), "{again}");
    }

    /// A listener that accepts every connection and reports each one the peer closed.
    fn counting_listener() -> (SocketAddr, crossbeam_channel::Receiver<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (closed, ends) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let closed = closed.clone();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &s, &mut std::io::sink());
                    let _ = closed.send(());
                });
            }
        });
        (addr, ends)
    }

    #[test]
    fn idle_connections_are_closed_once_unused_and_reopened_on_demand() {
        let (addr, ends) = counting_listener();
        let pool = Pool::new(2, Duration::from_secs(3), Some(Duration::ZERO));
        let held = pool.connections((addr, 1)).unwrap();
        assert_eq!(held.len(), 2);
        // Idle, but a submit still holds them: out of the pool, not closed.
        pool.reap_idle(Instant::now());
        assert!(held.iter().all(|c| c.is_alive()));
        assert_eq!(pool.retired.lock().len(), 2);
        drop(held);
        pool.reap_idle(Instant::now());
        for _ in 0..2 {
            ends.recv_timeout(Duration::from_secs(10))
                .expect("the peer sees the idle connection closed");
        }
        assert!(pool.all().is_empty());
        assert!(pool.peers.lock().is_empty(), "the idle peer is forgotten");
        let again = pool.connections((addr, 1)).unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|c| c.is_alive()));
    }

    #[test]
    fn dead_connections_leave_the_pool_even_without_an_idle_timeout() {
        // Accepts and hangs up at once.
        let rude = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = rude.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in rude.incoming() {
                drop(s);
            }
        });
        let pool = Pool::new(2, Duration::from_secs(3), None);
        let conns = pool.connections((addr, 1)).unwrap();
        let since = Instant::now();
        while conns.iter().any(|c| c.is_alive()) {
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "never saw the hang-up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(conns);
        pool.reap_idle(Instant::now());
        assert!(pool.all().is_empty());
        assert!(pool.peers.lock().is_empty());
    }

    #[test]
    fn a_connection_with_a_request_in_flight_is_not_reaped() {
        // Accepts and never answers, so a request stays in flight.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for s in silent.incoming().flatten() {
                kept.push(s);
            }
        });
        let pool = Pool::new(2, Duration::from_secs(3), Some(Duration::ZERO));
        let table = crate::batch::BatchTable::default();
        let batch = table.get(table.allocate(1).unwrap()).unwrap();
        batch.reserve(1).unwrap();
        let buf = [0u8; 64];
        {
            let conns = pool.connections((addr, 1)).unwrap();
            let part = Part {
                op: crate::OpCode::Read,
                local: buf.as_ptr() as u64,
                remote: 0x1000,
                len: buf.len() as u64,
                device: None,
                deadline: Instant::now() + Duration::from_secs(60),
                done: PartDone::Whole {
                    sink: CompletionSink::new(batch.clone(), 0, 1),
                    index: 0,
                },
            };
            if conns[0].send(vec![part]).is_err() {
                panic!("fresh connection refused a part");
            }
        }
        for _ in 0..3 {
            pool.reap_idle(Instant::now());
        }
        let left = pool.all();
        assert_eq!(left.len(), 1, "the idle one closed, the busy one kept");
        assert!(left[0].is_alive());
        assert_eq!(batch.pending(), 1, "the request in flight was not failed");
        drop(left);
        drop(pool);
        assert_eq!(batch.pending(), 0, "closing the engine fails it");
    }

    #[test]
    fn small_submits_are_spread_over_the_pool() {
        const M: u64 = 1 << 20;
        assert_eq!(effective_stripe(M, 4, M), 256 << 10);
        assert_eq!(effective_stripe(64 * M, 4, M), M);
        assert_eq!(effective_stripe(16 * M, 4, M), M);
        assert_eq!(effective_stripe(64 << 10, 4, M), 64 << 10);
        assert_eq!(effective_stripe(4096, 4, M), 64 << 10);
        assert_eq!(
            effective_stripe(M, 4, 16 << 10),
            16 << 10,
            "never above the configured"
        );
        assert_eq!(effective_stripe(M, 0, M), M);
    }

    #[test]
    fn small_submits_stay_on_few_connections() {
        assert_eq!(connections_for(0, 4), 1);
        assert_eq!(connections_for(4096, 4), 1);
        assert_eq!(connections_for(256 << 10, 4), 1);
        assert_eq!(connections_for((256 << 10) + 1, 4), 2);
        assert_eq!(connections_for(1 << 20, 4), 4);
        assert_eq!(connections_for(64 << 20, 4), 4);
        assert_eq!(connections_for(64 << 20, 0), 1);
        assert_eq!(connections_for(u64::MAX, 3), 3);
    }
}
