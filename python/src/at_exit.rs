//! Closing at interpreter exit: every client this module opened and nobody closed is closed
//! (its segment unmounted) from a Python `atexit` hook, as Mooncake's client does.
//!
//! Connectors rarely call `close()`, and a process that exits with its client still referenced
//! never drops it, so without the hook the master would keep placing replicas in the dead
//! segment, and serving its objects, until the client's TTL runs out. The registry holds weak
//! references only: it never keeps a store alive. A forked child inherits the registry but not
//! the clients' threads, and its clients are its parent's: it closes only what it opened.

use std::sync::{Arc, Mutex, Weak};

use pyo3::prelude::*;
use store_client::BlockingClient;

/// The clients opened, as weak references, with the id of the process that opened each.
static OPEN: Mutex<Vec<(u32, Weak<BlockingClient>)>> = Mutex::new(Vec::new());

/// Registers a freshly connected client (dropping entries whose client is gone) and returns
/// the handle a Python object keeps.
pub(crate) fn track(client: Arc<BlockingClient>) -> ProcessBound {
    let pid = std::process::id();
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    open.retain(|(_, w)| w.strong_count() > 0);
    open.push((pid, Arc::downgrade(&client)));
    ProcessBound { client, pid }
}

/// A client handle that lets the client be dropped only in the process that opened it. A
/// forked child inherits the handle but none of the client's threads: dropping the client
/// there (when the child's interpreter frees the Python object) could wait forever on threads
/// that do not exist, and would unmount the parent's segment. In a child the client leaks.
pub(crate) struct ProcessBound {
    client: Arc<BlockingClient>,
    pid: u32,
}

impl std::ops::Deref for ProcessBound {
    type Target = Arc<BlockingClient>;

    fn deref(&self) -> &Arc<BlockingClient> {
        &self.client
    }
}

impl Drop for ProcessBound {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // One reference that is never released keeps the client from being dropped here.
            std::mem::forget(Arc::clone(&self.client));
        }
    }
}

/// The `atexit` hook: closes every client this process opened that is still alive (closing
/// twice is a no-op).
#[pyfunction]
fn close_open_stores(py: Python<'_>) {
    let pid = std::process::id();
    let clients: Vec<Arc<BlockingClient>> =
        std::mem::take(&mut *OPEN.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .filter(|(opener, _)| *opener == pid)
            .filter_map(|(_, w)| w.upgrade())
            .collect();
    py.detach(|| clients.iter().for_each(|c| c.close()));
}

/// Registers the hook with Python's `atexit` module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(close_open_stores, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
