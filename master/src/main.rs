//! `mooncake-master`: the metadata master daemon.
//!
//! Every flag has a default (see `--help`) and an environment override (`MOONCAKE_MASTER_*`).
//! Without `--etcd-endpoints` it is a single master; with them it joins the leader election of
//! `--cluster-id` and serves only while leader. SIGTERM/SIGINT shut it down gracefully (a
//! leader resigns so that a standby takes over at once).
//!
//! Command lines written for Mooncake's C++ `mooncake_master` (gflags: `--port=50051`,
//! `-eviction_high_watermark_ratio=0.7`, `--enable_ha --etcd_endpoints=a:2379;b:2379`, ...)
//! work too: see [`mooncake_flags`] for how they translate, and [`config_file`] for Mooncake's
//! `--config_path=FILE` (its YAML or JSON master config).

mod config_file;
mod flat_yaml;
mod interface_addr;
mod mooncake_flags;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use mooncake_master::ha::{self, EtcdConfig, DEFAULT_CLUSTER_ID};
use mooncake_master::placement::AllocationStrategy;
use mooncake_master::service::ServiceConfig;
use mooncake_master::{MasterConfig, MasterServer};

const DEFAULT_RPC_ADDR: &str = "0.0.0.0:50051";
const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9003";
const RPC_ADDR_ENV: &str = "MOONCAKE_MASTER_RPC_ADDR";
const HTTP_ADDR_ENV: &str = "MOONCAKE_MASTER_HTTP_ADDR";
const ETCD_ENDPOINTS_ENV: &str = "MOONCAKE_MASTER_ETCD_ENDPOINTS";

#[derive(Parser, Debug)]
#[command(
    name = "mooncake-master",
    version,
    about = "mooncake-rs metadata master",
    after_help = "Command lines of Mooncake's mooncake_master work too: --port=, --rpc_port, \
                  --rpc_address, --metrics_port, --default_kv_lease_ttl, --client_ttl, \
                  --eviction_high_watermark_ratio, --enable_ha --etcd_endpoints=a:2379;b:2379, \
                  --cluster_id, ... are translated into the flags above (ours win when both are \
                  given); flags without meaning here are ignored with a warning. \
                  --config_path=FILE.yaml|FILE.json reads Mooncake's master config file (keys \
                  are those flag names; the command line wins over it)."
)]
struct Args {
    /// RPC listen address.
    #[arg(long, env = RPC_ADDR_ENV, default_value = DEFAULT_RPC_ADDR)]
    rpc_addr: SocketAddr,
    /// Address published to clients through etcd (default: the RPC address; set it when
    /// listening on 0.0.0.0).
    #[arg(long, env = "MOONCAKE_MASTER_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Admin HTTP address for /metrics, /health, /role and Mooncake's admin routes.
    #[arg(long, env = HTTP_ADDR_ENV, default_value = DEFAULT_HTTP_ADDR)]
    http_addr: SocketAddr,
    /// Disable the admin HTTP server.
    #[arg(long, env = "MOONCAKE_MASTER_NO_HTTP")]
    no_http: bool,
    /// Read lease granted by GetReplicaList, in milliseconds.
    #[arg(long, env = "MOONCAKE_MASTER_LEASE_TTL_MS", default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// ExistKey grants a read lease too, as Mooncake's master does (by default a probe only
    /// counts as an access: leasing every probed key keeps a full pool from evicting them).
    #[arg(long, env = "MOONCAKE_MASTER_EXIST_GRANTS_LEASE")]
    exist_grants_lease: bool,
    /// Keep a client whose segment name a new client mounts under (by default the new one
    /// replaces it as its restart: names are addresses a live process keeps). Set only where
    /// segment names are not addresses and two live clients may share one.
    #[arg(long, env = "MOONCAKE_MASTER_KEEP_NAMESAKE_CLIENTS")]
    keep_namesake_clients: bool,
    /// Soft-pin duration, in milliseconds.
    #[arg(
        long,
        env = "MOONCAKE_MASTER_SOFT_PIN_TTL_MS",
        default_value_t = 1_800_000
    )]
    soft_pin_ttl_ms: u64,
    /// A client silent this long loses its segments, in milliseconds.
    #[arg(long, env = "MOONCAKE_MASTER_CLIENT_TTL_MS", default_value_t = 10_000)]
    client_ttl_ms: u64,
    /// A PROCESSING object this old may be taken over / is discarded, in milliseconds.
    #[arg(
        long,
        env = "MOONCAKE_MASTER_PUT_DISCARD_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    put_discard_timeout_ms: u64,
    /// Space of a discarded PROCESSING object is reused after this delay, in milliseconds.
    #[arg(
        long,
        env = "MOONCAKE_MASTER_PUT_RELEASE_TIMEOUT_MS",
        default_value_t = 600_000
    )]
    put_release_timeout_ms: u64,
    /// Eviction starts when used/capacity exceeds this.
    #[arg(
        long,
        env = "MOONCAKE_MASTER_EVICTION_HIGH_WATERMARK",
        default_value_t = 0.90
    )]
    eviction_high_watermark: f64,
    /// Fraction of evictable objects one eviction pass removes.
    #[arg(long, env = "MOONCAKE_MASTER_EVICTION_RATIO", default_value_t = 0.05)]
    eviction_ratio: f64,
    /// Replica placement strategy.
    #[arg(long, env = "MOONCAKE_MASTER_ALLOCATION_STRATEGY", value_enum, default_value_t = AllocationStrategy::Random)]
    allocation_strategy: AllocationStrategy,
    /// Index shards.
    #[arg(long, env = "MOONCAKE_MASTER_SHARDS", default_value_t = 128)]
    shards: usize,
    /// etcd endpoints (host:port separated by ',' or ';'); enables HA leader election.
    #[arg(long, env = ETCD_ENDPOINTS_ENV, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Masters with the same cluster id elect one leader (without this flag or its variable:
    /// $MC_STORE_CLUSTER_ID, as in Mooncake, when set).
    #[arg(long, env = "MOONCAKE_MASTER_CLUSTER_ID", default_value = DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    /// Leader lease TTL in seconds (failover takes about this long).
    #[arg(long, env = "MOONCAKE_MASTER_ETCD_LEASE_TTL_S", default_value_t = 5)]
    etcd_lease_ttl_s: i64,
    /// After winning an election, no allocation for this long, in milliseconds (reads and
    /// writes granted by the previous leader finish first); defaults to the lease TTL.
    #[arg(long, env = "MOONCAKE_MASTER_RECOVERY_WINDOW_MS")]
    recovery_window_ms: Option<u64>,
    /// Largest accepted RPC frame, in bytes.
    #[arg(long, env = "MOONCAKE_MASTER_MAX_FRAME_BYTES", default_value_t = 64 << 20)]
    max_frame_bytes: usize,
    /// Maintenance tick period (expiry, delayed release, eviction), in milliseconds.
    #[arg(long, env = "MOONCAKE_MASTER_TICK_MS", default_value_t = 100)]
    tick_ms: u64,
    /// Tokio worker threads (0 = one per core).
    #[arg(long, env = "MOONCAKE_MASTER_THREADS", default_value_t = 0)]
    threads: usize,
}

fn config(a: &Args) -> anyhow::Result<MasterConfig> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.eviction_high_watermark) && (0.0..=1.0).contains(&a.eviction_ratio),
        "--eviction-high-watermark and --eviction-ratio must lie in [0, 1]"
    );
    // Clients fail every read that outlasts its lease: a zero lease would fail them all.
    anyhow::ensure!(
        a.lease_ttl_ms > 0,
        "--lease-ttl-ms (Mooncake: --default_kv_lease_ttl) must be above 0"
    );
    let service = ServiceConfig {
        lease_ttl: Duration::from_millis(a.lease_ttl_ms),
        exist_grants_lease: a.exist_grants_lease,
        replace_restarted_clients: !a.keep_namesake_clients,
        soft_pin_ttl: Duration::from_millis(a.soft_pin_ttl_ms),
        client_ttl: Duration::from_millis(a.client_ttl_ms),
        put_discard_timeout: Duration::from_millis(a.put_discard_timeout_ms),
        put_release_timeout: Duration::from_millis(a.put_release_timeout_ms),
        eviction_high_watermark: a.eviction_high_watermark,
        eviction_ratio: a.eviction_ratio,
        strategy: a.allocation_strategy,
        shards: a.shards,
        recovery_window: Duration::from_millis(a.recovery_window_ms.unwrap_or(a.lease_ttl_ms)),
        ..Default::default()
    };
    let endpoints: Vec<String> = a
        .etcd_endpoints
        .iter()
        .flat_map(|e| mooncake_flags::split_endpoints(e))
        .collect();
    let etcd = (!endpoints.is_empty()).then(|| EtcdConfig {
        endpoints,
        cluster_id: a.cluster_id.clone(),
        lease_ttl_s: a.etcd_lease_ttl_s,
    });
    Ok(MasterConfig {
        rpc_addr: a.rpc_addr,
        advertise_addr: a.advertise_addr.clone(),
        http_addr: (!a.no_http).then_some(a.http_addr),
        service,
        max_frame: a.max_frame_bytes,
        tick_interval: Duration::from_millis(a.tick_ms.max(1)),
        etcd,
    })
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// `--rpc-addr`/`--http-addr` as the environment or the default sets them: what Mooncake's
/// port-only flags build on.
fn env_addr(var: &'static str, default: &str) -> Result<SocketAddr, mooncake_flags::FlagError> {
    let value = std::env::var(var).unwrap_or_else(|_| default.to_string());
    value
        .parse()
        .map_err(|_| mooncake_flags::FlagError::BadEnv { var, value })
}

/// Parses the command line, Mooncake-style flags translated first.
fn parse_args() -> anyhow::Result<Args> {
    let mut argv = std::env::args_os();
    let program = argv.next().unwrap_or_else(|| "mooncake-master".into());
    let raw: Vec<String> = argv
        .map(|a| {
            a.into_string()
                .map_err(|a| anyhow::anyhow!("argument {a:?} is not UTF-8"))
        })
        .collect::<anyhow::Result<_>>()?;
    let base = mooncake_flags::Base {
        rpc_addr: env_addr(RPC_ADDR_ENV, DEFAULT_RPC_ADDR)?,
        http_addr: env_addr(HTTP_ADDR_ENV, DEFAULT_HTTP_ADDR)?,
        etcd_from_env: std::env::var(ETCD_ENDPOINTS_ENV).is_ok_and(|v| !v.trim().is_empty()),
        interface_ipv4: interface_addr::ipv4_of,
    };
    // Usage lines name the binary as called (mooncake-master or mooncake_master).
    let called = std::path::Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mooncake-master".into());
    let mut cmd = Args::command().bin_name(called);
    let t = config_file::translate(&raw, &mooncake_flags::OurFlags::of(&cmd), &base)?;
    if let Some(path) = &t.config_path {
        tracing::info!("settings read from config file {path} (the command line wins)");
    }
    for w in &t.warnings {
        tracing::warn!("{w}");
    }
    let matches = cmd
        .try_get_matches_from_mut(
            std::iter::once(program).chain(t.args.into_iter().map(Into::into)),
        )
        .unwrap_or_else(|e| e.exit());
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if matches.value_source("cluster_id") == Some(ValueSource::DefaultValue) {
        args.cluster_id = ha::default_cluster_id();
    }
    Ok(args)
}

/// Runs the daemon (also as `mooncake_master`: see `src/bin/mooncake_master.rs`).
pub(crate) fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let cfg = config(&args)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = rt.enable_all().build().context("building tokio runtime")?;
    rt.block_on(async move {
        let m = MasterServer::start(cfg)
            .await
            .with_context(|| format!("starting master on {}", args.rpc_addr))?;
        tracing::info!(rpc = %m.rpc_addr(), http = ?m.http_addr(), "mooncake-master started");
        let sig = wait_for_signal().await?;
        tracing::info!("{sig}: shutting down");
        m.stop().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Mooncake command line (and the config file it names), translated with our real clap
    /// flags, parsed by clap.
    fn parse(line: &str) -> Args {
        let raw: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        let base = mooncake_flags::Base {
            rpc_addr: DEFAULT_RPC_ADDR.parse().unwrap(),
            http_addr: DEFAULT_HTTP_ADDR.parse().unwrap(),
            etcd_from_env: false,
            interface_ipv4: interface_addr::ipv4_of,
        };
        let t =
            config_file::translate(&raw, &mooncake_flags::OurFlags::of(&Args::command()), &base)
                .unwrap();
        Args::try_parse_from(std::iter::once("mooncake-master".to_string()).chain(t.args)).unwrap()
    }

    #[test]
    fn our_flags_come_from_clap() {
        let f = mooncake_flags::OurFlags::of(&Args::command());
        for v in [
            "rpc-addr",
            "http-addr",
            "lease-ttl-ms",
            "etcd-endpoints",
            "threads",
        ] {
            assert!(f.with_value.contains(v), "{v}");
        }
        assert!(f.switches.contains("no-http"));
    }

    #[test]
    fn mooncake_command_line_configures_the_master() {
        let a = parse(
            "--port=0 --metrics_port=0 --eviction_high_watermark_ratio=0.8 \
             --default_kv_lease_ttl=5000 --client_ttl 20 --enable_gc=false -v=1 \
             --rpc_thread_num=3 --enable_ha --etcd_endpoints=e1:2379;e2:2379 --cluster_id=c7",
        );
        let cfg = config(&a).unwrap();
        assert_eq!(cfg.rpc_addr, "0.0.0.0:0".parse().unwrap());
        assert_eq!(cfg.http_addr, Some("0.0.0.0:0".parse().unwrap()));
        assert_eq!(cfg.service.eviction_high_watermark, 0.8);
        assert_eq!(cfg.service.lease_ttl, Duration::from_millis(5000));
        assert_eq!(cfg.service.client_ttl, Duration::from_secs(20));
        assert_eq!(a.threads, 3);
        assert!(!cfg.service.exist_grants_lease);
        assert!(
            config(&parse("--exist-grants-lease"))
                .unwrap()
                .service
                .exist_grants_lease
        );
        let etcd = cfg.etcd.unwrap();
        assert_eq!(etcd.endpoints, vec!["e1:2379", "e2:2379"]);
        assert_eq!(etcd.cluster_id, "c7");
    }

    #[test]
    fn a_config_file_configures_the_master_under_the_command_line() {
        use std::io::Write;
        let mut f = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
        f.write_all(
            br#"{"rpc_port": 7001, "eviction_high_watermark_ratio": 0.7,
                 "client_live_ttl_sec": 20, "cluster_id": "from-file",
                 "allocation_strategy": "free_ratio_first", "enable_ha": true,
                 "etcd_endpoints": "e1:2379;e2:2379", "put_start_discard_timeout_sec": 5}"#,
        )
        .unwrap();
        let a = parse(&format!(
            "--config_path={} --cluster_id=from-line",
            f.path().display()
        ));
        let cfg = config(&a).unwrap();
        assert_eq!(cfg.rpc_addr, "0.0.0.0:7001".parse().unwrap());
        assert_eq!(cfg.service.eviction_high_watermark, 0.7);
        assert_eq!(cfg.service.client_ttl, Duration::from_secs(20));
        assert_eq!(cfg.service.put_discard_timeout, Duration::from_secs(5));
        assert_eq!(cfg.service.strategy, AllocationStrategy::FreeRatioFirst);
        let etcd = cfg.etcd.unwrap();
        assert_eq!(etcd.endpoints, vec!["e1:2379", "e2:2379"]);
        assert_eq!(etcd.cluster_id, "from-line");
    }

    #[test]
    fn rpc_interface_binds_its_address() {
        let cfg = config(&parse("--rpc_interface=lo --rpc_port=5")).unwrap();
        assert_eq!(cfg.rpc_addr, "127.0.0.1:5".parse().unwrap());
    }

    #[test]
    fn a_zero_lease_is_refused() {
        let e = config(&parse("--lease-ttl-ms 0")).unwrap_err().to_string();
        assert!(e.contains("--lease-ttl-ms"), "{e}");
    }

    #[test]
    fn restarted_clients_are_replaced_unless_asked_not_to() {
        assert!(
            config(&parse(""))
                .unwrap()
                .service
                .replace_restarted_clients
        );
        let a = parse("--keep-namesake-clients");
        assert!(!config(&a).unwrap().service.replace_restarted_clients);
    }

    #[test]
    fn probes_lease_only_when_asked() {
        assert!(!config(&parse("")).unwrap().service.exist_grants_lease);
        let a = parse("--exist-grants-lease");
        assert!(config(&a).unwrap().service.exist_grants_lease);
    }

    #[test]
    fn our_etcd_endpoints_accept_semicolons() {
        let a = parse("--etcd-endpoints a:1;b:2,c:3");
        assert_eq!(
            config(&a).unwrap().etcd.unwrap().endpoints,
            vec!["a:1", "b:2", "c:3"]
        );
    }
}
