//! Test harness: free ports, a real etcd server and real `mooncake-master` processes, each
//! killed when its guard drops.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Kills it now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit; its exit success.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real etcd on 127.0.0.1 with a temporary data dir.
pub struct Etcd {
    pub proc: Proc,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

/// Starts `/usr/bin/etcd`; panics (the test fails) if it is missing or does not come up.
pub async fn start_etcd() -> Etcd {
    let bin = "/usr/bin/etcd";
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: install etcd-server (Debian) to run the HA tests"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, peer) = (free_port(), free_port());
    let curl = format!("http://127.0.0.1:{client}");
    let purl = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args([
            "--data-dir",
            dir.path().to_str().expect("utf-8 temp path"),
            "--listen-client-urls",
            &curl,
            "--advertise-client-urls",
            &curl,
            "--listen-peer-urls",
            &purl,
            "--initial-advertise-peer-urls",
            &purl,
            "--initial-cluster",
            &format!("default={purl}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning etcd");
    let etcd = Etcd {
        proc: Proc {
            child,
            name: "etcd".into(),
        },
        endpoint: format!("127.0.0.1:{client}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = async {
            let mut c = mooncake_master::ha::connect(std::slice::from_ref(&etcd.endpoint))
                .await
                .ok()?;
            c.get("probe", None).await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), ok)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return etcd;
        }
        assert!(Instant::now() < deadline, "etcd did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The daemon under Mooncake's binary name (the same program as `mooncake-master`).
pub const MOONCAKE_MASTER_EXE: &str = env!("CARGO_BIN_EXE_mooncake_master");

/// Spawns the `mooncake-master` binary with `args`.
pub fn spawn_master(name: &str, args: &[String]) -> Proc {
    spawn_exe(env!("CARGO_BIN_EXE_mooncake-master"), name, args)
}

/// Spawns the executable `exe` (one of this package's binaries) with `args`.
pub fn spawn_exe(exe: &str, name: &str, args: &[String]) -> Proc {
    let child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {exe}: {e}"));
    Proc {
        child,
        name: name.into(),
    }
}

/// Runs the `mooncake-master` binary with `args` until it exits by itself (a bad flag or
/// setting): its exit code and its output, stdout (the log) then stderr (the error).
pub fn run_master_to_exit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mooncake-master"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("running mooncake-master");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `limit` with `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.0 GET: status, head (lowercased, for header lookups) and body; `None` when
/// there is no HTTP answer.
pub async fn http_response(addr: &str, path: &str) -> Option<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") {
        return None;
    }
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), body.to_string()))
}

/// The body of a plain HTTP/1.0 GET.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    http_response(addr, path).await.map(|(_, _, body)| body)
}
