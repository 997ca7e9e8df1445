//! Values crossing the Python boundary as buffers: what the copying puts take (any object with
//! the buffer protocol) and `BufferHandle`, what `get_buffer` returns.
//!
//! The module is built for the stable ABI from Python 3.8 on (abi3-py38), where neither
//! reading a foreign buffer (`PyObject_GetBuffer`) nor exporting one from a Rust class is
//! available. So a value that is not `bytes`/`bytearray` is copied once through
//! `memoryview(obj).tobytes()` (the copying calls copy it into the staging buffer anyway), and
//! `BufferHandle` is a small `bytes` subclass defined in Python: the buffer protocol, `len()`
//! and `bytes()` come from `bytes`, `ptr()` and `size()` are Mooncake's.

use std::ffi::{c_char, c_int};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyMemoryView, PyType};

/// `PyBUF_READ` (not exported by pyo3's limited-API bindings before 3.11).
const PYBUF_READ: c_int = 0x100;

/// The bytes of `obj`: `bytes` and `bytearray` as they are, any other object with the buffer
/// protocol (memoryview, numpy array, ctypes array) copied once; TypeError for anything else.
pub(crate) fn buffer_bytes(obj: &Bound<'_, PyAny>) -> PyResult<PyBackedBytes> {
    if let Ok(b) = obj.extract::<PyBackedBytes>() {
        return Ok(b);
    }
    let copy = PyMemoryView::from(obj)?.call_method0("tobytes")?;
    Ok(copy.extract::<PyBackedBytes>()?)
}

/// Defines `BufferHandle`; `address_of` gives the address of a bytes object's data.
const BUFFER_HANDLE_SRC: &std::ffi::CStr = c"
def define(address_of):
    class BufferHandle(bytes):
        '''An object read from the store (Mooncake's BufferHandle): bytes, with ptr() and
        size(). ptr() stays valid while the handle is alive.'''

        __slots__ = ()

        def ptr(self):
            '''The address of the bytes.'''
            return address_of(self)

        def size(self):
            '''The length in bytes.'''
            return len(self)

    BufferHandle.__module__ = 'mooncake_rs'
    return BufferHandle
";

static BUFFER_HANDLE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The address of a bytes object's data (what `BufferHandle.ptr()` answers).
#[pyfunction]
fn address_of(b: &Bound<'_, PyBytes>) -> usize {
    b.as_bytes().as_ptr() as usize
}

/// Defines `BufferHandle` and adds it to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let cls = BUFFER_HANDLE.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let src = PyModule::from_code(
            py,
            BUFFER_HANDLE_SRC,
            c"mooncake_rs/buffer_handle.py",
            c"mooncake_rs._buffer_handle",
        )?;
        let cls = src.call_method1("define", (wrap_pyfunction!(address_of, m)?,))?;
        Ok(cls.cast_into::<PyType>()?.unbind())
    })?;
    m.add("BufferHandle", cls.bind(py))
}

/// A `BufferHandle` holding a copy of `data`.
pub(crate) fn buffer_handle(py: Python<'_>, data: Vec<u8>) -> PyResult<Bound<'_, PyAny>> {
    let cls = BUFFER_HANDLE
        .get(py)
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("BufferHandle is not defined"))?
        .bind(py);
    let len = ffi::Py_ssize_t::try_from(data.len())
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("object too large"))?;
    // SAFETY: a read-only view of `data`, which lives until the end of this function; the view
    // is released below, after `bytes.__new__` copied from it (it keeps no export), and if the
    // release fails `data` is leaked rather than freed under a live export.
    let view = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyMemoryView_FromMemory(data.as_ptr() as *mut c_char, len, PYBUF_READ),
        )?
    };
    let handle = cls.call1((&view,));
    if let Err(e) = view.call_method0("release") {
        std::mem::forget(data);
        return Err(e);
    }
    handle
}
