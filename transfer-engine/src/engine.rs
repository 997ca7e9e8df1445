//! The engine: registered memory, opened segments, batches, and the transports that serve
//! them.
//!
//! ```no_run
//! use transfer_engine::*;
//! let engine = Engine::new(EngineConfig { protocol: Protocol::Tcp, ..Default::default() })?;
//! let mut buf = AlignedBuffer::new(1 << 20)?;
//! // SAFETY: `buf` outlives the registration (unregistered below before it drops).
//! unsafe { engine.register_memory(buf.as_mut_ptr(), buf.len(), Location::Host)? };
//! let peer = engine.open_segment("127.0.0.1:12345")?;
//! let batch = engine.allocate_batch(1)?;
//! let req = TransferRequest { op: OpCode::Read, local_addr: buf.addr(), target: peer,
//!                             target_offset: 0x7f00_0000_0000, len: 4096 };
//! engine.submit(batch, &[req])?;
//! let statuses = engine.wait(batch)?;
//! engine.free_batch(batch)?;
//! engine.unregister_memory(buf.as_mut_ptr())?;
//! # Ok::<(), TransferError>(())
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::batch::{BatchTable, CompletionSink};
use crate::control::ControlHandler;
use crate::descriptor::SegmentDescriptor;
use crate::listener::{Listener, ServeState};
use crate::metadata::{self, MetadataStore};
use crate::registry::{MemoryRegistry, Region};
use crate::segment::{OpenSegment, SegmentTable};
use crate::transport::local::LocalTransport;
use crate::transport::parallel_copy::CopyPool;
use crate::transport::shm::{self, SharedRegions, ShmTransport};
use crate::transport::tcp::TcpTransport;
use crate::transport::{Transport, TransportContext};
use crate::{
    BatchId, EngineConfig, Location, MetadataConfig, Protocol, SegmentHandle, SharedMemory,
    ShmStats, TransferError, TransferRequest, TransferStatus,
};

/// Requests of one submit for one target: handle, (batch index, request) pairs, and whether
/// any uses device (non-host) local memory.
type TargetGroup = (SegmentHandle, Vec<(usize, TransferRequest)>, bool);

/// This engine's own segment as peers see it.
struct LocalSegment {
    name: String,
    addr: SocketAddr,
    incarnation: u64,
    registry: Arc<MemoryRegistry>,
    transport: Arc<dyn Transport>,
    /// Memory registered with `register_shared_memory`, kept alive while registered.
    shared: SharedRegions,
    /// The same-host transport (`None` when off or unavailable).
    shm: Option<ShmTransport>,
}

impl LocalSegment {
    /// Stops sharing the region at `addr`, if it was shared: drops this engine's mapping and
    /// tells the peers, which drop theirs before their next transfer (or within a second).
    fn unshare(&self, addr: u64) {
        let id = self.shared.lock().remove(addr);
        if let (Some(id), Some(shm)) = (id, &self.shm) {
            shm.revoke(id);
        }
    }
}

impl ControlHandler for LocalSegment {
    fn descriptor(&self) -> SegmentDescriptor {
        let mut transports = BTreeMap::new();
        if let Some(d) = self.transport.descriptor_data() {
            transports.insert(self.transport.name().to_string(), d);
        }
        if let Some(d) = self.shm.as_ref().and_then(ShmTransport::descriptor_data) {
            transports.insert(shm::NAME.to_string(), d);
        }
        SegmentDescriptor {
            name: self.name.clone(),
            tcp_addr: self.addr,
            incarnation: self.incarnation,
            buffers: self.registry.snapshot(),
            transports,
        }
    }

    fn transport(&self, name: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        if name == self.transport.name() {
            self.transport.handle_control(payload)
        } else {
            Err(format!(
                "this engine runs transport {}, not {name}",
                self.transport.name()
            ))
        }
    }
}

struct Inner {
    listener: Option<Listener>,
    local: Arc<LocalSegment>,
    protocol: Protocol,
    publishes: bool,
    metadata: Arc<dyn MetadataStore>,
    memcpy: LocalTransport,
    segments: SegmentTable,
    batches: BatchTable,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.publishes {
            if let Err(e) = self.metadata.remove(&self.local.name) {
                tracing::warn!(error = %e, "could not withdraw segment descriptor");
            }
        }
        // Stop serving peers before anything else goes away.
        self.listener = None;
    }
}

/// A transfer engine: one segment, its registered memory, and batches of one-sided transfers
/// to other segments. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A handle that does not keep an [`Engine`] alive (for observers such as metrics).
#[derive(Clone, Debug)]
pub struct WeakEngine(std::sync::Weak<Inner>);

impl WeakEngine {
    /// The engine, while some [`Engine`] clone still holds it.
    pub fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineInner")
            .field("name", &self.local.name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.inner.local.name)
            .field("protocol", &self.inner.protocol)
            .finish()
    }
}

fn choose_transport(
    ctx: &TransportContext,
) -> Result<(Protocol, Arc<dyn Transport>), TransferError> {
    let tcp = || -> Result<(Protocol, Arc<dyn Transport>), TransferError> {
        Ok((Protocol::Tcp, Arc::new(TcpTransport::new(ctx)?)))
    };
    match ctx.config.protocol {
        Protocol::Tcp => tcp(),
        Protocol::Rdma => Ok((Protocol::Rdma, crate::rdma::new_transport(ctx)?)),
        Protocol::Auto => match crate::rdma::probe(&ctx.config.rdma) {
            Ok(()) => Ok((Protocol::Rdma, crate::rdma::new_transport(ctx)?)),
            Err(why) => {
                tracing::info!(reason = %why, "RDMA not usable; using TCP");
                tcp()
            }
        },
    }
}

impl Engine {
    /// Starts an engine: binds its listener, picks its transport, publishes its descriptor.
    pub fn new(config: EngineConfig) -> Result<Engine, TransferError> {
        if config.request_timeout.is_zero() {
            return Err(TransferError::InvalidArgument(
                "request_timeout must be > 0".into(),
            ));
        }
        crate::listener::raise_open_files_limit();
        let listener = crate::listener::bind(config.listen_addr)?;
        let addr = listener.local_addr()?;
        let name = config.name.clone().unwrap_or_else(|| addr.to_string());
        if name.is_empty() {
            return Err(TransferError::InvalidArgument(
                "segment name must not be empty".into(),
            ));
        }
        let registry = Arc::new(MemoryRegistry::default());
        let metadata = metadata::from_config(&config.metadata, config.request_timeout)?;
        let publishes = !matches!(config.metadata, MetadataConfig::P2p);
        let ctx = TransportContext {
            config,
            local_name: name.clone(),
            listen_addr: addr,
            registry: registry.clone(),
        };
        let (protocol, transport) = choose_transport(&ctx)?;
        let shared = SharedRegions::default();
        let copier = Arc::new(CopyPool::new(ctx.config.copy_threads));
        let shm = if ctx.config.shared_memory {
            ShmTransport::new(
                registry.clone(),
                copier.clone(),
                shared.clone(),
                ctx.config.request_timeout,
            )
                .map_err(|e| {
                    tracing::info!(error = %e, "same-host shared memory unavailable; peers on this host use the network transport");
                })
                .ok()
        } else {
            None
        };
        // Random per start (never 0, which control connections send).
        let incarnation = rand::random::<u64>().max(1);
        let local = Arc::new(LocalSegment {
            name: name.clone(),
            addr,
            incarnation,
            registry: registry.clone(),
            transport,
            shared,
            shm,
        });
        let state = Arc::new(ServeState {
            registry: registry.clone(),
            incarnation,
            name,
            control: local.clone(),
        });
        let listener = Listener::start(listener, state)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                listener: Some(listener),
                local,
                protocol,
                publishes,
                metadata,
                memcpy: LocalTransport::new(registry, copier),
                segments: SegmentTable::default(),
                batches: BatchTable::default(),
            }),
        };
        engine.publish()?;
        Ok(engine)
    }

    /// A handle to this engine that does not keep it alive.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// This engine's segment name.
    pub fn name(&self) -> &str {
        &self.inner.local.name
    }

    /// The transport chosen for remote segments (`Tcp` or `Rdma`).
    pub fn protocol(&self) -> Protocol {
        self.inner.protocol
    }

    /// The address this engine's listener is bound to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.local.addr
    }

    /// This engine's current segment descriptor.
    pub fn descriptor(&self) -> SegmentDescriptor {
        self.inner.local.descriptor()
    }

    /// This engine's incarnation: random per start, published in its descriptor (see
    /// [`SegmentDescriptor::incarnation`]).
    pub fn incarnation(&self) -> u64 {
        self.inner.local.incarnation
    }

    /// Drops the cached descriptor of segment `name`, so that the next
    /// [`Engine::open_segment`] fetches it again (its peer may have restarted); handles
    /// given out before keep the descriptor they had.
    pub fn forget_segment(&self, name: &str) {
        self.inner.segments.forget(name);
    }

    fn publish(&self) -> Result<(), TransferError> {
        if self.inner.publishes {
            self.inner.metadata.publish(&self.descriptor())?;
        }
        Ok(())
    }

    /// Registers `[ptr, ptr + len)` so that local requests may use it and peers may read and
    /// write it; refuses zero length, overlap with registered memory, and a range claimed to be
    /// on a CUDA device that the driver does not place there (see [`crate::gpu`]).
    ///
    /// # Safety
    /// `[ptr, ptr + len)` stays valid and is not freed until unregistered; peers may read and
    /// write it at any time while registered.
    pub unsafe fn register_memory(
        &self,
        ptr: *mut u8,
        len: usize,
        location: Location,
    ) -> Result<(), TransferError> {
        let region = Region {
            addr: ptr as u64,
            len: len as u64,
            location,
        };
        crate::gpu::check_region(&region)?;
        let local = &self.inner.local;
        local.registry.insert(region)?;
        let published = local
            .transport
            .register_memory(&region)
            .and_then(|()| self.publish());
        if let Err(e) = published {
            let _ = local.registry.remove(region.addr);
            let _ = local.transport.unregister_memory(&region);
            return Err(e);
        }
        // Only TCP stages GPU bytes through host memory (RDMA reaches them directly).
        if let (Location::Cuda(device), Protocol::Tcp) = (location, self.protocol()) {
            crate::gpu::prewarm(device);
        }
        Ok(())
    }

    /// Registers a shared mapping of host memory like [`Engine::register_memory`], and keeps
    /// it alive until unregistered. Peer engines on this host map it and copy to and from it
    /// themselves (see [`crate::transport::shm`]); other peers use the network transport.
    pub fn register_shared_memory(&self, mem: Arc<SharedMemory>) -> Result<(), TransferError> {
        let (ptr, len) = (mem.as_ptr(), mem.len());
        let local = &self.inner.local;
        // In the map first, so that the descriptor published on registration lists it.
        if !local.shared.lock().insert(mem) {
            return Err(TransferError::InvalidArgument(format!(
                "shared memory at {ptr:p} is registered already"
            )));
        }
        // SAFETY: `local.shared` holds the mapping, which stays valid until it leaves that
        // map in `unregister_memory` (or on failure just below), after the registry forgot it.
        let registered = unsafe { self.register_memory(ptr, len, Location::Host) };
        if registered.is_err() {
            // The live descriptor listed it meanwhile: a peer may have mapped it.
            local.unshare(ptr as u64);
        }
        registered
    }

    /// Unregisters the region that starts at `ptr`.
    pub fn unregister_memory(&self, ptr: *mut u8) -> Result<(), TransferError> {
        let local = &self.inner.local;
        let region = local.registry.remove(ptr as u64)?;
        let unregistered = local.transport.unregister_memory(&region);
        local.unshare(region.addr);
        unregistered?;
        self.publish()
    }

    /// Whether the segment `name`, already opened, is served through same-host shared memory
    /// (so reading it costs no network transfer). False for a segment not opened yet: this
    /// asks no one.
    pub fn is_same_host(&self, name: &str) -> bool {
        let Some(shm) = &self.inner.local.shm else {
            return false;
        };
        self.inner
            .segments
            .get_by_name(name)
            .is_some_and(|seg| !seg.local && shm.is_same_host(&seg.descriptor()))
    }

    /// The threads this engine spreads large memcpy batches over
    /// ([`EngineConfig::copy_threads`]), for callers' own large copies.
    pub fn copy_pool(&self) -> &CopyPool {
        self.inner.memcpy.copy_pool()
    }

    /// Counters of the same-host shared-memory path (zero when it is off).
    pub fn shm_stats(&self) -> ShmStats {
        self.inner
            .local
            .shm
            .as_ref()
            .map(ShmTransport::stats)
            .unwrap_or_default()
    }

    /// Opens a segment by name (this engine's own name gives the memcpy-served local segment).
    pub fn open_segment(&self, name: &str) -> Result<SegmentHandle, TransferError> {
        let local = name == self.name();
        self.inner.segments.open(name, local, || {
            if local {
                Ok(self.descriptor())
            } else {
                self.inner.metadata.fetch(name)
            }
        })
    }

    /// The cached descriptor of an opened segment (its exported buffers, its address).
    pub fn segment_descriptor(
        &self,
        handle: SegmentHandle,
    ) -> Result<Arc<SegmentDescriptor>, TransferError> {
        self.inner
            .segments
            .get(handle)
            .map(|s| s.descriptor())
            .ok_or(TransferError::SegmentHandleInvalid(handle.0))
    }

    /// Creates a batch with room for `capacity` requests.
    pub fn allocate_batch(&self, capacity: usize) -> Result<BatchId, TransferError> {
        self.inner.batches.allocate(capacity)
    }

    /// Appends requests to a batch and starts them. Requests that fail a check complete as
    /// `Failed` at once; the others are queued on their transport.
    pub fn submit(
        &self,
        batch: BatchId,
        requests: &[TransferRequest],
    ) -> Result<(), TransferError> {
        let b = self.inner.batches.get(batch)?;
        if requests.is_empty() {
            return Ok(());
        }
        let base = b.reserve(requests.len())?;
        let sink = CompletionSink::new(b, base, requests.len());
        let mut failed = Vec::new();
        let mut groups: Vec<TargetGroup> = Vec::new();
        self.inner.local.registry.with(|set| {
            for (k, r) in requests.iter().enumerate() {
                let i = base + k;
                if r.len == 0 {
                    failed.push((i, TransferStatus::failed("zero-length request")));
                    continue;
                }
                let Some(region) = set.find(r.local_addr, r.len) else {
                    failed.push((
                        i,
                        TransferStatus::failed(format!(
                            "local range [{:#x}, +{}) is not inside memory registered with this engine",
                            r.local_addr, r.len
                        )),
                    ));
                    continue;
                };
                let device = region.location != Location::Host;
                match groups.iter_mut().find(|(h, _, _)| *h == r.target) {
                    Some((_, g, d)) => {
                        g.push((i, *r));
                        *d |= device;
                    }
                    None => groups.push((r.target, vec![(i, *r)], device)),
                }
            }
        });
        sink.finish_many(failed);
        for (handle, items, device) in groups {
            self.submit_to(handle, items, device, &sink);
        }
        Ok(())
    }

    fn submit_to(
        &self,
        handle: SegmentHandle,
        mut items: Vec<(usize, TransferRequest)>,
        device: bool,
        sink: &CompletionSink,
    ) {
        let Some(seg) = self.inner.segments.get(handle) else {
            let reason = format!("segment handle {} is not open", handle.0);
            sink.finish_many(
                items
                    .into_iter()
                    .map(|(i, _)| (i, TransferStatus::failed(reason.clone()))),
            );
            return;
        };
        let transport: &dyn Transport = if seg.local {
            &self.inner.memcpy
        } else {
            self.inner.local.transport.as_ref()
        };
        if device {
            items = self.drop_unreachable(items, transport, sink);
        }
        if seg.local {
            self.inner.memcpy.submit(&seg.descriptor(), items, sink);
            return;
        }
        let desc = self.descriptor_covering(&seg, &items);
        let (ok, bad): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|(_, r)| desc.find(r.target_offset, r.len).is_some());
        sink.finish_many(bad.into_iter().map(|(i, r)| {
            (
                i,
                TransferStatus::failed(format!(
                    "remote range [{:#x}, +{}) is not inside one buffer exported by segment {}",
                    r.target_offset, r.len, seg.name
                )),
            )
        }));
        // Same-host peers' shared regions are copied here; the rest goes over the network.
        let ok = match &self.inner.local.shm {
            Some(shm) if !ok.is_empty() => shm.submit(&desc, ok, sink),
            _ => ok,
        };
        if !ok.is_empty() {
            self.inner.local.transport.submit(&desc, ok, sink);
        }
    }

    /// Fails the requests whose local memory `transport` cannot reach; returns the others.
    fn drop_unreachable(
        &self,
        items: Vec<(usize, TransferRequest)>,
        transport: &dyn Transport,
        sink: &CompletionSink,
    ) -> Vec<(usize, TransferRequest)> {
        let registry = &self.inner.local.registry;
        let (ok, bad): (Vec<_>, Vec<_>) = items.into_iter().partition(|(_, r)| {
            registry
                .find(r.local_addr, r.len)
                .is_some_and(|reg| transport.reaches(reg.location))
        });
        sink.finish_many(bad.into_iter().map(|(i, _)| {
            (
                i,
                TransferStatus::failed(format!(
                    "the {} transport cannot reach device memory",
                    transport.name()
                )),
            )
        }));
        ok
    }

    /// The cached descriptor, refreshed once if it lacks a range some request names (the
    /// peer may have registered memory since).
    fn descriptor_covering(
        &self,
        seg: &OpenSegment,
        items: &[(usize, TransferRequest)],
    ) -> Arc<SegmentDescriptor> {
        let desc = seg.descriptor();
        if items
            .iter()
            .all(|(_, r)| desc.find(r.target_offset, r.len).is_some())
        {
            return desc;
        }
        match self.inner.metadata.fetch(&seg.name) {
            Ok(fresh) => seg.set_descriptor(fresh),
            Err(e) => {
                tracing::warn!(segment = %seg.name, error = %e, "descriptor refresh failed");
                desc
            }
        }
    }

    /// Status of request `index` of a batch.
    pub fn status(&self, batch: BatchId, index: usize) -> Result<TransferStatus, TransferError> {
        self.inner.batches.get(batch)?.status(index)
    }

    /// Statuses of all requests of a batch.
    pub fn batch_status(&self, batch: BatchId) -> Result<Vec<TransferStatus>, TransferError> {
        Ok(self.inner.batches.get(batch)?.statuses())
    }

    /// Blocks until every request of the batch finished; returns their statuses.
    pub fn wait(&self, batch: BatchId) -> Result<Vec<TransferStatus>, TransferError> {
        Ok(self.inner.batches.get(batch)?.wait())
    }

    /// A future resolving to the statuses once every request of the batch finished.
    pub fn completion(
        &self,
        batch: BatchId,
    ) -> impl Future<Output = Result<Vec<TransferStatus>, TransferError>> + Send + 'static {
        self.inner.batches.completion(batch)
    }

    /// Frees a batch; `Busy` while requests are in flight.
    pub fn free_batch(&self, batch: BatchId) -> Result<(), TransferError> {
        self.inner.batches.free(batch)
    }
}
