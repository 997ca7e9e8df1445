//! The etcd metadata store against a real `etcd` server started by the test.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{registered, write_whole_and_check};
use transfer_engine::metadata::{EtcdMetadataStore, MetadataStore};
use transfer_engine::{
    Engine, EngineConfig, MetadataConfig, Protocol, SegmentDescriptor, TransferError,
};

const ETCD: &str = "/usr/bin/etcd";

struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_etcd() -> Etcd {
    assert!(
        std::path::Path::new(ETCD).exists(),
        "{ETCD} is missing: install the Debian package etcd-server (apt-get install etcd-server)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(ETCD)
        .args([
            "--name",
            "te-test",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("te-test={peer_url}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let mut etcd = Etcd {
        child,
        url,
        _dir: dir,
    };
    // Wait for the client port, then for a working request.
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(
            etcd.child.try_wait().unwrap().is_none(),
            "etcd exited during start-up"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    loop {
        let probe = EtcdMetadataStore::connect(
            std::slice::from_ref(&etcd.url),
            "probe/",
            Duration::from_secs(2),
        )
        .and_then(|s| s.remove("x"));
        match probe {
            Ok(()) => break,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd not ready: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd
}

#[test]
fn etcd_store_publishes_fetches_and_removes() {
    let etcd = start_etcd();
    let store = EtcdMetadataStore::connect(
        std::slice::from_ref(&etcd.url),
        "mc/a/",
        Duration::from_secs(5),
    )
    .unwrap();
    let other = EtcdMetadataStore::connect(
        std::slice::from_ref(&etcd.url),
        "mc/b/",
        Duration::from_secs(5),
    )
    .unwrap();
    let d = SegmentDescriptor {
        name: "seg-1".into(),
        tcp_addr: "127.0.0.1:4000".parse().unwrap(),
        incarnation: 1,
        buffers: vec![],
        transports: Default::default(),
    };
    store.publish(&d).unwrap();
    assert_eq!(store.fetch("seg-1").unwrap(), d);
    assert!(
        matches!(
            other.fetch("seg-1"),
            Err(TransferError::SegmentNotFound { .. })
        ),
        "another prefix does not see it"
    );
    store.remove("seg-1").unwrap();
    assert!(matches!(
        store.fetch("seg-1"),
        Err(TransferError::SegmentNotFound { .. })
    ));
}

#[test]
fn engines_find_each_other_through_etcd() {
    let etcd = start_etcd();
    let config = |name: &str| EngineConfig {
        name: Some(name.to_string()),
        metadata: MetadataConfig::Etcd {
            endpoints: vec![etcd.url.clone()],
            prefix: "mooncake/segments/".into(),
        },
        protocol: Protocol::Tcp,
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let a = Engine::new(config("node-a")).unwrap();
    let b = Engine::new(config("node-b")).unwrap();
    let mut a_buf = registered(&a, 1 << 20);
    let seg_b = a.open_segment("node-b").unwrap();
    // Registered after open: found through a descriptor refresh from etcd.
    let b_buf = registered(&b, 1 << 20);
    write_whole_and_check(&a, &mut a_buf, seg_b, &b_buf);
    assert!(matches!(
        a.open_segment("node-zz"),
        Err(TransferError::SegmentNotFound { .. })
    ));
    drop(b);
    drop(b_buf);
    let probe = EtcdMetadataStore::connect(
        std::slice::from_ref(&etcd.url),
        "mooncake/segments/",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        matches!(
            probe.fetch("node-b"),
            Err(TransferError::SegmentNotFound { .. })
        ),
        "a dropped engine withdraws its descriptor"
    );
    assert_eq!(probe.fetch("node-a").unwrap().buffers.len(), 1);
}

#[test]
fn unreachable_etcd_is_a_metadata_error() {
    let port = free_port();
    let r = Engine::new(EngineConfig {
        metadata: MetadataConfig::Etcd {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            prefix: "x/".into(),
        },
        protocol: Protocol::Tcp,
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    });
    assert!(matches!(r, Err(TransferError::Metadata(_))), "{r:?}");
}

#[test]
fn etcd_engine_works_inside_an_async_runtime() {
    let etcd = start_etcd();
    let url = etcd.url.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Store clients call the blocking API from async code: creating, resolving and dropping
    // an etcd-backed engine there must neither deadlock nor panic.
    rt.block_on(async move {
        let config = |name: &str| EngineConfig {
            name: Some(name.to_string()),
            metadata: MetadataConfig::Etcd {
                endpoints: vec![url.clone()],
                prefix: "async/".into(),
            },
            protocol: Protocol::Tcp,
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let a = Engine::new(config("async-a")).unwrap();
        let b = Engine::new(config("async-b")).unwrap();
        let mut a_buf = registered(&a, 4096);
        let b_buf = registered(&b, 4096);
        let seg = a.open_segment("async-b").unwrap();
        write_whole_and_check(&a, &mut a_buf, seg, &b_buf);
        drop(a);
        drop(b);
    });
}
