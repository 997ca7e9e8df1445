//! The `mooncake-master` binary started with Mooncake's `mooncake_master` flags serves the
//! admin HTTP routes deployments probe (`/get_all_segments`, `/query_key`, `/get_all_keys`,
//! `/metrics/summary`) over a real socket; unknown Mooncake flags stop it with an error.

mod common;

use std::time::Duration;

use common::{free_port, http_response, run_master_to_exit, spawn_master, wait_for};
use mooncake_master::{ClientId, MasterClient, ReplicateConfig, Segment};

/// Status, head and body of a plain HTTP/1.0 GET.
async fn get(addr: &str, path: &str) -> (u16, String, String) {
    http_response(addr, path).await.expect("an HTTP answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mooncake_flags_start_it_and_admin_routes_answer() {
    let (rpc_port, http_port) = (free_port(), free_port());
    let rpc = format!("127.0.0.1:{rpc_port}");
    let http = format!("127.0.0.1:{http_port}");
    // The command line of gaps.md item 6, gflags spellings mixed.
    let mut master = spawn_master(
        "mooncake-style master",
        &[
            format!("--port={rpc_port}"),
            "-metrics_port".into(),
            http_port.to_string(),
            "--eviction_high_watermark_ratio=0.8".into(),
            "--default_kv_lease_ttl=5000".into(),
            "--enable_gc=false".into(),
            "-v=1".into(),
            "--rpc_thread_num=2".into(),
            "--enable_http_metadata_server=false".into(),
        ],
    );
    let master_client = wait_for(Duration::from_secs(10), "master to listen", || async {
        MasterClient::connect(&rpc).await.ok()
    })
    .await;

    // Before any mount SGLang's check_server sees an empty body and keeps polling.
    let (status, head, body) = get(&http, "/get_all_segments").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(head.contains("content-type: text/plain"), "{head}");

    let me = ClientId::new_v4();
    let name = "10.0.0.7:13122";
    master_client
        .mount_segment(
            me,
            Segment {
                id: ClientId::new_v4(),
                name: name.into(),
                base: 0x7f00_0000_0000,
                size: 1 << 20,
            },
        )
        .await
        .unwrap();
    let (status, _, body) = get(&http, "/get_all_segments").await;
    assert_eq!((status, body), (200, format!("{name}\n")));

    let placed = master_client
        .put_start(me, "kv/0".into(), 4096, ReplicateConfig::default())
        .await
        .unwrap();
    let (status, _, body) = get(&http, "/query_key?key=kv%2F0").await;
    assert_eq!(
        (status, body.as_str()),
        (404, "REPLICA_IS_NOT_READY"),
        "still being written"
    );
    master_client.put_end(me, "kv/0".into()).await.unwrap();
    let (status, _, body) = get(&http, "/query_key?key=kv%2F0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!(
            "{{\"size_\":4096,\"buffer_address_\":{},\"transport_endpoint_\":\"{name}\"}}\n",
            placed[0].addr
        )
    );
    // The probe took no read lease: a plain remove is not refused with OBJECT_HAS_LEASE.
    master_client
        .put_start(me, "kv/1".into(), 10, ReplicateConfig::default())
        .await
        .unwrap();
    master_client.put_end(me, "kv/1".into()).await.unwrap();
    assert_eq!(get(&http, "/query_key?key=kv/1").await.0, 200);
    master_client.remove("kv/1".into(), false).await.unwrap();

    let (status, _, body) = get(&http, "/query_key?key=nokey").await;
    assert_eq!((status, body.as_str()), (404, "OBJECT_NOT_FOUND"));
    assert_eq!(get(&http, "/query_key").await.0, 400);

    master_client
        .put_start(me, "kv/2".into(), 10, ReplicateConfig::default())
        .await
        .unwrap();
    let (status, head, body) = get(&http, "/get_all_keys").await;
    let mut keys: Vec<&str> = body.lines().collect();
    keys.sort();
    assert_eq!((status, keys), (200, vec!["kv/0", "kv/2"]));
    assert!(!head.contains("x-mooncake-truncated"), "{head}");
    let (status, head, body) = get(&http, "/get_all_keys?limit=1").await;
    assert_eq!((status, body.lines().count()), (200, 1));
    assert!(head.contains("x-mooncake-truncated: true"), "{head}");
    assert_eq!(get(&http, "/get_all_keys?limit=x").await.0, 400);

    let (status, _, body) = get(&http, "/metrics/summary").await;
    assert_eq!(status, 200);
    for part in [
        "role=leader",
        "keys=2",
        "segments=1",
        "clients=1",
        "capacity_bytes=1048576",
    ] {
        assert!(body.contains(part), "{part} in {body}");
    }
    assert!(master.terminate(Duration::from_secs(10)), "clean exit");
}

#[test]
fn unknown_mooncake_flag_is_a_clear_error() {
    let (code, err) = run_master_to_exit(&[
        format!("--port={}", free_port()),
        "--enable_warp_drive=true".into(),
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unknown flag --enable_warp_drive=true"),
        "stderr: {err}"
    );
}

#[test]
fn ignored_flags_are_logged_once_each() {
    // An invalid ratio stops the process after the warnings are logged, before it binds.
    let (code, log) = run_master_to_exit(&[
        "--enable_gc",
        "--logtostderr",
        "--v=2",
        "--max_threads=2",
        "--eviction-ratio=2",
    ]);
    assert_ne!(code, Some(0));
    for flag in [
        "--enable_gc ignored",
        "--logtostderr ignored",
        "--v ignored",
    ] {
        assert_eq!(log.matches(flag).count(), 1, "{flag} in {log}");
    }
    assert!(!log.contains("--max_threads ignored"), "{log}");
}
