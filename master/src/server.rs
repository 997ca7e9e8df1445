//! The RPC server: a thin tokio driver around [`MasterService`].
//!
//! Each connection has a reader task, which decodes frames and runs the (synchronous, short)
//! service call inline, then writes the response itself when the socket is idle, or queues it
//! for the connection's writer task, which coalesces queued responses into few writes.
//! A malformed or oversized frame closes only that connection. With etcd configured the server
//! campaigns for leadership and serves only while leader (see [`crate::ha`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::clock::SystemClock;
use crate::codec::{decode_payload, encode_frame, read_frame, server_handshake};
use crate::config::MasterConfig;
use crate::frame_sink::frame_sink;
use crate::ha::{self, EtcdConfig};
use crate::ha_state::{HaState, LeaderView, RuntimeState};
use crate::metrics::Metrics;
use crate::proto::{ErrorCode, Request, Response};
use crate::replica_lists::ReplicasResponse;
use crate::service::MasterService;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued per connection for its writer task.
pub(crate) const QUEUED_FRAMES: usize = 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding or runtime creation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// State shared by the RPC driver, the HA loop and the admin HTTP server.
#[derive(Debug, Default)]
pub struct Shared {
    /// Metrics registry.
    pub metrics: Metrics,
    /// Campaigning and the leader seen, for the admin routes.
    pub ha: HaState,
    current: RwLock<Option<Arc<MasterService>>>,
    leader: AtomicBool,
}

impl Shared {
    /// The service of the current term (`None` while standby).
    pub fn current(&self) -> Option<Arc<MasterService>> {
        self.current.read().clone()
    }

    /// Whether this process is serving as leader.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Its HA runtime state and the leader it last saw.
    pub fn ha_status(&self) -> (RuntimeState, Option<LeaderView>) {
        self.ha.snapshot(self.is_leader())
    }

    fn set(&self, service: Option<Arc<MasterService>>) {
        let leader = service.is_some();
        *self.current.write() = service;
        self.leader.store(leader, Ordering::Release);
        self.metrics.set_leader(leader);
    }
}

/// Entry point for embedding a master.
#[derive(Debug)]
pub struct MasterServer;

/// A started master; shuts down when dropped.
#[derive(Debug)]
pub struct RunningMaster {
    rpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MasterServer {
    /// Binds the RPC (and admin HTTP) listeners and starts serving on the current tokio
    /// runtime; with etcd configured it serves only once elected.
    pub async fn start(cfg: MasterConfig) -> Result<RunningMaster, ServerError> {
        let listener = TcpListener::bind(cfg.rpc_addr).await?;
        let rpc_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let http_addr = match cfg.http_addr {
            Some(a) => {
                let l = TcpListener::bind(a).await?;
                let bound = l.local_addr()?;
                tokio::spawn(crate::http::serve(l, shared.clone(), shutdown_rx.clone()));
                Some(bound)
            }
            None => None,
        };
        let task = match cfg.etcd.clone() {
            None => {
                let mut scfg = cfg.service.clone();
                scfg.recovery_window = Duration::ZERO;
                let service = Arc::new(MasterService::new(scfg, Arc::new(SystemClock::new())));
                shared.ha.observed(Some(LeaderView {
                    address: cfg
                        .advertise_addr
                        .clone()
                        .unwrap_or_else(|| rpc_addr.to_string()),
                    view_version: 0,
                }));
                shared.set(Some(service.clone()));
                tracing::info!(%rpc_addr, "master serving (no etcd: single master)");
                let sh = shared.clone();
                tokio::spawn(async move {
                    let mut stop = shutdown_rx.clone();
                    serve_term(&listener, service, &sh, &cfg, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                    sh.set(None);
                })
            }
            Some(etcd) => {
                let advertise = cfg
                    .advertise_addr
                    .clone()
                    .unwrap_or_else(|| rpc_addr.to_string());
                tokio::spawn(ha_loop(
                    listener,
                    cfg,
                    etcd,
                    advertise,
                    shared.clone(),
                    shutdown_rx,
                ))
            }
        };
        Ok(RunningMaster {
            rpc_addr,
            http_addr,
            shared,
            shutdown,
            task: Some(task),
            runtime: None,
        })
    }

    /// Like [`MasterServer::start`], on a runtime of its own (for callers without one).
    pub fn start_blocking(cfg: MasterConfig, threads: usize) -> Result<RunningMaster, ServerError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("mooncake-master")
            .enable_all()
            .build()?;
        let mut m = rt.block_on(Self::start(cfg))?;
        m.runtime = Some(rt);
        Ok(m)
    }
}

impl RunningMaster {
    /// Bound RPC address.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// Bound admin HTTP address, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The service of the current term (`None` while standby).
    pub fn service(&self) -> Option<Arc<MasterService>> {
        self.shared.current()
    }

    /// Whether it serves as leader.
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    /// Prometheus text of its metrics.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode(self.shared.current().as_deref())
    }

    /// Asks every task to stop (connections close, the leader resigns).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops and waits until the tasks have finished.
    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningMaster {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(rt) = self.runtime.take() {
            if let Some(t) = self.task.take() {
                // Let the leader resign cleanly, briefly.
                let _ =
                    rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), t).await });
            }
            rt.shutdown_background();
        }
    }
}

/// Standby ↔ leader loop of an HA master.
async fn ha_loop(
    listener: TcpListener,
    cfg: MasterConfig,
    etcd: EtcdConfig,
    advertise: String,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    shared.ha.campaigning();
    loop {
        tracing::info!(cluster = %etcd.cluster_id, "standby: campaigning for leadership");
        // While campaigning, the admin routes show the leader etcd names.
        let observe = ha::observe_leader(&etcd, |seen| {
            shared
                .ha
                .observed(seen.map(|(address, view_version)| LeaderView {
                    address,
                    view_version,
                }))
        });
        let won = tokio::select! {
            r = ha::campaign(&etcd, &advertise) => r,
            () = observe => continue,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let mut leadership = match won {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("campaign failed: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        };
        let mut scfg = cfg.service.clone();
        scfg.view_version = leadership.term;
        let service = Arc::new(MasterService::new(scfg, Arc::new(SystemClock::new())));
        shared.ha.observed(Some(LeaderView {
            address: advertise.clone(),
            view_version: leadership.term,
        }));
        shared.set(Some(service.clone()));
        tracing::info!(term = leadership.term, addr = %advertise, "elected leader");
        let mut stop_rx = shutdown.clone();
        let mut lost = false;
        serve_term(&listener, service, &shared, &cfg, async {
            tokio::select! {
                _ = leadership.lost() => lost = true,
                _ = stop_rx.wait_for(|s| *s) => {}
            }
        })
        .await;
        shared.set(None);
        shared.ha.observed(None);
        if lost {
            tracing::error!("lost leadership; dropping all state and returning to standby");
            continue;
        }
        leadership.resign().await;
        return;
    }
}

/// Serves one leadership term: accepts connections and ticks the service until `stop`.
async fn serve_term(
    listener: &TcpListener,
    service: Arc<MasterService>,
    shared: &Arc<Shared>,
    cfg: &MasterConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    let (term_tx, term_rx) = watch::channel(false);
    let ticker = {
        let service = service.clone();
        let period = cfg.tick_interval;
        let mut done = term_rx.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(period);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = iv.tick() => {}
                    _ = done.wait_for(|d| *d) => return,
                }
                // Index scans can take milliseconds: keep them off the RPC workers.
                let s = service.clone();
                if tokio::task::spawn_blocking(move || s.tick()).await.is_err() {
                    tracing::error!("maintenance tick panicked");
                }
            }
        })
    };
    tokio::pin!(stop);
    // The term's connections, so that the term ends only once none of them can answer.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    while conns.try_join_next().is_some() {}
                    conns.spawn(serve_connection(
                        stream,
                        peer,
                        service.clone(),
                        shared.clone(),
                        cfg.max_frame,
                        term_rx.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stop => break,
        }
    }
    let _ = term_tx.send(true);
    // Connections stop at their next read; one stuck writing to a peer that does not read is
    // left behind after a while (it answers nothing more).
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drained)
        .await
        .is_err()
    {
        conns.abort_all();
    }
    let _ = ticker.await;
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    service: Arc<MasterService>,
    shared: Arc<Shared>,
    max_frame: usize,
    mut term_end: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, server_handshake(&mut stream)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%peer, "closing connection: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing connection: handshake timed out");
            return;
        }
    }
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    // Bounded: a peer that stops reading responses stops being read (TCP backpressure)
    // instead of growing the queue.
    let (sink, writer) = frame_sink(wr, QUEUED_FRAMES);
    let writer = tokio::spawn(writer.run());
    let mut buf = Vec::new();
    loop {
        // The term's end first: a stopped master answers nothing more, even a request that
        // has already arrived.
        let r = tokio::select! {
            biased;
            _ = term_end.wait_for(|d| *d) => break,
            r = read_frame(&mut rd, &mut buf, max_frame) => r,
        };
        match r {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(%peer, "closing connection: {e}");
                break;
            }
        }
        let (id, req): (u64, Request<&str>) = match decode_payload(&buf) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        let (op, items) = (req.op_name(), req.item_count());
        let started = Instant::now();
        let mut out = Vec::new();
        // Only the small error answer of the call's kind is kept past encoding.
        let (mut encoded, mut failed, refusal, failed_keys) = match req {
            // Hot path: encoded straight from the index's flat form.
            Request::BatchGetReplicaList { keys } => {
                let lists = service.replica_lists(&keys);
                let failed_keys = shared.metrics.record_key_errors(op, lists.key_errors());
                (
                    encode_frame(id, &ReplicasResponse(&lists), &mut out),
                    false,
                    Response::Replicas(Err(ErrorCode::InvalidParams)),
                    failed_keys,
                )
            }
            req => {
                let resp = service.handle(req);
                let failed_keys = shared.metrics.record_key_errors(op, resp.key_errors());
                let refusal = error_like(&resp, ErrorCode::InvalidParams);
                (
                    encode_frame(id, &resp, &mut out),
                    resp.is_error(),
                    refusal,
                    failed_keys,
                )
            }
        };
        if encoded.is_err() || out.len().saturating_sub(4) > max_frame {
            // The client would drop the connection (and every call in flight on it) for an
            // oversized frame: answer this call alone with an error instead. The service has
            // already acted on it (leases granted, objects allocated): the clients' chunking
            // keeps answers far below the limit, so this is the last resort.
            tracing::warn!(%peer, op, bytes = out.len(), max_frame, "response too large; answering INVALID_PARAMS");
            out.clear();
            encoded = encode_frame(id, &refusal, &mut out);
            failed = true;
        }
        shared
            .metrics
            .record(op, items, failed_keys, failed, started.elapsed());
        if let Err(e) = encoded {
            tracing::error!(%peer, op, "encoding response: {e}; closing connection");
            break;
        }
        // More requests already read: queue, so their responses coalesce into one write.
        let sent = if rd.buffer().is_empty() {
            sink.send(out).await
        } else {
            sink.queue(out).await
        };
        if let Err(e) = sent {
            tracing::debug!(%peer, "closing connection: {e}");
            break;
        }
    }
    drop(sink);
    if let Ok(Err(e)) = writer.await {
        tracing::debug!(%peer, "writer: {e}");
    }
}

/// An error answer of the same kind as `resp`.
fn error_like(resp: &Response, code: ErrorCode) -> Response {
    match resp {
        Response::Unit(_) => Response::Unit(Err(code)),
        Response::Ping(_) => Response::Ping(Err(code)),
        Response::Replicas(_) => Response::Replicas(Err(code)),
        Response::Units(_) => Response::Units(Err(code)),
        Response::Bools(_) => Response::Bools(Err(code)),
        Response::Count(_) => Response::Count(Err(code)),
    }
}
