//! The command line of `mooncake-client`: our kebab-case flags, with the flag names of
//! Mooncake's C++ `mooncake_client` (`--master_server_address`, `--global_segment_size=4 GB`,
//! `--host`, `--protocol`, `--device_names`, ...) as aliases, and gflags spellings
//! (`-flag=value`, `--noflag`) rewritten before clap parses. Mooncake flags that have no
//! meaning here are accepted; those that change behaviour say so once (see [`Args::notes`]).

use std::net::SocketAddr;

use anyhow::bail;
use clap::{ArgAction, Parser};
use store_client::{ClientConfig, Protocol};

/// Staging buffer when `--local-buffer-size` is 0: the daemon makes no copying calls itself.
const MIN_STAGING: u64 = 1 << 20;

/// Boolean flags, which gflags also spells `--noNAME`.
const BOOL_FLAGS: &[&str] = &[
    "reserved-huge-pages",
    "shared-memory",
    "enable_http_server",
    "enable-http-server",
    "enable_offload",
    "start_offload_rpc_server",
];

/// See the module documentation.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mooncake-client",
    version,
    about = "Holds a segment of the mooncake-rs KV-cache pool until SIGTERM/SIGINT/SIGHUP, \
             then unmounts it",
    after_help = "Once the segment is mounted, one JSON line goes to stdout: \
                  {\"segment\":NAME,\"size\":BYTES,\"metrics_addr\":ADDR|null}. \
                  Mooncake's mooncake_client spellings work too (-flag=value, --noflag)."
)]
pub struct Args {
    /// Master address: `host:port`, or `etcd://h1:2379,h2:2379[/cluster-id]`.
    #[arg(
        long,
        visible_alias = "master_server_address",
        default_value = "127.0.0.1:50051"
    )]
    pub master: String,
    /// Pool memory this daemon contributes (`4 GB`, `64MB`, `1.5G`, `1048576`).
    #[arg(
        long,
        visible_alias = "global_segment_size",
        default_value = "4 GB",
        value_parser = parse_byte_size
    )]
    pub segment_size: u64,
    /// Staging buffer for copying calls (0: the 1 MiB minimum; the daemon makes none).
    #[arg(
        long,
        visible_alias = "local_buffer_size",
        default_value = "0",
        value_parser = parse_byte_size
    )]
    pub local_buffer_size: u64,
    /// Where peers reach this daemon's engine: `host`, `ip`, `host:port` or `[v6]:port` (no
    /// port: any free one). Must be routable from the peers; 0.0.0.0 is refused.
    #[arg(long, visible_alias = "local-hostname", default_value = "127.0.0.1")]
    pub host: String,
    /// Transport: tcp, rdma or auto.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "rdma", "auto"])]
    pub protocol: String,
    /// RDMA devices, comma-separated (`mlx5_0,mlx5_1`; empty: all).
    #[arg(long, visible_alias = "device_names", default_value = "")]
    pub rdma_devices: String,
    /// Put the segment in the host's reserved huge pages (falls back with a warning).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set)]
    pub reserved_huge_pages: bool,
    /// Same-host clients map this daemon's segment instead of going through the network.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = ArgAction::Set)]
    pub shared_memory: bool,
    /// Serve /metrics and /health on this address (port 0: any free one).
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// Mooncake's switch for the client HTTP server: serve it on 0.0.0.0:--http_port (unless
    /// --http-addr is given).
    #[arg(long = "enable_http_server", visible_alias = "enable-http-server", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set)]
    pub enable_http_server: bool,
    /// Port of the client HTTP server under --enable_http_server.
    #[arg(
        long = "http_port",
        visible_alias = "http-port",
        default_value_t = 9003
    )]
    pub http_port: u16,
    /// Mooncake's metadata server: unused (engines exchange descriptors peer to peer).
    #[arg(long, visible_alias = "metadata_server", hide = true)]
    pub metadata_server: Option<String>,
    /// Mooncake's RPC port for dummy clients: not served here.
    #[arg(long, hide = true)]
    pub port: Option<u16>,
    /// Mooncake's RPC threads for dummy clients: unused.
    #[arg(long, hide = true)]
    pub threads: Option<u32>,
    /// Mooncake's tenant: only the default one exists here.
    #[arg(long = "tenant_id", hide = true)]
    pub tenant_id: Option<String>,
    /// Mooncake's SSD offload: not supported.
    #[arg(long = "enable_offload", hide = true, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set)]
    pub enable_offload: bool,
    /// Mooncake's offload RPC server: unused.
    #[arg(long = "start_offload_rpc_server", hide = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub start_offload_rpc_server: Option<bool>,
    /// Mooncake's graceful unmount: the segment is unmounted at once here.
    #[arg(long = "graceful_unmount_seconds", hide = true)]
    pub graceful_unmount_seconds: Option<u32>,
}

impl Args {
    /// Parses a full command line (program name first), gflags spellings included.
    pub fn parse_from_line(args: impl IntoIterator<Item = String>) -> Result<Args, clap::Error> {
        Args::try_parse_from(normalize(args.into_iter().collect()))
    }

    /// What the given Mooncake-only flags change, one line each (logged as warnings); an error
    /// for a feature that is missing here.
    pub fn notes(&self) -> anyhow::Result<Vec<String>> {
        if self.enable_offload {
            bail!("--enable_offload: mooncake-rs has no SSD offload tier");
        }
        let mut notes = Vec::new();
        if let Some(p) = self.port {
            notes.push(format!(
                "--port={p}: no dummy-client RPC is served; run workers as real clients with \
                 global_segment_size=0"
            ));
        }
        if let Some(t) = self.tenant_id.as_deref().filter(|t| *t != "default") {
            notes.push(format!(
                "--tenant_id={t}: only the default tenant exists; ignored"
            ));
        }
        if let Some(s) = self.graceful_unmount_seconds.filter(|s| *s > 0) {
            notes.push(format!(
                "--graceful_unmount_seconds={s}: the segment is unmounted at once on shutdown"
            ));
        }
        Ok(notes)
    }

    /// Where the client HTTP server listens, if it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http_addr.or_else(|| {
            self.enable_http_server
                .then(|| SocketAddr::from(([0, 0, 0, 0], self.http_port)))
        })
    }

    /// The store client's configuration.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        if self.segment_size == 0 {
            bail!("--global_segment_size must be > 0: the daemon holds a segment of the pool");
        }
        let protocol = match self.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "rdma" => Protocol::Rdma,
            _ => Protocol::Auto,
        };
        let mut cfg = ClientConfig::new(&self.master)
            .segment_size(self.segment_size)
            .staging_size(self.local_buffer_size.max(MIN_STAGING))
            .protocol(protocol)
            .shared_memory(self.shared_memory)
            .reserved_huge_pages(self.reserved_huge_pages)
            .rdma_devices(&self.rdma_devices)
            .local_hostname(&self.host)?;
        if cfg.engine.listen_addr.ip().is_unspecified() {
            bail!(
                "--host {:?}: peers reach this daemon's segment at that address, so give this \
                 host's routable IP or hostname",
                self.host
            );
        }
        cfg.metrics_addr = self.metrics_addr();
        Ok(cfg)
    }
}

/// Rewrites gflags spellings into clap's: `-name[=v]` (one dash, a long name) becomes
/// `--name[=v]`, and `--noNAME` of a boolean flag `--NAME=false`. Stops at `--`.
fn normalize(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.into_iter();
    if let Some(program) = rest.next() {
        out.push(program);
    }
    for arg in rest.by_ref() {
        if arg == "--" {
            out.push(arg);
            break;
        }
        let long = match arg.strip_prefix('-') {
            Some(r) if !r.starts_with('-') && r.split('=').next().is_some_and(|n| n.len() > 1) => {
                format!("-{arg}")
            }
            _ => arg,
        };
        let negated = long
            .strip_prefix("--no")
            .filter(|name| BOOL_FLAGS.contains(name));
        out.push(match negated {
            Some(name) => format!("--{name}=false"),
            None => long,
        });
    }
    out.extend(rest);
    out
}

/// A byte size as Mooncake writes them: a number (decimals allowed), optional spaces, and a
/// binary unit `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB` or `T`/`TB`/`TiB` (any
/// case). Unlike Mooncake, which reads anything else as 0, anything else is an error.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: expected a number and a unit, e.g. `4 GB`"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("size {s:?}: unknown unit {:?}", unit.trim())),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Args {
        let raw = std::iter::once("mooncake-client".to_string())
            .chain(line.split_whitespace().map(str::to_string));
        Args::parse_from_line(raw).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn sizes_read_as_mooncake_writes_them() {
        assert_eq!(parse_byte_size("4 GB"), Ok(4 << 30));
        assert_eq!(parse_byte_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_byte_size("16mib"), Ok(16 << 20));
        assert_eq!(parse_byte_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_byte_size(" 2 t "), Ok(2 << 40));
        assert!(parse_byte_size("4 XB").is_err());
        assert!(parse_byte_size("GB").is_err());
        assert!(parse_byte_size("").is_err());
        assert!(parse_byte_size("99999999999 TB").is_err());
    }

    #[test]
    fn mooncake_command_lines_parse() {
        let a = parse(
            "--master_server_address=10.0.0.1:50051 -global_segment_size=64MB \
             --local_buffer_size 16MB --host=127.0.0.1 --protocol=rdma \
             --device_names=mlx5_0,mlx5_1 --metadata_server=P2PHANDSHAKE \
             --enable_http_server --http_port=9300 --noshared-memory",
        );
        assert_eq!(a.master, "10.0.0.1:50051");
        assert_eq!((a.segment_size, a.local_buffer_size), (64 << 20, 16 << 20));
        assert!(!a.shared_memory);
        assert_eq!(a.metrics_addr(), Some("0.0.0.0:9300".parse().unwrap()));
        assert!(a.notes().unwrap().is_empty());
        let cfg = a.client_config().unwrap();
        assert_eq!(cfg.master_addr, "10.0.0.1:50051");
        assert_eq!(cfg.segment_size, 64 << 20);
        assert_eq!(cfg.staging_size, 16 << 20);
        assert_eq!(cfg.engine.protocol, Protocol::Rdma);
        assert_eq!(cfg.engine.rdma.devices, vec!["mlx5_0", "mlx5_1"]);
        assert_eq!(cfg.engine.listen_addr, "127.0.0.1:0".parse().unwrap());
        assert!(!cfg.engine.shared_memory);
        assert_eq!(cfg.metrics_addr, Some("0.0.0.0:9300".parse().unwrap()));
    }

    #[test]
    fn our_flags_parse_and_ours_win_over_the_http_switch() {
        let a = parse(
            "--master etcd://a:2379,b:2379 --segment-size 1G --host 127.0.0.1:17000 \
             --http-addr 127.0.0.1:0 --enable_http_server=true --reserved-huge-pages",
        );
        assert_eq!(a.metrics_addr(), Some("127.0.0.1:0".parse().unwrap()));
        assert!(a.reserved_huge_pages);
        let cfg = a.client_config().unwrap();
        assert_eq!(cfg.staging_size, MIN_STAGING);
        assert_eq!(cfg.engine.listen_addr, "127.0.0.1:17000".parse().unwrap());
        assert_eq!(cfg.engine.protocol, Protocol::Tcp);
        assert!(parse("").metrics_addr().is_none(), "HTTP off by default");
        assert_eq!(parse("").segment_size, 4 << 30, "Mooncake's default");
    }

    #[test]
    fn bad_and_unsupported_settings_are_refused_with_the_flag_named() {
        let err = |line: &str| {
            let raw = std::iter::once("mooncake-client".to_string())
                .chain(line.split_whitespace().map(str::to_string));
            match Args::parse_from_line(raw) {
                Err(e) => e.to_string(),
                Ok(a) => match a.notes().and_then(|_| a.client_config()) {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("{line} was accepted"),
                },
            }
        };
        assert!(err("--global_segment_size=4XB").contains("unknown unit"));
        assert!(err("--protocol=efa").contains("efa"));
        assert!(err("--enable_offload").contains("offload"));
        assert!(err("--host=0.0.0.0").contains("routable"));
        assert!(err("--global_segment_size=0").contains("> 0"));
        assert!(err("--no_such_flag=1").contains("no_such_flag"));
        let noted = parse("--port=50052 --tenant_id=t1 --graceful_unmount_seconds=5 --threads 4");
        assert_eq!(noted.notes().unwrap().len(), 3);
    }

    #[test]
    fn gflags_spellings_are_rewritten_up_to_the_double_dash() {
        let v = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            normalize(v(
                "p -host=a -h --noenable_http_server -nostart_offload_rpc_server -- -x=1"
            )),
            v("p --host=a -h --enable_http_server=false --start_offload_rpc_server=false -- -x=1")
        );
        // Not a boolean: left for clap to refuse.
        assert_eq!(normalize(v("p --nohost")), v("p --nohost"));
    }
}
