//! HA in Mooncake's spelling, with a real etcd and real master processes: masters started with
//! `--enable_ha --etcd_endpoints=a;b` and `MC_STORE_CLUSTER_ID` elect a leader in that cluster,
//! a client given `etcd://a;b` (no cluster id) finds it through the same variable, and a
//! standby's `/get_all_segments` answers 503 (readiness probes keep it out of service) while
//! its `/role`, `/ha_status`, `/leader` and `/health` name the leader as Mooncake's do.

mod common;

use std::time::Duration;

use common::{free_port, http_get, http_response, spawn_master, start_etcd, wait_for, Proc};
use mooncake_master::client::ClientOptions;
use mooncake_master::MasterClient;

const CLUSTER: &str = "env-cluster";

/// A master started with Mooncake's HA flags; its cluster id comes from the inherited
/// `MC_STORE_CLUSTER_ID`.
fn start_master(name: &str, endpoints: &str) -> (Proc, String, String) {
    let (rpc_port, http_port) = (free_port(), free_port());
    let proc = spawn_master(
        name,
        &[
            "--rpc_address=127.0.0.1".into(),
            format!("--rpc_port={rpc_port}"),
            format!("--metrics_port={http_port}"),
            "--enable_ha".into(),
            format!("--etcd_endpoints={endpoints}"),
        ],
    );
    (
        proc,
        format!("127.0.0.1:{rpc_port}"),
        format!("127.0.0.1:{http_port}"),
    )
}

async fn leader_of(etcd: &str) -> Option<String> {
    let mut c = mooncake_master::ha::connect(&[etcd.to_string()])
        .await
        .ok()?;
    let (addr, _) = mooncake_master::ha::current_leader(&mut c, CLUSTER)
        .await
        .ok()??;
    Some(addr)
}

async fn status_of(addr: &str, path: &str) -> Option<u16> {
    common::http_response(addr, path)
        .await
        .map(|(status, _, _)| status)
}

#[test]
fn mooncake_ha_flags_and_address_meet_in_the_env_cluster() {
    // The only test of this binary: nothing else reads the environment concurrently. The
    // masters inherit it.
    std::env::set_var("MC_STORE_CLUSTER_ID", CLUSTER);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let etcd = start_etcd().await;
        let endpoints = format!("{0};{0}", etcd.endpoint);
        let (_leader, leader_rpc, leader_http) = start_master("leader", &endpoints);
        let elected = wait_for(Duration::from_secs(20), "an elected leader", || {
            leader_of(&etcd.endpoint)
        })
        .await;
        assert_eq!(elected, leader_rpc, "elected in cluster {CLUSTER}");

        let opts = ClientOptions {
            failover_wait: Duration::from_secs(5),
            ..Default::default()
        };
        let client = MasterClient::connect_with(&format!("etcd://{endpoints}"), opts)
            .await
            .expect("etcd://a;b with the cluster id from MC_STORE_CLUSTER_ID");
        assert_eq!(
            client.connected_addr().as_deref(),
            Some(leader_rpc.as_str())
        );

        let (_standby, _, standby_http) = start_master("standby", &endpoints);
        wait_for(Duration::from_secs(10), "the standby's admin port", || {
            status_of(&standby_http, "/role")
        })
        .await;
        assert_eq!(
            status_of(&standby_http, "/get_all_segments").await,
            Some(503)
        );
        let (status, _, body) = http_response(&standby_http, "/query_segment?segment=x:1")
            .await
            .unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("service plane is not active"), "{body}");
        assert_eq!(
            status_of(&leader_http, "/get_all_segments").await,
            Some(200)
        );

        // The standby names the leader etcd holds (looked up every second).
        let leader_json = wait_for(
            Duration::from_secs(10),
            "the standby to see the leader",
            || async {
                http_get(&standby_http, "/leader")
                    .await
                    .filter(|b| b.contains(&leader_rpc))
            },
        )
        .await;
        let leader_view = http_get(&leader_http, "/leader").await.unwrap();
        assert_eq!(
            leader_json, leader_view,
            "both name the leader and its term"
        );
        assert!(
            leader_json.starts_with(&format!(
                r#"{{"present":true,"leader_address":"{leader_rpc}","view_version":"#
            )),
            "{leader_json}"
        );
        assert_eq!(
            http_get(&standby_http, "/role").await.as_deref(),
            Some("standby")
        );
        assert_eq!(
            http_get(&standby_http, "/ha_status").await.as_deref(),
            Some("standby")
        );
        assert_eq!(
            http_get(&leader_http, "/role").await.as_deref(),
            Some("leader")
        );
        assert_eq!(
            http_get(&leader_http, "/ha_status").await.as_deref(),
            Some("serving")
        );
        let health = http_get(&standby_http, "/health").await.unwrap();
        assert!(
            health.starts_with(
                r#"{"status":"ok","role":"standby","ha_state":"standby","service_ready":false,"#
            ),
            "{health}"
        );
        assert!(health.contains(&leader_rpc), "{health}");
    });
}
