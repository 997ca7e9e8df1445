//! Engine configuration: which transport, which metadata store, and their knobs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::metadata::InMemoryMetadataStore;

/// Which transport moves bytes to remote segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RDMA when an active RDMA device is usable, TCP otherwise.
    #[default]
    Auto,
    /// TCP sockets.
    Tcp,
    /// RDMA verbs.
    Rdma,
}

/// Where registered memory lives.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Location {
    /// Host (CPU) memory.
    #[default]
    Host,
    /// Memory of the CUDA device with this ordinal.
    Cuda(u32),
}

/// Where segment descriptors are published and looked up.
#[derive(Clone, Debug, Default)]
pub enum MetadataConfig {
    /// Peer to peer: the segment name is `host:port` of the peer's listener, which serves its
    /// own descriptor.
    #[default]
    P2p,
    /// A store shared by the engines of one process (tests, single-process setups).
    InProcess(Arc<InMemoryMetadataStore>),
    /// An etcd cluster; descriptors live under `prefix`.
    Etcd {
        /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
        endpoints: Vec<String>,
        /// Key prefix, e.g. `mooncake/segments/`.
        prefix: String,
    },
}

/// Knobs of the RDMA transport.
#[derive(Clone, Debug)]
pub struct RdmaConfig {
    /// Device names to use (e.g. `rxe0`); empty means every active device.
    pub devices: Vec<String>,
    /// Requests are cut into slices of at most this many bytes.
    pub slice_size: usize,
    /// GID index for RoCE; `None` picks one automatically. Defaults to Mooncake's
    /// `MC_GID_INDEX`, else `NCCL_IB_GID_INDEX`, when set.
    pub gid_index: Option<u32>,
    /// How often a failed slice is retried before its request fails.
    pub max_retries: u32,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            devices: Vec::new(),
            slice_size: 64 * 1024,
            gid_index: env_number("MC_GID_INDEX").or_else(|| env_number("NCCL_IB_GID_INDEX")),
            max_retries: 3,
        }
    }
}

/// Configuration of an [`crate::Engine`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Segment name; `None` means `"<listen ip>:<port>"` (with peer-to-peer metadata peers
    /// open it by that name, so listen on a routable address, not 0.0.0.0, or set a name).
    pub name: Option<String>,
    /// Address the engine listens on (port 0: ephemeral).
    pub listen_addr: SocketAddr,
    /// Where descriptors are published.
    pub metadata: MetadataConfig,
    /// Transport for remote segments.
    pub protocol: Protocol,
    /// A request not finished by then completes as `TimedOut`. Defaults to 10 s, or to
    /// Mooncake's `MC_TRANSFER_TIMEOUT` (seconds) when set. Keep it within the master's read
    /// lease: a read that takes longer fails with LEASE_EXPIRED anyway.
    pub request_timeout: Duration,
    /// Persistent TCP connections per peer.
    pub tcp_connections_per_peer: usize,
    /// How long a TCP connect to a peer may take. A peer whose connect failed is refused
    /// without a new attempt for a moment (see [`crate::transport::tcp`]), so a dead host costs
    /// its own requests this once, not every submit.
    pub tcp_connect_timeout: Duration,
    /// A pooled TCP connection that carried nothing for this long is closed (with its two
    /// threads here and its thread on the peer); the next request to that peer connects again.
    /// `None`: keep connections until the peer or the engine goes. Without it an engine that
    /// once talked to every host of a large cluster would keep four connections and eight
    /// threads per host for good.
    pub tcp_idle_timeout: Option<Duration>,
    /// TCP requests larger than this are striped over the connections.
    pub tcp_stripe_size: usize,
    /// RDMA knobs.
    pub rdma: RdmaConfig,
    /// Serve same-host peers through shared memory: memory registered with
    /// [`crate::Engine::register_shared_memory`] is mapped by peer engines on this host, and
    /// this engine maps theirs, instead of moving bytes over the network transport (see
    /// [`crate::transport::shm`]).
    pub shared_memory: bool,
    /// Threads that copy large memcpy batches (same process, same-host shared memory) in
    /// pieces; 0: the CPUs this process may use, at most 8; 1: every batch in the submitting
    /// thread (see [`crate::transport::parallel_copy`]).
    pub copy_threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            name: None,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metadata: MetadataConfig::P2p,
            protocol: Protocol::Auto,
            request_timeout: Duration::from_secs(env_number("MC_TRANSFER_TIMEOUT").unwrap_or(10)),
            tcp_connections_per_peer: 4,
            tcp_connect_timeout: Duration::from_secs(3),
            tcp_idle_timeout: Some(Duration::from_secs(60)),
            tcp_stripe_size: 1 << 20,
            rdma: RdmaConfig::default(),
            shared_memory: true,
            copy_threads: 0,
        }
    }
}

/// A non-negative integer from environment variable `name`; unset is `None`, and so is a value
/// that does not parse (with a warning, so a typo does not pass silently).
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(variable = name, value = %v, "not a non-negative integer; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::env_number;

    #[test]
    fn numbers_from_the_environment() {
        // A variable of this test alone: the process environment is shared by every test.
        const VAR: &str = "MOONCAKE_RS_CONFIG_TEST_NUMBER";
        std::env::remove_var(VAR);
        assert_eq!(env_number::<u64>(VAR), None);
        std::env::set_var(VAR, " 300 ");
        assert_eq!(env_number::<u64>(VAR), Some(300));
        std::env::set_var(VAR, "30s");
        assert_eq!(env_number::<u64>(VAR), None, "not a number: ignored");
        std::env::remove_var(VAR);
    }
}
