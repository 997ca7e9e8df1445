//! Configuration of an embedded or standalone master.

use std::net::SocketAddr;
use std::time::Duration;

use crate::codec::DEFAULT_MAX_FRAME;
use crate::ha::EtcdConfig;
use crate::service::ServiceConfig;

/// Everything [`crate::MasterServer::start`] needs.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// RPC listen address (port 0 = ephemeral).
    pub rpc_addr: SocketAddr,
    /// Address clients are told to use (published in etcd); `None` = the bound RPC address.
    pub advertise_addr: Option<String>,
    /// Admin HTTP (`/metrics`, `/health`, `/role`) listen address; `None` = no HTTP server.
    pub http_addr: Option<SocketAddr>,
    /// State-machine tunables.
    pub service: ServiceConfig,
    /// Largest accepted frame payload.
    pub max_frame: usize,
    /// Period of the maintenance tick (expiry, release, eviction).
    pub tick_interval: Duration,
    /// etcd HA; `None` = a single master.
    pub etcd: Option<EtcdConfig>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_addr: None,
            http_addr: None,
            service: ServiceConfig::default(),
            max_frame: DEFAULT_MAX_FRAME,
            tick_interval: Duration::from_millis(100),
            etcd: None,
        }
    }
}
