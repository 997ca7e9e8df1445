//! Helpers for the multi-process tests: an embedded master in the test process and pool
//! holders as real child processes (`mooncake-bench store-holder`), all on 127.0.0.1.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use mooncake_master::service::ServiceConfig;
use mooncake_master::{MasterConfig, MasterServer, RunningMaster};
use serde::Deserialize;
use store_client::{Client, ClientConfig, Protocol};

/// What a holder prints once its segment is mounted.
#[derive(Deserialize, Debug, Clone)]
pub struct HolderInfo {
    pub segment: String,
    pub base: u64,
    pub size: u64,
}

/// A pool-holding child process; killed on drop.
pub struct Holder {
    child: Child,
    _stdin: Option<ChildStdin>,
    pub info: HolderInfo,
}

impl Holder {
    /// Starts a holder contributing `pool` bytes, pinging every `ping_ms`, reached over TCP.
    pub fn spawn(master: &str, pool: &str, ping_ms: u64) -> Holder {
        Self::spawn_with(master, pool, ping_ms, false)
    }

    /// As [`Holder::spawn`]; with `shm`, its pool is shared memory that same-host clients map.
    pub fn spawn_with(master: &str, pool: &str, ping_ms: u64, shm: bool) -> Holder {
        Self::spawn_at(master, pool, ping_ms, shm, None)
    }

    /// As [`Holder::spawn_with`], its engine listening on `listen` when given.
    pub fn spawn_at(
        master: &str,
        pool: &str,
        ping_ms: u64,
        shm: bool,
        listen: Option<std::net::SocketAddr>,
    ) -> Holder {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mooncake-bench"));
        cmd.args([
            "store-holder",
            "--master",
            master,
            "--pool-size",
            pool,
            "--protocol",
            "tcp",
        ]);
        if let Some(addr) = listen {
            cmd.args(["--listen", &addr.to_string()]);
        }
        let mut child = cmd
            .args(["--ping-ms", &ping_ms.to_string()])
            .args(["--shm", if shm { "true" } else { "false" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn holder");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("holder handshake");
        let info =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("handshake {line:?}: {e}"));
        Holder {
            child,
            _stdin: stdin,
            info,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the holder dies with its memory, no unmount.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`). After `STOP` it waits until every thread of
    /// the holder has stopped: the stop reaches running threads only when they next enter the
    /// kernel, and a test must not race a thread that still serves one more request.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{sig} failed");
        if sig == "STOP" {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.all_threads_stopped() {
                assert!(Instant::now() < deadline, "holder did not stop");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Whether every thread of the holder is in the stopped state (`T` in its stat line).
    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
        })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.signal_quiet("CONT");
        self.kill();
    }
}

impl Holder {
    fn signal_quiet(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// An embedded master with a short client TTL (so liveness paths run in seconds).
pub async fn master(client_ttl: Duration) -> RunningMaster {
    master_with(ServiceConfig {
        client_ttl,
        ..ServiceConfig::default()
    })
    .await
}

/// An embedded master with these service settings.
pub async fn master_with(service: ServiceConfig) -> RunningMaster {
    let cfg = MasterConfig {
        service,
        ..MasterConfig::default()
    };
    MasterServer::start(cfg).await.expect("start master")
}

/// A reading/writing client with no segment of its own (every access is remote, over TCP).
pub async fn reader(master: &str, auto_batch: bool) -> Client {
    reader_with(master, auto_batch, false).await
}

/// As [`reader`]; with `shm`, it maps same-host holders' shared pools.
pub async fn reader_with(master: &str, auto_batch: bool, shm: bool) -> Client {
    let mut cfg = ClientConfig::new(master)
        .protocol(Protocol::Tcp)
        .shared_memory(shm)
        .segment_size(0)
        .staging_size(16 << 20);
    cfg.ping_interval = Duration::from_millis(200);
    if auto_batch {
        cfg = cfg.auto_batch(store_client::BatchPolicyConfig::default());
    }
    Client::connect(cfg).await.expect("connect reader")
}

/// Polls `cond` every 50 ms until it holds; panics after `limit` (a liveness bound, not a
/// performance assertion).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deterministic contents of object `i`.
pub fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(131) ^ j.wrapping_mul(7)) as u8)
        .collect()
}
