//! The `mooncake-master` binary started with Mooncake's `mooncake_master` flags serves the
//! admin HTTP routes deployments probe (`/get_all_segments`, `/query_key`, `/get_all_keys`,
//! `/batch_query_keys`, `/query_segment`, `/get_segments_detail`, `/api/v1/segments/status`,
//! `/health`, `/role`, `/ha_status`, `/leader`, `/metrics/summary`) over a real socket, in
//! Mooncake's formats; unknown Mooncake flags stop it with an error.

mod common;

use std::time::Duration;

use common::{free_port, http_response, run_master_to_exit, spawn_master, wait_for};
use mooncake_master::{ClientId, MasterClient, ReplicateConfig, Segment};
use serde_json::{json, Value};

/// Status, head and body of a plain HTTP/1.0 GET.
async fn get(addr: &str, path: &str) -> (u16, String, String) {
    http_response(addr, path).await.expect("an HTTP answer")
}

/// Status and JSON body of a GET whose answer must be JSON.
async fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (status, head, body) = get(addr, path).await;
    assert!(
        head.contains("content-type: application/json"),
        "{path}: {head}"
    );
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

/// A master started with Mooncake flags on free ports, and a connected client.
async fn mooncake_style_master() -> (common::Proc, MasterClient, u16, String) {
    let (rpc_port, http_port) = (free_port(), free_port());
    let master = spawn_master(
        "mooncake-style master",
        &[
            format!("--rpc_port={rpc_port}"),
            format!("--metrics_port={http_port}"),
        ],
    );
    let rpc = format!("127.0.0.1:{rpc_port}");
    let client = wait_for(Duration::from_secs(10), "master to listen", || async {
        MasterClient::connect(&rpc).await.ok()
    })
    .await;
    (master, client, rpc_port, format!("127.0.0.1:{http_port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_and_ha_routes_answer_in_mooncakes_formats() {
    let (mut master, client, rpc_port, http) = mooncake_style_master().await;
    let me = ClientId::new_v4();
    let name = "10.0.0.8:13122";
    // One holder, two segments under its one name.
    let segs: Vec<Segment> = [0x7f00_0000_0000u64, 0x7f10_0000_0000]
        .iter()
        .map(|&base| Segment {
            id: ClientId::new_v4(),
            name: name.into(),
            base,
            size: 1 << 20,
        })
        .collect();
    for s in &segs {
        client.mount_segment(me, s.clone()).await.unwrap();
    }
    let to_first = ReplicateConfig {
        preferred_segments: vec![name.into()],
        ..Default::default()
    };
    client
        .put_start(me, "done".into(), 4096, to_first.clone())
        .await
        .unwrap();
    client.put_end(me, "done".into()).await.unwrap();
    client
        .put_start(me, "open".into(), 100, to_first)
        .await
        .unwrap();
    // 4096 + 100 rounded up to 64-byte alignment.
    let used = 4096 + 128;

    let (status, _, body) = get(&http, &format!("/query_segment?segment={name}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!(
            "{name}\nUsed(bytes): {used}\nCapacity(bytes) : {}\n",
            2 << 20
        )
    );
    let (status, _, body) = get(&http, "/query_segment?segment=nohost:1").await;
    assert_eq!(status, 500, "Mooncake answers 500 for an unknown segment");
    assert!(body.starts_with("Failed to query segment"), "{body}");
    assert_eq!(get(&http, "/query_segment").await.0, 400);

    let (status, detail) = get_json(&http, "/get_segments_detail").await;
    assert_eq!(status, 200);
    assert_eq!(detail["total_segments"], 2);
    let rows = detail["segments"].as_array().unwrap();
    let mut seen_used = 0;
    let mut seen_allocations = 0;
    for (row, seg) in rows.iter().zip(&segs) {
        assert_eq!(row["segment_name"], name);
        assert_eq!(row["segment_id"], seg.id.to_string());
        assert_eq!(row["client_id"], me.to_string());
        assert_eq!(row["base_address"], format!("{:#x}", seg.base));
        assert_eq!(row["size_bytes"], 1 << 20);
        assert_eq!(row["size_human"], "0.000976562 GiB");
        assert_eq!(row["te_endpoint"], name);
        assert_eq!(row["status"], "OK");
        assert_eq!(row["allocator_capacity_bytes"], 1 << 20);
        let u = row["allocator_used_bytes"].as_u64().unwrap();
        let pct = row["allocator_usage_percent"].as_f64().unwrap();
        assert!(
            (pct - u as f64 / (1 << 20) as f64 * 100.0).abs() < 1e-9,
            "{row}"
        );
        seen_used += u;
        seen_allocations += row["allocations"].as_u64().unwrap();
    }
    assert_eq!((seen_used, seen_allocations), (used, 2));

    let (status, v) = get_json(&http, &format!("/api/v1/segments/status?segment={name}")).await;
    assert_eq!(
        (status, v),
        (
            200,
            json!({"success": true, "segment": name, "status": 1, "status_name": "OK"})
        )
    );
    let (status, v) = get_json(&http, "/api/v1/segments/status?segment=nohost:1").await;
    assert_eq!(status, 404);
    assert_eq!(v["error_code"], -101);
    assert_eq!(v["error_message"], "SEGMENT_NOT_FOUND");
    assert_eq!(get(&http, "/api/v1/segments/status").await.0, 400);

    let (status, v) = get_json(&http, "/batch_query_keys?keys=done,nokey,open").await;
    assert_eq!(status, 200);
    let desc = client.get_replica_list("done".into()).await.unwrap();
    client.remove("done".into(), true).await.unwrap();
    assert_eq!(
        v,
        json!({"success": true, "data": {
            "done": {"ok": true, "values": [{
                "size_": 4096, "buffer_address_": desc[0].addr, "transport_endpoint_": name}]},
            "nokey": {"ok": false, "error": "OBJECT_NOT_FOUND"},
            "open": {"ok": false, "error": "REPLICA_IS_NOT_READY"},
        }})
    );
    assert_eq!(get(&http, "/batch_query_keys").await.0, 400);
    assert_eq!(get(&http, "/batch_query_keys?keys=").await.0, 400);

    let single = format!("0.0.0.0:{rpc_port}");
    assert_eq!(get(&http, "/role").await.2, "leader");
    assert_eq!(get(&http, "/ha_status").await.2, "serving");
    assert_eq!(
        get_json(&http, "/leader").await,
        (
            200,
            json!({"present": true, "leader_address": single, "view_version": 0})
        )
    );
    assert_eq!(
        get_json(&http, "/health").await,
        (
            200,
            json!({"status": "ok", "role": "leader", "ha_state": "serving",
                   "service_ready": true, "leader_address": single, "view_version": 0})
        )
    );
    assert!(master.terminate(Duration::from_secs(10)), "clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_query_keys_takes_no_lease_and_is_bounded() {
    let (mut master, client, _, http) = mooncake_style_master().await;
    let me = ClientId::new_v4();
    client
        .mount_segment(
            me,
            Segment {
                id: ClientId::new_v4(),
                name: "h:1".into(),
                base: 0x1000_0000,
                size: 1 << 20,
            },
        )
        .await
        .unwrap();
    client
        .put_start(me, "k".into(), 10, ReplicateConfig::default())
        .await
        .unwrap();
    client.put_end(me, "k".into()).await.unwrap();
    let (status, v) = get_json(&http, "/batch_query_keys?keys=k").await;
    assert_eq!((status, &v["data"]["k"]["ok"]), (200, &json!(true)));
    // No lease: a plain remove right after the probe is not refused with OBJECT_HAS_LEASE.
    client.remove("k".into(), false).await.unwrap();
    let too_many: Vec<String> = (0..=mooncake_master::http::MAX_BATCH_QUERY_KEYS)
        .map(|i| i.to_string())
        .collect();
    let (status, v) = get_json(
        &http,
        &format!("/batch_query_keys?keys={}", too_many.join(",")),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error_message"].as_str().unwrap().contains("at most"),
        "{v}"
    );
    assert!(master.terminate(Duration::from_secs(10)), "clean exit");
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
