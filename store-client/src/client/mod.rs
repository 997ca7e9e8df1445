//! The store client: connects to the master, contributes a segment, and puts and gets
//! objects in batches with a result per key.
//!
//! Layout: this module holds the client's state, connecting, heartbeats and shutdown;
//! [`write`] and [`read`] are the data paths every put-like and get-like call shares;
//! `api` is the public call surface (metrics, auto-batching); `batching` adapts the data
//! paths to the auto-batcher.

mod api;
mod batching;
mod lifecycle;
pub(crate) mod read;
mod results;
pub(crate) mod write;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use mooncake_master::client::MasterClient;
use mooncake_master::proto::{ClientId, Segment};
use parking_lot::{Mutex, RwLock};
use transfer_engine::{AlignedBuffer, Engine, Location, SharedMemory};

use crate::auto_batcher::AutoBatcher;
use crate::buffers::RegisteredBuffers;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::prometheus::MetricsServer;
use crate::staging::Staging;

use batching::{ReadExecutor, WriteExecutor};

/// The pool memory this client contributes, as mounted on the master.
#[derive(Debug)]
pub(crate) struct MountedSegment {
    pub(crate) segment: Segment,
    pub(crate) buffer: PoolMemory,
}

/// The memory of this client's segment: a memfd that clients on this host map and copy to
/// and from directly (when the engine's `shared_memory` is on), else a private mapping.
#[derive(Debug)]
pub(crate) enum PoolMemory {
    Shared(Arc<SharedMemory>),
    Private(AlignedBuffer),
}

/// Says once per process when a shared pool will be mapped in 4 KiB pages: each same-host
/// peer then fills page tables for it 4 KiB at a time (its first write into a fresh part of the
/// pool ran at about a third of the rate it reaches with 2 MiB pages, measured) and holds 8
/// bytes of page table per 4 KiB it touches.
fn log_shmem_page_policy(len: usize) {
    static SAID: std::sync::Once = std::sync::Once::new();
    if len < 64 << 20 {
        return;
    }
    SAID.call_once(|| {
        if let Some(policy) = transfer_engine::shmem_huge_page_policy() {
            if matches!(policy.as_str(), "never" | "deny") {
                tracing::info!(
                    policy,
                    "the shared pool uses 4 KiB pages; `echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled` gives it 2 MiB pages"
                );
            }
        }
    });
}

/// The pool in reserved huge pages from `in_huge` when `huge` is asked for and it works
/// (saying how large it became: whole huge pages, 1 GiB ones on some hosts), else from
/// `ordinary` (with a warning if huge pages were asked for).
fn huge_or_ordinary<T, E: std::fmt::Display, F>(
    huge: bool,
    len: usize,
    size: impl Fn(&T) -> usize,
    in_huge: impl FnOnce() -> Result<T, E>,
    ordinary: impl FnOnce() -> Result<T, F>,
) -> Result<T, F> {
    if huge {
        match in_huge() {
            Ok(pool) => {
                tracing::info!(
                    asked = len,
                    bytes = size(&pool),
                    "segment in reserved huge pages"
                );
                return Ok(pool);
            }
            Err(e) => tracing::warn!(
                error = %e,
                bytes = len,
                "cannot put the segment in reserved huge pages (see /proc/sys/vm/nr_hugepages); using ordinary pages"
            ),
        }
    }
    ordinary()
}

impl PoolMemory {
    /// Allocates `len` bytes (more with `huge`: a multiple of the reserved huge page size),
    /// faulted in (best effort), and registers them with `engine`.
    fn register(
        engine: &Engine,
        len: usize,
        shared: bool,
        huge: bool,
    ) -> Result<PoolMemory, ClientError> {
        if shared {
            // A host that forbids memfds (a seccomp profile) still gets a pool, only not a
            // shared one: peers on this host then reach it over the network transport.
            let made = huge_or_ordinary(
                huge,
                len,
                SharedMemory::len,
                || SharedMemory::create_reserved_huge("mooncake-pool", len),
                || {
                    SharedMemory::create("mooncake-pool", len, true)
                        .inspect(|_| log_shmem_page_policy(len))
                },
            );
            match made {
                Ok(mem) => {
                    let mem = Arc::new(mem);
                    engine.register_shared_memory(mem.clone())?;
                    return Ok(PoolMemory::Shared(mem));
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    bytes = len,
                    "cannot create a shared-memory pool; using private memory (same-host peers will use the network transport)"
                ),
            }
        }
        let buffer = huge_or_ordinary(
            huge,
            len,
            AlignedBuffer::len,
            || AlignedBuffer::reserved_huge(len),
            || AlignedBuffer::populated(len),
        )?;
        // SAFETY: the buffer is owned by `Inner` (in `MountedSegment`) and unregistered in
        // `Inner::drop` before it is freed.
        unsafe {
            engine.register_memory(buffer.as_ptr() as *mut u8, buffer.len(), Location::Host)?
        };
        Ok(PoolMemory::Private(buffer))
    }

    pub(crate) fn addr(&self) -> u64 {
        match self {
            PoolMemory::Shared(m) => m.as_ptr() as u64,
            PoolMemory::Private(b) => b.addr(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            PoolMemory::Shared(m) => m.len(),
            PoolMemory::Private(b) => b.len(),
        }
    }
}

/// State shared by every clone of a [`Client`] and by its background tasks.
pub(crate) struct Inner {
    pub(crate) id: ClientId,
    pub(crate) config: ClientConfig,
    pub(crate) master: MasterClient,
    pub(crate) engine: Engine,
    pub(crate) mounted: Option<MountedSegment>,
    pub(crate) staging: Arc<Staging>,
    pub(crate) buffers: RwLock<RegisteredBuffers>,
    /// Engine handles of the segments this client has talked to, by segment name.
    pub(crate) handles: Mutex<HashMap<String, (u64, u64)>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) closed: AtomicBool,
    pub(crate) runtime: tokio::runtime::Handle,
    /// The master's read lease, in milliseconds, as its last heartbeat answer gave it.
    pub(crate) lease_ttl_ms: AtomicU64,
}

/// The master's id of the segment an engine of this incarnation mounts.
pub(crate) fn segment_id_of(incarnation: u64) -> ClientId {
    uuid::Uuid::from_u64_pair(incarnation, 0)
}

/// A store client. Cheap to clone (all clones share one connection, engine and segment);
/// the segment is unmounted by [`Client::close`] or when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), store_client::ClientError> {
/// use store_client::{Client, ClientConfig};
/// let client = Client::connect(ClientConfig::new("127.0.0.1:50051")).await?;
/// let put = client.batch_put(&[("layer0/block0", b"kv".as_slice()), ("", b"x".as_slice())]).await;
/// assert!(put[0].is_ok() && !put[1].is_ok()); // the empty key fails alone
/// let got = client.get("layer0/block0").await;
/// assert_eq!(got.value().map(|v| v.as_slice()), Some(&b"kv"[..]));
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    pub(crate) get_batcher: Option<Arc<AutoBatcher<ReadExecutor>>>,
    pub(crate) put_batcher: Option<Arc<AutoBatcher<WriteExecutor>>>,
    metrics_server: Option<Arc<MetricsServer>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.inner.id)
            .field("engine", &self.inner.engine.name())
            .field("segment", &self.inner.mounted.as_ref().map(|m| &m.segment))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the master, starts the transfer engine, registers the staging buffer and
    /// (if `segment_size > 0`) allocates, registers and mounts this client's segment; then
    /// starts heartbeats. Must run inside a tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        if config.staging_size == 0 {
            return Err(ClientError::Config("staging_size must be > 0".into()));
        }
        let master = MasterClient::connect(&config.master_addr)
            .await
            .map_err(|e| ClientError::Master {
                addr: config.master_addr.clone(),
                reason: e.to_string(),
            })?;
        let engine = Engine::new(config.engine.clone())?;
        let staging_buf = AlignedBuffer::populated(config.staging_size as usize)?;
        // SAFETY: the staging buffer is owned by `Inner` and unregistered in `Inner::drop`
        // before it is freed.
        unsafe {
            engine.register_memory(
                staging_buf.as_ptr() as *mut u8,
                staging_buf.len(),
                Location::Host,
            )?
        };
        let staging = Arc::new(Staging::new(staging_buf));
        let id = uuid::Uuid::new_v4();
        let mounted = if config.segment_size > 0 {
            let buffer = match PoolMemory::register(
                &engine,
                config.segment_size as usize,
                config.engine.shared_memory,
                config.reserved_huge_pages,
            ) {
                Ok(b) => b,
                Err(e) => {
                    let _ = engine.unregister_memory(staging.addr() as *mut u8);
                    return Err(e);
                }
            };
            let segment = Segment {
                // The engine's incarnation: readers and writers check that the engine they
                // reach under this name is the one the master placed replicas in.
                id: segment_id_of(engine.incarnation()),
                name: engine.name().to_string(),
                base: buffer.addr(),
                size: buffer.len() as u64,
            };
            Some(MountedSegment { segment, buffer })
        } else {
            None
        };
        let metrics = Arc::new(Metrics::default());
        metrics.watch_engine(&engine);
        let inner = Arc::new(Inner {
            id,
            master,
            engine,
            mounted,
            staging,
            buffers: RwLock::new(RegisteredBuffers::default()),
            handles: Mutex::new(HashMap::new()),
            metrics,
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            lease_ttl_ms: AtomicU64::new(lifecycle::ASSUMED_LEASE_TTL_MS),
            config,
        });
        // Dropping `inner` on a failed mount unregisters the memory again.
        if let Some(m) = &inner.mounted {
            inner
                .master
                .mount_segment(id, m.segment.clone())
                .await
                .map_err(|code| ClientError::Refused {
                    what: "mount_segment",
                    code,
                })?;
        }
        let metrics_server = match inner.config.metrics_addr {
            Some(addr) => Some(Arc::new(
                MetricsServer::start(addr, inner.metrics.clone())
                    .await
                    .map_err(|e| ClientError::Config(format!("metrics endpoint on {addr}: {e}")))?,
            )),
            None => None,
        };
        // The first heartbeat now: it tells this client how long its read leases last, which
        // every read is checked against.
        lifecycle::beat_once(&inner)
            .await
            .map_err(|code| ClientError::Refused { what: "ping", code })?;
        let lease = std::time::Duration::from_millis(inner.lease_ttl_ms.load(Ordering::Relaxed));
        if inner.config.engine.request_timeout > lease {
            tracing::warn!(
                request_timeout = ?inner.config.engine.request_timeout,
                ?lease,
                "transfers may run longer than the master's read lease; reads that do fail \
                 with LEASE_EXPIRED"
            );
        }
        lifecycle::spawn_heartbeat(&inner);
        let (get_batcher, put_batcher) = match inner.config.auto_batch {
            Some(policy) => (
                Some(Arc::new(AutoBatcher::new(
                    Arc::new(ReadExecutor(inner.clone())),
                    policy,
                ))),
                Some(Arc::new(AutoBatcher::new(
                    Arc::new(WriteExecutor(inner.clone())),
                    policy,
                ))),
            ),
            None => (None, None),
        };
        Ok(Client {
            inner,
            get_batcher,
            put_batcher,
            metrics_server,
        })
    }

    /// This client's id at the master.
    pub fn id(&self) -> ClientId {
        self.inner.id
    }

    /// The client's transfer engine (its name is this client's segment name).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The RPC client to the master.
    pub fn master(&self) -> &MasterClient {
        &self.inner.master
    }

    /// The segment this client contributes, if any.
    pub fn segment(&self) -> Option<&Segment> {
        self.inner.mounted.as_ref().map(|m| &m.segment)
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A snapshot of this client's metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Where the Prometheus endpoint listens, if it was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|s| s.local_addr())
    }

    /// Whether single-key calls are auto-batched.
    pub fn auto_batching(&self) -> bool {
        self.get_batcher.is_some()
    }

    /// Unmounts the segment (its objects leave the pool) and stops heartbeats. Other clones
    /// stop working for calls that need the segment; dropping the last clone frees memory.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(m) = &self.inner.mounted {
            if let Err(code) = self
                .inner
                .master
                .unmount_segment(self.inner.id, m.segment.id)
                .await
            {
                tracing::warn!(%code, "unmounting the segment on close failed");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Some(m) = &self.mounted {
                let (master, id, seg) = (self.master.clone(), self.id, m.segment.id);
                // Best effort (detached): the runtime may already be shutting down.
                drop(self.runtime.spawn(async move {
                    if let Err(code) = master.unmount_segment(id, seg).await {
                        tracing::debug!(%code, "unmount on drop failed");
                    }
                }));
            }
        }
        // Unregister before the buffers are freed, so no peer can reach freed memory even if
        // someone still holds a clone of the engine.
        if let Some(m) = &self.mounted {
            if let Err(e) = self.engine.unregister_memory(m.buffer.addr() as *mut u8) {
                tracing::warn!(error = %e, "unregistering the segment failed");
            }
        }
        if let Err(e) = self
            .engine
            .unregister_memory(self.staging.addr() as *mut u8)
        {
            tracing::warn!(error = %e, "unregistering the staging buffer failed");
        }
    }
}
