//! Store client: the library inference workers link to put and get KV-cache objects in the
//! pool, in batches, with a result per key.
//!
//! - [`Client`] (async, tokio) and [`BlockingClient`]: copying calls (`put`, `get`,
//!   `batch_put`, `batch_get`, `upsert`...), zero-copy calls over registered buffers
//!   (`put_from`, `get_into`, their batch and multi-buffer forms), metadata calls (`exists`,
//!   `remove`), and `submit_*` forms returning an [`OpHandle`].
//! - A batch of N keys costs one master RPC per phase and one transfer batch; every call
//!   returns one [`KeyResult`] per key, in input order, with a Mooncake [`ErrorCode`].
//! - Pure building blocks, each in its own module: request merging ([`merge`]), replica choice
//!   ([`replica_choice`]), gather/scatter layout ([`layout`]), staging space
//!   ([`staging_alloc`]), the adaptive auto-batcher ([`batch_policy`], [`auto_batcher`]) and
//!   metrics ([`metrics`], [`prometheus`]).

pub mod auto_batcher;
pub mod batch_policy;
pub mod blocking;
pub mod buffers;
mod client;
pub mod config;
pub mod error;
pub mod handle;
pub mod layout;
pub mod merge;
pub mod metrics;
pub mod prometheus;
pub mod replica_choice;
pub mod staging;
pub mod staging_alloc;
mod transfer;
pub mod validate;

pub use batch_policy::BatchPolicyConfig;
pub use blocking::BlockingClient;
pub use buffers::BufferSlice;
pub use client::Client;
pub use config::{ClientConfig, Protocol, ReplicateConfig};
pub use error::{ClientError, ErrorCode, KeyError, KeyResult};
pub use handle::OpHandle;
pub use metrics::{MetricsSnapshot, OpKind, OpSnapshot};
/// Counters of the same-host shared-memory path (see [`MetricsSnapshot::shm`]).
pub use transfer_engine::ShmStats;
