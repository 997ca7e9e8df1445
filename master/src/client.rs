//! Async RPC client of the master (used by store-client).
//!
//! One TCP connection carries many requests at once, matched to responses by request id. The
//! address is either `host:port` or `etcd://h1:p1;h2:p2[/cluster-id]` (`;` as in Mooncake, or
//! `,`, between endpoints; without a cluster id, `$MC_STORE_CLUSTER_ID`, else
//! `mooncake_cluster`); with etcd the client looks up the elected leader and, when the
//! connection drops, looks it up again, so that it follows failovers. A call whose connection breaks fails with `RPC_FAIL` (the caller decides
//! whether to retry); the next call reconnects.
//!
//! A master can also vanish without closing the connection (its host dies, a partition, a
//! stopped process). The socket then probes an idle master (TCP keepalive) and gives up on
//! requests it leaves unacknowledged (`TCP_USER_TIMEOUT`), and a call that times out with
//! nothing heard on its connection since it was sent abandons that connection, so the next
//! call reconnects (re-resolving the leader) instead of waiting on a dead one; heartbeat
//! pings have a short deadline of their own ([`ClientOptions::ping_timeout`]), so a stopped
//! master is left within seconds. Callers
//! that find no connection share one connect attempt and its outcome; for
//! [`ClientOptions::reconnect_backoff`] after a failed one, calls fail at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mooncake_master::{MasterClient, ReplicateConfig};
//! let master = MasterClient::connect("127.0.0.1:50051").await?;
//! let me = uuid::Uuid::new_v4();
//! let placed = master
//!     .batch_put_start(me, vec![("k".into(), 4096)], ReplicateConfig::default())
//!     .await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::chunking::{run_chunked, ChunkLimits};
use crate::codec::{
    client_handshake, decode_payload, encode_frame, read_frame, FrameError, DEFAULT_MAX_FRAME,
};
use crate::frame_sink::{frame_sink, FrameSink, SinkError};
use crate::ha;
use crate::proto::{
    BatchResult, ClientId, ErrorCode, HeldObject, PingResponse, ReplicaDescriptor, ReplicateConfig,
    Request, Response, Segment, SegmentId,
};

/// Why the client could not reach a master.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The address string is not `host:port` or `etcd://…`.
    #[error(
        "invalid master address {0:?}: use host:port or etcd://host:port[;host:port][/cluster-id]"
    )]
    InvalidAddress(String),
    /// Socket error.
    #[error("connecting to master {addr}: {source}")]
    Io {
        /// Address tried.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Handshake or framing failure.
    #[error("master {addr}: {source}")]
    Frame {
        /// Address tried.
        addr: String,
        /// Cause.
        source: FrameError,
    },
    /// etcd could not be queried.
    #[error("etcd: {0}")]
    Etcd(String),
    /// etcd has no elected master for the cluster.
    #[error("no master is elected for cluster {0:?} (are masters running with --etcd-endpoints?)")]
    NoLeader(String),
    /// Timed out.
    #[error("timed out connecting to master {0}")]
    Timeout(String),
    /// Not tried: the latest connect attempt failed (with this error) just now, or while the
    /// caller waited for it.
    #[error("master unreachable: {0} (latest connect attempt; retried after the backoff)")]
    RecentFailure(String),
}

/// Client tunables.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of one call.
    pub rpc_timeout: Duration,
    /// Deadline of a heartbeat ping: the master answers pings at once, so one unanswered
    /// for this long with nothing else heard either means the master is gone (see the module
    /// documentation), and the next call reconnects.
    pub ping_timeout: Duration,
    /// Deadline of one TCP connect + handshake.
    pub connect_timeout: Duration,
    /// With etcd: how long a reconnect keeps looking for a (new) leader.
    pub failover_wait: Duration,
    /// Largest accepted response frame; at least the master's `--max-frame-bytes`, whose
    /// answers are never larger.
    pub max_frame: usize,
    /// Batch calls larger than this go as several calls at once (see [`ChunkLimits`]). A call
    /// cut in several that fails as a whole in one of them (even RPC_FAIL, after which the
    /// master may have acted on it) reports that error for each key of that part.
    pub chunk: ChunkLimits,
    /// Idle time before the connection's first TCP keepalive probe; probes then go every
    /// [`KEEPALIVE_INTERVAL`], and [`KEEPALIVE_PROBES`] unanswered ones close it.
    pub keepalive: Duration,
    /// How long a request may stay unacknowledged by the master's host before the connection
    /// is closed (`TCP_USER_TIMEOUT`).
    pub user_timeout: Duration,
    /// After a failed connect attempt, calls fail at once (`RPC_FAIL`) for this long instead
    /// of each trying again.
    pub reconnect_backoff: Duration,
}

/// Time between unanswered keepalive probes on a master connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered keepalive probes after which a master connection is closed.
pub const KEEPALIVE_PROBES: u32 = 3;

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            rpc_timeout: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            failover_wait: Duration::from_secs(20),
            max_frame: DEFAULT_MAX_FRAME,
            chunk: ChunkLimits::default(),
            keepalive: Duration::from_secs(5),
            user_timeout: Duration::from_secs(10),
            reconnect_backoff: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug)]
enum Target {
    Direct(String),
    Etcd {
        endpoints: Vec<String>,
        cluster_id: String,
    },
}

fn parse_target(addr: &str) -> Result<Target, RpcError> {
    parse_target_with(addr, ha::default_cluster_id)
}

/// Parses `host:port` or `etcd://h1:p1;h2:p2[/cluster-id]` (`;` as in Mooncake, or `,`);
/// without a cluster id the etcd form takes `default_cluster()`.
fn parse_target_with(
    addr: &str,
    default_cluster: impl FnOnce() -> String,
) -> Result<Target, RpcError> {
    let bad = || RpcError::InvalidAddress(addr.to_string());
    if let Some(rest) = addr.strip_prefix("etcd://") {
        let (hosts, cluster) = match rest.split_once('/') {
            Some((h, c)) if !c.is_empty() => (h, c.to_string()),
            Some((h, _)) => (h, default_cluster()),
            None => (rest, default_cluster()),
        };
        let endpoints: Vec<String> = hosts
            .split([',', ';'])
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(bad());
        }
        Ok(Target::Etcd {
            endpoints,
            cluster_id: cluster,
        })
    } else if addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    {
        Ok(Target::Direct(addr.to_string()))
    } else {
        Err(bad())
    }
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Response>>>;

#[derive(Debug)]
struct Conn {
    addr: String,
    sink: FrameSink,
    pending: Pending,
    next_id: AtomicU64,
    alive: AtomicBool,
    /// Frames received so far: a call that times out without this moving heard nothing.
    heard: AtomicU64,
    /// Its reader and writer tasks, stopped when it fails (a silent master never ends them).
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Conn {
    fn fail_all(&self) {
        self.alive.store(false, Ordering::SeqCst);
        // Dropping the senders wakes every waiter with an error.
        self.pending.lock().clear();
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// What callers without a connection know of the connect attempts made so far.
#[derive(Debug, Default)]
struct Attempts {
    /// Attempts finished.
    done: u64,
    /// When the latest one failed, and why; `None` if it succeeded.
    failed: Option<(Instant, String)>,
}

impl Attempts {
    /// The failure a caller that saw `seen` attempts finished should return instead of trying:
    /// the latest attempt's, if it failed and finished since (the caller waited on it) or less
    /// than `backoff` before `now`.
    fn reuse(&self, seen: u64, now: Instant, backoff: Duration) -> Option<RpcError> {
        match &self.failed {
            Some((at, why)) if self.done != seen || now < *at + backoff => {
                Some(RpcError::RecentFailure(why.clone()))
            }
            _ => None,
        }
    }

    /// Records a finished attempt.
    fn finished(&mut self, result: Result<(), &RpcError>, now: Instant) {
        self.done += 1;
        self.failed = result.err().map(|e| (now, e.to_string()));
    }
}

#[derive(Debug)]
struct Inner {
    target: Target,
    opts: ClientOptions,
    conn: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
    attempts: Mutex<Attempts>,
}

/// Sets keepalive and the unacknowledged-data timeout on a master connection, so that a
/// master host that vanished closes it (best effort: a socket that refuses keeps working).
fn watch_master(stream: &TcpStream, opts: &ClientOptions) {
    let sock = SockRef::from(stream);
    let set = sock
        .set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(opts.keepalive)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_PROBES),
        )
        .and_then(|()| sock.set_tcp_user_timeout(Some(opts.user_timeout)));
    if let Err(e) = set {
        tracing::debug!(error = %e, "cannot set keepalive on the master connection");
    }
}

/// See the module documentation. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct MasterClient {
    inner: Arc<Inner>,
}

impl MasterClient {
    /// Connects to `addr` (`host:port` or `etcd://h1:p1;h2:p2[/cluster-id]`).
    pub async fn connect(addr: &str) -> Result<MasterClient, RpcError> {
        Self::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(addr: &str, opts: ClientOptions) -> Result<MasterClient, RpcError> {
        let c = MasterClient {
            inner: Arc::new(Inner {
                target: parse_target(addr)?,
                opts,
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                attempts: Mutex::default(),
            }),
        };
        c.connection().await?;
        Ok(c)
    }

    /// Address of the master currently connected, if any.
    pub fn connected_addr(&self) -> Option<String> {
        self.inner
            .conn
            .lock()
            .as_ref()
            .filter(|c| c.alive.load(Ordering::SeqCst))
            .map(|c| c.addr.clone())
    }

    /// The live connection, else the outcome of one connect attempt: this caller's, or the
    /// one it waited on, or the latest failed one during the backoff.
    async fn connection(&self) -> Result<Arc<Conn>, RpcError> {
        if let Some(c) = self.live_conn() {
            return Ok(c);
        }
        let seen = self.inner.attempts.lock().done;
        let _g = self.inner.connecting.lock().await;
        if let Some(c) = self.live_conn() {
            return Ok(c);
        }
        let backoff = self.inner.opts.reconnect_backoff;
        if let Some(e) = self
            .inner
            .attempts
            .lock()
            .reuse(seen, Instant::now(), backoff)
        {
            return Err(e);
        }
        let made = self.connect_once().await;
        self.inner
            .attempts
            .lock()
            .finished(made.as_ref().map(drop), Instant::now());
        made
    }

    /// One connect attempt (with etcd, retried until a leader answers or the failover wait
    /// ends); the connection made becomes the client's.
    async fn connect_once(&self) -> Result<Arc<Conn>, RpcError> {
        let deadline = match self.inner.target {
            Target::Direct(_) => Instant::now(),
            Target::Etcd { .. } => Instant::now() + self.inner.opts.failover_wait,
        };
        loop {
            match self.open().await {
                Ok(c) => {
                    *self.inner.conn.lock() = Some(c.clone());
                    return Ok(c);
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!("master not reachable yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn live_conn(&self) -> Option<Arc<Conn>> {
        self.inner
            .conn
            .lock()
            .as_ref()
            .filter(|c| c.alive.load(Ordering::SeqCst))
            .cloned()
    }

    async fn resolve(&self) -> Result<String, RpcError> {
        match &self.inner.target {
            Target::Direct(a) => Ok(a.clone()),
            Target::Etcd {
                endpoints,
                cluster_id,
            } => {
                let lookup = async {
                    let mut etcd = ha::connect(endpoints).await?;
                    ha::current_leader(&mut etcd, cluster_id).await
                };
                match tokio::time::timeout(self.inner.opts.connect_timeout, lookup).await {
                    Ok(Ok(Some((addr, _term)))) => Ok(addr),
                    Ok(Ok(None)) => Err(RpcError::NoLeader(cluster_id.clone())),
                    Ok(Err(e)) => Err(RpcError::Etcd(e.to_string())),
                    Err(_) => Err(RpcError::Timeout(format!("etcd {endpoints:?}"))),
                }
            }
        }
    }

    async fn open(&self) -> Result<Arc<Conn>, RpcError> {
        let addr = self.resolve().await?;
        let opts = &self.inner.opts;
        let connect = async {
            let mut s = TcpStream::connect(&addr)
                .await
                .map_err(|source| RpcError::Io {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = s.set_nodelay(true);
            watch_master(&s, opts);
            client_handshake(&mut s)
                .await
                .map_err(|source| RpcError::Frame {
                    addr: addr.clone(),
                    source,
                })?;
            Ok::<_, RpcError>(s)
        };
        let stream = tokio::time::timeout(opts.connect_timeout, connect)
            .await
            .map_err(|_| RpcError::Timeout(addr.clone()))??;
        let (rd, wr) = stream.into_split();
        let (sink, writer) = frame_sink(wr, crate::server::QUEUED_FRAMES);
        let conn = Arc::new(Conn {
            addr: addr.clone(),
            sink,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            heard: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        // The tasks hold the connection weakly: when the last user drops it, its sink (and so
        // the writer's queue) closes, the writer shuts the socket down, the master closes its
        // side and the reader sees EOF, so a dropped client leaves no task or socket behind.
        let wconn = Arc::downgrade(&conn);
        let writing = tokio::spawn(async move {
            if let Err(e) = writer.run().await {
                tracing::debug!("master connection writer: {e}");
            }
            if let Some(c) = wconn.upgrade() {
                c.fail_all();
            }
        });
        let rconn = Arc::downgrade(&conn);
        let raddr = addr.clone();
        let max = opts.max_frame;
        let reading = tokio::spawn(async move {
            let mut rd = BufReader::with_capacity(256 * 1024, rd);
            let mut buf = Vec::new();
            loop {
                match read_frame(&mut rd, &mut buf, max).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(addr = %raddr, "master connection: {e}");
                        break;
                    }
                }
                match decode_payload::<Response>(&buf) {
                    Ok((id, resp)) => {
                        let Some(c) = rconn.upgrade() else { break };
                        c.heard.fetch_add(1, Ordering::SeqCst);
                        let waiter = c.pending.lock().remove(&id);
                        if let Some(w) = waiter {
                            let _ = w.send(resp);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(addr = %raddr, "bad frame from master: {e}");
                        break;
                    }
                }
            }
            if let Some(c) = rconn.upgrade() {
                c.fail_all();
            }
        });
        conn.tasks
            .lock()
            .extend([writing.abort_handle(), reading.abort_handle()]);
        if !conn.alive.load(Ordering::SeqCst) {
            // Failed before its tasks were listed: stop them now.
            conn.fail_all();
        }
        Ok(conn)
    }

    fn chunk_limits(&self) -> ChunkLimits {
        self.inner.opts.chunk
    }

    /// A start call (answers `replicas` replica lists per key), cut into chunks when large.
    /// Each chunk of a batch put carries the group ids of its own items.
    async fn replicas_chunked(
        &self,
        items: Vec<(String, u64)>,
        mut cfg: ReplicateConfig,
        request: impl Fn(Vec<(String, u64)>, ReplicateConfig) -> Request,
    ) -> BatchResult<Vec<ReplicaDescriptor>> {
        // A length mismatch refuses the whole call, as the master would for one chunk (cut into
        // chunks, each would be checked against its own length).
        if !cfg.group_ids.is_empty() && cfg.group_ids.len() != items.len() {
            return Err(ErrorCode::InvalidParams);
        }
        let limits = self.chunk_limits().per_replicas(cfg.replica_num);
        let grouped = !cfg.group_ids.is_empty();
        let groups = if grouped {
            std::mem::take(&mut cfg.group_ids)
        } else {
            Vec::new()
        };
        let tagged: Vec<((String, u64), Option<String>)> = if grouped {
            items
                .into_iter()
                .zip(groups.into_iter().map(Some))
                .collect()
        } else {
            items.into_iter().map(|i| (i, None)).collect()
        };
        run_chunked(
            tagged,
            |i| i.0 .0.len() + i.1.as_ref().map_or(0, String::len),
            limits,
            |chunk| {
                let mut cfg = cfg.clone();
                let (items, groups): (Vec<_>, Vec<_>) = chunk.into_iter().unzip();
                if grouped {
                    cfg.group_ids = groups.into_iter().flatten().collect();
                }
                self.replicas(request(items, cfg))
            },
        )
        .await
    }

    /// A per-key unit batch call, cut into chunks when large.
    async fn units_chunked(
        &self,
        keys: Vec<String>,
        request: impl Fn(Vec<String>) -> Request,
    ) -> BatchResult<()> {
        run_chunked(keys, String::len, self.chunk_limits(), |keys| {
            self.units(request(keys))
        })
        .await
    }

    /// Sends one request and waits for its response.
    pub async fn call(&self, req: Request) -> Result<Response, ErrorCode> {
        self.call_within(req, self.inner.opts.rpc_timeout).await
    }

    /// Like [`Self::call`], with its own deadline.
    async fn call_within(&self, req: Request, timeout: Duration) -> Result<Response, ErrorCode> {
        let conn = self.connection().await.map_err(|e| {
            match e {
                RpcError::RecentFailure(_) => tracing::debug!("{e}"),
                _ => tracing::warn!("{e}"),
            }
            ErrorCode::RpcFail
        })?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode_frame(id, &req, &mut frame).map_err(|_| ErrorCode::InvalidParams)?;
        if frame.len() - 4 > self.inner.opts.max_frame {
            return Err(ErrorCode::InvalidParams);
        }
        let (tx, rx) = oneshot::channel();
        let heard = conn.heard.load(Ordering::SeqCst);
        conn.pending.lock().insert(id, tx);
        let exchange = async {
            if !conn.alive.load(Ordering::SeqCst) {
                return Err(ErrorCode::RpcFail);
            }
            if let Err(e) = conn.sink.send(frame).await {
                if let SinkError::Io(_) = e {
                    tracing::warn!(addr = %conn.addr, "master connection: {e}");
                    conn.fail_all();
                }
                return Err(ErrorCode::RpcFail);
            }
            // The sender is dropped when the connection fails.
            rx.await.map_err(|_| ErrorCode::RpcFail)
        };
        let r = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                // Nothing at all from the master for a whole call: take it for gone (a
                // master that answers others and is only slow on this call keeps it).
                if conn.heard.load(Ordering::SeqCst) == heard && conn.alive.load(Ordering::SeqCst) {
                    tracing::warn!(addr = %conn.addr, "master silent for a whole call; reconnecting");
                    conn.fail_all();
                }
                Err(ErrorCode::RpcFail)
            }
        };
        if r.is_err() {
            conn.pending.lock().remove(&id);
        }
        r
    }

    async fn unit(&self, req: Request) -> Result<(), ErrorCode> {
        match self.call(req).await? {
            Response::Unit(r) => r,
            _ => Err(ErrorCode::RpcFail),
        }
    }

    async fn replicas(&self, req: Request) -> BatchResult<Vec<ReplicaDescriptor>> {
        match self.call(req).await? {
            Response::Replicas(r) => r,
            _ => Err(ErrorCode::RpcFail),
        }
    }

    async fn units(&self, req: Request) -> BatchResult<()> {
        match self.call(req).await? {
            Response::Units(r) => r,
            _ => Err(ErrorCode::RpcFail),
        }
    }

    /// Mounts a segment.
    pub async fn mount_segment(&self, client: ClientId, seg: Segment) -> Result<(), ErrorCode> {
        self.unit(Request::MountSegment {
            client,
            segment: seg,
        })
        .await
    }

    /// After NEED_REMOUNT or a leader change: re-registers the client and its segments.
    pub async fn remount_segments(
        &self,
        client: ClientId,
        segs: Vec<Segment>,
    ) -> Result<(), ErrorCode> {
        self.remount_segments_with_objects(client, segs, Vec::new())
            .await
            .map(|_| ())
    }

    /// Like [`Self::remount_segments`], also reporting objects the client knows to be held
    /// (e.g. those it wrote), so that a new leader keeps them and never allocates over them.
    /// One result per object.
    pub async fn remount_segments_with_objects(
        &self,
        client: ClientId,
        segs: Vec<Segment>,
        objects: Vec<HeldObject>,
    ) -> BatchResult<()> {
        self.units(Request::RemountSegments {
            client,
            segments: segs,
            objects,
        })
        .await
    }

    /// Unmounts a segment (its replicas are dropped).
    pub async fn unmount_segment(&self, client: ClientId, seg: SegmentId) -> Result<(), ErrorCode> {
        self.unit(Request::UnmountSegment {
            client,
            segment: seg,
        })
        .await
    }

    /// Heartbeat; `need_remount` asks the client to remount its segments.
    pub async fn ping(&self, client: ClientId) -> Result<PingResponse, ErrorCode> {
        let ping = Request::Ping { client };
        match self.call_within(ping, self.inner.opts.ping_timeout).await? {
            Response::Ping(r) => r,
            _ => Err(ErrorCode::RpcFail),
        }
    }

    /// Allocates replicas for `(key, size)` items; objects enter PROCESSING.
    pub async fn batch_put_start(
        &self,
        client: ClientId,
        items: Vec<(String, u64)>,
        cfg: ReplicateConfig,
    ) -> BatchResult<Vec<ReplicaDescriptor>> {
        self.replicas_chunked(items, cfg, |items, config| Request::BatchPutStart {
            client,
            items,
            config,
        })
        .await
    }

    /// Marks written keys COMPLETE.
    pub async fn batch_put_end(&self, client: ClientId, keys: Vec<String>) -> BatchResult<()> {
        self.units_chunked(keys, |keys| Request::BatchPutEnd { client, keys })
            .await
    }

    /// Drops keys whose write failed.
    pub async fn batch_put_revoke(&self, client: ClientId, keys: Vec<String>) -> BatchResult<()> {
        self.units_chunked(keys, |keys| Request::BatchPutRevoke { client, keys })
            .await
    }

    /// Like PutStart but overwrites complete keys (buffers reused when the size matches).
    pub async fn batch_upsert_start(
        &self,
        client: ClientId,
        items: Vec<(String, u64)>,
        cfg: ReplicateConfig,
    ) -> BatchResult<Vec<ReplicaDescriptor>> {
        self.replicas_chunked(items, cfg, |items, config| Request::BatchUpsertStart {
            client,
            items,
            config,
        })
        .await
    }

    /// Completes upserts (same as PutEnd).
    pub async fn batch_upsert_end(&self, client: ClientId, keys: Vec<String>) -> BatchResult<()> {
        self.batch_put_end(client, keys).await
    }

    /// Revokes upserts (same as PutRevoke).
    pub async fn batch_upsert_revoke(
        &self,
        client: ClientId,
        keys: Vec<String>,
    ) -> BatchResult<()> {
        self.batch_put_revoke(client, keys).await
    }

    /// Replica lists of complete keys (grants read leases).
    pub async fn batch_get_replica_list(
        &self,
        keys: Vec<String>,
    ) -> BatchResult<Vec<ReplicaDescriptor>> {
        run_chunked(keys, String::len, self.chunk_limits(), |keys| {
            self.replicas(Request::BatchGetReplicaList { keys })
        })
        .await
    }

    /// Whether keys exist and are complete (an access for eviction order; a read lease only
    /// where the master runs with `--exist-grants-lease`).
    pub async fn batch_exist_key(&self, keys: Vec<String>) -> BatchResult<bool> {
        run_chunked(keys, String::len, self.chunk_limits(), |keys| async move {
            match self.call(Request::BatchExistKey { keys }).await? {
                Response::Bools(r) => r,
                _ => Err(ErrorCode::RpcFail),
            }
        })
        .await
    }

    /// Removes keys (`force` also removes leased and PROCESSING ones).
    pub async fn batch_remove(&self, keys: Vec<String>, force: bool) -> BatchResult<()> {
        self.units_chunked(keys, |keys| Request::BatchRemove { keys, force })
            .await
    }

    /// Removes every removable key; the number removed.
    pub async fn remove_all(&self, force: bool) -> Result<u64, ErrorCode> {
        match self.call(Request::RemoveAll { force }).await? {
            Response::Count(r) => r,
            _ => Err(ErrorCode::RpcFail),
        }
    }

    /// Removes every removable key `pattern` (a regular expression) matches; returns how many.
    pub async fn remove_by_regex(&self, pattern: &str, force: bool) -> Result<u64, ErrorCode> {
        let req = Request::RemoveByRegex {
            pattern: pattern.to_string(),
            force,
        };
        match self.call(req).await? {
            Response::Count(r) => r,
            _ => Err(ErrorCode::RpcFail),
        }
    }

    /// Single-key PutStart.
    pub async fn put_start(
        &self,
        client: ClientId,
        key: String,
        size: u64,
        cfg: ReplicateConfig,
    ) -> Result<Vec<ReplicaDescriptor>, ErrorCode> {
        single(self.batch_put_start(client, vec![(key, size)], cfg).await)
    }

    /// Single-key PutEnd.
    pub async fn put_end(&self, client: ClientId, key: String) -> Result<(), ErrorCode> {
        single(self.batch_put_end(client, vec![key]).await)
    }

    /// Single-key PutRevoke.
    pub async fn put_revoke(&self, client: ClientId, key: String) -> Result<(), ErrorCode> {
        single(self.batch_put_revoke(client, vec![key]).await)
    }

    /// Single-key GetReplicaList.
    pub async fn get_replica_list(&self, key: String) -> Result<Vec<ReplicaDescriptor>, ErrorCode> {
        single(self.batch_get_replica_list(vec![key]).await)
    }

    /// Single-key ExistKey.
    pub async fn exist_key(&self, key: String) -> Result<bool, ErrorCode> {
        single(self.batch_exist_key(vec![key]).await)
    }

    /// Single-key Remove.
    pub async fn remove(&self, key: String, force: bool) -> Result<(), ErrorCode> {
        single(self.batch_remove(vec![key], force).await)
    }
}

fn single<T>(r: BatchResult<T>) -> Result<T, ErrorCode> {
    r?.into_iter().next().unwrap_or(Err(ErrorCode::RpcFail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let fixed = || "fixed".to_string();
        assert!(matches!(
            parse_target("127.0.0.1:5").unwrap(),
            Target::Direct(_)
        ));
        let etcd = |addr: &str| match parse_target_with(addr, fixed).unwrap() {
            Target::Etcd {
                endpoints,
                cluster_id,
            } => (endpoints, cluster_id),
            t => panic!("{t:?}"),
        };
        assert_eq!(
            etcd("etcd://a:1,b:2/c1"),
            (vec!["a:1".into(), "b:2".into()], "c1".into())
        );
        // Mooncake's separator, mixed separators, stray ones.
        assert_eq!(
            etcd("etcd://a:1;b:2"),
            (vec!["a:1".into(), "b:2".into()], "fixed".into())
        );
        assert_eq!(
            etcd("etcd://a:1;b:2,c:3;/c2"),
            (vec!["a:1".into(), "b:2".into(), "c:3".into()], "c2".into())
        );
        assert_eq!(etcd("etcd://a:1/"), (vec!["a:1".into()], "fixed".into()));
        for bad in [
            "",
            "nohost",
            "etcd://",
            "etcd://;,",
            "etcd://;/c",
            "h:notaport",
            ":5",
        ] {
            assert!(parse_target_with(bad, fixed).is_err(), "{bad}");
        }
    }

    #[test]
    fn callers_share_a_failed_attempt_and_wait_out_the_backoff() {
        let t0 = Instant::now();
        let backoff = Duration::from_millis(500);
        let mut a = Attempts::default();
        assert!(a.reuse(0, t0, backoff).is_none(), "nothing tried yet");
        let seen = a.done;
        a.finished(Err(&RpcError::Timeout("m:1".into())), t0);
        // One that waited on it gets its failure, even long after.
        let shared = a
            .reuse(seen, t0 + 10 * backoff, backoff)
            .map(|e| e.to_string());
        assert!(shared.is_some_and(|e| e.contains("timed out connecting to master m:1")));
        // One that came after it, during the backoff: the same; after it: its own attempt.
        assert!(a.reuse(a.done, t0 + backoff / 2, backoff).is_some());
        assert!(a.reuse(a.done, t0 + backoff, backoff).is_none());
        // A success clears it, for those who waited on it too.
        let seen = a.done;
        a.finished(Ok(()), t0 + backoff);
        assert!(a.reuse(seen, t0 + backoff, backoff).is_none());
        assert_eq!(a.done, 2);
    }

    #[tokio::test]
    async fn master_sockets_probe_the_master() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let sock = SockRef::from(&s);
        assert!(!sock.keepalive().unwrap());
        let opts = ClientOptions::default();
        watch_master(&s, &opts);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), opts.keepalive);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(opts.user_timeout));
    }

    #[test]
    fn cluster_id_defaults_from_mc_store_cluster_id() {
        use crate::ha::{cluster_id_or_default, DEFAULT_CLUSTER_ID};
        assert_eq!(cluster_id_or_default(Some("x")), "x");
        assert_eq!(cluster_id_or_default(Some("")), DEFAULT_CLUSTER_ID);
        assert_eq!(cluster_id_or_default(None), DEFAULT_CLUSTER_ID);
        // parse_target reads the real environment of this process.
        let want = cluster_id_or_default(std::env::var(ha::CLUSTER_ID_ENV).ok().as_deref());
        match parse_target("etcd://a:1;b:2").unwrap() {
            Target::Etcd {
                endpoints,
                cluster_id,
            } => {
                assert_eq!(endpoints.len(), 2);
                assert_eq!(cluster_id, want);
            }
            t => panic!("{t:?}"),
        }
    }
}
