//! The CUDA driver API, loaded at run time with `libloading` (no CUDA toolkit at build time;
//! hosts without a GPU run the same binary and get [`CudaError::Unavailable`]).
//!
//! Only what the transfer engine needs: which device a pointer belongs to, synchronous copies
//! between any two pointers of the unified address space (host↔device, device↔device), and
//! device allocations for tests and benchmarks. Copies run on a private non-blocking stream of
//! the device's primary context (the context the CUDA runtime, and so PyTorch, uses), so they
//! never wait on the application's streams: the application finishes writing a buffer before
//! it hands it to a transfer, as with any DMA.
//!
//! The library is `libcuda.so.1` (installed with the driver), or the path in
//! `MOONCAKE_LIBCUDA`.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Mutex, OnceLock};

use libloading::Library;

/// `CUresult`.
type CuResult = c_int;
/// `CUdevice`.
type CuDevice = c_int;
/// `CUdeviceptr`.
type CuDevicePtr = u64;
/// `CUcontext` / `CUstream`: opaque handles.
type CuHandle = *mut c_void;

const CUDA_SUCCESS: CuResult = 0;
const CU_POINTER_ATTRIBUTE_MEMORY_TYPE: c_int = 2;
const CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: c_int = 9;
const CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: c_int = 11;
const CU_POINTER_ATTRIBUTE_RANGE_SIZE: c_int = 12;
const CU_MEMORYTYPE_DEVICE: c_uint = 2;
/// What the driver answers for an address it did not allocate (plain host memory).
const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
const CU_STREAM_NON_BLOCKING: c_uint = 1;
const CU_MEMHOSTALLOC_PORTABLE: c_uint = 1;

/// Why a CUDA call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CudaError {
    /// The driver library could not be loaded or initialised (no GPU or no driver here).
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    /// A driver call returned an error.
    #[error("{call} failed: {name} ({code}): {message}")]
    Call {
        /// The driver function.
        call: &'static str,
        /// The `CUresult`.
        code: i32,
        /// Its name (`CUDA_ERROR_...`).
        name: String,
        /// Its description.
        message: String,
    },
    /// An argument the driver was not asked about (a device ordinal out of range).
    #[error("{0}")]
    Invalid(String),
}

struct Api {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_get_pci_bus_id: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuHandle, CuDevice) -> CuResult,
    ctx_push_current: unsafe extern "C" fn(CuHandle) -> CuResult,
    ctx_pop_current: unsafe extern "C" fn(*mut CuHandle) -> CuResult,
    stream_destroy: unsafe extern "C" fn(CuHandle) -> CuResult,
    stream_create: unsafe extern "C" fn(*mut CuHandle, c_uint) -> CuResult,
    stream_synchronize: unsafe extern "C" fn(CuHandle) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    memcpy_async: unsafe extern "C" fn(CuDevicePtr, CuDevicePtr, usize, CuHandle) -> CuResult,
    pointer_get_attribute: unsafe extern "C" fn(*mut c_void, c_int, CuDevicePtr) -> CuResult,
    mem_host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult,
    mem_free_host: unsafe extern "C" fn(*mut c_void) -> CuResult,
    get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// A device's primary context and its idle copy streams.
struct DeviceCtx {
    ctx: CuHandle,
    /// Streams not in use by a copy (one is created whenever all are busy, so there are as
    /// many as copies ever ran at once).
    idle: Vec<CuHandle>,
}

// SAFETY: CUDA contexts and streams are process-wide handles that the driver lets any thread
// use; the driver serialises what needs serialising.
unsafe impl Send for DeviceCtx {}

/// The loaded driver. Obtain it with [`cuda`].
pub struct Cuda {
    api: Api,
    devices: u32,
    /// Per device: its context and idle copy streams, created on first use. The lock is held
    /// only to take or return a stream: copies of different threads run concurrently.
    ctxs: Mutex<HashMap<u32, DeviceCtx>>,
    _lib: Library,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("devices", &self.devices)
            .finish()
    }
}

/// The process's CUDA driver, loaded and initialised on first call; the outcome (also a
/// failure) is kept for the life of the process.
pub fn cuda() -> Result<&'static Cuda, CudaError> {
    static CUDA: OnceLock<Result<Cuda, CudaError>> = OnceLock::new();
    CUDA.get_or_init(|| {
        let path = std::env::var("MOONCAKE_LIBCUDA").unwrap_or_else(|_| "libcuda.so.1".into());
        Cuda::load(&path)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Reads symbol `name` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the symbol's true C signature.
unsafe fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, CudaError> {
    // SAFETY: the caller gives the true signature; the pointer outlives no library, since
    // the `Library` is kept in the same `Cuda` for the life of the process.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| CudaError::Unavailable(format!("symbol {name}: {e}")))
}

impl Cuda {
    fn load(path: &str) -> Result<Cuda, CudaError> {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, which are designed
        // to be dlopen'ed by any process (the CUDA runtime does the same).
        let lib = unsafe { Library::new(path) }
            .map_err(|e| CudaError::Unavailable(format!("cannot load {path}: {e}")))?;
        // SAFETY: each signature below is the driver API's, as declared in cuda.h (the `_v2`
        // entry points are the 64-bit ones that cuda.h maps the plain names to).
        let api = unsafe {
            Api {
                init: sym(&lib, "cuInit")?,
                device_get_count: sym(&lib, "cuDeviceGetCount")?,
                device_get: sym(&lib, "cuDeviceGet")?,
                device_get_pci_bus_id: sym(&lib, "cuDeviceGetPCIBusId")?,
                primary_ctx_retain: sym(&lib, "cuDevicePrimaryCtxRetain")?,
                ctx_push_current: sym(&lib, "cuCtxPushCurrent_v2")?,
                ctx_pop_current: sym(&lib, "cuCtxPopCurrent_v2")?,
                stream_destroy: sym(&lib, "cuStreamDestroy_v2")?,
                stream_create: sym(&lib, "cuStreamCreate")?,
                stream_synchronize: sym(&lib, "cuStreamSynchronize")?,
                mem_alloc: sym(&lib, "cuMemAlloc_v2")?,
                mem_free: sym(&lib, "cuMemFree_v2")?,
                memcpy_async: sym(&lib, "cuMemcpyAsync")?,
                pointer_get_attribute: sym(&lib, "cuPointerGetAttribute")?,
                mem_host_alloc: sym(&lib, "cuMemHostAlloc")?,
                mem_free_host: sym(&lib, "cuMemFreeHost")?,
                get_error_name: sym(&lib, "cuGetErrorName")?,
                get_error_string: sym(&lib, "cuGetErrorString")?,
            }
        };
        let mut cuda = Cuda {
            api,
            devices: 0,
            ctxs: Mutex::new(HashMap::new()),
            _lib: lib,
        };
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            cuda.check("cuInit", (cuda.api.init)(0))
                .map_err(|e| CudaError::Unavailable(e.to_string()))?;
            let mut n: c_int = 0;
            cuda.check("cuDeviceGetCount", (cuda.api.device_get_count)(&mut n))?;
            cuda.devices = u32::try_from(n).unwrap_or(0);
        }
        if cuda.devices == 0 {
            return Err(CudaError::Unavailable(
                "the driver sees no CUDA device".into(),
            ));
        }
        Ok(cuda)
    }

    /// How many CUDA devices the driver sees.
    pub fn device_count(&self) -> u32 {
        self.devices
    }

    /// The PCI address of `device` as the driver writes it (`domain:bus:device.function` in
    /// hex, e.g. `0000:3B:00.0`), for placing it in the PCI topology.
    pub fn pci_bus_id(&self, device: u32) -> Result<String, CudaError> {
        let dev = self.device_handle(device)?;
        // 13 characters and the NUL suffice; more room in case of an 8-digit domain.
        let mut buf = [0 as c_char; 64];
        // SAFETY: the driver writes at most `buf.len()` bytes, NUL included.
        self.check("cuDeviceGetPCIBusId", unsafe {
            (self.api.device_get_pci_bus_id)(buf.as_mut_ptr(), buf.len() as c_int, dev)
        })?;
        let bytes: Vec<u8> = buf
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The driver's handle of device ordinal `device` (an error if there is no such device).
    fn device_handle(&self, device: u32) -> Result<CuDevice, CudaError> {
        if device >= self.devices {
            return Err(CudaError::Invalid(format!(
                "CUDA device {device} does not exist ({} present)",
                self.devices
            )));
        }
        let mut dev: CuDevice = 0;
        // SAFETY: a valid out-pointer.
        self.check("cuDeviceGet", unsafe {
            (self.api.device_get)(&mut dev, device as c_int)
        })?;
        Ok(dev)
    }

    fn check(&self, call: &'static str, code: CuResult) -> Result<(), CudaError> {
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(self.error(call, code))
        }
    }

    fn error(&self, call: &'static str, code: CuResult) -> CudaError {
        let text = |f: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult| {
            let mut p: *const c_char = std::ptr::null();
            // SAFETY: the driver writes a pointer to a static NUL-terminated string, or
            // leaves it null for an unknown code.
            unsafe {
                if f(code, &mut p) == CUDA_SUCCESS && !p.is_null() {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                } else {
                    "unknown".into()
                }
            }
        };
        CudaError::Call {
            call,
            code,
            name: text(self.api.get_error_name),
            message: text(self.api.get_error_string),
        }
    }

    /// Reads one pointer attribute into `T` (a 4- or 8-byte value).
    fn attribute<T: Default>(&self, attr: c_int, ptr: u64) -> Result<T, CuResult> {
        let mut v = T::default();
        // SAFETY: the attribute call only inspects the address (any value is allowed) and
        // writes one value of the attribute's type, which the callers match with `T`.
        let r = unsafe { (self.api.pointer_get_attribute)((&mut v as *mut T).cast(), attr, ptr) };
        if r == CUDA_SUCCESS {
            Ok(v)
        } else {
            Err(r)
        }
    }

    /// The device whose memory `ptr` points into: `Ok(None)` for host memory (also pinned or
    /// managed memory, which the host reaches) and addresses the driver did not allocate; an
    /// error when the driver cannot tell.
    pub fn memory_of(&self, ptr: u64) -> Result<Option<u32>, CudaError> {
        let kind = match self.attribute::<c_uint>(CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr) {
            Ok(k) => k,
            Err(CUDA_ERROR_INVALID_VALUE) => return Ok(None),
            Err(code) => return Err(self.error("cuPointerGetAttribute", code)),
        };
        if kind != CU_MEMORYTYPE_DEVICE {
            return Ok(None);
        }
        let ordinal = self
            .attribute::<c_int>(CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr)
            .map_err(|code| self.error("cuPointerGetAttribute", code))?;
        u32::try_from(ordinal)
            .map(Some)
            .map_err(|_| CudaError::Invalid(format!("the driver gave device ordinal {ordinal}")))
    }

    /// The device whose memory `ptr` points into, or `None` (see [`Cuda::memory_of`]; an
    /// undecidable pointer counts as not device memory here).
    pub fn device_of(&self, ptr: u64) -> Option<u32> {
        self.memory_of(ptr).ok().flatten()
    }

    /// The device allocation holding `ptr`: `(device, start, size)`, or `None` if `ptr` is
    /// not device memory.
    pub fn allocation_of(&self, ptr: u64) -> Option<(u32, u64, u64)> {
        let device = self.device_of(ptr)?;
        let start = self
            .attribute::<u64>(CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, ptr)
            .ok()?;
        let size = self
            .attribute::<usize>(CU_POINTER_ATTRIBUTE_RANGE_SIZE, ptr)
            .ok()?;
        Some((device, start, size as u64))
    }

    /// Runs `f` with `device`'s primary context current on this thread and a copy stream
    /// that no other thread uses meanwhile.
    fn with_device<R>(
        &self,
        device: u32,
        f: impl FnOnce(CuHandle) -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let (ctx, idle) = {
            let mut ctxs = self.ctxs.lock().unwrap_or_else(|p| p.into_inner());
            let dc = match ctxs.entry(device) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    // Checks the ordinal too (an occupied entry's was checked).
                    let dev = self.device_handle(device)?;
                    let mut ctx: CuHandle = std::ptr::null_mut();
                    // SAFETY: a valid out-pointer; the primary context is retained for the life
                    // of the process (never released), so the handle stays valid.
                    self.check("cuDevicePrimaryCtxRetain", unsafe {
                        (self.api.primary_ctx_retain)(&mut ctx, dev)
                    })?;
                    v.insert(DeviceCtx {
                        ctx,
                        idle: Vec::new(),
                    })
                }
            };
            (dc.ctx, dc.idle.pop())
        };
        // The caller's current context (PyTorch's, say) is pushed down, not replaced, and
        // restored on the way out.
        // SAFETY: `ctx` is a retained primary context.
        if let Err(e) = self.check("cuCtxPushCurrent", unsafe {
            (self.api.ctx_push_current)(ctx)
        }) {
            if let Some(s) = idle {
                self.return_stream(device, s);
            }
            return Err(e);
        }
        let out = match idle {
            Some(s) => Ok(s),
            None => {
                let mut s: CuHandle = std::ptr::null_mut();
                // SAFETY: valid out-pointer, with the device's context current.
                self.check("cuStreamCreate", unsafe {
                    (self.api.stream_create)(&mut s, CU_STREAM_NON_BLOCKING)
                })
                .map(|()| s)
            }
        }
        .and_then(|stream| {
            let out = f(stream);
            if out.is_ok() {
                self.return_stream(device, stream);
            } else {
                // A stream whose work failed may carry the error: wait for it, then drop it.
                // SAFETY: `stream` is ours and no other thread uses it.
                unsafe {
                    let _ = (self.api.stream_synchronize)(stream);
                    let _ = (self.api.stream_destroy)(stream);
                }
            }
            out
        });
        let mut popped: CuHandle = std::ptr::null_mut();
        // SAFETY: pops the context pushed above, on the same thread.
        let _ = unsafe { (self.api.ctx_pop_current)(&mut popped) };
        out
    }

    fn return_stream(&self, device: u32, stream: CuHandle) {
        let mut ctxs = self.ctxs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dc) = ctxs.get_mut(&device) {
            dc.idle.push(stream);
        }
    }

    /// Copies `len` bytes from `src` to `dst` (each host or device memory of the unified
    /// address space) using `device`'s context, and returns once the bytes have landed.
    ///
    /// # Safety
    /// `[src, +len)` is readable and `[dst, +len)` writable for the whole call (host memory by
    /// this process, device memory on a device of this process), and nothing else writes
    /// `dst` meanwhile.
    pub unsafe fn copy(
        &self,
        device: u32,
        dst: u64,
        src: u64,
        len: usize,
    ) -> Result<(), CudaError> {
        // SAFETY: forwarded.
        unsafe { self.copy_many(device, &[(dst, src, len)]) }
    }

    /// Runs several copies `(dst, src, len)` on one stream and waits once for all of them
    /// (with pinned host memory they overlap; each wait costs microseconds).
    ///
    /// # Safety
    /// As for [`Cuda::copy`], for every copy; no copy's `dst` overlaps another's ranges.
    pub unsafe fn copy_many(
        &self,
        device: u32,
        copies: &[(u64, u64, usize)],
    ) -> Result<(), CudaError> {
        if copies.iter().all(|c| c.2 == 0) {
            return Ok(());
        }
        self.with_device(device, |stream| {
            for &(dst, src, len) in copies.iter().filter(|c| c.2 > 0) {
                // SAFETY: the caller guarantees the ranges; the synchronisation below keeps
                // them in use only until this call returns (also when a later copy fails).
                let queued = self.check("cuMemcpyAsync", unsafe {
                    (self.api.memcpy_async)(dst, src, len, stream)
                });
                if let Err(e) = queued {
                    // SAFETY: waits for the copies already queued on our stream.
                    let _ = unsafe { (self.api.stream_synchronize)(stream) };
                    return Err(e);
                }
            }
            // SAFETY: `stream` is ours for the duration of this call.
            self.check("cuStreamSynchronize", unsafe {
                (self.api.stream_synchronize)(stream)
            })
        })
    }

    /// Runs `n` rounds of copies on two streams of `device`, so that host work between rounds
    /// overlaps the copies: `round(k)` returns round k's copies `(dst, src, len)` (it may first
    /// fill a buffer they read), which are queued on stream `k % 2`; `landed(k)` runs once they
    /// have landed, after round k + 1 was queued. When `round(k)` runs, round k - 2 has landed
    /// and `landed(k - 2)` has returned, so two buffers used in turn suffice. On an error, waits
    /// for everything queued and returns it (rounds after it are not run).
    ///
    /// # Safety
    /// As for [`Cuda::copy_many`], for each round's copies, whose ranges stay valid until their
    /// `landed` call.
    pub unsafe fn copy_rounds(
        &self,
        device: u32,
        n: usize,
        mut round: impl FnMut(usize) -> Vec<(u64, u64, usize)>,
        mut landed: impl FnMut(usize),
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        self.with_device(device, |s0| {
            self.with_device(device, |s1| {
                let streams = [s0, s1];
                // Whatever happens below (an error, a panic in `round` or `landed`), nothing
                // is left queued when this returns: the buffers may be reused at once.
                let _drain = Drain {
                    cuda: self,
                    streams,
                };
                let queue = |k: usize| {
                    let stream = streams[k % 2];
                    for (dst, src, len) in round(k).into_iter().filter(|c| c.2 > 0) {
                        // SAFETY: the caller guarantees the ranges until `landed(k)`, which
                        // runs only after this stream was synchronised.
                        self.check("cuMemcpyAsync", unsafe {
                            (self.api.memcpy_async)(dst, src, len, stream)
                        })?;
                    }
                    Ok(())
                };
                let sync = |s: usize| {
                    // SAFETY: both streams are ours for the duration of this call.
                    self.check("cuStreamSynchronize", unsafe {
                        (self.api.stream_synchronize)(streams[s])
                    })
                };
                two_stream_rounds(n, queue, sync, &mut landed)
            })
        })
    }

    /// Allocates `len` bytes (> 0) of pinned host memory, usable by every context (copies
    /// from and to it run at the bus's speed and asynchronously).
    pub fn alloc_pinned(&'static self, device: u32, len: usize) -> Result<PinnedBuffer, CudaError> {
        if len == 0 {
            return Err(CudaError::Invalid("cannot allocate 0 bytes".into()));
        }
        let ptr = self.with_device(device, |_| {
            let mut p: *mut c_void = std::ptr::null_mut();
            // SAFETY: valid out-pointer, non-zero size, a context current.
            self.check("cuMemHostAlloc", unsafe {
                (self.api.mem_host_alloc)(&mut p, len, CU_MEMHOSTALLOC_PORTABLE)
            })?;
            Ok(p.cast::<u8>())
        })?;
        // SAFETY: the allocation is `len` writable bytes; zeroing makes every byte initialised
        // before slices of it are handed out.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedBuffer {
            cuda: self,
            device,
            ptr,
            len,
        })
    }

    /// Allocates `len` bytes (> 0) on `device`.
    pub fn alloc(&'static self, device: u32, len: usize) -> Result<DeviceBuffer, CudaError> {
        if len == 0 {
            return Err(CudaError::Invalid("cannot allocate 0 bytes".into()));
        }
        let ptr = self.with_device(device, |_| {
            let mut p: CuDevicePtr = 0;
            // SAFETY: valid out-pointer, non-zero size.
            self.check("cuMemAlloc", unsafe { (self.api.mem_alloc)(&mut p, len) })?;
            Ok(p)
        })?;
        Ok(DeviceBuffer {
            cuda: self,
            device,
            ptr,
            len,
        })
    }
}

/// The schedule of [`Cuda::copy_rounds`], apart from the driver: `queue(k)` queues round k on
/// stream `k % 2`, `sync(s)` waits for stream `s`, `landed(k)` follows round k's wait. Round k
/// is queued only after round k - 2 (the same stream and buffer) was waited for and landed;
/// the first error stops everything after it.
fn two_stream_rounds<E>(
    n: usize,
    mut queue: impl FnMut(usize) -> Result<(), E>,
    mut sync: impl FnMut(usize) -> Result<(), E>,
    mut landed: impl FnMut(usize),
) -> Result<(), E> {
    for k in 0..n {
        queue(k)?;
        if k >= 1 {
            sync((k - 1) % 2)?;
            landed(k - 1);
        }
    }
    if n > 0 {
        sync((n - 1) % 2)?;
        landed(n - 1);
    }
    Ok(())
}

/// Waits for two streams when dropped (see [`Cuda::copy_rounds`]).
struct Drain<'a> {
    cuda: &'a Cuda,
    streams: [CuHandle; 2],
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        for s in self.streams {
            // SAFETY: the streams belong to the running `copy_rounds` call, which outlives
            // this guard; waiting has no other effect.
            let _ = unsafe { (self.cuda.api.stream_synchronize)(s) };
        }
    }
}

/// Device memory owned by this process, freed on drop.
#[derive(Debug)]
pub struct DeviceBuffer {
    cuda: &'static Cuda,
    device: u32,
    ptr: u64,
    len: usize,
}

impl DeviceBuffer {
    /// The device address (unified address space).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: buffers are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device ordinal.
    pub fn device(&self) -> u32 {
        self.device
    }

    fn range(&self, offset: usize, len: usize) -> Result<u64, CudaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.ptr + offset as u64),
            _ => Err(CudaError::Invalid(format!(
                "range [{offset}, +{len}) outside a device buffer of {} bytes",
                self.len
            ))),
        }
    }

    /// Copies `src` into the buffer at `offset`.
    pub fn write(&mut self, offset: usize, src: &[u8]) -> Result<(), CudaError> {
        let dst = self.range(offset, src.len())?;
        // SAFETY: `dst` is inside this buffer (checked), `src` a live slice.
        unsafe {
            self.cuda
                .copy(self.device, dst, src.as_ptr() as u64, src.len())
        }
    }

    /// Copies bytes at `offset` into `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), CudaError> {
        let src = self.range(offset, dst.len())?;
        // SAFETY: `src` is inside this buffer (checked), `dst` a live exclusive slice.
        unsafe {
            self.cuda
                .copy(self.device, dst.as_mut_ptr() as u64, src, dst.len())
        }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let _ = self.cuda.with_device(self.device, |_| {
            // SAFETY: `ptr` came from cuMemAlloc and is freed once.
            self.cuda
                .check("cuMemFree", unsafe { (self.cuda.api.mem_free)(self.ptr) })
        });
    }
}

/// Pinned (page-locked) host memory owned by this process, freed on drop.
pub struct PinnedBuffer {
    cuda: &'static Cuda,
    /// The device whose context allocated it (the memory itself is usable from every one).
    device: u32,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain host memory owned by this value; `&self` only reads it.
unsafe impl Send for PinnedBuffer {}
// SAFETY: as above.
unsafe impl Sync for PinnedBuffer {}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedBuffer")
            .field("len", &self.len)
            .finish()
    }
}

impl std::ops::Deref for PinnedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialised bytes (zeroed at allocation) owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for PinnedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        let _ = self.cuda.with_device(self.device, |_| {
            // SAFETY: `ptr` came from cuMemHostAlloc and is freed once.
            self.cuda.check("cuMemFreeHost", unsafe {
                (self.cuda.api.mem_free_host)(self.ptr.cast())
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_unavailable_error() {
        let e = Cuda::load("/nonexistent/libcuda.so.1").unwrap_err();
        assert!(
            matches!(e, CudaError::Unavailable(ref m) if m.contains("/nonexistent/libcuda.so.1")),
            "{e}"
        );
    }

    /// A model of the two streams and two buffers: each round fills (or drains) buffer
    /// `k % 2`; a buffer may be refilled only after its last round was waited for and landed.
    #[derive(Default)]
    struct Model {
        queued: [Vec<usize>; 2],
        done: Vec<usize>,
        landed: Vec<usize>,
        /// Per buffer: the round using it, until that round has landed.
        busy: [Option<usize>; 2],
        log: Vec<String>,
    }

    /// Runs `n` rounds through the schedule, failing the `fail_at`-th call (of queue and sync
    /// together) if given; checks every invariant on the way and returns the result and model.
    fn run(n: usize, fail_at: Option<usize>) -> (Result<(), usize>, Model) {
        let m = std::cell::RefCell::new(Model::default());
        let calls = std::cell::Cell::new(0usize);
        let step = || {
            let c = calls.get();
            calls.set(c + 1);
            if fail_at == Some(c) {
                Err(c)
            } else {
                Ok(())
            }
        };
        let r = two_stream_rounds(
            n,
            |k| {
                step()?;
                let mut m = m.borrow_mut();
                assert_eq!(
                    m.busy[k % 2],
                    None,
                    "buffer {} reused by round {k} too early",
                    k % 2
                );
                m.busy[k % 2] = Some(k);
                m.queued[k % 2].push(k);
                m.log.push(format!("q{k}"));
                Ok(())
            },
            |s| {
                step()?;
                let mut m = m.borrow_mut();
                let finished = std::mem::take(&mut m.queued[s]);
                m.done.extend(finished);
                Ok(())
            },
            |k| {
                let mut m = m.borrow_mut();
                assert!(
                    m.done.contains(&k),
                    "round {k} landed before its stream was waited for"
                );
                assert_eq!(m.busy[k % 2], Some(k));
                m.busy[k % 2] = None;
                m.landed.push(k);
            },
        );
        (r, m.into_inner())
    }

    #[test]
    fn rounds_alternate_buffers_and_land_in_order() {
        for n in 0..12 {
            let (r, m) = run(n, None);
            assert!(r.is_ok());
            assert_eq!(m.landed, (0..n).collect::<Vec<_>>());
            assert!(m.queued.iter().all(Vec::is_empty), "nothing left queued");
        }
        // Round 1 is queued before round 0 is waited for: the overlap the schedule is for.
        let (_, m) = run(3, None);
        assert_eq!(m.log[..2], ["q0".to_string(), "q1".to_string()]);
    }

    #[test]
    fn the_first_error_stops_the_rounds() {
        for n in 1..8 {
            // n queues and n syncs in all.
            for fail_at in 0..2 * n {
                let (r, m) = run(n, Some(fail_at));
                assert_eq!(r, Err(fail_at));
                // Every landed round was waited for (checked inside), in order, and none
                // after the failing call.
                assert_eq!(m.landed, (0..m.landed.len()).collect::<Vec<_>>());
                assert!(m.landed.len() < n);
            }
        }
    }
}
