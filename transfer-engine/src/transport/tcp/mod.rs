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

struct Pool {
    per_peer: usize,
    timeout: Duration,
    peers: Mutex<HashMap<SocketAddr, Vec<Arc<Connection>>>>,
}

impl Pool {
    fn connections(&self, peer: SocketAddr) -> Result<Vec<Arc<Connection>>, String> {
        let mut peers = self.peers.lock();
        let conns = peers.entry(peer).or_default();
        conns.retain(|c| c.is_alive());
        while conns.len() < self.per_peer {
            match Connection::connect(peer, self.timeout) {
                Ok(c) => conns.push(Arc::new(c)),
                Err(e) if conns.is_empty() => return Err(format!("connect to {peer}: {e}")),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "extra connection failed; using fewer");
                    break;
                }
            }
        }
        Ok(conns.clone())
    }

    fn all(&self) -> Vec<Arc<Connection>> {
        self.peers.lock().values().flatten().cloned().collect()
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
        let pool = Arc::new(Pool {
            per_peer: ctx.config.tcp_connections_per_peer.max(1),
            timeout,
            peers: Mutex::new(HashMap::new()),
        });
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
        let conns = match self.pool.connections(target.tcp_addr) {
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
