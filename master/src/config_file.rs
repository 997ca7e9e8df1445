//! Mooncake's master config file: `--config_path=FILE`.
//!
//! Kvcache-ai's `mooncake_master` reads a YAML (`.yaml`/`.yml`, as its shipped
//! `conf/master.yaml`) or JSON (`.json`) file whose top-level keys are its flag names
//! (`rpc_port: 50051`, `"enable_ha": true`, `etcd_endpoints: "a:2379;b:2379"`, ...); the one
//! exception is `client_live_ttl_sec`, its older file name for `--client_ttl`. This module turns
//! such a file into the same Mooncake flags ([`to_flags`]) and translates them through
//! [`mooncake_flags`]'s table, so each key has exactly the effect of its flag. YAML is read by
//! [`flat_yaml`]: flat `key: value` lines, all a master file needs; other paths are JSON.
//!
//! Precedence, as in Mooncake (`LoadConfigFromCmdline` overrides a file setting only with a
//! flag given on the command line): command line, then the file, then the `MOONCAKE_MASTER_*`
//! environment, then defaults. Our own flags (`--rpc-addr`, ...) still beat Mooncake ones.
//!
//! Stricter than Mooncake, which ignores what it does not read: an unknown key, a nested
//! object, an array or `null` is an error naming the key; so is a file naming another config
//! file. Values may be strings as well as numbers and booleans (`default_kv_lease_ttl: 60s`
//! works as on the command line); `port` and `max_threads`, flags Mooncake's file loader
//! skips, act as on the command line.

use serde_json::{Map, Number, Value};

use super::flat_yaml::{self, YamlError};
use super::mooncake_flags::{self, Base, FlagError, OurFlags, Translated};

/// File keys that are not flag names, and the flag each stands for.
const FILE_ALIASES: &[(&str, &str)] = &[("client_live_ttl_sec", "client_ttl")];

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The command line itself is bad.
    #[error(transparent)]
    CommandLine(#[from] FlagError),
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// What reading it said.
        source: std::io::Error,
    },
    /// A YAML file that is not flat `key: value` lines.
    #[error("config file {path}: {source}")]
    Yaml {
        /// The path given.
        path: String,
        /// The line and what is wrong there.
        source: YamlError,
    },
    /// Not JSON.
    #[error("config file {path}: invalid JSON: {source}")]
    Json {
        /// The path given.
        path: String,
        /// Where and why parsing stopped.
        source: serde_json::Error,
    },
    /// JSON, but not an object.
    #[error(
        "config file {path}: the top level must be a JSON object of mooncake_master flag names"
    )]
    NotAnObject {
        /// The path given.
        path: String,
    },
    /// A key that is no Mooncake master flag.
    #[error("config file {path}: unknown key {key:?}: keys are mooncake_master flag names (e.g. \"rpc_port\")")]
    UnknownKey {
        /// The path given.
        path: String,
        /// The key.
        key: String,
    },
    /// A key whose value has the wrong JSON type.
    #[error("config file {path}: key {key:?} must be {expected}, not {found}")]
    BadType {
        /// The path given.
        path: String,
        /// The key.
        key: String,
        /// What the flag takes.
        expected: &'static str,
        /// What the file holds.
        found: &'static str,
    },
    /// Two keys set the same flag.
    #[error("config file {path}: keys {first:?} and {second:?} both set --{flag}")]
    Duplicate {
        /// The path given.
        path: String,
        /// The flag.
        flag: String,
        /// One key.
        first: String,
        /// The other.
        second: String,
    },
    /// A value the flag does not accept (or a flag this daemon refuses).
    #[error("config file {path}: {source}")]
    Flag {
        /// The path given.
        path: String,
        /// The flag's error.
        source: FlagError,
    },
}

/// Translates a command line (see [`mooncake_flags::translate`]), first reading the config
/// file its `--config_path` names, whose settings apply before the command line's.
pub fn translate(
    args: &[String],
    ours: &OurFlags,
    base: &Base,
) -> Result<Translated, ConfigFileError> {
    let t = mooncake_flags::translate(args, ours, base)?;
    let Some(path) = t.config_path else {
        return Ok(t);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let from_file = to_flags(&path, &text)?;
    // Values are checked on their own so that an error names the file; a missing companion
    // (`enable_ha` without endpoints) may still come from the command line.
    match mooncake_flags::translate(&from_file, ours, base) {
        Ok(_) | Err(FlagError::Requires { .. }) => {}
        Err(source) => return Err(ConfigFileError::Flag { path, source }),
    }
    // Gflags semantics: the last occurrence wins, so the command line goes second.
    let all: Vec<String> = from_file.into_iter().chain(args.iter().cloned()).collect();
    let mut t = mooncake_flags::translate(&all, ours, base)?;
    t.config_path = Some(path);
    Ok(t)
}

/// A config file's `text` (YAML or JSON by `path`'s extension) as Mooncake command-line flags
/// (`--name=value`), keys sorted.
pub fn to_flags(path: &str, text: &str) -> Result<Vec<String>, ConfigFileError> {
    let lower = path.to_ascii_lowercase();
    let map = if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        flat_yaml::parse(text).map_err(|source| ConfigFileError::Yaml {
            path: path.into(),
            source,
        })?
    } else {
        let root: Value = serde_json::from_str(text).map_err(|source| ConfigFileError::Json {
            path: path.into(),
            source,
        })?;
        let Value::Object(map) = root else {
            return Err(ConfigFileError::NotAnObject { path: path.into() });
        };
        map
    };
    flags_of(path, &map)
}

fn flags_of(path: &str, map: &Map<String, Value>) -> Result<Vec<String>, ConfigFileError> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    let mut out = Vec::with_capacity(map.len());
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in entries {
        let flag = FILE_ALIASES
            .iter()
            .find(|(alias, _)| alias == key)
            .map_or(key.as_str(), |&(_, flag)| flag);
        let takes_value = match flag {
            // A file naming a file: Mooncake ignores it; here it is surely a mistake.
            "config_path" | "flagfile" => None,
            f => mooncake_flags::takes_value(f),
        };
        let Some(takes_value) = takes_value else {
            return Err(ConfigFileError::UnknownKey {
                path: path.into(),
                key: key.clone(),
            });
        };
        if let Some(&(first, _)) = seen.iter().find(|(_, f)| *f == flag) {
            return Err(ConfigFileError::Duplicate {
                path: path.into(),
                flag: flag.into(),
                first: first.into(),
                second: key.clone(),
            });
        }
        seen.push((key, flag));
        let text = value_text(value, takes_value).map_err(|found| ConfigFileError::BadType {
            path: path.into(),
            key: key.clone(),
            expected: if takes_value {
                "a string or a number"
            } else {
                "true or false"
            },
            found,
        })?;
        out.push(format!("--{flag}={text}"));
    }
    Ok(out)
}

/// A JSON value as the flag's command-line text; the JSON type's name when it cannot be one.
fn value_text(value: &Value, takes_value: bool) -> Result<String, &'static str> {
    match value {
        // YAML 1.1's on/off, which yaml-cpp reads as booleans (gflags has no such spelling).
        Value::String(s) if !takes_value && s.eq_ignore_ascii_case("on") => Ok("true".into()),
        Value::String(s) if !takes_value && s.eq_ignore_ascii_case("off") => Ok("false".into()),
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(number_text(n)),
        Value::Bool(b) if !takes_value => Ok(b.to_string()),
        Value::Bool(_) => Err("a boolean"),
        Value::Null => Err("null"),
        Value::Array(_) => Err("an array"),
        Value::Object(_) => Err("an object"),
    }
}

/// Integral numbers without a fraction (`50051.0` is the port 50051, as jsoncpp reads it).
fn number_text(n: &Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
        _ => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn ours() -> OurFlags {
        let mut f = OurFlags::default();
        for v in ["rpc-addr", "http-addr", "lease-ttl-ms", "client-ttl-ms"] {
            f.with_value.insert(v.into());
        }
        f.switches.insert("no-http".into());
        f
    }

    fn base() -> Base {
        Base {
            rpc_addr: "0.0.0.0:50051".parse().unwrap(),
            http_addr: "0.0.0.0:9003".parse().unwrap(),
            etcd_from_env: false,
            interface_ipv4: mooncake_flags::tests::fake_interfaces,
        }
    }

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn file(text: &str, suffix: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn with_file(text: &str, line: &str) -> Result<Translated, ConfigFileError> {
        let f = file(text, ".json");
        let mut args = vec![format!("--config_path={}", f.path().display())];
        args.extend(v(line));
        translate(&args, &ours(), &base())
    }

    fn with_file_ext(text: &str, ext: &str) -> Result<Translated, ConfigFileError> {
        let f = file(text, ext);
        translate(
            &[format!("--config_path={}", f.path().display())],
            &ours(),
            &base(),
        )
    }

    #[test]
    fn keys_become_their_flags() {
        let flags = to_flags(
            "f.json",
            r#"{"rpc_port": 50052, "enable_ha": true, "eviction_ratio": 0.1,
                "etcd_endpoints": "a:1;b:2", "client_live_ttl_sec": 20,
                "default_kv_lease_ttl": "60s", "enable_gc": false, "metrics_port": 9100.0}"#,
        )
        .unwrap();
        assert_eq!(
            flags,
            v(
                "--client_ttl=20 --default_kv_lease_ttl=60s --enable_gc=false \
               --enable_ha=true --etcd_endpoints=a:1;b:2 --eviction_ratio=0.1 \
               --metrics_port=9100 --rpc_port=50052"
            )
        );
    }

    #[test]
    fn the_file_configures_like_the_command_line() {
        let t = with_file(
            r#"{"rpc_port": 7001, "metrics_port": 7002, "default_kv_lease_ttl": 5000,
                "client_live_ttl_sec": 3, "enable_ha": true, "etcd_endpoints": "e:1;f:2"}"#,
            "",
        )
        .unwrap();
        assert_eq!(
            t.args,
            v(
                "--rpc-addr 0.0.0.0:7001 --http-addr 0.0.0.0:7002 --client-ttl-ms 3000 \
               --lease-ttl-ms 5000 --etcd-endpoints e:1,f:2"
            )
        );
        assert!(t.config_path.is_some());
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let t = with_file(
            r#"{"rpc_port": 7001, "metrics_port": 7002, "default_kv_lease_ttl": 5000}"#,
            "--metrics_port=8002 --lease-ttl-ms 9",
        )
        .unwrap();
        assert_eq!(
            t.args,
            v("--lease-ttl-ms 9 --rpc-addr 0.0.0.0:7001 --http-addr 0.0.0.0:8002")
        );
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        assert!(t.warnings[0].contains("--default_kv_lease_ttl ignored"));
        // Mooncake: a command-line --rpc_port beats the file's, the file's beats --port.
        let t = with_file(r#"{"rpc_port": 7001}"#, "--rpc_port=7003").unwrap();
        assert_eq!(t.args, v("--rpc-addr 0.0.0.0:7003"));
        let t = with_file(r#"{"rpc_port": 7001}"#, "--port=7004").unwrap();
        assert_eq!(t.args, v("--rpc-addr 0.0.0.0:7001"));
        // enable_ha in the file, endpoints on the command line.
        let t = with_file(r#"{"enable_ha": true}"#, "--etcd_endpoints=x:1").unwrap();
        assert_eq!(t.args, v("--etcd-endpoints x:1"));
    }

    #[test]
    fn bad_files_are_clear_errors_naming_path_and_key() {
        let cases: &[(&str, &str)] = &[
            ("{\"rpc_port\": ", "invalid JSON"),
            ("[1, 2]", "top level must be a JSON object"),
            (r#"{"rpc_prot": 1}"#, "unknown key \"rpc_prot\""),
            (r#"{"lease_ttl_ms": 1}"#, "unknown key \"lease_ttl_ms\""),
            (
                r#"{"config_path": "x.json"}"#,
                "unknown key \"config_path\"",
            ),
            (
                r#"{"rpc_port": [1]}"#,
                "key \"rpc_port\" must be a string or a number, not an array",
            ),
            (
                r#"{"enable_ha": "maybe"}"#,
                "flag --enable_ha: invalid value \"maybe\"",
            ),
            (
                r#"{"enable_ha": 1.5}"#,
                "flag --enable_ha: invalid value \"1.5\"",
            ),
            (
                r#"{"rpc_port": true}"#,
                "key \"rpc_port\" must be a string or a number, not a boolean",
            ),
            (
                r#"{"cluster_id": null}"#,
                "key \"cluster_id\" must be a string or a number, not null",
            ),
            (r#"{"master": {"rpc_port": 1}}"#, "unknown key \"master\""),
            (
                r#"{"rpc_port": 70000}"#,
                "flag --rpc_port: invalid value \"70000\" (a port 0-65535)",
            ),
            (
                r#"{"rpc_port": 1.5}"#,
                "flag --rpc_port: invalid value \"1.5\"",
            ),
            (
                r#"{"client_ttl": 1, "client_live_ttl_sec": 2}"#,
                "keys \"client_live_ttl_sec\" and \"client_ttl\" both set --client_ttl",
            ),
            (
                r#"{"enable_offload": true}"#,
                "--enable_offload is not supported",
            ),
        ];
        for (text, want) in cases {
            let f = file(text, ".json");
            let path = f.path().display().to_string();
            let args = vec![format!("--config_path={path}")];
            let e = translate(&args, &ours(), &base()).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.starts_with(&format!("config file {path}: ")), "{e}");
        }
        let e = translate(&v("--config_path=/nonexistent/m.json"), &ours(), &base())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file /nonexistent/m.json: No such file"),
            "{e}"
        );
        let f = file("rpc_port: 1\nmaster:\n  rpc_port: 2\n", ".yaml");
        let path = f.path().display().to_string();
        let e = translate(&[format!("--config_path={path}")], &ours(), &base())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "config file {path}: YAML line 3: an indented line"
            )),
            "{e}"
        );
    }

    #[test]
    fn yaml_files_read_like_json_ones() {
        let yaml = "# Mooncake's conf/master.yaml style\n\
            rpc_port: 7001\n\
            rpc_address: \"127.0.0.1\"\n\
            rpc_interface: \"\"\n\
            metrics_port: 7002\n\
            default_kv_lease_ttl: 5000\n\
            eviction_high_watermark_ratio: 1.0\n\
            enable_ha: false\n\
            etcd_endpoints: \"http://localhost:2379\"\n\
            client_active_ttl_sec: 60\n\
            client_suspicion_ttl_sec: 60\n\
            dynamic_replication_mode: \"off\"\n\
            enable_multi_tenants: false\n\
            tenant_eviction_high_watermark_ratio: 0.9\n";
        let t = with_file_ext(yaml, ".yaml").unwrap();
        assert_eq!(
            t.args,
            v(
                "--rpc-addr 127.0.0.1:7001 --http-addr 0.0.0.0:7002 --client-ttl-ms 60000 \
               --eviction-high-watermark 1.0 --lease-ttl-ms 5000"
            )
        );
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains("--etcd_endpoints ignored without --enable_ha")),
            "{:?}",
            t.warnings
        );
        let t = with_file_ext(
            "enable_ha: On\netcd_endpoints: a:1\nenable_gc: off\n",
            ".yml",
        );
        assert_eq!(t.unwrap().args, v("--etcd-endpoints a:1"));
        let e = with_file_ext("enable_ha: maybe\n", ".yml").unwrap_err();
        assert!(
            e.to_string()
                .contains("flag --enable_ha: invalid value \"maybe\""),
            "{e}"
        );
        let e = with_file_ext("cluster_id: ~\n", ".yaml").unwrap_err();
        assert!(
            e.to_string()
                .contains("key \"cluster_id\" must be a string or a number, not null"),
            "{e}"
        );
    }

    #[test]
    fn every_key_of_mooncakes_shipped_master_yaml_is_understood() {
        // The keys of Mooncake's conf/master.yaml, with their shipped kind of value.
        let yaml = "enable_metric_reporting: true\nmetrics_port: 9003\nrpc_port: 50051\n\
            rpc_thread_num: 16\nrpc_address: \"0.0.0.0\"\nrpc_interface: \"\"\n\
            rpc_conn_timeout_seconds: 0\nrpc_enable_tcp_no_delay: true\n\
            default_kv_lease_ttl: 10000\ndefault_kv_soft_pin_ttl: 1800000\n\
            max_kv_soft_pin_ttl: 86400000\nallow_evict_soft_pinned_objects: true\n\
            eviction_ratio: 0.1\neviction_high_watermark_ratio: 1.0\n\
            tenant_eviction_high_watermark_ratio: 0.9\ndynamic_replication_mode: \"off\"\n\
            dynamic_replication_heat_window_seconds: 10\n\
            dynamic_replication_admission_qps_threshold: 0.8\n\
            dynamic_replication_max_memory_replicas: 2\nenable_multi_tenants: false\n\
            tenant_quota_connector_type: \"file\"\ntenant_quota_connector_uri: \"\"\n\
            enable_ha: false\netcd_endpoints: \"http://localhost:2379\"\nroot_fs_dir: \"\"\n\
            cluster_id: \"mooncake_cluster\"\nmemory_allocator: \"offset\"\n\
            client_active_ttl_sec: 60\nclient_suspicion_ttl_sec: 60\nenable_oplog: false\n\
            weight_management_oplog_capability_confirmed: false\n\
            enable_oplog_snapshot: false\nsnapshot_chunk_object_count: 1000000\n\
            oplog_poll_interval_ms: 1000\nbatch_oplog_retry_timeout_sec: 180\n\
            enable_http_metadata_server: false\nhttp_metadata_server_host: \"0.0.0.0\"\n\
            http_metadata_server_port: 8080\n";
        let t = with_file_ext(yaml, ".yaml").unwrap();
        assert_eq!(
            t.args,
            v(
                "--rpc-addr 0.0.0.0:50051 --http-addr 0.0.0.0:9003 --client-ttl-ms 60000 \
                 --cluster-id mooncake_cluster --eviction-high-watermark 1.0 --eviction-ratio 0.1 \
                 --lease-ttl-ms 10000 --soft-pin-ttl-ms 1800000 --threads 16"
            )
        );
    }

    #[test]
    fn enable_ha_without_endpoints_anywhere_is_refused() {
        let e = with_file(r#"{"enable_ha": true}"#, "").unwrap_err();
        assert!(
            matches!(e, ConfigFileError::CommandLine(FlagError::Requires { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn without_config_path_nothing_is_read() {
        let t = translate(&v("--port=5"), &ours(), &base()).unwrap();
        assert_eq!((t.args, t.config_path), (v("--rpc-addr 0.0.0.0:5"), None));
    }
}
