//! The `mooncake-master` binary: flags, admin HTTP, dead-client expiry and remount, SIGTERM.

mod common;

use std::time::Duration;

use common::{free_port, http_get, spawn_master, wait_for};
use mooncake_master::{ClientId, ErrorCode, MasterClient, ReplicateConfig, Segment};

#[test]
fn help_lists_every_flag_with_its_default_and_env() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mooncake-master"))
        .arg("--help")
        .output()
        .expect("running --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "[default: 0.0.0.0:50051]",
        "[env: MOONCAKE_MASTER_RPC_ADDR=]",
        "[default: 0.0.0.0:9003]",
        "--lease-ttl-ms",
        "[default: 10000]",
        "--client-ttl-ms",
        "[default: 0.9]",
        "[default: 0.05]",
        "[default: random]",
        "--etcd-endpoints",
        "[default: mooncake_cluster]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn mooncake_master_is_the_same_daemon_under_mooncakes_name() {
    let help = |exe: &str| {
        let out = std::process::Command::new(exe)
            .arg("--help")
            .output()
            .expect("running --help");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ours = help(env!("CARGO_BIN_EXE_mooncake-master"));
    let theirs = help(common::MOONCAKE_MASTER_EXE);
    assert!(
        theirs.contains("Usage: mooncake_master [OPTIONS]"),
        "{theirs}"
    );
    assert_eq!(
        theirs.replace("Usage: mooncake_master", "Usage: mooncake-master"),
        ours,
        "same flags, only the name differs"
    );
}

fn seg(name: &str) -> Segment {
    Segment {
        id: ClientId::new_v4(),
        name: name.into(),
        base: 0x4000_0000,
        size: 1 << 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_client_loses_replicas_and_remounts_cleanly_after_restart() {
    let (rpc, http) = (free_port(), free_port());
    let rpc_addr = format!("127.0.0.1:{rpc}");
    let http_addr = format!("127.0.0.1:{http}");
    let mut master = spawn_master(
        "master",
        &[
            "--rpc-addr".into(),
            rpc_addr.clone(),
            "--http-addr".into(),
            http_addr.clone(),
            "--client-ttl-ms".into(),
            "600".into(),
            "--lease-ttl-ms".into(),
            "300".into(),
            "--tick-ms".into(),
            "20".into(),
        ],
    );
    let writer = wait_for(Duration::from_secs(10), "master to listen", || async {
        MasterClient::connect(&rpc_addr).await.ok()
    })
    .await;
    let holder = MasterClient::connect(&rpc_addr).await.unwrap();
    let (w, h) = (ClientId::new_v4(), ClientId::new_v4());
    let hseg = seg("holder-host:1");
    holder.mount_segment(h, hseg.clone()).await.unwrap();
    writer.mount_segment(w, seg("writer-host:1")).await.unwrap();
    let to_holder = ReplicateConfig {
        preferred_segments: vec!["holder-host:1".into()],
        ..Default::default()
    };
    let keys: Vec<String> = (0..10).map(|i| format!("obj{i}")).collect();
    let items = keys.iter().map(|k| (k.clone(), 1000)).collect();
    let placed = writer
        .batch_put_start(w, items, to_holder.clone())
        .await
        .unwrap();
    assert!(placed
        .iter()
        .all(|p| p.as_ref().unwrap()[0].segment_id == hseg.id));
    writer.batch_put_end(w, keys.clone()).await.unwrap();
    writer
        .put_start(
            w,
            "in-writer".into(),
            10,
            ReplicateConfig {
                preferred_segments: vec!["writer-host:1".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    writer.put_end(w, "in-writer".into()).await.unwrap();
    assert!(writer
        .batch_get_replica_list(keys.clone())
        .await
        .unwrap()
        .iter()
        .all(|r| r.is_ok()));

    // The writer keeps pinging; the holder goes silent.
    let pinger = {
        let writer = writer.clone();
        tokio::spawn(async move {
            loop {
                let _ = writer.ping(w).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_for(
        Duration::from_secs(10),
        "holder's replicas to vanish",
        || async {
            let r = writer.batch_get_replica_list(keys.clone()).await.ok()?;
            r.iter()
                .all(|r| *r == Err(ErrorCode::ObjectNotFound))
                .then_some(())
        },
    )
    .await;
    assert!(
        writer.get_replica_list("in-writer".into()).await.is_ok(),
        "live client's object stays"
    );
    let metrics = http_get(&http_addr, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("mooncake_master_expired_clients_total 1"),
        "{metrics}"
    );
    assert_eq!(
        http_get(&http_addr, "/role").await.as_deref(),
        Some("leader")
    );
    let health = http_get(&http_addr, "/health").await.expect("health");
    assert!(
        health.starts_with(r#"{"status":"ok","role":"leader","ha_state":"serving""#),
        "{health}"
    );

    // The holder "restarts": a new connection, told to remount, remounts, and is used again.
    let restarted = MasterClient::connect(&rpc_addr).await.unwrap();
    assert!(restarted.ping(h).await.unwrap().need_remount);
    restarted
        .remount_segments(h, vec![hseg.clone()])
        .await
        .unwrap();
    assert!(!restarted.ping(h).await.unwrap().need_remount);
    // After a lease TTL of quarantine the remounted segment takes new replicas again.
    wait_for(
        Duration::from_secs(10),
        "the remounted segment to be used",
        || async {
            let d = writer
                .put_start(w, "obj0".into(), 1000, to_holder.clone())
                .await
                .unwrap();
            if d[0].segment_id == hseg.id {
                return Some(());
            }
            writer.put_revoke(w, "obj0".into()).await.unwrap();
            None
        },
    )
    .await;
    writer.put_end(w, "obj0".into()).await.unwrap();
    assert!(writer.get_replica_list("obj0".into()).await.is_ok());
    pinger.abort();
    assert!(
        master.terminate(Duration::from_secs(10)),
        "graceful exit on SIGTERM"
    );
}
