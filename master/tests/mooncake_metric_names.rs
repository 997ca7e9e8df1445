//! `/metrics` of a real `mooncake_master` process carries Mooncake's metric names (what
//! deployment scripts and dashboards scrape) beside ours, from the same values.

mod common;

use std::time::Duration;

use common::{free_port, http_get, spawn_exe, wait_for, MOONCAKE_MASTER_EXE};
use mooncake_master::{ClientId, MasterClient, ReplicateConfig, Segment};

/// The value of the sample line `sample` (name and labels), if there is one.
fn sample(text: &str, sample: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_mooncakes_names_after_one_mount_and_one_put() {
    let (rpc, http) = (free_port(), free_port());
    let rpc_addr = format!("127.0.0.1:{rpc}");
    let http_addr = format!("127.0.0.1:{http}");
    let mut master = spawn_exe(
        MOONCAKE_MASTER_EXE,
        "master",
        &[
            format!("--rpc-addr={rpc_addr}"),
            format!("--http-addr={http_addr}"),
        ],
    );
    let client = wait_for(Duration::from_secs(10), "master to listen", || async {
        MasterClient::connect(&rpc_addr).await.ok()
    })
    .await;
    let id = ClientId::new_v4();
    let segment = Segment {
        id: ClientId::new_v4(),
        name: "10.0.0.7:17777".into(),
        base: 0x7f00_0000_0000,
        size: 64 << 20,
    };
    client.mount_segment(id, segment).await.unwrap();
    client
        .put_start(id, "key0".into(), 1 << 20, ReplicateConfig::default())
        .await
        .unwrap();
    client.put_end(id, "key0".into()).await.unwrap();
    client.ping(id).await.unwrap();

    let m = http_get(&http_addr, "/metrics")
        .await
        .expect("GET /metrics");
    let get = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no `{s} <n>` line in\n{m}"));
    // The four gauges that readiness scripts and dashboards read.
    assert_eq!(get("master_total_capacity_bytes"), 64 << 20);
    assert_eq!(get("master_active_clients"), 1);
    assert_eq!(get("master_key_count"), 1);
    assert_eq!(get("master_allocated_bytes"), 1 << 20);
    assert_eq!(
        get("segment_total_capacity_bytes{segment=\"10.0.0.7:17777\"}"),
        64 << 20
    );
    assert_eq!(
        get("segment_allocated_bytes{segment=\"10.0.0.7:17777\"}"),
        1 << 20
    );
    // No file tier: the SSD panels read 0, not "no data".
    assert_eq!(get("master_total_file_capacity_bytes"), 0);
    assert_eq!(get("master_allocated_file_size_bytes"), 0);
    // One-key calls count as Mooncake's single-key RPCs.
    assert_eq!(get("master_mount_segment_requests_total"), 1);
    assert_eq!(get("master_put_start_requests_total"), 1);
    assert_eq!(get("master_put_end_requests_total"), 1);
    assert_eq!(get("master_put_start_failures_total"), 0);
    assert_eq!(get("master_ping_requests_total"), 1);
    assert_eq!(get("master_batch_put_start_requests_total"), 0);
    // Ours stay, with the same values.
    assert_eq!(get("mooncake_master_capacity_bytes"), 64 << 20);
    assert_eq!(get("mooncake_master_keys"), 1);
    assert_eq!(get("mooncake_master_clients"), 1);
    assert!(!m.contains("_total_total"), "{m}");

    // A read of a missing key is a failed GetReplicaList, as in Mooncake.
    assert!(client.get_replica_list("missing".into()).await.is_err());
    let m = http_get(&http_addr, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(
        sample(&m, "master_get_replica_list_requests_total"),
        Some(1)
    );
    assert_eq!(
        sample(&m, "master_get_replica_list_failures_total"),
        Some(1)
    );
    assert!(master.terminate(Duration::from_secs(10)), "exit on SIGTERM");
}
