//! High availability through etcd.
//!
//! Masters started with the same etcd endpoints and cluster id campaign in an etcd election
//! named `/mooncake-rs/<cluster-id>/master`, each with its own lease (TTL `lease_ttl_s`) kept
//! alive in the background. The winner's election value is its RPC address: clients given
//! `etcd://…` read it with [`current_leader`]. Standbys block in the campaign. A leader that
//! cannot renew its lease for two thirds of the TTL considers itself deposed and stops serving
//! (before etcd can expire the lease and elect another, so two leaders never serve at once).
//! The failover design (what the new leader does about live data) is in the crate README.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch;

/// Mooncake's default cluster id.
pub const DEFAULT_CLUSTER_ID: &str = "mooncake_cluster";

/// Environment variable that, as in Mooncake, names the cluster when an address or the
/// master's command line gives none.
pub const CLUSTER_ID_ENV: &str = "MC_STORE_CLUSTER_ID";

/// The cluster id to use when none is given: `$MC_STORE_CLUSTER_ID` when set and not empty,
/// else [`DEFAULT_CLUSTER_ID`].
pub fn default_cluster_id() -> String {
    cluster_id_or_default(std::env::var(CLUSTER_ID_ENV).ok().as_deref())
}

/// [`default_cluster_id`] given the variable's value.
pub fn cluster_id_or_default(env: Option<&str>) -> String {
    env.filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_CLUSTER_ID)
        .to_string()
}

/// etcd connection and election settings.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// `host:port` (or `http://host:port`) of etcd members.
    pub endpoints: Vec<String>,
    /// Masters with the same cluster id elect one leader.
    pub cluster_id: String,
    /// Leader lease TTL in seconds: a dead leader is replaced within about this long.
    pub lease_ttl_s: i64,
}

/// Errors of the etcd layer.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// An etcd call failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The stored leader value is not usable.
    #[error("bad leader record: {0}")]
    BadRecord(String),
}

/// The election name of a cluster.
pub fn election_name(cluster_id: &str) -> String {
    format!("/mooncake-rs/{cluster_id}/master")
}

/// Connects to etcd (a connect timeout, no per-request timeout: campaigns block).
pub async fn connect(endpoints: &[String]) -> Result<Client, HaError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    Ok(Client::connect(endpoints, Some(opts)).await?)
}

/// The current leader's `(rpc address, term)`, `None` if there is none.
pub async fn current_leader(
    client: &mut Client,
    cluster_id: &str,
) -> Result<Option<(String, u64)>, HaError> {
    match client.leader(election_name(cluster_id)).await {
        Ok(resp) => match resp.kv() {
            Some(kv) => {
                let addr = kv
                    .value_str()
                    .map_err(|e| HaError::BadRecord(e.to_string()))?;
                Ok(Some((addr.to_string(), kv.create_revision() as u64)))
            }
            None => Ok(None),
        },
        Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How often a campaigning master looks up the leader (for its admin routes).
pub const LEADER_POLL: Duration = Duration::from_secs(1);

/// Reports the current leader's `(rpc address, term)` every [`LEADER_POLL`]: `None` when there
/// is none or etcd does not answer within a few seconds. Never returns.
pub async fn observe_leader(cfg: &EtcdConfig, mut report: impl FnMut(Option<(String, u64)>)) {
    const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
    let mut client = None;
    loop {
        if client.is_none() {
            client = tokio::time::timeout(LOOKUP_TIMEOUT, connect(&cfg.endpoints))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let mut seen = None;
        if let Some(c) = client.as_mut() {
            match tokio::time::timeout(LOOKUP_TIMEOUT, current_leader(c, &cfg.cluster_id)).await {
                Ok(Ok(leader)) => seen = leader,
                // Reconnect next time: the channel may be stuck on a dead member.
                _ => client = None,
            }
        }
        report(seen);
        tokio::time::sleep(LEADER_POLL).await;
    }
}

/// Leadership won in an election; lost when its lease cannot be renewed.
pub struct Leadership {
    /// Term of this leadership (the etcd revision of the leader key; grows across leaders).
    pub term: u64,
    client: Client,
    lease_id: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("term", &self.term)
            .field("lease_id", &self.lease_id)
            .finish()
    }
}

impl Leadership {
    /// Resolves when the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Gives up leadership at once (revokes the lease) so that a standby takes over without
    /// waiting for the TTL.
    pub async fn resign(mut self) {
        self.keeper.abort();
        if let Err(e) = self.client.lease_revoke(self.lease_id).await {
            tracing::warn!("revoking leader lease: {e}");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Keeps `lease_id` alive; flags `lost` once no renewal succeeded for two thirds of the TTL.
async fn keep_alive(mut client: Client, lease_id: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let period = ttl / 3;
    let mut last_ok = Instant::now();
    let mut stream = None;
    loop {
        if stream.is_none() {
            match client.lease_keep_alive(lease_id).await {
                Ok(s) => stream = Some(s),
                Err(e) => tracing::warn!("lease keep-alive stream: {e}"),
            }
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let renew = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(period, renew).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => last_ok = Instant::now(),
                Ok(Ok(_)) => {
                    tracing::error!("leader lease {lease_id:x} expired");
                    let _ = lost.send(true);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!("lease keep-alive: {e}");
                    stream = None;
                }
                Err(_) => stream = None,
            }
        }
        // Step down before etcd can expire the lease (and elect another leader), so two
        // leaders never serve at once; renewals are attempted every third of the TTL.
        if last_ok.elapsed() >= ttl * 2 / 3 {
            tracing::error!("leader lease {lease_id:x} not renewed for 2/3 of {ttl:?}");
            let _ = lost.send(true);
            return;
        }
        tokio::time::sleep(period).await;
    }
}

/// Campaigns until this process is leader; `value` (its RPC address) is published.
pub async fn campaign(cfg: &EtcdConfig, value: &str) -> Result<Leadership, HaError> {
    let mut client = connect(&cfg.endpoints).await?;
    let ttl_s = cfg.lease_ttl_s.max(1);
    let lease_id = client.lease_grant(ttl_s, None).await?.id();
    let (lost_tx, lost_rx) = watch::channel(false);
    let keeper = tokio::spawn(keep_alive(
        client.clone(),
        lease_id,
        Duration::from_secs(ttl_s as u64),
        lost_tx,
    ));
    let mut guard = Leadership {
        term: 0,
        client: client.clone(),
        lease_id,
        lost: lost_rx,
        keeper,
    };
    let resp = client
        .campaign(election_name(&cfg.cluster_id), value, lease_id)
        .await?;
    guard.term = resp.leader().map(|l| l.rev() as u64).unwrap_or(0);
    Ok(guard)
}
