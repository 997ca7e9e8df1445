//! Mooncake's Python API (`mooncake.store.MooncakeDistributedStore`, `ReplicateConfig`) on
//! this client, so that connectors written for it (vLLM, SGLang, LMCache) switch by import.
//!
//! Its conventions, kept here: `setup(...)` then calls; status codes instead of exceptions
//! (0 or bytes moved on success, a negative Mooncake error code on failure); a put of a key
//! that already exists is 0 (the object stays as it was), while the upserts replace it and
//! answer a negative code whenever this caller's bytes were not stored; `get` returns empty
//! bytes and `get_buffer` None for a missing key; the copying puts take any object with the
//! buffer protocol; a batch whose lists differ in length (`ReplicateConfig.group_ids`
//! included, when given) answers INVALID_PARAMS for every key.
//! `metadata_server` is accepted and unused: segment descriptors travel peer to peer
//! (Mooncake's P2PHANDSHAKE mode).

use std::ffi::CString;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyRuntimeWarning, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use mooncake_master::proto::ErrorCode;
use store_client::{BlockingClient, BufferSlice, KeyResult};

use crate::buffers::{buffer_bytes, buffer_handle};
use crate::ConnectArgs;

const INVALID_PARAMS: i64 = ErrorCode::InvalidParams as i64;
const RPC_FAIL: i64 = ErrorCode::RpcFail as i64;

/// Why `setup_dummy` is refused, and what to run instead.
const SETUP_DUMMY_UNSUPPORTED: &str = "MooncakeDistributedStore.setup_dummy (Mooncake's dummy \
    client, which uses a separate client's memory over IPC) is not supported by mooncake-rs: \
    run a `mooncake-client` process to hold the pool (it keeps the cache across restarts of \
    this process) and call setup(local_hostname, metadata_server, global_segment_size=0, \
    local_buffer_size, protocol, rdma_devices, master_server_addr) here instead";

/// A count, or the master's negative code.
fn count_code(r: Result<u64, store_client::ClientError>) -> i64 {
    match r {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(store_client::ClientError::Refused { code, .. }) => i64::from(code.code()),
        Err(_) => RPC_FAIL,
    }
}

/// Replication of a put (Mooncake's `ReplicateConfig`).
#[pyclass(module = "mooncake_rs")]
#[derive(Clone, Debug)]
pub struct ReplicateConfig {
    /// Copies to place.
    #[pyo3(get, set)]
    replica_num: usize,
    /// Evict only when nothing else can go.
    #[pyo3(get, set)]
    with_soft_pin: bool,
    /// Never evict.
    #[pyo3(get, set)]
    with_hard_pin: bool,
    /// Segment (`host:port`) to place the first copy in, if it has room.
    #[pyo3(get, set)]
    preferred_segment: String,
    /// Segments tried next, in order (after `preferred_segment`), while they have room.
    #[pyo3(get, set)]
    preferred_segments: Vec<String>,
    /// Try this client's own segment after the preferred ones (the only segment of this node
    /// it knows; nothing changes for a client without a segment).
    #[pyo3(get, set)]
    prefer_alloc_in_same_node: bool,
    /// Object group of each key of a batch put or upsert, in key order (`""`: none; empty:
    /// no groups). A group's objects share their last access and are evicted together. Any
    /// other count answers INVALID_PARAMS for every key of the call.
    #[pyo3(get, set)]
    group_ids: Vec<String>,
}

#[pymethods]
impl ReplicateConfig {
    #[new]
    fn new() -> Self {
        ReplicateConfig {
            replica_num: 1,
            with_soft_pin: false,
            with_hard_pin: false,
            preferred_segment: String::new(),
            preferred_segments: Vec::new(),
            prefer_alloc_in_same_node: false,
            group_ids: Vec::new(),
        }
    }

    fn __repr__(&self) -> String {
        let py_bool = |b: bool| if b { "True" } else { "False" };
        format!(
            "ReplicateConfig(replica_num={}, with_soft_pin={}, with_hard_pin={}, \
             preferred_segment={:?}, preferred_segments={:?}, prefer_alloc_in_same_node={}, \
             group_ids={:?})",
            self.replica_num,
            py_bool(self.with_soft_pin),
            py_bool(self.with_hard_pin),
            self.preferred_segment,
            self.preferred_segments,
            py_bool(self.prefer_alloc_in_same_node),
            self.group_ids,
        )
    }

    fn __str__(&self) -> String {
        self.__repr__()
    }
}

impl ReplicateConfig {
    /// The store client's configuration; `own_segment` is this client's segment name, if it
    /// has one. Taken by value from Python (a copy), so no borrow of the Python object is held
    /// while a call runs without the GIL.
    fn to_store(cfg: Option<&Self>, own_segment: Option<&str>) -> store_client::ReplicateConfig {
        let c = cfg.cloned().unwrap_or_else(Self::new);
        let own = own_segment.filter(|_| c.prefer_alloc_in_same_node);
        let mut preferred: Vec<String> = Vec::new();
        let named = std::iter::once(c.preferred_segment.as_str())
            .chain(c.preferred_segments.iter().map(String::as_str))
            .chain(own);
        for name in named {
            if !name.is_empty() && !preferred.iter().any(|p| p == name) {
                preferred.push(name.to_string());
            }
        }
        store_client::ReplicateConfig {
            replica_num: c.replica_num.max(1),
            preferred_segments: preferred,
            soft_pin: c.with_soft_pin,
            hard_pin: c.with_hard_pin,
            group_ids: c.group_ids,
        }
    }
}

/// This client's segment name, if it contributes one.
fn own_segment(client: &BlockingClient) -> Option<&str> {
    client.client().segment().map(|s| s.name.as_str())
}

/// Status of a put as Mooncake's client reports it: 0, also for a key that already exists
/// (its client counts OBJECT_ALREADY_EXISTS as success: the object is there, and connectors
/// saving the same prefix from several ranks must not see a failure), or the negative code.
fn put_code(r: &KeyResult<u64>) -> i64 {
    match &r.result {
        Ok(_) => 0,
        Err(e) if e.code == ErrorCode::ObjectAlreadyExists => 0,
        Err(e) => i64::from(e.code.code()),
    }
}

/// Whether a write creates a key only (a put: an existing key stays as it was) or also
/// overwrites it (an upsert).
#[derive(Clone, Copy)]
enum Write {
    Put,
    Upsert,
}

/// Emits a `RuntimeWarning` (Python's warning filters decide whether and how often it shows).
fn warn(py: Python<'_>, message: &str) -> PyResult<()> {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &message, 1)
}

/// What `setup()`'s keyword settings ask for.
struct SetupSettings {
    /// One line per setting accepted but ignored.
    ignored: Vec<String>,
    /// Where to serve the client's metrics and health (`enable_client_http_server`).
    http_addr: Option<SocketAddr>,
}

/// Checks `setup()`'s optional keyword settings (newer Mooncake versions' and SGLang's) and
/// returns one line per setting that is accepted but ignored.
///
/// Decisions: `enable_client_http_server=True` serves this client's `/metrics` (Prometheus
/// text) and `/health` on `client_http_port` (all interfaces; a free port, logged, when none
/// is given), as Mooncake's client HTTP server does. `ssd_offload_path` (only read when
/// offload is on) changes nothing the caller relies on, so it is ignored with a warning. `enable_ssd_offload=True` and a `tenant_id` other than None, "" or "default" would
/// change semantics if ignored (objects believed to be on disk would be evicted; tenants would
/// read each other's keys), so they raise a TypeError whose message names the setting, as a
/// Mooncake without them does: SGLang then retries without SSD offload, or stops with its own
/// message for tenants. Any other keyword is a TypeError naming it.
fn setup_settings(settings: Option<&Bound<'_, PyDict>>) -> PyResult<SetupSettings> {
    let mut ignored = Vec::new();
    let mut unknown = Vec::new();
    let (mut http, mut http_port) = (false, None);
    for (name, value) in settings.into_iter().flat_map(|d| d.iter()) {
        let name: String = name.extract()?;
        match name.as_str() {
            "enable_client_http_server" => http = value.is_truthy()?,
            "client_http_port" => http_port = value.extract::<Option<u16>>()?,
            "ssd_offload_path" => {
                ignored.push(format!("{name}={} is ignored", value.repr()?));
            }
            "enable_ssd_offload" if value.is_truthy()? => {
                return Err(PyTypeError::new_err(
                    "setup() does not support enable_ssd_offload=True: this store has no SSD tier",
                ));
            }
            "enable_ssd_offload" => {}
            "tenant_id" => {
                let t: Option<String> = value.extract()?;
                if !matches!(t.as_deref().map(str::trim), None | Some("" | "default")) {
                    return Err(PyTypeError::new_err(
                        "setup() does not support tenant_id: this store has one key space",
                    ));
                }
            }
            _ => unknown.push(format!("'{name}'")),
        }
    }
    if unknown.is_empty() {
        Ok(SetupSettings {
            ignored,
            http_addr: http.then(|| SocketAddr::from(([0, 0, 0, 0], http_port.unwrap_or(0)))),
        })
    } else {
        Err(PyTypeError::new_err(format!(
            "setup() got unexpected keyword argument(s) {}",
            unknown.join(", ")
        )))
    }
}

/// Status of an upsert: 0 only when this caller's bytes were stored. Unlike [`put_code`],
/// OBJECT_ALREADY_EXISTS stays an error: it means another writer still holds the key, so the
/// value there is not this caller's.
fn upsert_code(r: &KeyResult<u64>) -> i64 {
    match &r.result {
        Ok(_) => 0,
        Err(e) => i64::from(e.code.code()),
    }
}

fn unit_code(r: &KeyResult<()>) -> i64 {
    match &r.result {
        Ok(()) => 0,
        Err(e) => i64::from(e.code.code()),
    }
}

/// Per key one buffer or several: `(key, ranges)` items, or `None` when the lists disagree.
fn items(
    keys: &[String],
    ptrs: &[Vec<u64>],
    sizes: &[Vec<u64>],
) -> Option<Vec<(String, Vec<BufferSlice>)>> {
    if keys.len() != ptrs.len() || keys.len() != sizes.len() {
        return None;
    }
    keys.iter()
        .zip(ptrs.iter().zip(sizes))
        .map(|(k, (p, s))| {
            (p.len() == s.len()).then(|| {
                let parts = p
                    .iter()
                    .zip(s)
                    .map(|(&a, &n)| BufferSlice::new(a, n))
                    .collect();
                (k.clone(), parts)
            })
        })
        .collect()
}

fn singletons(v: Vec<u64>) -> Vec<Vec<u64>> {
    v.into_iter().map(|x| vec![x]).collect()
}

/// Where each fragment of Mooncake's buffer-major `get_into_ranges` goes: for buffer `i`, key
/// `j`, fragment `k`, the index of its item in the flat list, or `None` when it cannot be read
/// (the shapes of its call, buffer or key disagree, or it does not fit its buffer).
type RangeSlots = Vec<Vec<Vec<Option<usize>>>>;

/// Flattens `get_into_ranges`' nested arguments into `(key, object offset, destination)`
/// items, one per fragment. `room(ptr)` is how many bytes the registered buffer holding `ptr`
/// has from `ptr` on (None: not registered); a fragment must fit there, as Mooncake checks it
/// against its destination buffer. Mismatched top-level lists fail every fragment.
fn range_items(
    buffer_ptrs: &[u64],
    all_keys: &[Vec<String>],
    all_dst_offsets: &[Vec<Vec<u64>>],
    all_src_offsets: &[Vec<Vec<u64>>],
    all_sizes: &[Vec<Vec<u64>>],
    room: impl Fn(u64) -> Option<u64>,
) -> (Vec<(String, u64, BufferSlice)>, RangeSlots) {
    let n = all_keys.len();
    let call_ok = [
        buffer_ptrs.len(),
        all_dst_offsets.len(),
        all_src_offsets.len(),
        all_sizes.len(),
    ]
    .iter()
    .all(|&l| l == n);
    // Shaped like the keys (fragments counted from the destination offsets where given).
    let failed = |i: usize| -> Vec<Vec<Option<usize>>> {
        let frags = all_dst_offsets.get(i);
        (0..all_keys[i].len())
            .map(|j| vec![None; frags.and_then(|f| f.get(j)).map_or(1, |f| f.len().max(1))])
            .collect()
    };
    let mut items = Vec::new();
    let mut slots = Vec::with_capacity(n);
    for (i, keys) in all_keys.iter().enumerate() {
        let (Some(&ptr), Some(dst), Some(src), Some(size)) = (
            buffer_ptrs.get(i),
            all_dst_offsets.get(i),
            all_src_offsets.get(i),
            all_sizes.get(i),
        ) else {
            slots.push(failed(i));
            continue;
        };
        let room = room(ptr);
        if !call_ok || room.is_none() || [dst.len(), src.len(), size.len()] != [keys.len(); 3] {
            slots.push(failed(i));
            continue;
        }
        let room = room.unwrap_or(0);
        let mut per_key = Vec::with_capacity(keys.len());
        for (j, key) in keys.iter().enumerate() {
            let (d, s, z) = (&dst[j], &src[j], &size[j]);
            if d.len() != s.len() || d.len() != z.len() {
                per_key.push(vec![None; d.len().max(1)]);
                continue;
            }
            let per_frag = (0..d.len())
                .map(|k| {
                    let fits = d[k].checked_add(z[k]).is_some_and(|end| end <= room);
                    fits.then(|| {
                        items.push((key.clone(), s[k], BufferSlice::new(ptr + d[k], z[k])));
                        items.len() - 1
                    })
                })
                .collect();
            per_key.push(per_frag);
        }
        slots.push(per_key);
    }
    (items, slots)
}

/// Where one replica lives, as Mooncake's replica descriptor tells it (every replica of this
/// store is in memory: `is_memory_replica()` is true).
#[pyclass(frozen, module = "mooncake_rs")]
#[derive(Clone)]
pub struct ReplicaDescriptor {
    /// The holder's transfer endpoint (`host:port`, its segment name).
    #[pyo3(get)]
    transport_endpoint: String,
    /// Address of the replica in the holder's memory.
    #[pyo3(get)]
    buffer_address: u64,
    /// Bytes.
    #[pyo3(get)]
    size: u64,
}

impl From<mooncake_master::proto::ReplicaDescriptor> for ReplicaDescriptor {
    fn from(d: mooncake_master::proto::ReplicaDescriptor) -> Self {
        ReplicaDescriptor {
            transport_endpoint: d.segment_name,
            buffer_address: d.addr,
            size: d.len,
        }
    }
}

#[pymethods]
impl ReplicaDescriptor {
    /// Always true: this store keeps replicas in memory only.
    fn is_memory_replica(&self) -> bool {
        true
    }

    /// Always false (no disk tier).
    fn is_disk_replica(&self) -> bool {
        false
    }

    /// Always false (no local disk tier).
    fn is_local_disk_replica(&self) -> bool {
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "ReplicaDescriptor(transport_endpoint={:?}, buffer_address={:#x}, size={})",
            self.transport_endpoint, self.buffer_address, self.size
        )
    }
}

/// Mooncake's store client API.
#[pyclass(frozen, module = "mooncake_rs")]
pub struct MooncakeDistributedStore {
    client: RwLock<Option<crate::at_exit::ProcessBound>>,
}

impl MooncakeDistributedStore {
    /// Each key with its replicas' descriptors (none when it cannot be read).
    fn replica_descs(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
    ) -> PyResult<Vec<(String, Vec<ReplicaDescriptor>)>> {
        let client = self.client()?;
        let found = py.detach(|| client.batch_replica_descriptors(&keys));
        Ok(keys
            .into_iter()
            .zip(found)
            .map(|(k, r)| {
                let descs = r
                    .result
                    .map(|v| v.into_iter().map(ReplicaDescriptor::from).collect())
                    .unwrap_or_default();
                (k, descs)
            })
            .collect())
    }

    fn client(&self) -> PyResult<Arc<BlockingClient>> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| Arc::clone(c))
            .ok_or_else(|| PyRuntimeError::new_err("call setup() first"))
    }

    /// Stores (or, with `Write::Upsert`, overwrites) each value under its key, copying: one
    /// status per key.
    fn put_values(
        &self,
        py: Python<'_>,
        items: &[(&str, &[u8])],
        config: Option<&ReplicateConfig>,
        write: Write,
    ) -> PyResult<Vec<i64>> {
        let client = self.client()?;
        let cfg = ReplicateConfig::to_store(config, own_segment(&client));
        Ok(match write {
            Write::Put => py
                .detach(|| client.batch_put_with(items, &cfg))
                .iter()
                .map(put_code)
                .collect(),
            Write::Upsert => py
                .detach(|| client.batch_upsert_with(items, &cfg))
                .iter()
                .map(upsert_code)
                .collect(),
        })
    }

    /// Stores `value` under `key`: 0, or a negative code.
    fn put_value(
        &self,
        py: Python<'_>,
        key: &str,
        value: &[u8],
        config: Option<ReplicateConfig>,
        write: Write,
    ) -> PyResult<i64> {
        let r = self.put_values(py, &[(key, value)], config.as_ref(), write)?;
        Ok(r.first().copied().unwrap_or(INVALID_PARAMS))
    }

    /// `put_batch` / `upsert_batch`: 0 if every key was stored, else the first failing code.
    fn put_value_batch(
        &self,
        py: Python<'_>,
        keys: &[String],
        values: &[Bound<'_, PyAny>],
        config: Option<&ReplicateConfig>,
        write: Write,
    ) -> PyResult<i64> {
        if keys.len() != values.len() {
            return Ok(INVALID_PARAMS);
        }
        let values = values
            .iter()
            .map(buffer_bytes)
            .collect::<PyResult<Vec<_>>>()?;
        let items: Vec<(&str, &[u8])> = keys
            .iter()
            .map(String::as_str)
            .zip(values.iter().map(|v| &v[..]))
            .collect();
        let r = self.put_values(py, &items, config, write)?;
        Ok(r.into_iter().find(|&c| c < 0).unwrap_or(0))
    }

    /// The concatenation of `parts` (objects with the buffer protocol), made with the GIL
    /// released.
    fn concat_parts(py: Python<'_>, parts: &Bound<'_, PyTuple>) -> PyResult<Vec<u8>> {
        let parts = parts
            .iter()
            .map(|p| buffer_bytes(&p))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(py.detach(|| parts.iter().flat_map(|p| p.iter().copied()).collect()))
    }

    /// Zero-copy writes from registered ranges: one status per key.
    fn put_many(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        ptrs: Vec<Vec<u64>>,
        sizes: Vec<Vec<u64>>,
        config: Option<&ReplicateConfig>,
        write: Write,
    ) -> PyResult<Vec<i64>> {
        let client = self.client()?;
        let Some(items) = items(&keys, &ptrs, &sizes) else {
            return Ok(vec![INVALID_PARAMS; keys.len()]);
        };
        let cfg = ReplicateConfig::to_store(config, own_segment(&client));
        Ok(match write {
            Write::Put => py
                .detach(|| client.batch_put_from_parts(&items, &cfg))
                .iter()
                .map(put_code)
                .collect(),
            Write::Upsert => py
                .detach(|| client.batch_upsert_from_parts(&items, &cfg))
                .iter()
                .map(upsert_code)
                .collect(),
        })
    }

    /// One zero-copy write of `size` bytes at `buffer_ptr`: 0, or a negative code.
    fn put_one(
        &self,
        py: Python<'_>,
        key: String,
        buffer_ptr: u64,
        size: u64,
        config: Option<&ReplicateConfig>,
        write: Write,
    ) -> PyResult<i64> {
        let ptrs = vec![vec![buffer_ptr]];
        let r = self.put_many(py, vec![key], ptrs, vec![vec![size]], config, write)?;
        Ok(r.first().copied().unwrap_or(INVALID_PARAMS))
    }

    /// Per key 0 or a negative code.
    fn remove_many(&self, py: Python<'_>, keys: &[String], force: bool) -> PyResult<Vec<i64>> {
        let client = self.client()?;
        Ok(py
            .detach(|| client.batch_remove_with(keys, force))
            .iter()
            .map(unit_code)
            .collect())
    }

    fn get_many(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        ptrs: Vec<Vec<u64>>,
        sizes: Vec<Vec<u64>>,
    ) -> PyResult<Vec<i64>> {
        let client = self.client()?;
        let Some(items) = items(&keys, &ptrs, &sizes) else {
            return Ok(vec![INVALID_PARAMS; keys.len()]);
        };
        let r = py.detach(|| client.batch_get_into_parts(&items));
        Ok(r.iter().map(crate::code_of).collect())
    }
}

#[pymethods]
impl MooncakeDistributedStore {
    #[new]
    fn new() -> Self {
        MooncakeDistributedStore {
            client: RwLock::new(None),
        }
    }

    /// Connects: peers reach this client at `local_hostname`; it contributes
    /// `global_segment_size` bytes to the pool and stages copying calls through
    /// `local_buffer_size` bytes. 0 on success, else -1 with a warning saying why.
    ///
    /// `engine` (Mooncake's shared `TransferEngine`) cannot be used: with one, this store
    /// warns and runs its own engine on the host of `local_hostname` and a free port (the
    /// caller passes the shared engine's `host:port`, whose port that engine holds). The
    /// optional settings newer Mooncake versions take as keywords are checked by
    /// [`setup_settings`]: harmless ones are ignored with a warning, ones whose loss would
    /// change what the store does raise a TypeError naming them (as an older Mooncake does, so
    /// callers such as SGLang retry without them or say what is missing).
    #[pyo3(signature = (local_hostname, metadata_server, global_segment_size = 3200 << 20, local_buffer_size = 512 << 20, protocol = "tcp", rdma_devices = "", master_server_addr = "127.0.0.1:50051", engine = None, **settings))]
    #[allow(clippy::too_many_arguments)] // Mooncake's signature
    fn setup(
        &self,
        py: Python<'_>,
        local_hostname: &str,
        metadata_server: &str,
        global_segment_size: u64,
        local_buffer_size: u64,
        protocol: &str,
        rdma_devices: &str,
        master_server_addr: &str,
        engine: Option<&Bound<'_, PyAny>>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<i64> {
        let _ = metadata_server;
        let settings = setup_settings(settings)?;
        for ignored in &settings.ignored {
            warn(py, &format!("MooncakeDistributedStore.setup: {ignored}"))?;
        }
        let local_hostname = match engine {
            Some(_) => {
                warn(
                    py,
                    "MooncakeDistributedStore.setup: an external transfer engine is not \
                     supported; this store runs its own engine",
                )?;
                crate::without_port(local_hostname)
            }
            None => local_hostname,
        };
        let args = ConnectArgs {
            master: master_server_addr,
            segment_size: global_segment_size,
            staging_size: local_buffer_size,
            protocol,
            local_hostname: Some(local_hostname),
            rdma_devices,
        };
        let connected = args.config().and_then(|mut cfg| {
            cfg.metrics_addr = settings.http_addr;
            py.detach(|| BlockingClient::connect(cfg))
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))
        });
        match connected {
            Ok(c) => {
                let c = crate::at_exit::track(Arc::new(c));
                *self.client.write().unwrap_or_else(|p| p.into_inner()) = Some(c);
                Ok(0)
            }
            Err(e) => {
                warn(py, &format!("MooncakeDistributedStore.setup failed: {e}"))?;
                Ok(-1)
            }
        }
    }

    /// Mooncake's dummy client (SGLang's `standalone_storage`: this process maps a separate
    /// real client's pool over IPC) is not supported; raises NotImplementedError whatever the
    /// arguments, naming the topology that does the same here.
    #[pyo3(signature = (*args, **kwargs))]
    fn setup_dummy(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<i64> {
        let _ = (args, kwargs);
        Err(PyNotImplementedError::new_err(SETUP_DUMMY_UNSUPPORTED))
    }

    /// Stores `value` (any object with the buffer protocol): 0, or a negative code.
    #[pyo3(signature = (key, value, config = None))]
    fn put(
        &self,
        py: Python<'_>,
        key: &str,
        value: &Bound<'_, PyAny>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<i64> {
        self.put_value(py, key, &buffer_bytes(value)?, config, Write::Put)
    }

    /// Stores or overwrites `value` (any object with the buffer protocol) under `key`: 0, or a
    /// negative code (see `batch_upsert_from`).
    #[pyo3(signature = (key, value, config = None))]
    fn upsert(
        &self,
        py: Python<'_>,
        key: &str,
        value: &Bound<'_, PyAny>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<i64> {
        self.put_value(py, key, &buffer_bytes(value)?, config, Write::Upsert)
    }

    /// Stores the concatenation of `parts` (objects with the buffer protocol) under `key`: 0,
    /// or a negative code.
    #[pyo3(signature = (key, *parts, config = None))]
    fn put_parts(
        &self,
        py: Python<'_>,
        key: &str,
        parts: &Bound<'_, PyTuple>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<i64> {
        let value = Self::concat_parts(py, parts)?;
        self.put_value(py, key, &value, config, Write::Put)
    }

    /// Stores or overwrites the concatenation of `parts` under `key`: 0, or a negative code.
    #[pyo3(signature = (key, *parts, config = None))]
    fn upsert_parts(
        &self,
        py: Python<'_>,
        key: &str,
        parts: &Bound<'_, PyTuple>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<i64> {
        let value = Self::concat_parts(py, parts)?;
        self.put_value(py, key, &value, config, Write::Upsert)
    }

    /// The address peers reach this client's transfer engine at (`host:port`).
    fn get_hostname(&self) -> PyResult<String> {
        Ok(self.client()?.client().engine().name().to_string())
    }

    /// Stores each value (objects with the buffer protocol) under its key: 0 if every key was
    /// stored, else the first failing key's code.
    #[pyo3(signature = (keys, values, config = None))]
    fn put_batch(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        values: Vec<Bound<'_, PyAny>>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<i64> {
        self.put_value_batch(py, &keys, &values, config.as_ref(), Write::Put)
    }

    /// Stores or overwrites each value under its key: 0 if every key was stored, else the
    /// first failing key's code (see `batch_upsert_from`).
    #[pyo3(signature = (keys, values, config = None))]
    fn upsert_batch(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        values: Vec<Bound<'_, PyAny>>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<i64> {
        self.put_value_batch(py, &keys, &values, config.as_ref(), Write::Upsert)
    }

    /// The bytes, or empty bytes when the key cannot be read.
    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyBytes>> {
        let client = self.client()?;
        let r = py.detach(|| client.get(key));
        Ok(PyBytes::new(py, r.value().map_or(&[][..], Vec::as_slice)))
    }

    /// Per key the bytes, or empty bytes.
    fn get_batch<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<String>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let client = self.client()?;
        let r = py.detach(|| client.batch_get(&keys));
        Ok(r.iter()
            .map(|r| PyBytes::new(py, r.value().map_or(&[][..], Vec::as_slice)))
            .collect())
    }

    /// The object under `key` as a `BufferHandle` (bytes with Mooncake's `ptr()` and
    /// `size()`), or None when it cannot be read.
    fn get_buffer<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let client = self.client()?;
        let r = py.detach(|| client.get(key));
        r.result.ok().map(|v| buffer_handle(py, v)).transpose()
    }

    /// Per key a `BufferHandle`, or None for a key that cannot be read.
    fn batch_get_buffer<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<String>,
    ) -> PyResult<Vec<Option<Bound<'py, PyAny>>>> {
        let client = self.client()?;
        let r = py.detach(|| client.batch_get(&keys));
        r.into_iter()
            .map(|r| r.result.ok().map(|v| buffer_handle(py, v)).transpose())
            .collect()
    }

    /// 1 if the key exists, 0 if not, or a negative code.
    fn is_exist(&self, py: Python<'_>, key: &str) -> PyResult<i64> {
        Ok(self
            .batch_is_exist(py, vec![key.to_string()])?
            .first()
            .copied()
            .unwrap_or(INVALID_PARAMS))
    }

    /// Per key: 1, 0 or a negative code.
    fn batch_is_exist(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<Vec<i64>> {
        let client = self.client()?;
        let r = py.detach(|| client.batch_exists(&keys));
        Ok(r.iter()
            .map(|r| match &r.result {
                Ok(b) => i64::from(*b),
                Err(e) => i64::from(e.code.code()),
            })
            .collect())
    }

    /// 0, or a negative code: OBJECT_NOT_FOUND, and without `force` OBJECT_HAS_LEASE while a
    /// read lease holds the object or REPLICA_IS_NOT_READY while it is being written (with
    /// `force` those go too; their space is reused once the lease or write ends).
    #[pyo3(signature = (key, force = false))]
    fn remove(&self, py: Python<'_>, key: String, force: bool) -> PyResult<i64> {
        let r = self.remove_many(py, &[key], force)?;
        Ok(r.first().copied().unwrap_or(INVALID_PARAMS))
    }

    /// Per key 0 or a negative code, as `remove`; one request for all.
    #[pyo3(signature = (keys, force = false))]
    fn batch_remove(&self, py: Python<'_>, keys: Vec<String>, force: bool) -> PyResult<Vec<i64>> {
        self.remove_many(py, &keys, force)
    }

    /// Removes every object whose key the regular expression matches, except those under a
    /// read lease; how many, or a negative code (INVALID_PARAMS for a bad pattern).
    fn remove_by_regex(&self, py: Python<'_>, regex_pattern: &str) -> PyResult<i64> {
        let client = self.client()?;
        Ok(count_code(
            py.detach(|| client.remove_by_regex(regex_pattern, false)),
        ))
    }

    /// Where `key`'s replicas live (Mooncake's replica descriptors): an empty list when the
    /// object does not exist or is not complete. Takes a read lease, as a get does.
    fn get_replica_desc(&self, py: Python<'_>, key: String) -> PyResult<Vec<ReplicaDescriptor>> {
        let mut all = self.replica_descs(py, vec![key])?;
        Ok(all.pop().map(|(_, d)| d).unwrap_or_default())
    }

    /// `{key: [descriptor, ...]}` for every key (an empty list for a missing one), with one
    /// replica lookup.
    fn batch_get_replica_desc(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
    ) -> PyResult<std::collections::HashMap<String, Vec<ReplicaDescriptor>>> {
        Ok(self.replica_descs(py, keys)?.into_iter().collect())
    }

    /// The object's size in bytes, or a negative code.
    fn get_size(&self, py: Python<'_>, key: &str) -> PyResult<i64> {
        let client = self.client()?;
        Ok(crate::code_of(&py.detach(|| client.get_size(key))))
    }

    /// Removes every object of the pool that no read lease protects (a reader may be copying
    /// it); how many, or a negative code.
    fn remove_all(&self, py: Python<'_>) -> PyResult<i64> {
        let client = self.client()?;
        Ok(count_code(py.detach(|| client.remove_all(false))))
    }

    /// 0, or a negative code (INVALID_PARAMS for a null or overlapping range).
    fn register_buffer(&self, py: Python<'_>, buffer_ptr: u64, size: usize) -> PyResult<i64> {
        let client = self.client()?;
        if buffer_ptr == 0 {
            return Ok(INVALID_PARAMS);
        }
        // SAFETY: Mooncake's contract for this call, which its callers follow: the range is
        // memory of this process that stays allocated until unregistered.
        let r = py.detach(|| unsafe { client.register_buffer(buffer_ptr as *mut u8, size) });
        Ok(if r.is_ok() { 0 } else { INVALID_PARAMS })
    }

    /// 0, or a negative code.
    fn unregister_buffer(&self, py: Python<'_>, buffer_ptr: u64) -> PyResult<i64> {
        let client = self.client()?;
        let r = py.detach(|| client.unregister_buffer(buffer_ptr as *mut u8));
        Ok(if r.is_ok() { 0 } else { INVALID_PARAMS })
    }

    /// 0, or a negative code.
    #[pyo3(signature = (key, buffer_ptr, size, config = None))]
    fn put_from(
        &self,
        py: Python<'_>,
        key: String,
        buffer_ptr: u64,
        size: u64,
        config: Option<ReplicateConfig>,
    ) -> PyResult<i64> {
        self.put_one(py, key, buffer_ptr, size, config.as_ref(), Write::Put)
    }

    /// Stores or overwrites `size` bytes of registered memory at `buffer_ptr` under `key`,
    /// zero-copy: 0, or a negative code (see `batch_upsert_from`).
    #[pyo3(signature = (key, buffer_ptr, size, config = None))]
    fn upsert_from(
        &self,
        py: Python<'_>,
        key: String,
        buffer_ptr: u64,
        size: u64,
        config: Option<ReplicateConfig>,
    ) -> PyResult<i64> {
        self.put_one(py, key, buffer_ptr, size, config.as_ref(), Write::Upsert)
    }

    /// Bytes read, or a negative code.
    fn get_into(&self, py: Python<'_>, key: String, buffer_ptr: u64, size: u64) -> PyResult<i64> {
        let r = self.get_many(py, vec![key], vec![vec![buffer_ptr]], vec![vec![size]])?;
        Ok(r.first().copied().unwrap_or(INVALID_PARAMS))
    }

    /// Per key 0 or a negative code.
    #[pyo3(signature = (keys, buffer_ptrs, sizes, config = None))]
    fn batch_put_from(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        buffer_ptrs: Vec<u64>,
        sizes: Vec<u64>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<Vec<i64>> {
        self.put_many(
            py,
            keys,
            singletons(buffer_ptrs),
            singletons(sizes),
            config.as_ref(),
            Write::Put,
        )
    }

    /// Stores or overwrites registered ranges under their keys, zero-copy: per key 0, or a
    /// negative code. An existing key is replaced (in place when its size is unchanged and
    /// nobody reads it, else in new space). A key another writer is still writing answers
    /// OBJECT_ALREADY_EXISTS: this caller's bytes were not stored, so (unlike the puts) that
    /// is not 0.
    #[pyo3(signature = (keys, buffer_ptrs, sizes, config = None))]
    fn batch_upsert_from(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        buffer_ptrs: Vec<u64>,
        sizes: Vec<u64>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<Vec<i64>> {
        self.put_many(
            py,
            keys,
            singletons(buffer_ptrs),
            singletons(sizes),
            config.as_ref(),
            Write::Upsert,
        )
    }

    /// Per key bytes read or a negative code.
    fn batch_get_into(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        buffer_ptrs: Vec<u64>,
        sizes: Vec<u64>,
    ) -> PyResult<Vec<i64>> {
        self.get_many(py, keys, singletons(buffer_ptrs), singletons(sizes))
    }

    /// Each object gathered from several registered ranges: per key 0 or a negative code.
    #[pyo3(signature = (keys, all_buffer_ptrs, all_sizes, config = None))]
    fn batch_put_from_multi_buffers(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        all_buffer_ptrs: Vec<Vec<u64>>,
        all_sizes: Vec<Vec<u64>>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<Vec<i64>> {
        self.put_many(
            py,
            keys,
            all_buffer_ptrs,
            all_sizes,
            config.as_ref(),
            Write::Put,
        )
    }

    /// `batch_upsert_from` with each object gathered from several registered ranges.
    #[pyo3(signature = (keys, all_buffer_ptrs, all_sizes, config = None))]
    fn batch_upsert_from_multi_buffers(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        all_buffer_ptrs: Vec<Vec<u64>>,
        all_sizes: Vec<Vec<u64>>,
        config: Option<ReplicateConfig>,
    ) -> PyResult<Vec<i64>> {
        self.put_many(
            py,
            keys,
            all_buffer_ptrs,
            all_sizes,
            config.as_ref(),
            Write::Upsert,
        )
    }

    /// Each object scattered into several registered ranges: per key bytes or a negative code.
    /// Reads always prefer a replica in this client's segment, then one on this host, so
    /// `prefer_alloc_in_same_node` is accepted and changes nothing.
    #[pyo3(signature = (keys, all_buffer_ptrs, all_sizes, prefer_alloc_in_same_node = false))]
    fn batch_get_into_multi_buffers(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        all_buffer_ptrs: Vec<Vec<u64>>,
        all_sizes: Vec<Vec<u64>>,
        prefer_alloc_in_same_node: bool,
    ) -> PyResult<Vec<i64>> {
        let _ = prefer_alloc_in_same_node;
        self.get_many(py, keys, all_buffer_ptrs, all_sizes)
    }

    /// Byte ranges of objects into registered buffers, buffer-major as in Mooncake: fragment
    /// `k` of key `j` of buffer `i` reads `all_sizes[i][j][k]` bytes of `all_keys[i][j]` from
    /// `all_src_offsets[i][j][k]` into `buffer_ptrs[i] + all_dst_offsets[i][j][k]`. One replica
    /// lookup of the distinct keys and one transfer batch for all. Per fragment: bytes read
    /// (0 for an empty range inside the object) or a negative code: INVALID_PARAMS where the
    /// shapes disagree (every fragment when the top-level lists do), where `buffer_ptrs[i]` is
    /// not registered or the fragment does not fit in its buffer, or the range runs past the
    /// object.
    fn get_into_ranges(
        &self,
        py: Python<'_>,
        buffer_ptrs: Vec<u64>,
        all_keys: Vec<Vec<String>>,
        all_dst_offsets: Vec<Vec<Vec<u64>>>,
        all_src_offsets: Vec<Vec<Vec<u64>>>,
        all_sizes: Vec<Vec<Vec<u64>>>,
    ) -> PyResult<Vec<Vec<Vec<i64>>>> {
        let client = self.client()?;
        let (items, slots) = range_items(
            &buffer_ptrs,
            &all_keys,
            &all_dst_offsets,
            &all_src_offsets,
            &all_sizes,
            |ptr| {
                client
                    .registered_buffer_containing(ptr)
                    .map(|b| b.addr + b.len - ptr)
            },
        );
        let r = py.detach(|| client.batch_get_ranges(&items));
        Ok(slots
            .iter()
            .map(|per_key| {
                per_key
                    .iter()
                    .map(|frags| {
                        frags
                            .iter()
                            .map(|slot| {
                                slot.and_then(|x| r.get(x))
                                    .map_or(INVALID_PARAMS, crate::code_of)
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect())
    }

    /// Unmounts and disconnects; 0.
    fn close(&self, py: Python<'_>) -> i64 {
        let client = self
            .client
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(c) = client {
            py.detach(|| c.close());
        }
        0
    }
}
