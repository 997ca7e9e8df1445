//! The `mooncake_client` pool-holder daemon as a real process: started with Mooncake's flag
//! spellings against an embedded master, it holds the pool that a worker without a segment
//! writes to and reads from, serves /health and /metrics, and unmounts its segment on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{master, reader, value};

/// The daemon process; killed on drop if still running.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` over plain HTTP/1.0: (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the daemon's HTTP server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (status.expect("status code"), body.to_string())
}

/// Names of the segments the master has mounted.
fn mounted(m: &mooncake_master::RunningMaster) -> Vec<String> {
    m.service()
        .expect("leader")
        .segments()
        .iter()
        .filter(|s| s.is_mounted())
        .map(|s| s.segment.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_holds_the_pool_for_segmentless_workers_and_unmounts_on_sigterm() {
    // A long client TTL: only the daemon's own unmount can take its segment away promptly.
    let m = master(Duration::from_secs(60)).await;
    let addr = m.rpc_addr().to_string();
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_mooncake_client"))
            .args([
                &format!("--master_server_address={addr}"),
                "-global_segment_size=64MB",
                "--local_buffer_size",
                "1MB",
                "--protocol=tcp",
                "--host=127.0.0.1",
                "--device_names=",
                "--metadata_server=P2PHANDSHAKE",
                "--http-addr=127.0.0.1:0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn mooncake_client"),
    );
    let mut line = String::new();
    BufReader::new(daemon.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    let segment = ready["segment"].as_str().expect("segment").to_string();
    assert_eq!(ready["size"], 64u64 << 20);
    assert_eq!(mounted(&m), vec![segment.clone()]);

    let http = ready["metrics_addr"].as_str().expect("metrics_addr");
    assert_eq!(http_get(http, "/health"), (200, "OK".into()));
    let (status, metrics) = http_get(http, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("# TYPE"), "{metrics}");

    // A worker with no segment of its own: every value lands in the daemon's segment.
    let worker = reader(&addr, false).await;
    assert!(worker.segment().is_none());
    let keys: Vec<String> = (0..8).map(|i| format!("standalone/{i}")).collect();
    let items: Vec<(String, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), value(i, 1 << 20)))
        .collect();
    for r in worker.batch_put(&items).await {
        assert_eq!(r.result, Ok(1 << 20));
    }
    let svc = m.service().unwrap();
    for k in &keys {
        let o = svc.describe_object(k).expect("object");
        assert!(o.complete);
        assert_eq!(o.replicas.len(), 1);
        assert_eq!(o.replicas[0].segment_name, segment);
    }
    assert_eq!(
        mounted(&m),
        vec![segment.clone()],
        "the worker mounted nothing"
    );
    // A new worker (the inference process restarted) reads them back.
    worker.close().await;
    drop(worker);
    let worker = reader(&addr, false).await;
    for (r, (_, want)) in worker.batch_get(&keys).await.iter().zip(&items) {
        assert_eq!(r.value(), Some(want));
    }

    // SIGTERM: the daemon unmounts before it exits (the TTL would take a minute).
    let pid = daemon.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = daemon.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(mounted(&m).is_empty(), "segment still mounted after exit");
    assert!(
        svc.describe_object(&keys[0]).is_none(),
        "its objects left the pool"
    );
    worker.close().await;
}

#[test]
fn refuses_an_unsupported_setting_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_mooncake-client"))
        .args([
            "--enable_offload=true",
            "--master_server_address=127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--enable_offload"), "{err}");
}
