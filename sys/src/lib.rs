//! Raw FFI for mooncake-rs. Everything that touches foreign code lives here.
//!
//! - `verbs`: ibverbs through `sideway`, which loads libibverbs at run time, so the same
//!   binary runs on hosts without rdma-core.
//! - `cq_events`: arming a completion queue and sleeping on its completion channel.
//! - `cuda`: the CUDA driver API (dlopen'ed at run time): pointer attributes, copies, device
//!   allocations.
//! - `host_memory`: anonymous mappings for pools and staging buffers (outside the heap).
//! - `open_files`: the open-files limit (`RLIMIT_NOFILE`), raised to its hard limit at start.
//! - `shared_memory`: memfd-backed pools that peers on the same host map, and passing their
//!   descriptors over Unix sockets.

/// ibverbs, re-exported from `sideway` (dlopen'ed at run time).
pub use sideway as verbs;

pub mod cq_events;
pub mod cuda;
pub mod host_memory;
pub mod open_files;
pub mod shared_memory;
