//! Python bindings of the store client: module `mooncake_rs`.
//!
//! `Store` wraps the blocking client (its own tokio runtime; every call releases the GIL, so
//! Python threads overlap their I/O). Single-key calls raise `StoreError` (with the Mooncake
//! error code and name); batch calls return one entry per key, in input order, so that one
//! bad key never hides the others: `int` results are bytes moved (>= 0) or a negative Mooncake
//! error code. The zero-copy calls take raw addresses (`tensor.data_ptr()`,
//! `ctypes.addressof(...)`) inside buffers registered with `register_buffer`; GPU memory is
//! recognised through the CUDA driver. `Master` runs an embedded master (tests, one-node
//! setups); deployments run the `mooncake-master` daemon. `MooncakeDistributedStore` and
//! `ReplicateConfig` follow Mooncake's Python API (int status codes) for existing connectors.

mod at_exit;
mod buffers;
mod compat;
mod logging;

use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

use mooncake_master::proto::ErrorCode;
use mooncake_master::{MasterConfig, MasterServer, RunningMaster};
use store_client::{
    BatchPolicyConfig, BlockingClient, BufferSlice, ClientConfig, ClientError, KeyResult, Protocol,
    ReplicateConfig,
};

create_exception!(
    mooncake_rs,
    StoreError,
    PyException,
    "A store call failed: args are (code, name, message) with Mooncake's error code."
);

fn store_error(code: ErrorCode, message: &str) -> PyErr {
    StoreError::new_err((code.code(), code.name(), message.to_string()))
}

fn raise<T>(r: KeyResult<T>) -> PyResult<T> {
    r.result.map_err(|e| store_error(e.code, &e.message))
}

/// A count from the master, or StoreError with its code (RPC_FAIL if it could not be asked).
fn raise_count(r: Result<u64, ClientError>) -> PyResult<u64> {
    r.map_err(|e| match e {
        ClientError::Refused { code, .. } => store_error(code, &e.to_string()),
        other => store_error(ErrorCode::RpcFail, &other.to_string()),
    })
}

/// Bytes moved, or the negative error code.
pub(crate) fn code_of(r: &KeyResult<u64>) -> i64 {
    match &r.result {
        Ok(n) => i64::try_from(*n).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.code.code()),
    }
}

fn slices(ptrs: &[u64], sizes: &[u64]) -> PyResult<Vec<BufferSlice>> {
    if ptrs.len() != sizes.len() {
        return Err(PyValueError::new_err(format!(
            "{} addresses but {} sizes",
            ptrs.len(),
            sizes.len()
        )));
    }
    Ok(ptrs
        .iter()
        .zip(sizes)
        .map(|(&p, &n)| BufferSlice::new(p, n))
        .collect())
}

/// One `(key, slice)` per key from parallel lists, refused unless all three agree in length.
fn keyed_slices<'k>(
    keys: &'k [String],
    ptrs: &[u64],
    sizes: &[u64],
) -> PyResult<Vec<(&'k str, BufferSlice)>> {
    same_len("addresses", keys.len(), ptrs.len())?;
    let bufs = slices(ptrs, sizes)?;
    Ok(keys.iter().map(String::as_str).zip(bufs).collect())
}

fn same_len(what: &str, a: usize, b: usize) -> PyResult<()> {
    if a == b {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!("{a} keys but {b} {what}")))
    }
}

fn parse_protocol(p: &str) -> PyResult<Protocol> {
    match p {
        "auto" => Ok(Protocol::Auto),
        "tcp" => Ok(Protocol::Tcp),
        "rdma" => Ok(Protocol::Rdma),
        other => Err(PyValueError::new_err(format!(
            "protocol {other:?}: use \"auto\", \"tcp\" or \"rdma\""
        ))),
    }
}

pub(crate) use store_client::config::without_port;

/// Everything a client needs, from the arguments both Python classes take.
pub(crate) struct ConnectArgs<'a> {
    pub master: &'a str,
    pub segment_size: u64,
    pub staging_size: u64,
    pub protocol: &'a str,
    pub local_hostname: Option<&'a str>,
    pub rdma_devices: &'a str,
}

impl ConnectArgs<'_> {
    pub(crate) fn config(&self) -> PyResult<ClientConfig> {
        let mut cfg = ClientConfig::new(self.master)
            .segment_size(self.segment_size)
            .staging_size(self.staging_size)
            .protocol(parse_protocol(self.protocol)?);
        if let Some(h) = self.local_hostname.filter(|h| !h.is_empty()) {
            cfg = cfg
                .local_hostname(h)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        Ok(cfg.rdma_devices(self.rdma_devices))
    }
}

/// A client of the KV-cache pool.
#[pyclass(frozen, module = "mooncake_rs")]
struct Store {
    client: at_exit::ProcessBound,
}

impl Store {
    /// Runs a zero-copy batch call with the GIL released: per key bytes moved or a negative
    /// code.
    fn codes(
        &self,
        py: Python<'_>,
        call: impl FnOnce(&BlockingClient) -> Vec<KeyResult<u64>> + Send,
    ) -> Vec<i64> {
        py.detach(|| call(&self.client))
            .iter()
            .map(code_of)
            .collect()
    }
}

#[pymethods]
impl Store {
    /// Connects to the master at `master` (`host:port` or `etcd://h1:2379,h2:2379/<cluster>`)
    /// and contributes `segment_size` bytes of host memory to the pool (0: none). Peers reach
    /// this client at `local_hostname` (default 127.0.0.1: one host only); `rdma_devices`
    /// ("mlx5_0,mlx5_1"; empty: all) picks the NICs. With `shared_memory` (default), clients
    /// on this host map each other's pools and copy directly instead of using the network;
    /// `copy_threads` threads copy batches of 2 MiB or more (0: the CPUs, up to 8; 1: none);
    /// `reserved_huge_pages` puts the segment in the host's reserved huge pages.
    #[new]
    #[pyo3(signature = (master, segment_size = 64 << 20, staging_size = 64 << 20, protocol = "auto", replica_num = 1, auto_batch = false, local_hostname = None, rdma_devices = "", shared_memory = true, copy_threads = 0, reserved_huge_pages = false))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        py: Python<'_>,
        master: &str,
        segment_size: u64,
        staging_size: u64,
        protocol: &str,
        replica_num: usize,
        auto_batch: bool,
        local_hostname: Option<&str>,
        rdma_devices: &str,
        shared_memory: bool,
        copy_threads: usize,
        reserved_huge_pages: bool,
    ) -> PyResult<Self> {
        let mut cfg = ConnectArgs {
            master,
            segment_size,
            staging_size,
            protocol,
            local_hostname,
            rdma_devices,
        }
        .config()?
        .shared_memory(shared_memory)
        .reserved_huge_pages(reserved_huge_pages);
        cfg.engine.copy_threads = copy_threads;
        cfg.replicate = ReplicateConfig {
            replica_num,
            ..cfg.replicate
        };
        if auto_batch {
            cfg = cfg.auto_batch(BatchPolicyConfig::default());
        }
        let client = py
            .detach(|| BlockingClient::connect(cfg))
            .map_err(|e| StoreError::new_err((-1, "CONNECT", e.to_string())))?;
        let client = at_exit::track(Arc::new(client));
        Ok(Store { client })
    }

    /// Stores `value` under `key` (fails if the key exists: see `upsert`).
    fn put(&self, py: Python<'_>, key: &str, value: PyBackedBytes) -> PyResult<()> {
        raise(py.detach(|| self.client.put(key, &value))).map(drop)
    }

    /// Stores `value` under `key`, replacing an existing object.
    fn upsert(&self, py: Python<'_>, key: &str, value: PyBackedBytes) -> PyResult<()> {
        raise(py.detach(|| self.client.upsert(key, &value))).map(drop)
    }

    /// The bytes under `key` (raises `StoreError` OBJECT_NOT_FOUND when there are none).
    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyBytes>> {
        let v = raise(py.detach(|| self.client.get(key)))?;
        Ok(PyBytes::new(py, &v))
    }

    /// Whether `key` holds a complete object.
    fn exists(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        raise(py.detach(|| self.client.exists(key)))
    }

    /// Removes `key`.
    fn remove(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        raise(py.detach(|| self.client.remove(key)))
    }

    /// The size of `key`'s object in bytes (a lookup: it grants a read lease, as a get does).
    fn get_size(&self, py: Python<'_>, key: &str) -> PyResult<u64> {
        raise(py.detach(|| self.client.get_size(key)))
    }

    /// Per key: the object's size in bytes, or a negative error code.
    fn batch_get_size(&self, py: Python<'_>, keys: Vec<String>) -> Vec<i64> {
        let r = py.detach(|| self.client.batch_get_size(&keys));
        r.iter().map(code_of).collect()
    }

    /// Removes every object of the pool and returns how many (other clients' objects go
    /// too); without `force`, objects under a read lease or still being written stay.
    #[pyo3(signature = (force = false))]
    fn remove_all(&self, py: Python<'_>, force: bool) -> PyResult<u64> {
        raise_count(py.detach(|| self.client.remove_all(force)))
    }

    /// Removes every object whose key the regular expression `pattern` matches (anywhere in
    /// the key) and returns how many; `force` as for `remove_all`.
    #[pyo3(signature = (pattern, force = false))]
    fn remove_by_regex(&self, py: Python<'_>, pattern: &str, force: bool) -> PyResult<u64> {
        raise_count(py.detach(|| self.client.remove_by_regex(pattern, force)))
    }

    /// Stores each value under its key: per key 0 or a negative error code.
    fn batch_put(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        values: Vec<PyBackedBytes>,
    ) -> PyResult<Vec<i64>> {
        same_len("values", keys.len(), values.len())?;
        let items: Vec<(&str, &[u8])> = keys
            .iter()
            .map(String::as_str)
            .zip(values.iter().map(|v| &v[..]))
            .collect();
        let r = py.detach(|| self.client.batch_put(&items));
        Ok(r.iter().map(|r| code_of(r).min(0)).collect())
    }

    /// The bytes of each key, `None` for a key that failed (see `batch_get_codes`).
    fn batch_get<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<String>,
    ) -> Vec<Option<Bound<'py, PyBytes>>> {
        let r = py.detach(|| self.client.batch_get(&keys));
        r.into_iter()
            .map(|r| r.result.ok().map(|v| PyBytes::new(py, &v)))
            .collect()
    }

    /// Like `batch_get`, with each key's outcome: `(bytes or None, code)`.
    fn batch_get_codes<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<String>,
    ) -> Vec<(Option<Bound<'py, PyBytes>>, i32)> {
        let r = py.detach(|| self.client.batch_get(&keys));
        r.into_iter()
            .map(|r| match r.result {
                Ok(v) => (Some(PyBytes::new(py, &v)), 0),
                Err(e) => (None, e.code.code()),
            })
            .collect()
    }

    /// Per key: 1 if it exists, 0 if not, or a negative error code.
    fn batch_exists(&self, py: Python<'_>, keys: Vec<String>) -> Vec<i64> {
        let r = py.detach(|| self.client.batch_exists(&keys));
        r.iter()
            .map(|r| match &r.result {
                Ok(b) => i64::from(*b),
                Err(e) => i64::from(e.code.code()),
            })
            .collect()
    }

    /// Per key: 0 or a negative error code.
    fn batch_remove(&self, py: Python<'_>, keys: Vec<String>) -> Vec<i64> {
        let r = py.detach(|| self.client.batch_remove(&keys));
        r.iter()
            .map(|r| match &r.result {
                Ok(()) => 0,
                Err(e) => i64::from(e.code.code()),
            })
            .collect()
    }

    /// Registers `[ptr, ptr + size)` (host or GPU memory) for the zero-copy calls. The memory
    /// must stay allocated until `unregister_buffer(ptr)`: peers read and write it meanwhile.
    fn register_buffer(&self, py: Python<'_>, ptr: u64, size: usize) -> PyResult<()> {
        if ptr == 0 {
            return Err(PyValueError::new_err("register_buffer: null address"));
        }
        // SAFETY: the Python caller promises (see the docstring) that the range is memory of
        // this process that stays allocated until unregistered; that is the whole contract of
        // `register_buffer`.
        py.detach(|| unsafe { self.client.register_buffer(ptr as *mut u8, size) })
            .map_err(|e| StoreError::new_err((-600, "INVALID_PARAMS", e.to_string())))
    }

    /// Unregisters the buffer registered at `ptr` (no call using it may be in flight).
    fn unregister_buffer(&self, py: Python<'_>, ptr: u64) -> PyResult<()> {
        py.detach(|| self.client.unregister_buffer(ptr as *mut u8))
            .map_err(|e| StoreError::new_err((-600, "INVALID_PARAMS", e.to_string())))
    }

    /// Stores `size` bytes at `ptr` (registered) under `key`: bytes stored or a negative code.
    fn put_from(&self, py: Python<'_>, key: &str, ptr: u64, size: u64) -> i64 {
        code_of(&py.detach(|| self.client.put_from(key, BufferSlice::new(ptr, size))))
    }

    /// Reads `key` into `size` bytes at `ptr` (registered): bytes read or a negative code.
    fn get_into(&self, py: Python<'_>, key: &str, ptr: u64, size: u64) -> i64 {
        code_of(&py.detach(|| self.client.get_into(key, BufferSlice::new(ptr, size))))
    }

    /// Stores one object gathered from several registered ranges (one per layer, say).
    fn put_from_parts(
        &self,
        py: Python<'_>,
        key: &str,
        ptrs: Vec<u64>,
        sizes: Vec<u64>,
    ) -> PyResult<i64> {
        let parts = slices(&ptrs, &sizes)?;
        Ok(code_of(
            &py.detach(|| self.client.put_from_parts(key, &parts)),
        ))
    }

    /// Reads one object scattered into several registered ranges.
    fn get_into_parts(
        &self,
        py: Python<'_>,
        key: &str,
        ptrs: Vec<u64>,
        sizes: Vec<u64>,
    ) -> PyResult<i64> {
        let parts = slices(&ptrs, &sizes)?;
        Ok(code_of(
            &py.detach(|| self.client.get_into_parts(key, &parts)),
        ))
    }

    /// Zero-copy batch put: per key bytes stored or a negative code.
    fn batch_put_from(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        ptrs: Vec<u64>,
        sizes: Vec<u64>,
    ) -> PyResult<Vec<i64>> {
        let items = keyed_slices(&keys, &ptrs, &sizes)?;
        Ok(self.codes(py, |c| c.batch_put_from(&items)))
    }

    /// Zero-copy batch get: per key bytes read or a negative code.
    fn batch_get_into(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        ptrs: Vec<u64>,
        sizes: Vec<u64>,
    ) -> PyResult<Vec<i64>> {
        let items = keyed_slices(&keys, &ptrs, &sizes)?;
        Ok(self.codes(py, |c| c.batch_get_into(&items)))
    }

    /// Byte ranges of objects into registered buffers: item `i` reads `sizes[i]` bytes of
    /// `keys[i]` from byte `offsets[i]` into `ptrs[i]` (a key may repeat); per item bytes read
    /// or a negative code. One replica lookup of the distinct keys, one transfer batch.
    fn batch_get_ranges(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        offsets: Vec<u64>,
        ptrs: Vec<u64>,
        sizes: Vec<u64>,
    ) -> PyResult<Vec<i64>> {
        same_len("offsets", keys.len(), offsets.len())?;
        let items: Vec<(&str, u64, BufferSlice)> = keyed_slices(&keys, &ptrs, &sizes)?
            .into_iter()
            .zip(offsets)
            .map(|((k, b), off)| (k, off, b))
            .collect();
        Ok(self.codes(py, |c| c.batch_get_ranges(&items)))
    }

    /// Per operation kind: ops, keys, bytes, errors by code, retries, latency percentiles.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.client.metrics())
            .map_err(|e| PyException::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// Unmounts this client's segment and stops its tasks (also done when it is collected,
    /// and at interpreter exit).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.client.close());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close(py);
    }
}

/// A master running inside this process (tests and one-node setups; no etcd).
#[pyclass(module = "mooncake_rs")]
struct Master {
    running: Option<RunningMaster>,
    address: String,
}

#[pymethods]
impl Master {
    /// Starts a master listening on `rpc_addr` (port 0 picks a free one).
    #[new]
    #[pyo3(signature = (rpc_addr = "127.0.0.1:0"))]
    fn new(py: Python<'_>, rpc_addr: &str) -> PyResult<Self> {
        let rpc_addr = rpc_addr
            .parse()
            .map_err(|e| PyValueError::new_err(format!("rpc_addr {rpc_addr:?}: {e}")))?;
        let cfg = MasterConfig {
            rpc_addr,
            ..MasterConfig::default()
        };
        let running = py
            .detach(|| MasterServer::start_blocking(cfg, 2))
            .map_err(|e| PyException::new_err(format!("starting the master: {e}")))?;
        let address = running.rpc_addr().to_string();
        Ok(Master {
            running: Some(running),
            address,
        })
    }

    /// `host:port` to give `Store`.
    #[getter]
    fn address(&self) -> String {
        self.address.clone()
    }

    /// Stops the master (also done when it is collected).
    fn stop(&mut self, py: Python<'_>) {
        if let Some(m) = self.running.take() {
            py.detach(|| drop(m));
        }
    }
}

/// The name of a Mooncake error code (`-704` -> `"OBJECT_NOT_FOUND"`).
#[pyfunction]
fn error_name(code: i32) -> &'static str {
    ErrorCode::from_code(code).map_or("UNKNOWN", ErrorCode::name)
}

#[pymodule]
fn mooncake_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::init();
    m.add_class::<Store>()?;
    m.add_class::<Master>()?;
    m.add_class::<compat::MooncakeDistributedStore>()?;
    m.add_class::<compat::ReplicateConfig>()?;
    m.add_class::<compat::ReplicaDescriptor>()?;
    m.add_function(wrap_pyfunction!(error_name, m)?)?;
    m.add("StoreError", m.py().get_type::<StoreError>())?;
    buffers::register(m)?;
    at_exit::register(m)?;
    Ok(())
}
