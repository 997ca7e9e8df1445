//! Mooncake-style command lines for `mooncake-master`.
//!
//! Kvcache-ai's `mooncake_master` is a gflags binary: `-flag=value`, `--flag=value`,
//! `--flag value`, booleans as `--flag`, `--flag=false` or `--noflag`, names with underscores.
//! Deployments written for it (scripts, k8s manifests, SGLang/vLLM docs) pass those flags.
//! [`translate`] rewrites them into our kebab-case flags before clap parses, so the same command
//! line starts our daemon:
//!
//! | Mooncake flag | ours |
//! |---|---|
//! | `port`, `rpc_port` (wins when > 0) | port of `--rpc-addr` |
//! | `rpc_address`, `rpc_interface` (wins: its IPv4 address at startup) | host of `--rpc-addr` |
//! | `metrics_port`, `metrics_host` | port and host of `--http-addr` |
//! | `default_kv_lease_ttl`, `default_kv_soft_pin_ttl` (ms, or `60s`/`2m`/`1h`) | `--lease-ttl-ms`, `--soft-pin-ttl-ms` |
//! | `client_ttl` or `client_active_ttl_sec` (wins), `put_start_discard_timeout_sec`, `put_start_release_timeout_sec` (s) | `--client-ttl-ms`, `--put-discard-timeout-ms`, `--put-release-timeout-ms` |
//! | `eviction_ratio`, `eviction_high_watermark_ratio` | `--eviction-ratio`, `--eviction-high-watermark` |
//! | `rpc_thread_num` (wins when > 0), `max_threads` | `--threads` |
//! | `enable_ha` + `etcd_endpoints` or `ha_backend_connstring` (`;` or `,` separated) | `--etcd-endpoints` |
//! | `cluster_id`, `allocation_strategy` | `--cluster-id`, `--allocation-strategy` |
//! | `config_path` | a JSON file of these flags, read by `config_file` (command line wins) |
//!
//! Flags with no meaning here (logging, GC, metric reporting, the HTTP metadata server, task
//! manager, storage backend, snapshots, oplog, the NVMe-oF tier, tenants' and offload tuning,
//! KV-event and pod-label settings) are accepted with one warning each; turning on a feature we
//! lack (`enable_offload`, `enable_cxl`, `enable_multi_tenants`, `enable_kv_events`, a
//! `dynamic_replication_mode` other than off, a `ha_backend_type` other than etcd), a
//! an `rpc_interface` without an IPv4 address or `flagfile` is an error, as is any other
//! Mooncake-looking flag (underscores, or a long name after one dash). Like gflags, the last
//! occurrence of a flag wins, and like clap, the command line beats `MOONCAKE_MASTER_*`.
//! When one of our own flags is given too, ours wins and the Mooncake one is dropped with a
//! warning. `etcd_endpoints` without `enable_ha` is ignored with a warning, as Mooncake does.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why a command line could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// A Mooncake-looking flag we neither translate nor ignore.
    #[error("unknown flag {0}: it is neither a mooncake-master flag (see --help) nor a Mooncake mooncake_master flag this daemon understands")]
    Unknown(String),
    /// A flag that needs a value ended the command line.
    #[error("flag {0} needs a value")]
    MissingValue(String),
    /// The value does not parse or is out of range.
    #[error("flag {flag}: invalid value {value:?} ({why})")]
    BadValue {
        /// The flag as written.
        flag: String,
        /// Its value.
        value: String,
        /// What was expected.
        why: &'static str,
    },
    /// A Mooncake feature this daemon does not have.
    #[error("flag {flag} is not supported by mooncake-rs: {why}")]
    Unsupported {
        /// The flag as written.
        flag: String,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// A flag that works only together with another.
    #[error("flag {flag} needs {needs}")]
    Requires {
        /// The flag given.
        flag: &'static str,
        /// What it needs.
        needs: &'static str,
    },
    /// An environment default the translation builds on is malformed.
    #[error("{var}={value:?} is not a socket address")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
}

/// Our own long flags, as clap knows them.
#[derive(Debug, Clone, Default)]
pub struct OurFlags {
    /// Flags that take a value (the next argument when not given as `--flag=value`).
    pub with_value: HashSet<String>,
    /// Flags that take none.
    pub switches: HashSet<String>,
}

impl OurFlags {
    /// The long flags of a clap command.
    pub fn of(cmd: &clap::Command) -> Self {
        let mut f = OurFlags::default();
        for a in cmd.get_arguments() {
            if let Some(long) = a.get_long() {
                let set = if a.get_action().takes_values() {
                    &mut f.with_value
                } else {
                    &mut f.switches
                };
                set.insert(long.to_string());
            }
        }
        f.switches
            .extend(["help".to_string(), "version".to_string()]);
        f
    }

    fn contains(&self, name: &str) -> bool {
        self.with_value.contains(name) || self.switches.contains(name)
    }
}

/// What the translation builds on where a Mooncake flag sets only part of one of ours.
#[derive(Debug, Clone)]
pub struct Base {
    /// `--rpc-addr` without the command line (environment or default).
    pub rpc_addr: SocketAddr,
    /// `--http-addr` without the command line.
    pub http_addr: SocketAddr,
    /// Whether `MOONCAKE_MASTER_ETCD_ENDPOINTS` provides endpoints.
    pub etcd_from_env: bool,
    /// The IPv4 address of a network interface (`--rpc_interface`), `None` if it has none.
    pub interface_ipv4: fn(&str) -> Option<Ipv4Addr>,
}

/// A translated command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// Arguments for clap (without the program name).
    pub args: Vec<String>,
    /// One line per ignored or overridden flag, for the log.
    pub warnings: Vec<String>,
    /// The config file `--config_path` names (the last one given; an empty path is none, as
    /// in Mooncake). The caller reads it: see `config_file`.
    pub config_path: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    Value,
}

#[derive(Clone, Copy, Debug)]
enum Effect {
    Port,
    RpcPort,
    RpcAddress,
    /// Newer Mooncake: an interface whose IPv4 address to bind (wins over `rpc_address`);
    /// empty means none.
    RpcInterface,
    MetricsPort,
    /// Newer Mooncake: the admin HTTP bind address.
    MetricsHost,
    /// Newer Mooncake's client TTL (s); wins over `client_ttl`, which newer Mooncake keeps as
    /// the legacy spelling of both its liveness windows.
    ActiveClientTtl,
    /// Milliseconds copied to our flag.
    Millis(&'static str),
    /// Seconds, times 1000 into our millisecond flag.
    Seconds(&'static str),
    /// A ratio in [0, 1] copied to our flag.
    Ratio(&'static str),
    RpcThreads,
    MaxThreads,
    EnableHa,
    EtcdEndpoints,
    /// Newer Mooncake's HA endpoint string; wins over `etcd_endpoints` when set.
    HaConnString,
    HaBackendType,
    ClusterId,
    AllocationStrategy,
    MemoryAllocator,
    /// Mooncake's JSON config file.
    ConfigPath,
    /// Accepted with a warning saying why it does not matter here.
    Ignored(&'static str),
    /// Accepted while false; an error when true.
    OnlyOff(&'static str),
    /// Accepted while the value is the first field (the feature's "off"); an error otherwise.
    OnlyValue(&'static str, &'static str),
    /// Always an error.
    Unsupported(&'static str),
}

const LOGGING: &str = "logging is configured with RUST_LOG (e.g. RUST_LOG=debug)";
const TASKS: &str = "this master has no task manager";
const STORAGE: &str = "this master has no storage backend";
const CXL: &str = "this master has no CXL memory support";
const FLAGFILE: &str =
    "use --config_path=FILE.yaml (Mooncake's master config file) or put the flags on the command line";
const HTTP_METADATA: &str =
    "mooncake-rs clients need no metadata server (descriptors travel peer to peer)";
const SOFT_PIN: &str = "soft-pinned objects are evicted only when no unpinned object can be";
const GC: &str = "objects leave by removal, lease expiry and eviction";
const METRICS: &str = "metrics are always served on the admin port's /metrics";
const OPLOG: &str = "a new leader rebuilds its index from the clients' remounts";
const SNAPSHOT: &str =
    "this master keeps no snapshots; a new leader rebuilds its index from the clients' remounts";
const NOF: &str = "this master has no NVMe-oF SSD tier";
const CONN_TIMEOUT: &str = "dead clients are dropped after --client-ttl-ms";
const SUSPICION: &str =
    "a silent client is dropped after the client TTL, with no separate suspicion window";
const TENANTS: &str = "this master has no tenants or quotas";
const DYNAMIC_REPLICATION: &str = "this master adds no replicas of hot objects";
const KV_EVENTS: &str = "this master publishes no KV events";
const OFFLOAD: &str = "this master has no SSD offload or promotion";
const POD_LABELS: &str = "this master labels no pods; /role tells a leader from a standby";

/// A Mooncake flag taking a value.
const fn val(name: &'static str, e: Effect) -> (&'static str, Kind, Effect) {
    (name, Kind::Value, e)
}

/// A Mooncake boolean flag.
const fn boolean(name: &'static str, e: Effect) -> (&'static str, Kind, Effect) {
    (name, Kind::Bool, e)
}

/// Every flag of Mooncake's `mooncake_master` (its gflags and glog's) and what it becomes.
const FLAGS: &[(&str, Kind, Effect)] = &[
    val("port", Effect::Port),
    val("rpc_port", Effect::RpcPort),
    val("rpc_address", Effect::RpcAddress),
    val("metrics_port", Effect::MetricsPort),
    val("metrics_host", Effect::MetricsHost),
    val("default_kv_lease_ttl", Effect::Millis("lease-ttl-ms")),
    val("default_kv_soft_pin_ttl", Effect::Millis("soft-pin-ttl-ms")),
    val("client_ttl", Effect::Seconds("client-ttl-ms")),
    val("client_active_ttl_sec", Effect::ActiveClientTtl),
    val("client_suspicion_ttl_sec", Effect::Ignored(SUSPICION)),
    val(
        "put_start_discard_timeout_sec",
        Effect::Seconds("put-discard-timeout-ms"),
    ),
    val(
        "put_start_release_timeout_sec",
        Effect::Seconds("put-release-timeout-ms"),
    ),
    val("eviction_ratio", Effect::Ratio("eviction-ratio")),
    val(
        "eviction_high_watermark_ratio",
        Effect::Ratio("eviction-high-watermark"),
    ),
    val("rpc_thread_num", Effect::RpcThreads),
    val("max_threads", Effect::MaxThreads),
    boolean("enable_ha", Effect::EnableHa),
    val("etcd_endpoints", Effect::EtcdEndpoints),
    val("ha_backend_connstring", Effect::HaConnString),
    val("ha_backend_type", Effect::HaBackendType),
    val("rpc_interface", Effect::RpcInterface),
    val("cluster_id", Effect::ClusterId),
    val("allocation_strategy", Effect::AllocationStrategy),
    val("memory_allocator", Effect::MemoryAllocator),
    boolean("allow_evict_soft_pinned_objects", Effect::Ignored(SOFT_PIN)),
    boolean("enable_gc", Effect::Ignored(GC)),
    boolean("enable_metric_reporting", Effect::Ignored(METRICS)),
    val("rpc_conn_timeout_seconds", Effect::Ignored(CONN_TIMEOUT)),
    boolean(
        "rpc_enable_tcp_no_delay",
        Effect::Ignored("TCP_NODELAY is always on"),
    ),
    boolean(
        "enable_http_metadata_server",
        Effect::Ignored(HTTP_METADATA),
    ),
    val("http_metadata_server_port", Effect::Ignored(HTTP_METADATA)),
    val("http_metadata_server_host", Effect::Ignored(HTTP_METADATA)),
    val("root_fs_dir", Effect::Ignored(STORAGE)),
    val("global_file_segment_size", Effect::Ignored(STORAGE)),
    boolean("enable_disk_eviction", Effect::Ignored(STORAGE)),
    val("quota_bytes", Effect::Ignored(STORAGE)),
    val("max_total_finished_tasks", Effect::Ignored(TASKS)),
    val("max_total_pending_tasks", Effect::Ignored(TASKS)),
    val("max_total_processing_tasks", Effect::Ignored(TASKS)),
    val("pending_task_timeout_sec", Effect::Ignored(TASKS)),
    val("processing_task_timeout_sec", Effect::Ignored(TASKS)),
    val("cxl_path", Effect::Ignored(CXL)),
    val("cxl_size", Effect::Ignored(CXL)),
    boolean("enable_cxl", Effect::OnlyOff(CXL)),
    boolean("enable_offload", Effect::OnlyOff(OFFLOAD)),
    val("offload_cap_ratio", Effect::Ignored(OFFLOAD)),
    boolean("offload_force_evict", Effect::Ignored(OFFLOAD)),
    boolean("offload_on_evict", Effect::Ignored(OFFLOAD)),
    val("offloading_queue_limit", Effect::Ignored(OFFLOAD)),
    val("promotion_admission_threshold", Effect::Ignored(OFFLOAD)),
    val("promotion_max_per_heartbeat", Effect::Ignored(OFFLOAD)),
    boolean("promotion_on_hit", Effect::Ignored(OFFLOAD)),
    val("promotion_queue_limit", Effect::Ignored(OFFLOAD)),
    val("max_kv_soft_pin_ttl", Effect::Ignored(SOFT_PIN)),
    boolean("enable_multi_tenants", Effect::OnlyOff(TENANTS)),
    val(
        "tenant_eviction_high_watermark_ratio",
        Effect::Ignored(TENANTS),
    ),
    val("tenant_quota_connector_type", Effect::Ignored(TENANTS)),
    val("tenant_quota_connector_uri", Effect::Ignored(TENANTS)),
    val(
        "dynamic_replication_mode",
        Effect::OnlyValue("off", DYNAMIC_REPLICATION),
    ),
    val(
        "dynamic_replication_heat_window_seconds",
        Effect::Ignored(DYNAMIC_REPLICATION),
    ),
    val(
        "dynamic_replication_admission_qps_threshold",
        Effect::Ignored(DYNAMIC_REPLICATION),
    ),
    val(
        "dynamic_replication_max_memory_replicas",
        Effect::Ignored(DYNAMIC_REPLICATION),
    ),
    boolean("enable_kv_events", Effect::OnlyOff(KV_EVENTS)),
    val("kv_events_additional_salt", Effect::Ignored(KV_EVENTS)),
    val("kv_events_backend_id", Effect::Ignored(KV_EVENTS)),
    val("kv_events_bind_endpoint", Effect::Ignored(KV_EVENTS)),
    val("kv_events_block_size", Effect::Ignored(KV_EVENTS)),
    val("kv_events_dp_rank", Effect::Ignored(KV_EVENTS)),
    boolean("kv_events_emit_legacy_compat", Effect::Ignored(KV_EVENTS)),
    boolean("kv_events_emit_object_key", Effect::Ignored(KV_EVENTS)),
    val("kv_events_lora_name", Effect::Ignored(KV_EVENTS)),
    val("kv_events_model_name", Effect::Ignored(KV_EVENTS)),
    val("kv_events_queue_capacity", Effect::Ignored(KV_EVENTS)),
    val("kv_events_tenant_id", Effect::Ignored(KV_EVENTS)),
    boolean(
        "enable_metadata_cleanup_on_timeout",
        Effect::Ignored(HTTP_METADATA),
    ),
    val("pod_name", Effect::Ignored(POD_LABELS)),
    val("pod_namespace", Effect::Ignored(POD_LABELS)),
    val("config_path", Effect::ConfigPath),
    val("flagfile", Effect::Unsupported(FLAGFILE)),
    val("v", Effect::Ignored(LOGGING)),
    val("vmodule", Effect::Ignored(LOGGING)),
    boolean("logtostderr", Effect::Ignored(LOGGING)),
    boolean("alsologtostderr", Effect::Ignored(LOGGING)),
    boolean("colorlogtostderr", Effect::Ignored(LOGGING)),
    val("stderrthreshold", Effect::Ignored(LOGGING)),
    val("minloglevel", Effect::Ignored(LOGGING)),
    val("log_dir", Effect::Ignored(LOGGING)),
    boolean("enable_oplog", Effect::Ignored(OPLOG)),
    boolean("enable_oplog_snapshot", Effect::Ignored(OPLOG)),
    boolean(
        "weight_management_oplog_capability_confirmed",
        Effect::Ignored(OPLOG),
    ),
    val("oplog_poll_interval_ms", Effect::Ignored(OPLOG)),
    val("oplog_batch_max_entries", Effect::Ignored(OPLOG)),
    val("batch_oplog_retry_timeout_sec", Effect::Ignored(OPLOG)),
    val("snapshot_chunk_object_count", Effect::Ignored(SNAPSHOT)),
    val("snapshot_backend_type", Effect::Ignored(SNAPSHOT)),
    boolean("enable_snapshot", Effect::Ignored(SNAPSHOT)),
    boolean("enable_snapshot_restore", Effect::Ignored(SNAPSHOT)),
    val("snapshot_backup_dir", Effect::Ignored(SNAPSHOT)),
    val("snapshot_interval_seconds", Effect::Ignored(SNAPSHOT)),
    val("snapshot_child_timeout_seconds", Effect::Ignored(SNAPSHOT)),
    val("snapshot_retention_count", Effect::Ignored(SNAPSHOT)),
    val("snapshot_object_store_type", Effect::Ignored(SNAPSHOT)),
    val("snapshot_payload_store_type", Effect::Ignored(SNAPSHOT)),
    val("snapshot_payload_backend_type", Effect::Ignored(SNAPSHOT)),
    val("snapshot_catalog_store_type", Effect::Ignored(SNAPSHOT)),
    val("snapshot_catalog_backend_type", Effect::Ignored(SNAPSHOT)),
    val(
        "snapshot_catalog_store_connstring",
        Effect::Ignored(SNAPSHOT),
    ),
    val(
        "snapshot_catalog_backend_connstring",
        Effect::Ignored(SNAPSHOT),
    ),
    val("max_retry_attempts", Effect::Ignored(TASKS)),
    val("nof_eviction_ratio", Effect::Ignored(NOF)),
    val("nof_eviction_high_watermark_ratio", Effect::Ignored(NOF)),
    val("nof_heartbeat_interval_sec", Effect::Ignored(NOF)),
    val("nof_heartbeat_probe_timeout_ms", Effect::Ignored(NOF)),
    val("nof_heartbeat_failures_threshold", Effect::Ignored(NOF)),
];

fn lookup(name: &str) -> Option<(Kind, Effect)> {
    FLAGS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, k, e)| (k, e))
}

/// Whether `name` is a Mooncake flag taking a value (`Some(true)`), a boolean one
/// (`Some(false)`), or none (`None`).
pub fn takes_value(name: &str) -> Option<bool> {
    lookup(name).map(|(k, _)| k == Kind::Value)
}

/// gflags' boolean spellings.
fn parse_bool(flag: &str, v: &str) -> Result<bool, FlagError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Ok(true),
        "false" | "f" | "no" | "n" | "0" => Ok(false),
        _ => Err(bad(flag, v, "true or false")),
    }
}

fn bad(flag: &str, value: &str, why: &'static str) -> FlagError {
    FlagError::BadValue {
        flag: flag.to_string(),
        value: value.to_string(),
        why,
    }
}

fn num<T: std::str::FromStr>(flag: &str, v: &str, why: &'static str) -> Result<T, FlagError> {
    v.trim().parse().map_err(|_| bad(flag, v, why))
}

/// Whole seconds as milliseconds.
fn seconds_ms(flag: &str, v: &str) -> Result<u64, FlagError> {
    let s: u64 = num(flag, v, "whole seconds, not negative")?;
    s.checked_mul(1000)
        .ok_or_else(|| bad(flag, v, "seconds too large"))
}

/// Newer Mooncake's durations: plain milliseconds, or a whole number with `ms`, `s`, `m` or `h`.
fn duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v[..digits].parse().ok()?;
    let unit = match &v[digits..] {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Our flag a Mooncake effect sets (for "ours wins").
fn target(e: Effect) -> Option<&'static str> {
    match e {
        Effect::Port | Effect::RpcPort | Effect::RpcAddress | Effect::RpcInterface => {
            Some("rpc-addr")
        }
        Effect::MetricsPort | Effect::MetricsHost => Some("http-addr"),
        Effect::ActiveClientTtl => Some("client-ttl-ms"),
        Effect::Millis(t) | Effect::Seconds(t) | Effect::Ratio(t) => Some(t),
        Effect::RpcThreads | Effect::MaxThreads => Some("threads"),
        Effect::EnableHa | Effect::EtcdEndpoints | Effect::HaConnString => Some("etcd-endpoints"),
        Effect::ClusterId => Some("cluster-id"),
        Effect::AllocationStrategy => Some("allocation-strategy"),
        _ => None,
    }
}

/// Settings gathered from the Mooncake flags (last occurrence wins).
#[derive(Default)]
struct Gathered {
    port: Option<u16>,
    rpc_port: Option<u16>,
    rpc_address: Option<IpAddr>,
    rpc_interface: Option<String>,
    metrics_port: Option<u16>,
    metrics_host: Option<IpAddr>,
    active_client_ttl_ms: Option<u64>,
    rpc_threads: Option<usize>,
    max_threads: Option<usize>,
    enable_ha: Option<bool>,
    etcd: Option<Vec<String>>,
    ha_connstring: Option<Vec<String>>,
    config_path: Option<String>,
    /// Our flag → value, for the one-to-one flags.
    values: BTreeMap<&'static str, String>,
    /// Mooncake flags given, by our flag they set (for the override warnings).
    given: BTreeMap<&'static str, BTreeSet<String>>,
}

/// Splits an etcd endpoint list on `;` (Mooncake) and `,` (ours).
pub fn split_endpoints(list: &str) -> Vec<String> {
    list.split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// One argument seen as a flag: dashes, name, inline value.
struct Parsed<'a> {
    dashes: usize,
    name: &'a str,
    inline: Option<&'a str>,
}

fn split_flag(arg: &str) -> Option<Parsed<'_>> {
    let (dashes, rest) = if let Some(r) = arg.strip_prefix("--") {
        (2, r)
    } else if let Some(r) = arg.strip_prefix('-') {
        (1, r)
    } else {
        return None;
    };
    if rest.is_empty() {
        return None;
    }
    let (name, inline) = match rest.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (rest, None),
    };
    Some(Parsed {
        dashes,
        name,
        inline,
    })
}

/// Rewrites a command line (without the program name) into one our clap parser takes. See
/// the module documentation for the rules.
pub fn translate(args: &[String], ours: &OurFlags, base: &Base) -> Result<Translated, FlagError> {
    let mut out = Vec::with_capacity(args.len());
    let mut warnings = Vec::new();
    let mut explicit: HashSet<String> = HashSet::new();
    let mut g = Gathered::default();
    let mut ignored_seen: HashSet<&str> = HashSet::new();
    let mut tail: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            tail = args[i - 1..].to_vec();
            break;
        }
        let Some(p) = split_flag(arg) else {
            out.push(arg.clone());
            continue;
        };
        // Our own flag (kebab-case after `--`; `-h`/`-V` pass too).
        if (p.dashes == 2 && ours.contains(p.name))
            || (p.dashes == 1 && p.name.len() == 1 && p.name != "v")
        {
            out.push(arg.clone());
            explicit.insert(p.name.to_string());
            if p.inline.is_none() && ours.with_value.contains(p.name) && i < args.len() {
                out.push(args[i].clone());
                i += 1;
            }
            continue;
        }
        let (name, negated, kind, effect) = match lookup(p.name) {
            Some((k, e)) => (p.name, false, k, e),
            None => match p
                .name
                .strip_prefix("no")
                .and_then(|n| lookup(n).map(|x| (n, x)))
            {
                Some((n, (Kind::Bool, e))) => (n, true, Kind::Bool, e),
                _ => {
                    // One of ours spelt with underscores: accept it.
                    let kebab = p.name.replace('_', "-");
                    if p.dashes == 2 && ours.contains(&kebab) {
                        let rewritten = match p.inline {
                            Some(v) => format!("--{kebab}={v}"),
                            None => format!("--{kebab}"),
                        };
                        out.push(rewritten);
                        if p.inline.is_none() && ours.with_value.contains(&kebab) && i < args.len()
                        {
                            out.push(args[i].clone());
                            i += 1;
                        }
                        explicit.insert(kebab);
                        continue;
                    }
                    if p.name.contains('_') || p.dashes == 1 {
                        return Err(FlagError::Unknown(arg.clone()));
                    }
                    // Left to clap, which names it and suggests ours.
                    out.push(arg.clone());
                    continue;
                }
            },
        };
        let shown = format!("--{name}");
        let value: String = match (kind, negated, p.inline) {
            (Kind::Bool, true, Some(_)) => return Err(bad(&shown, arg, "--noflag takes no value")),
            (Kind::Bool, true, None) => "false".into(),
            (Kind::Bool, false, None) => {
                // gflags would take `--flag false` as true plus a stray argument.
                if let Some(next) = args.get(i).filter(|n| parse_bool(&shown, n).is_ok()) {
                    return Err(bad(
                        &shown,
                        next,
                        "write booleans as --flag=true or --flag=false",
                    ));
                }
                "true".into()
            }
            (_, _, Some(v)) => v.to_string(),
            (Kind::Value, _, None) => {
                let v = args
                    .get(i)
                    .ok_or_else(|| FlagError::MissingValue(shown.clone()))?;
                i += 1;
                v.clone()
            }
        };
        if let Some(t) = target(effect) {
            g.given.entry(t).or_default().insert(shown.clone());
        }
        match effect {
            Effect::Port => g.port = Some(num(&shown, &value, "a port 0-65535")?),
            Effect::RpcPort => g.rpc_port = Some(num(&shown, &value, "a port 0-65535")?),
            Effect::RpcAddress => {
                g.rpc_address = Some(num(&shown, &value, "an IP address to bind")?)
            }
            Effect::RpcInterface => {
                g.rpc_interface = Some(value.trim().to_string()).filter(|i| !i.is_empty());
            }
            Effect::MetricsPort => g.metrics_port = Some(num(&shown, &value, "a port 0-65535")?),
            Effect::MetricsHost => {
                g.metrics_host = Some(num(&shown, &value, "an IP address to bind")?)
            }
            Effect::ActiveClientTtl => {
                g.active_client_ttl_ms = Some(seconds_ms(&shown, &value)?);
            }
            Effect::Millis(t) => {
                let ms = duration_ms(&value).ok_or_else(|| {
                    bad(&shown, &value, "milliseconds, or a number with ms/s/m/h")
                })?;
                g.values.insert(t, ms.to_string());
            }
            Effect::Seconds(t) => {
                g.values.insert(t, seconds_ms(&shown, &value)?.to_string());
            }
            Effect::Ratio(t) => {
                let r: f64 = num(&shown, &value, "a ratio between 0 and 1")?;
                if !(0.0..=1.0).contains(&r) {
                    return Err(bad(&shown, &value, "a ratio between 0 and 1"));
                }
                g.values.insert(t, value.trim().to_string());
            }
            Effect::RpcThreads => g.rpc_threads = Some(num(&shown, &value, "a thread count")?),
            Effect::MaxThreads => g.max_threads = Some(num(&shown, &value, "a thread count")?),
            Effect::EnableHa => g.enable_ha = Some(parse_bool(&shown, &value)?),
            Effect::EtcdEndpoints => g.etcd = Some(split_endpoints(&value)),
            Effect::HaConnString => g.ha_connstring = Some(split_endpoints(&value)),
            Effect::HaBackendType => {
                if value != "etcd" {
                    return Err(FlagError::Unsupported {
                        flag: format!("{shown}={value}"),
                        why: "the only HA backend is etcd",
                    });
                }
            }
            Effect::ClusterId => {
                if value.is_empty() {
                    return Err(bad(&shown, &value, "a non-empty cluster id"));
                }
                g.values.insert("cluster-id", value);
            }
            Effect::AllocationStrategy => {
                let ours = match value.as_str() {
                    "random" => "random",
                    "free_ratio_first" => "free-ratio-first",
                    "cxl" => {
                        return Err(FlagError::Unsupported {
                            flag: shown,
                            why: "there is no CXL allocation; use random or free_ratio_first",
                        })
                    }
                    _ => return Err(bad(&shown, &value, "random or free_ratio_first")),
                };
                g.values.insert("allocation-strategy", ours.to_string());
            }
            Effect::MemoryAllocator => match value.as_str() {
                "offset" => {}
                "cachelib" => warnings.push(format!(
                    "{shown}=cachelib ignored: this master always uses its offset allocator"
                )),
                _ => return Err(bad(&shown, &value, "cachelib or offset")),
            },
            Effect::ConfigPath => g.config_path = Some(value).filter(|p| !p.is_empty()),
            Effect::Ignored(why) => {
                if ignored_seen.insert(name) {
                    warnings.push(format!("{shown} ignored: {why}"));
                }
            }
            Effect::OnlyOff(why) => {
                if parse_bool(&shown, &value)? {
                    return Err(FlagError::Unsupported { flag: shown, why });
                }
            }
            Effect::OnlyValue(off, why) => {
                if value.trim() != off {
                    return Err(FlagError::Unsupported {
                        flag: format!("{shown}={value}"),
                        why,
                    });
                }
            }
            Effect::Unsupported(why) => return Err(FlagError::Unsupported { flag: shown, why }),
        }
    }
    let config_path = g.config_path.take();
    emit(g, &explicit, base, &mut out, &mut warnings)?;
    out.extend(tail);
    Ok(Translated {
        args: out,
        warnings,
        config_path,
    })
}

/// Appends our flags for what the Mooncake flags set, unless ours were given explicitly.
fn emit(
    g: Gathered,
    explicit: &HashSet<String>,
    base: &Base,
    out: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<(), FlagError> {
    let mut wanted: Vec<(&'static str, String)> = Vec::new();
    // Mooncake: rpc_port when > 0, else port.
    let port = g.rpc_port.filter(|&p| p > 0).or(g.port);
    // Mooncake: a named interface's address wins over rpc_address, whatever the order.
    let host = match &g.rpc_interface {
        Some(i) => Some(IpAddr::V4((base.interface_ipv4)(i).ok_or_else(|| {
            bad(
                "--rpc_interface",
                i,
                "a network interface with an IPv4 address",
            )
        })?)),
        None => g.rpc_address,
    };
    if port.is_some() || host.is_some() {
        let addr = SocketAddr::new(
            host.unwrap_or(base.rpc_addr.ip()),
            port.unwrap_or(base.rpc_addr.port()),
        );
        wanted.push(("rpc-addr", addr.to_string()));
    }
    if g.metrics_port.is_some() || g.metrics_host.is_some() {
        let addr = SocketAddr::new(
            g.metrics_host.unwrap_or(base.http_addr.ip()),
            g.metrics_port.unwrap_or(base.http_addr.port()),
        );
        wanted.push(("http-addr", addr.to_string()));
    }
    let mut values = g.values;
    if let Some(ms) = g.active_client_ttl_ms {
        values.insert("client-ttl-ms", ms.to_string());
    }
    wanted.extend(values);
    if let Some(t) = g.rpc_threads.filter(|&t| t > 0).or(g.max_threads) {
        wanted.push(("threads", t.to_string()));
    }
    let endpoints = g.ha_connstring.filter(|e| !e.is_empty()).or(g.etcd);
    match (g.enable_ha.unwrap_or(false), endpoints) {
        (true, Some(eps)) if !eps.is_empty() => wanted.push(("etcd-endpoints", eps.join(","))),
        (true, _) if explicit.contains("etcd-endpoints") || base.etcd_from_env => {}
        (true, _) => {
            return Err(FlagError::Requires {
                flag: "--enable_ha",
                needs: "--etcd_endpoints (host:port, ';' separated)",
            })
        }
        (false, Some(_)) => warnings.push(
            "--etcd_endpoints ignored without --enable_ha (as in Mooncake): single master".into(),
        ),
        (false, None) => {}
    }
    for (flag, value) in wanted {
        if explicit.contains(flag) {
            let names: Vec<&str> = g
                .given
                .get(flag)
                .map(|s| s.iter().map(String::as_str).collect())
                .unwrap_or_default();
            warnings.push(format!("{} ignored: --{flag} given", names.join(", ")));
        } else {
            out.push(format!("--{flag}"));
            out.push(value);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ours() -> OurFlags {
        let mut f = OurFlags::default();
        for v in [
            "rpc-addr",
            "http-addr",
            "lease-ttl-ms",
            "soft-pin-ttl-ms",
            "client-ttl-ms",
            "eviction-ratio",
            "eviction-high-watermark",
            "etcd-endpoints",
            "cluster-id",
            "threads",
            "allocation-strategy",
            "put-discard-timeout-ms",
            "put-release-timeout-ms",
        ] {
            f.with_value.insert(v.into());
        }
        f.switches
            .extend(["no-http".into(), "help".into(), "version".into()]);
        f
    }

    /// An interface table for tests: `eth7` is 10.0.0.7, nothing else has an address.
    pub(crate) fn fake_interfaces(name: &str) -> Option<Ipv4Addr> {
        (name == "eth7").then_some(Ipv4Addr::new(10, 0, 0, 7))
    }

    fn base() -> Base {
        Base {
            rpc_addr: "0.0.0.0:50051".parse().unwrap(),
            http_addr: "0.0.0.0:9003".parse().unwrap(),
            etcd_from_env: false,
            interface_ipv4: fake_interfaces,
        }
    }

    fn tr(line: &str) -> Result<Translated, FlagError> {
        let args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        translate(&args, &ours(), &base())
    }

    fn args(line: &str) -> Vec<String> {
        tr(line).unwrap_or_else(|e| panic!("{line}: {e}")).args
    }

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn translates_the_table() {
        let cases = [
            ("", ""),
            ("--port=50001", "--rpc-addr 0.0.0.0:50001"),
            ("-port 50001", "--rpc-addr 0.0.0.0:50001"),
            ("--port 7 --rpc_port=8", "--rpc-addr 0.0.0.0:8"),
            ("--port 7 --rpc_port=0", "--rpc-addr 0.0.0.0:7"),
            ("--rpc_address=10.0.0.1", "--rpc-addr 10.0.0.1:50051"),
            ("--rpc_address ::1 --rpc_port 5", "--rpc-addr [::1]:5"),
            ("-metrics_port=9100", "--http-addr 0.0.0.0:9100"),
            ("--default_kv_lease_ttl=5000", "--lease-ttl-ms 5000"),
            ("--default_kv_lease_ttl=1h", "--lease-ttl-ms 3600000"),
            ("--default_kv_lease_ttl=60s", "--lease-ttl-ms 60000"),
            ("--default_kv_soft_pin_ttl=2m", "--soft-pin-ttl-ms 120000"),
            ("--default_kv_lease_ttl=250ms", "--lease-ttl-ms 250"),
            (
                "--enable_ha --etcd_endpoints=a:1 --ha_backend_type=etcd --ha_backend_connstring=b:2;c:3",
                "--etcd-endpoints b:2,c:3",
            ),
            ("--nof_eviction_high_watermark_ratio=0.9 --enable_oplog", ""),
            ("--default_kv_soft_pin_ttl 60000", "--soft-pin-ttl-ms 60000"),
            ("--client_ttl=10", "--client-ttl-ms 10000"),
            (
                "--put_start_discard_timeout_sec=30",
                "--put-discard-timeout-ms 30000",
            ),
            (
                "--put_start_release_timeout_sec=600",
                "--put-release-timeout-ms 600000",
            ),
            (
                "-eviction_high_watermark_ratio=0.7",
                "--eviction-high-watermark 0.7",
            ),
            ("--eviction_ratio=0.1", "--eviction-ratio 0.1"),
            ("--rpc_thread_num=8 --max_threads=2", "--threads 8"),
            ("--max_threads=2", "--threads 2"),
            (
                "--enable_ha --etcd_endpoints=a:1;b:2",
                "--etcd-endpoints a:1,b:2",
            ),
            (
                "--enable_ha=true --etcd_endpoints a:1,b:2;",
                "--etcd-endpoints a:1,b:2",
            ),
            ("--cluster_id=prod", "--cluster-id prod"),
            (
                "--allocation_strategy=free_ratio_first",
                "--allocation-strategy free-ratio-first",
            ),
            ("--memory_allocator=offset", ""),
            ("--metrics_host=127.0.0.1", "--http-addr 127.0.0.1:9003"),
            (
                "--metrics_port=9 --metrics_host=::1",
                "--http-addr [::1]:9",
            ),
            ("--client_active_ttl_sec=7 --client_ttl=5", "--client-ttl-ms 7000"),
            ("--client_ttl=5 --client_active_ttl_sec=7", "--client-ttl-ms 7000"),
            ("--rpc_interface= --client_suspicion_ttl_sec=60", ""),
            ("--rpc_interface=eth7", "--rpc-addr 10.0.0.7:50051"),
            (
                "--rpc_interface=eth7 --rpc_address=10.9.9.9 --rpc_port=5",
                "--rpc-addr 10.0.0.7:5",
            ),
            (
                "--rpc_address=10.9.9.9 --rpc_interface=eth7",
                "--rpc-addr 10.0.0.7:50051",
            ),
            (
                "--rpc_interface=eth7 --rpc_address=10.9.9.9 --rpc_interface=",
                "--rpc-addr 10.9.9.9:50051",
            ),
            (
                "--dynamic_replication_mode=off --enable_kv_events=false --noenable_multi_tenants",
                "",
            ),
            ("--enable_offload=false --noenable_cxl", ""),
            // last occurrence wins, as in gflags
            ("--port=1 --port=2", "--rpc-addr 0.0.0.0:2"),
            // ours pass through untouched, in place
            (
                "--rpc-addr 1.2.3.4:5 --no-http",
                "--rpc-addr 1.2.3.4:5 --no-http",
            ),
            ("--lease-ttl-ms=7", "--lease-ttl-ms=7"),
            ("--help", "--help"),
            ("-h", "-h"),
            // ours with underscores
            ("--lease_ttl_ms 7", "--lease-ttl-ms 7"),
            ("--no_http", "--no-http"),
            // an unknown kebab flag is left to clap
            ("--bogus-flag", "--bogus-flag"),
        ];
        for (input, want) in cases {
            assert_eq!(args(input), v(want), "{input}");
        }
    }

    #[test]
    fn ours_win_over_mooncake_equivalents() {
        let t = tr("--port=1 --rpc-addr 127.0.0.1:9 --default_kv_lease_ttl=5 --lease-ttl-ms=6")
            .unwrap();
        assert_eq!(t.args, v("--rpc-addr 127.0.0.1:9 --lease-ttl-ms=6"));
        assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
        assert!(t.warnings[0].contains("--port") && t.warnings[0].contains("--rpc-addr given"));
        let t = tr("--enable_ha --etcd_endpoints=x:1 --etcd-endpoints y:2").unwrap();
        assert_eq!(t.args, v("--etcd-endpoints y:2"));
        assert_eq!(t.warnings.len(), 1);
    }

    #[test]
    fn mooncake_flags_build_on_the_environment_addresses() {
        let b = Base {
            rpc_addr: "10.1.1.1:1".parse().unwrap(),
            http_addr: "127.0.0.1:2".parse().unwrap(),
            etcd_from_env: true,
            interface_ipv4: fake_interfaces,
        };
        let t = translate(&v("--port=3 --metrics_port=4 --enable_ha"), &ours(), &b).unwrap();
        assert_eq!(t.args, v("--rpc-addr 10.1.1.1:3 --http-addr 127.0.0.1:4"));
    }

    #[test]
    fn ignored_flags_warn_once_each() {
        let t = tr(
            "--enable_gc=false -v=1 --v 2 --logtostderr --enable_metric_reporting \
             --enable_http_metadata_server=true --http_metadata_server_port=8080 \
             --memory_allocator=cachelib --port=5",
        )
        .unwrap();
        assert_eq!(t.args, v("--rpc-addr 0.0.0.0:5"));
        assert_eq!(t.warnings.len(), 7, "{:#?}", t.warnings);
        for (w, flag) in t.warnings.iter().zip([
            "--enable_gc",
            "--v",
            "--logtostderr",
            "--enable_metric_reporting",
            "--enable_http_metadata_server",
            "--http_metadata_server_port",
            "--memory_allocator",
        ]) {
            assert!(w.starts_with(flag) && w.contains("ignored"), "{w}");
        }
    }

    #[test]
    fn etcd_endpoints_without_enable_ha_are_ignored_like_mooncake() {
        let t = tr("--etcd_endpoints=a:1").unwrap();
        assert!(t.args.is_empty());
        assert!(t.warnings[0].contains("without --enable_ha"));
        assert!(tr("--enable_ha=false --etcd_endpoints=a:1")
            .unwrap()
            .args
            .is_empty());
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&str, FlagError)] = &[
            (
                "--enable_warp_drive",
                FlagError::Unknown("--enable_warp_drive".into()),
            ),
            ("-rpc-addr=1", FlagError::Unknown("-rpc-addr=1".into())),
            ("--port", FlagError::MissingValue("--port".into())),
            ("--port=70000", bad("--port", "70000", "a port 0-65535")),
            (
                "--default_kv_lease_ttl=1d",
                bad(
                    "--default_kv_lease_ttl",
                    "1d",
                    "milliseconds, or a number with ms/s/m/h",
                ),
            ),
            (
                "--default_kv_soft_pin_ttl=h",
                bad(
                    "--default_kv_soft_pin_ttl",
                    "h",
                    "milliseconds, or a number with ms/s/m/h",
                ),
            ),
            (
                "--client_ttl=-1",
                bad("--client_ttl", "-1", "whole seconds, not negative"),
            ),
            (
                "--eviction_ratio=1.5",
                bad("--eviction_ratio", "1.5", "a ratio between 0 and 1"),
            ),
            (
                "--enable_ha=maybe",
                bad("--enable_ha", "maybe", "true or false"),
            ),
            (
                "--rpc_address=host.example",
                bad("--rpc_address", "host.example", "an IP address to bind"),
            ),
            (
                "--allocation_strategy=best",
                bad(
                    "--allocation_strategy",
                    "best",
                    "random or free_ratio_first",
                ),
            ),
            (
                "--memory_allocator=slab",
                bad("--memory_allocator", "slab", "cachelib or offset"),
            ),
            (
                "--noenable_ha=1",
                bad("--enable_ha", "--noenable_ha=1", "--noflag takes no value"),
            ),
            (
                "--cluster_id=",
                bad("--cluster_id", "", "a non-empty cluster id"),
            ),
            (
                "--rpc_interface=eth0",
                bad(
                    "--rpc_interface",
                    "eth0",
                    "a network interface with an IPv4 address",
                ),
            ),
            (
                "--enable_ha false",
                bad(
                    "--enable_ha",
                    "false",
                    "write booleans as --flag=true or --flag=false",
                ),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&tr(input).unwrap_err(), want, "{input}");
        }
        for input in ["--enable_ha", "--enable_ha --etcd_endpoints=;"] {
            assert_eq!(
                tr(input).unwrap_err(),
                FlagError::Requires {
                    flag: "--enable_ha",
                    needs: "--etcd_endpoints (host:port, ';' separated)"
                },
                "{input}"
            );
        }
        for input in [
            "--enable_offload",
            "--enable_cxl=true",
            "--ha_backend_type=redis",
            "--flagfile=f",
            "--allocation_strategy=cxl",
            "--dynamic_replication_mode=enforce",
            "--enable_kv_events",
            "--enable_multi_tenants=true",
        ] {
            match tr(input) {
                Err(FlagError::Unsupported { flag, .. }) => {
                    assert!(input.starts_with(&flag), "{input}: {flag}")
                }
                other => panic!("{input}: {other:?}"),
            }
        }
        // Error text names the flag.
        let msg = tr("--enable_warp_drive=true").unwrap_err().to_string();
        assert!(msg.contains("--enable_warp_drive"), "{msg}");
    }

    #[test]
    fn config_path_is_returned_last_one_winning() {
        assert_eq!(tr("--port=1").unwrap().config_path, None);
        let t = tr("--config_path=/a.json --port=1 -config_path /b.json").unwrap();
        assert_eq!(t.config_path.as_deref(), Some("/b.json"));
        assert_eq!(t.args, v("--rpc-addr 0.0.0.0:1"));
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(tr("--config_path=").unwrap().config_path, None);
        assert_eq!(
            tr("--config_path").unwrap_err(),
            FlagError::MissingValue("--config_path".into())
        );
    }

    #[test]
    fn takes_value_follows_the_table() {
        assert_eq!(takes_value("rpc_port"), Some(true));
        assert_eq!(takes_value("enable_ha"), Some(false));
        assert_eq!(takes_value("rpc-addr"), None);
        assert_eq!(takes_value("client_live_ttl_sec"), None);
    }

    #[test]
    fn double_dash_ends_translation() {
        assert_eq!(
            args("--port=1 -- --port=2"),
            v("--rpc-addr 0.0.0.0:1 -- --port=2")
        );
    }

    #[test]
    fn endpoint_lists_split_on_both_separators() {
        assert_eq!(split_endpoints("a:1;b:2,c:3; "), v("a:1 b:2 c:3"));
        assert!(split_endpoints(";,").is_empty());
    }
}
