//! Transfer engine: one-sided READ/WRITE between registered memory of processes, over TCP
//! (or RDMA), with segment descriptors resolved through a metadata store.
//!
//! An [`Engine`] owns one segment: the memory registered with it, which peers may read and
//! write. It opens other segments by name ([`Engine::open_segment`]) and moves bytes in batches
//! of [`TransferRequest`]s, each finishing as `Completed`, `Failed(reason)` or `TimedOut`.
//! See [`engine`] for an example and [`transport`] for how transports plug in.

pub mod batch;
mod buffer;
mod config;
pub mod control;
pub mod descriptor;
pub mod engine;
mod error;
pub mod gpu;
mod listener;
pub mod metadata;
pub mod rdma;
pub mod registry;
mod request;
pub mod segment;
pub mod transport;

pub use buffer::AlignedBuffer;
pub use config::{EngineConfig, Location, MetadataConfig, Protocol, RdmaConfig};
pub use descriptor::SegmentDescriptor;
pub use engine::{Engine, WeakEngine};
pub use error::TransferError;
pub use metadata::{InMemoryMetadataStore, MetadataStore};
pub use mooncake_sys::host_memory::{
    available_reserved_huge_pages, reserved_huge_page_size, shmem_huge_page_policy,
};
/// A memfd-backed mapping that same-host peers can map (see [`Engine::register_shared_memory`]).
pub use mooncake_sys::shared_memory::SharedMemory;
pub use request::{BatchId, OpCode, SegmentHandle, TransferRequest, TransferState, TransferStatus};
pub use transport::shm::ShmStats;
