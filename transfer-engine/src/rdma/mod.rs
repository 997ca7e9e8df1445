//! RDMA transport over ibverbs (through `sideway`, which loads libibverbs at run time).
//!
//! - [`device`]: discovery of active devices and GID choice; [`nic`]: one PD, CQ and CQ
//!   poller thread per device.
//! - [`memory`]: every registered region becomes MRs on every device; their rkeys travel in
//!   the segment descriptor ([`wire::RdmaSegmentInfo`]), with the devices [`topology`] finds
//!   closest to the region (same PCIe switch for GPU memory, same NUMA node for host memory),
//!   which transfers to and from it prefer.
//! - [`endpoint`]: RC queue pairs per (local device, peer segment, peer device), created on
//!   first use; queue pair numbers, GIDs and PSNs are exchanged over the engine's control
//!   channel ([`wire::ConnectRequest`]); [`qp`] holds the state transitions.
//! - [`plan`] cuts requests into slices (slice size, MR boundaries); [`window`] bounds what is
//!   posted by the send queue depth; [`transport`] ties it together behind
//!   [`crate::transport::Transport`].
//!
//! The engine calls [`probe`] (for `Protocol::Auto`) and [`new_transport`].
//!
//! When [`RdmaConfig::devices`] is empty, the environment variable `MOONCAKE_RDMA_DEVICES`
//! (comma-separated device names) may restrict the devices, so that programs without a device
//! flag can be pinned to one NIC (e.g. the two processes of a benchmark on `rxe0` and `rxe1`).

use std::sync::Arc;

use crate::transport::{Transport, TransportContext};
use crate::{RdmaConfig, TransferError};

pub mod device;
pub mod endpoint;
pub mod memory;
pub mod nic;
pub mod plan;
pub mod qp;
pub mod topology;
pub mod transport;
pub mod window;
pub mod wire;

pub use transport::RdmaTransport;

/// Name of the transport (descriptor key and control-message address).
pub const NAME: &str = "rdma";

/// Environment variable restricting the devices when the configuration names none.
pub const DEVICES_ENV: &str = "MOONCAKE_RDMA_DEVICES";

/// Mooncake's variable for the same (a comma-separated list of NIC names; SGLang sets it),
/// read when [`DEVICES_ENV`] is not set.
pub const MOONCAKE_FILTERS_ENV: &str = "MC_MS_FILTERS";

/// The device filter: the configured names, else those in [`DEVICES_ENV`] or
/// [`MOONCAKE_FILTERS_ENV`], else none (all).
pub fn device_filter(config: &RdmaConfig) -> Vec<String> {
    if !config.devices.is_empty() {
        return config.devices.clone();
    }
    std::env::var(DEVICES_ENV)
        .or_else(|_| std::env::var(MOONCAKE_FILTERS_ENV))
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(String::from)
        .collect()
}

/// Whether RDMA is usable with `config`; `Err` says why not (logged once by the engine).
pub fn probe(config: &RdmaConfig) -> Result<(), String> {
    device::discover(&device_filter(config), config.gid_index).map(|_| ())
}

/// Creates the RDMA transport for an engine.
pub fn new_transport(ctx: &TransportContext) -> Result<Arc<dyn Transport>, TransferError> {
    Ok(Arc::new(RdmaTransport::new(ctx)?))
}
