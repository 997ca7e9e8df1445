//! etcd HA with a real etcd and real master processes: leader election, failover after the
//! leader is killed, a client following `etcd://`, and no overlap between surviving objects
//! and space allocated after failover.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, http_get, spawn_master, start_etcd, wait_for, Proc};
use mooncake_master::client::ClientOptions;
use mooncake_master::{
    ClientId, ErrorCode, HeldObject, MasterClient, ReplicaDescriptor, ReplicateConfig, Segment,
};

const LEASE_TTL_S: u64 = 2;
const CLUSTER: &str = "ha-test";

struct Master {
    proc: Proc,
    rpc: String,
    http: String,
}

fn start_master(name: &str, etcd: &str) -> Master {
    let (rpc, http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let proc = spawn_master(
        name,
        &[
            "--rpc-addr".into(),
            rpc.clone(),
            "--http-addr".into(),
            http.clone(),
            "--etcd-endpoints".into(),
            etcd.into(),
            "--cluster-id".into(),
            CLUSTER.into(),
            "--etcd-lease-ttl-s".into(),
            LEASE_TTL_S.to_string(),
            "--lease-ttl-ms".into(),
            "1000".into(),
            "--recovery-window-ms".into(),
            "1500".into(),
        ],
    );
    Master { proc, rpc, http }
}

async fn leader_addr(etcd: &str) -> Option<String> {
    let mut c = mooncake_master::ha::connect(&[etcd.to_string()])
        .await
        .ok()?;
    mooncake_master::ha::current_leader(&mut c, CLUSTER)
        .await
        .ok()
        .flatten()
        .map(|(a, _)| a)
}

/// PutStart + PutEnd, retrying while a new leader is in its recovery window or failing over.
async fn put(c: &MasterClient, me: ClientId, keys: &[String]) -> Vec<ReplicaDescriptor> {
    let items: Vec<(String, u64)> = keys.iter().map(|k| (k.clone(), 3000)).collect();
    let placed = wait_for(
        Duration::from_secs(15),
        "put_start to be accepted",
        || async {
            match c
                .batch_put_start(me, items.clone(), ReplicateConfig::default())
                .await
            {
                Ok(r) => Some(r),
                Err(ErrorCode::UnavailableInCurrentStatus | ErrorCode::RpcFail) => None,
                Err(e) => panic!("put_start: {e}"),
            }
        },
    )
    .await;
    let ends = c.batch_put_end(me, keys.to_vec()).await.unwrap();
    assert!(ends.iter().all(|e| e.is_ok()), "{ends:?}");
    placed.into_iter().map(|p| p.unwrap().remove(0)).collect()
}

fn overlaps(a: &ReplicaDescriptor, b: &ReplicaDescriptor) -> bool {
    a.segment_id == b.segment_id && a.addr < b.addr + b.len && b.addr < a.addr + a.len
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_and_no_surviving_object_shares_space_with_new_ones() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint.clone();
    let mut masters: Vec<Master> = (0..3)
        .map(|i| start_master(&format!("m{i}"), &ep))
        .collect();
    let first = wait_for(Duration::from_secs(15), "a leader", || leader_addr(&ep)).await;
    assert!(masters.iter().any(|m| m.rpc == first));

    let opts = ClientOptions {
        failover_wait: Duration::from_secs(15),
        rpc_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let client = MasterClient::connect_with(&format!("etcd://{ep}/{CLUSTER}"), opts)
        .await
        .unwrap();
    assert_eq!(client.connected_addr().as_deref(), Some(first.as_str()));
    let me = ClientId::new_v4();
    let segment = Segment {
        id: ClientId::new_v4(),
        name: "127.0.0.1:9999".into(),
        base: 0x10_0000_0000,
        size: 256 * 1024,
    };
    client.mount_segment(me, segment.clone()).await.unwrap();

    // The client's heartbeat loop: on NEED_REMOUNT, remount and report what it holds.
    let held: Arc<parking_lot::Mutex<Vec<HeldObject>>> = Default::default();
    let heartbeat = {
        let (client, held, segment) = (client.clone(), held.clone(), segment.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(p) = client.ping(me).await {
                    if p.need_remount {
                        let objs = held.lock().clone();
                        let _ = client
                            .remount_segments_with_objects(me, vec![segment.clone()], objs)
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let old_keys: Vec<String> = (0..32).map(|i| format!("old{i}")).collect();
    let old = put(&client, me, &old_keys).await;
    held.lock()
        .extend(old_keys.iter().zip(&old).map(|(k, d)| HeldObject {
            key: k.clone(),
            size: 3000,
            replicas: vec![d.clone()],
        }));
    let leader = masters.iter().position(|m| m.rpc == first).unwrap();
    assert_eq!(
        http_get(&masters[leader].http, "/role").await.as_deref(),
        Some("leader")
    );
    for (i, m) in masters.iter().enumerate() {
        if i != leader {
            assert_eq!(http_get(&m.http, "/role").await.as_deref(), Some("standby"));
        }
    }

    // Kill the leader.
    let killed = Instant::now();
    masters[leader].proc.kill();
    let second = wait_for(
        Duration::from_secs(LEASE_TTL_S + 10),
        "a new leader",
        || async { leader_addr(&ep).await.filter(|a| *a != first) },
    )
    .await;
    wait_for(
        Duration::from_secs(LEASE_TTL_S + 10),
        "the client to reach it",
        || async {
            client
                .ping(me)
                .await
                .ok()
                .filter(|_| client.connected_addr().as_deref() == Some(second.as_str()))
        },
    )
    .await;
    let takeover = killed.elapsed();
    println!("takeover after leader kill: {takeover:?}");
    assert!(
        takeover <= Duration::from_secs(LEASE_TTL_S + 2),
        "takeover took {takeover:?}"
    );

    // Surviving objects keep their bytes' location once the client has reported them.
    let survivors = wait_for(
        Duration::from_secs(10),
        "reported objects to be readable",
        || async {
            let r = client.batch_get_replica_list(old_keys.clone()).await.ok()?;
            r.into_iter()
                .map(|r| r.ok().map(|mut d| d.remove(0)))
                .collect::<Option<Vec<_>>>()
        },
    )
    .await;
    for (s, o) in survivors.iter().zip(&old) {
        assert_eq!((s.segment_id, s.addr, s.len), (o.segment_id, o.addr, o.len));
    }
    // New space never overlaps a surviving object, even with the segment filling up.
    let new_keys: Vec<String> = (0..40).map(|i| format!("new{i}")).collect();
    let new = put(&client, me, &new_keys).await;
    for n in &new {
        for s in &survivors {
            assert!(!overlaps(n, s), "new {n:?} overlaps surviving {s:?}");
        }
    }

    // A graceful stop resigns: the last master takes over without waiting for the TTL.
    let second_idx = masters.iter().position(|m| m.rpc == second).unwrap();
    assert!(masters[second_idx].proc.terminate(Duration::from_secs(10)));
    let third = wait_for(
        Duration::from_secs(LEASE_TTL_S + 10),
        "the third leader",
        || async {
            leader_addr(&ep)
                .await
                .filter(|a| *a != first && *a != second)
        },
    )
    .await;
    let m3 = masters.iter().find(|m| m.rpc == third).unwrap();
    wait_for(Duration::from_secs(5), "role leader", || async {
        http_get(&m3.http, "/role").await.filter(|r| r == "leader")
    })
    .await;
    heartbeat.abort();
    masters.clear();
}
