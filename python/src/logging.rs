//! Log output of the Python module: the Rust crates log through `tracing`, and without a
//! subscriber every line (connect failures, remounts, fallbacks) would be dropped. At import
//! the module installs one writing to stderr, as Mooncake's glog does.
//!
//! The filter comes from `RUST_LOG` when set (full `tracing` directives), else from
//! Mooncake's `MC_LOG_LEVEL` (`TRACE`, `INFO`, `WARNING`, `ERROR`; `DEBUG` too), else `warn`.
//! A process that already installed a global subscriber (a Rust application embedding
//! Python) keeps its own.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The crates of this project: `MC_LOG_LEVEL` sets their level; other crates' (tokio, the
/// etcd client) never go below `warn`, so `INFO` does not print their chatter.
const OWN_CRATES: [&str; 5] = [
    "mooncake_rs",
    "store_client",
    "transfer_engine",
    "mooncake_master",
    "mooncake_sys",
];

/// The `tracing` level named by a `MC_LOG_LEVEL` value (case-insensitive), `None` if the value
/// is not one.
fn mooncake_level(value: &str) -> Option<&'static str> {
    match value.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Some("trace"),
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARNING" | "WARN" => Some("warn"),
        "ERROR" | "FATAL" => Some("error"),
        _ => None,
    }
}

/// Filter directives for our crates at `level`, other crates at `level` or `warn`, whichever
/// says less.
fn directives(level: &str) -> String {
    let others = if level == "error" { "error" } else { "warn" };
    let mut d = others.to_string();
    for krate in OWN_CRATES {
        d.push_str(&format!(",{krate}={level}"));
    }
    d
}

/// Installs the stderr subscriber unless the process has one; called once at module import.
pub(crate) fn init() {
    let mut unknown = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::new(v),
        _ => {
            let level = match std::env::var("MC_LOG_LEVEL") {
                Ok(v) => mooncake_level(&v).unwrap_or_else(|| {
                    unknown = Some(v);
                    "warn"
                }),
                Err(_) => "warn",
            };
            EnvFilter::new(directives(level))
        }
    };
    let installed = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init()
        .is_ok();
    if let (true, Some(v)) = (installed, unknown) {
        tracing::warn!(
            value = %v,
            "MC_LOG_LEVEL not understood (TRACE, DEBUG, INFO, WARNING or ERROR); logging at WARNING"
        );
    }
}
