//! The pool-holding client: a child process (`mooncake-bench store-holder`) that contributes
//! its segment to the pool, so that the benchmark's reads and writes cross a process boundary.
//!
//! Handshake: the child prints one JSON line (`HolderInfo`) once its segment is mounted, then
//! serves until its stdin closes (the parent exited or stopped it), unmounts and exits.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use store_client::{Client, ClientConfig};

use super::protocol_of;

/// Flags of the hidden pool-holder process.
#[derive(clap::Args, Debug)]
pub struct HolderArgs {
    /// Master address.
    #[arg(long)]
    pub master: String,
    /// Bytes of pool memory to contribute.
    #[arg(long, default_value = "1G")]
    pub pool_size: String,
    /// Transport: auto, tcp or rdma.
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// Share the pool with clients on this host (see the store command's --shm).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub shm: bool,
    /// Put the pool in the host's reserved huge pages (falls back with a warning).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub huge_pages: bool,
    /// Heartbeat period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub ping_ms: u64,
    /// Address its engine listens on (default: 127.0.0.1 and a free port).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

/// What a holder reports once its segment is mounted.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct HolderInfo {
    /// Engine segment name (`host:port`).
    pub segment: String,
    /// First address of the contributed memory, in the holder's address space.
    pub base: u64,
    /// Bytes contributed.
    pub size: u64,
}

/// Runs the pool-holder process.
pub fn run_holder(args: HolderArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let size = super::sizes::parse_size(&args.pool_size)?;
        let mut cfg = ClientConfig::new(&args.master)
            .protocol(protocol_of(&args.protocol)?)
            .shared_memory(args.shm)
            .reserved_huge_pages(args.huge_pages)
            .segment_size(size)
            .staging_size(1 << 20);
        cfg.ping_interval = std::time::Duration::from_millis(args.ping_ms.max(1));
        if let Some(addr) = args.listen {
            cfg.engine.listen_addr = addr;
        }
        let client = Client::connect(cfg)
            .await
            .context("holder: connecting to the master")?;
        let seg = client.segment().context("holder has no segment")?;
        let info = HolderInfo {
            segment: seg.name.clone(),
            base: seg.base,
            size: seg.size,
        };
        println!("{}", serde_json::to_string(&info)?);
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        client.close().await;
        anyhow::Ok(())
    })
}

/// A running holder child; stopped (stdin closed, then killed if needed) on drop.
pub struct HolderProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// What it reported.
    pub info: HolderInfo,
}

impl HolderProcess {
    /// Starts `mooncake-bench store-holder` and waits for its segment to be mounted.
    pub fn spawn(
        master: &str,
        pool_size: u64,
        protocol: &str,
        shm: bool,
        huge_pages: bool,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut child = Command::new(exe)
            .args([
                "store-holder",
                "--master",
                master,
                "--pool-size",
                &pool_size.to_string(),
                "--protocol",
                protocol,
                "--shm",
                if shm { "true" } else { "false" },
                "--huge-pages",
                if huge_pages { "true" } else { "false" },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning the pool holder")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("holder stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the holder's handshake")?;
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the pool holder exited before mounting its segment (see its stderr above)");
        }
        let info: HolderInfo = serde_json::from_str(line.trim())
            .with_context(|| format!("holder handshake {line:?}"))?;
        Ok(Self { child, stdin, info })
    }

    /// Kills the holder at once (to test or show replica fallback).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HolderProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill();
    }
}
