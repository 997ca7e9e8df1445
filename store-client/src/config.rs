//! Configuration of a [`crate::Client`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub use mooncake_master::proto::ReplicateConfig;
pub use transfer_engine::{EngineConfig, Protocol};

use crate::batch_policy::BatchPolicyConfig;
use crate::error::ClientError;

/// Everything [`crate::Client::connect`] needs.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Master address: `host:port`, or `etcd://h1:p1,h2:p2[/cluster-id]` to find and follow
    /// the leader (`;` separates endpoints too; the cluster id defaults to
    /// `$MC_STORE_CLUSTER_ID`).
    pub master_addr: String,
    /// Bytes of host memory this client contributes to the pool (0 = contribute nothing).
    /// Mapped and faulted in at connect, like the staging buffer (best effort), so that peers'
    /// writes do not wait on page faults; this commits the memory at once and takes time in
    /// proportion to the size.
    pub segment_size: u64,
    /// Put the segment in the host's reserved huge pages (`/proc/sys/vm/nr_hugepages`, the
    /// default huge page size; the segment grows to a multiple of it): fewer pages for an RDMA
    /// NIC to translate and for same-host peers to map, whatever the transparent-huge-page
    /// policy. If too few are free the client warns and uses ordinary pages.
    pub reserved_huge_pages: bool,
    /// The client's own transfer engine (protocol, listen address, metadata, timeouts).
    pub engine: EngineConfig,
    /// Size of the registered staging buffer the copying calls (`put`, `get`, ...) go
    /// through. A copying call larger than this is split; one value larger than this fails
    /// with `BUFFER_OVERFLOW` (use the zero-copy calls for such values).
    pub staging_size: u64,
    /// Replication used by calls that take no explicit [`ReplicateConfig`] (keep its
    /// `group_ids` empty: they name one group per item of one batch).
    pub replicate: ReplicateConfig,
    /// Heartbeat period.
    pub ping_interval: Duration,
    /// Auto-batching of single-key `put`/`get`/`put_from`/`get_into` (None = off).
    pub auto_batch: Option<BatchPolicyConfig>,
    /// Serve Prometheus `/metrics` on this address (port 0 picks one).
    pub metrics_addr: Option<SocketAddr>,
    /// Longest transfer request that merging of adjacent requests may build.
    pub max_merged_len: u64,
    /// Copying reads of objects at most this many bytes apart in one segment are read with
    /// one request covering the gap (about the bytes one extra request costs; 0 = off).
    pub read_gap: u64,
}

impl ClientConfig {
    /// Defaults for a client of the master at `master_addr`: 64 MiB segment, 64 MiB staging,
    /// protocol auto, one replica, ping every second, no auto-batching.
    pub fn new(master_addr: impl Into<String>) -> Self {
        Self {
            master_addr: master_addr.into(),
            segment_size: 64 << 20,
            reserved_huge_pages: false,
            engine: EngineConfig::default(),
            staging_size: 64 << 20,
            replicate: ReplicateConfig::default(),
            ping_interval: Duration::from_secs(1),
            auto_batch: None,
            metrics_addr: None,
            max_merged_len: 64 << 20,
            read_gap: 16 << 10,
        }
    }

    /// Sets the transfer protocol.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.engine.protocol = protocol;
        self
    }

    /// Puts the segment in reserved huge pages (see [`Self::reserved_huge_pages`]).
    pub fn reserved_huge_pages(mut self, on: bool) -> Self {
        self.reserved_huge_pages = on;
        self
    }

    /// Sets the contributed segment size (0 = none).
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets the staging buffer size.
    pub fn staging_size(mut self, bytes: u64) -> Self {
        self.staging_size = bytes;
        self
    }

    /// Whether clients on this host reach each other's segments through shared memory (on by
    /// default): this client's segment is then a memfd that they map, and it maps theirs,
    /// instead of moving bytes over TCP or RDMA (see `transfer_engine::transport::shm`).
    pub fn shared_memory(mut self, on: bool) -> Self {
        self.engine.shared_memory = on;
        self
    }

    /// Turns auto-batching on with `policy`.
    pub fn auto_batch(mut self, policy: BatchPolicyConfig) -> Self {
        self.auto_batch = Some(policy);
        self
    }

    /// Picks the RDMA devices from Mooncake's comma-separated list (`"mlx5_0, mlx5_1"`;
    /// empty: all).
    pub fn rdma_devices(mut self, list: &str) -> Self {
        self.engine.rdma.devices = list
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        self
    }

    /// Makes the engine listen where peers reach it, from Mooncake's `local_hostname`:
    /// `host`, `ip`, `host:port` or `[v6]:port` (no port: any free one). Peers connect to it,
    /// so it must be routable from them.
    pub fn local_hostname(mut self, local_hostname: &str) -> Result<Self, ClientError> {
        let has_port = without_port(local_hostname).len() != local_hostname.len();
        let resolved = if has_port {
            local_hostname.to_socket_addrs()
        } else {
            (local_hostname.trim_matches(['[', ']']), 0).to_socket_addrs()
        };
        self.engine.listen_addr = resolved.ok().and_then(|mut a| a.next()).ok_or_else(|| {
            ClientError::Config(format!(
                "local_hostname {local_hostname:?} does not resolve"
            ))
        })?;
        Ok(self)
    }
}

/// `local_hostname` without its port: `host` of `host:port` or `[v6]:port`, anything else
/// (a bare host or IPv6 address) as given.
pub fn without_port(local_hostname: &str) -> &str {
    match local_hostname.rsplit_once(':') {
        Some((host, port))
            if port.parse::<u16>().is_ok()
                && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']'))) =>
        {
            host
        }
        _ => local_hostname,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mooncake_style_hostnames_and_device_lists() {
        let c = |h: &str| {
            ClientConfig::new("m:1")
                .local_hostname(h)
                .map(|c| c.engine.listen_addr)
        };
        assert_eq!(c("127.0.0.1").unwrap(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            c("127.0.0.1:17000").unwrap(),
            "127.0.0.1:17000".parse().unwrap()
        );
        assert_eq!(c("[::1]:17000").unwrap(), "[::1]:17000".parse().unwrap());
        assert_eq!(c("::1").unwrap(), "[::1]:0".parse().unwrap());
        assert!(c("no such host.invalid").is_err());
        let d = ClientConfig::new("m:1").rdma_devices(" mlx5_0, ,mlx5_1");
        assert_eq!(d.engine.rdma.devices, vec!["mlx5_0", "mlx5_1"]);
        assert!(ClientConfig::new("m:1")
            .rdma_devices("")
            .engine
            .rdma
            .devices
            .is_empty());
    }
}
