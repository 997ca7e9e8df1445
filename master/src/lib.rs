//! `mooncake_master`: the metadata master of mooncake-rs.
//!
//! The master decides where every object's replicas live and tracks which clients are alive;
//! it never moves object bytes. Layering (quinn style): [`proto`] and [`codec`] are the wire
//! contract, [`client`] is the async RPC client store-client uses; [`service`] is the pure,
//! clock-injected state machine (index, allocators, placement, leases, eviction, liveness);
//! [`server`], [`http`] and [`ha`] are thin tokio drivers around it.
//!
//! See `master/README.md` for the failover design.

pub mod allocator;
pub mod chunking;
pub mod client;
pub mod clock;
pub mod codec;
pub mod config;
pub mod eviction;
mod frame_sink;
pub mod groups;
pub mod ha;
pub mod ha_state;
pub mod http;
pub mod index;
pub mod lease;
pub mod liveness;
pub mod metrics;
pub mod placement;
pub mod proto;
pub mod replica_lists;
pub mod segment;
pub mod server;
pub mod service;

pub use client::{ClientOptions, MasterClient, RpcError};
pub use config::MasterConfig;
pub use proto::{
    ClientId, ErrorCode, HeldObject, PingResponse, ReplicaDescriptor, ReplicaStatus,
    ReplicateConfig, Segment, SegmentId,
};
pub use server::{MasterServer, RunningMaster};
