//! RPC end to end against an embedded server on 127.0.0.1.

use std::time::Duration;

use mooncake_master::chunking::ChunkLimits;
use mooncake_master::client::ClientOptions;
use mooncake_master::codec::{client_handshake, encode_frame, MAGIC};
use mooncake_master::proto::Request;
use mooncake_master::{
    ClientId, ErrorCode, MasterClient, MasterConfig, MasterServer, ReplicaStatus, ReplicateConfig,
    RunningMaster, Segment,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

fn seg(name: &str, size: u64) -> Segment {
    Segment {
        id: Uuid::new_v4(),
        name: name.into(),
        base: 0x10_0000,
        size,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_calls_answer_per_key_in_order() {
    let m = MasterServer::start(MasterConfig::default()).await.unwrap();
    let c = MasterClient::connect(&m.rpc_addr().to_string())
        .await
        .unwrap();
    let me = Uuid::new_v4();
    c.mount_segment(me, seg("127.0.0.1:7000", 1 << 20))
        .await
        .unwrap();
    assert!(!c.ping(me).await.unwrap().need_remount);
    let items: Vec<(String, u64)> = (0..100).map(|i| (format!("k{i}"), 1000 + i)).collect();
    let placed = c
        .batch_put_start(me, items.clone(), ReplicateConfig::default())
        .await
        .unwrap();
    assert_eq!(placed.len(), 100);
    for (i, p) in placed.iter().enumerate() {
        let d = p.as_ref().unwrap();
        assert_eq!(d[0].len, items[i].1, "results in input order");
        assert_eq!(d[0].status, ReplicaStatus::Processing);
    }
    let keys: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
    let mut with_missing = keys.clone();
    with_missing.insert(50, "missing".into());
    let ends = c.batch_put_end(me, keys.clone()).await.unwrap();
    assert!(ends.iter().all(|r| r.is_ok()));
    let got = c
        .batch_get_replica_list(with_missing.clone())
        .await
        .unwrap();
    assert_eq!(got[50], Err(ErrorCode::ObjectNotFound));
    assert_eq!(got[51].as_ref().unwrap()[0].len, 1050);
    let ex = c.batch_exist_key(with_missing).await.unwrap();
    assert_eq!(ex[50], Ok(false));
    assert_eq!(ex[0], Ok(true));
    assert_eq!(
        c.put_start(me, "k1".into(), 5, ReplicateConfig::default())
            .await,
        Err(ErrorCode::ObjectAlreadyExists)
    );
    assert_eq!(
        c.remove("k1".into(), false).await,
        Err(ErrorCode::ObjectHasLease)
    );
    assert_eq!(c.remove("k1".into(), true).await, Ok(()));
    assert_eq!(c.exist_key("k1".into()).await, Ok(false));
    // Many requests in flight on one connection.
    let futs: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.get_replica_list(format!("k{}", 2 + i % 90)).await })
        })
        .collect();
    for f in futs {
        assert!(f.await.unwrap().is_ok());
    }
    assert_eq!(c.remove_all(true).await, Ok(99));
    let metrics = m.metrics_text();
    assert!(
        metrics.contains("mooncake_master_rpc_requests_total{op=\"batch_put_start\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("mooncake_master_rpc_items_total{op=\"batch_put_start\"} 101"));
    assert!(metrics
        .contains("mooncake_master_rpc_latency_seconds_count{op=\"batch_get_replica_list\"} 65"));
    assert!(metrics.contains("mooncake_master_keys 0\n"), "{metrics}");
    // Keys that failed alone, by call and error.
    for line in [
        "rpc_key_errors_total{op=\"batch_get_replica_list\",code=\"OBJECT_NOT_FOUND\"} 1",
        "rpc_key_errors_total{op=\"batch_put_start\",code=\"OBJECT_ALREADY_EXISTS\"} 1",
        "rpc_key_errors_total{op=\"batch_remove\",code=\"OBJECT_HAS_LEASE\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(metrics.contains("mooncake_master_capacity_bytes 1048576"));
    assert!(metrics.contains("mooncake_master_is_leader 1"));
    m.stop().await;
}

async fn raw_connection(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    client_handshake(&mut s).await.unwrap();
    s
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let m = MasterServer::start(MasterConfig {
        max_frame: 1 << 20,
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = m.rpc_addr().to_string();
    let good = MasterClient::connect(&addr).await.unwrap();
    let me = Uuid::new_v4();
    good.mount_segment(me, seg("h:1", 1 << 20)).await.unwrap();

    // Garbage payload.
    let mut s = raw_connection(&addr).await;
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(closed(&mut s).await);
    // Oversized announced length.
    let mut s = raw_connection(&addr).await;
    s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert!(closed(&mut s).await);
    // Valid message followed by trailing bytes inside the frame.
    let mut s = raw_connection(&addr).await;
    let mut f = Vec::new();
    encode_frame(1, &Request::<String>::RemoveAll { force: false }, &mut f).unwrap();
    f.push(0);
    let len = (f.len() - 4) as u32;
    f[..4].copy_from_slice(&len.to_le_bytes());
    s.write_all(&f).await.unwrap();
    assert!(closed(&mut s).await);
    // Wrong magic and wrong version.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"HTTP/1.1").await.unwrap();
    assert!(closed(&mut s).await);
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&999u32.to_le_bytes());
    s.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 8];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer[..4], &MAGIC);
    assert!(closed(&mut s).await);

    // The well-behaved connection and the state are untouched.
    let r = good
        .put_start(me, "still-works".into(), 10, ReplicateConfig::default())
        .await;
    assert!(r.is_ok());
    assert!(!good.ping(me).await.unwrap().need_remount);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reports_unreachable_master_and_bad_addresses() {
    assert!(MasterClient::connect("not an address").await.is_err());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    assert!(MasterClient::connect(&addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_with_rpc_fail_after_the_master_stops_and_reconnect_after_restart() {
    let m = MasterServer::start(MasterConfig::default()).await.unwrap();
    let addr = m.rpc_addr();
    let c = MasterClient::connect(&addr.to_string()).await.unwrap();
    let me = Uuid::new_v4();
    assert!(c.ping(me).await.unwrap().need_remount, "unknown client");
    m.stop().await;
    assert_eq!(c.ping(me).await, Err(ErrorCode::RpcFail));
    let m2 = MasterServer::start(MasterConfig {
        rpc_addr: addr,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if c.ping(me).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "client reconnects to the restarted master");
    assert!(c.connected_addr().is_some());
    m2.stop().await;
}

/// Established TCP connections whose local port is `port` (the master's side of each client
/// connection), read from /proc/net/tcp (Linux).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().unwrap();
            u16::from_str_radix(local_port, 16).unwrap() == port && f[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_closes_its_connection() {
    let m = MasterServer::start(MasterConfig::default()).await.unwrap();
    let port = m.rpc_addr().port();
    let c = MasterClient::connect(&m.rpc_addr().to_string())
        .await
        .unwrap();
    assert!(c.batch_exist_key(vec!["k".into()]).await.is_ok());
    assert_eq!(established_to(port), 1);
    drop(c);
    // Liveness, not speed: the socket must go away at all (it used to stay open forever).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while established_to(port) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "connection still open 10 s after the client was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A master and a client of it that cuts batches into calls of 64 keys, with one 1 MiB segment.
async fn master_cutting_batches_at_64_keys() -> (RunningMaster, MasterClient, ClientId) {
    let m = MasterServer::start(MasterConfig::default()).await.unwrap();
    let opts = ClientOptions {
        chunk: ChunkLimits {
            max_keys: 64,
            max_key_bytes: 1 << 20,
        },
        ..Default::default()
    };
    let c = MasterClient::connect_with(&m.rpc_addr().to_string(), opts)
        .await
        .unwrap();
    let me = Uuid::new_v4();
    c.mount_segment(me, seg("127.0.0.1:7001", 1 << 20))
        .await
        .unwrap();
    (m, c, me)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_go_as_several_calls_and_answer_in_order() {
    let (m, c, me) = master_cutting_batches_at_64_keys().await;
    let items: Vec<(String, u64)> = (0..1000).map(|i| (format!("c{i}"), 100 + i)).collect();
    let placed = c
        .batch_put_start(me, items.clone(), ReplicateConfig::default())
        .await
        .unwrap();
    assert_eq!(placed.len(), 1000);
    for (i, p) in placed.iter().enumerate() {
        assert_eq!(
            p.as_ref().unwrap()[0].len,
            items[i].1,
            "key {i} in input order"
        );
    }
    let mut keys: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
    assert!(c
        .batch_put_end(me, keys.clone())
        .await
        .unwrap()
        .iter()
        .all(|r| r.is_ok()));
    keys.insert(500, "missing".into());
    let got = c.batch_get_replica_list(keys.clone()).await.unwrap();
    assert_eq!(got.len(), 1001);
    assert_eq!(got[500], Err(ErrorCode::ObjectNotFound));
    assert_eq!(got[999].as_ref().unwrap()[0].len, 100 + 998);
    let ex = c.batch_exist_key(keys.clone()).await.unwrap();
    assert_eq!(ex.iter().filter(|r| **r == Ok(true)).count(), 1000);
    assert_eq!(ex[500], Ok(false));
    let removed = c.batch_remove(keys, true).await.unwrap();
    assert_eq!(removed.iter().filter(|r| r.is_ok()).count(), 1000);
    let calls = m.metrics_text();
    assert!(
        calls.contains("mooncake_master_rpc_requests_total{op=\"batch_put_start\"} 16"),
        "1000 keys in calls of 64: {calls}"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_batch_cut_into_calls_keeps_each_keys_group() {
    let (m, c, me) = master_cutting_batches_at_64_keys().await;
    // Groups of three straddle the 64-key calls; every tenth key is ungrouped.
    let group = |i: usize| {
        if i.is_multiple_of(10) {
            String::new()
        } else {
            format!("g{}", i / 3)
        }
    };
    let items: Vec<(String, u64)> = (0..200).map(|i| (format!("k{i}"), 100)).collect();
    let cfg = ReplicateConfig {
        group_ids: (0..200).map(group).collect(),
        ..Default::default()
    };
    let placed = c.batch_put_start(me, items.clone(), cfg).await.unwrap();
    assert!(placed.iter().all(|p| p.is_ok()));
    let svc = m.service().unwrap();
    let mut seen = 0;
    svc.for_each_object(|k, e| {
        let i: usize = k[1..].parse().unwrap();
        assert_eq!(e.group.as_ref().map_or("", |g| g.id()), group(i), "{k}");
        seen += 1;
    });
    assert_eq!(seen, 200);
    assert_eq!(svc.group_counts().1, 180);
    // Groups g0..g66 have members (g0 without k0).
    assert_eq!(svc.group_counts().0, 67);
    let text = m.metrics_text();
    assert!(text.contains("mooncake_master_object_groups 67"), "{text}");
    // A count that is not the batch's fails the whole call, however it is cut: 199 ids for
    // 200 keys, and 64 ids for 128 keys (a count that matches each 64-key call's size).
    for (ids, keys, prefix) in [(199, 200, "m"), (64, 128, "n")] {
        let cfg = ReplicateConfig {
            group_ids: vec!["g".into(); ids],
            ..Default::default()
        };
        let items: Vec<(String, u64)> = (0..keys).map(|i| (format!("{prefix}{i}"), 100)).collect();
        let r = c.batch_put_start(me, items, cfg).await;
        assert!(
            r.as_ref().map_or(true, |v| v
                .iter()
                .all(|k| *k == Err(ErrorCode::InvalidParams))),
            "{r:?}"
        );
        assert_eq!(svc.key_count(), 200);
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_fails_only_its_call() {
    let m = MasterServer::start(MasterConfig {
        max_frame: 64 << 10,
        ..MasterConfig::default()
    })
    .await
    .unwrap();
    // The client takes frames of the same size at most: without the server's check it would
    // drop the connection, and the call in flight beside the big one would fail too.
    let opts = ClientOptions {
        max_frame: 64 << 10,
        ..Default::default()
    };
    let c = MasterClient::connect_with(&m.rpc_addr().to_string(), opts)
        .await
        .unwrap();
    let me = Uuid::new_v4();
    let name = format!("127.0.0.1:7002/{}", "s".repeat(200));
    c.mount_segment(me, seg(&name, 64 << 20)).await.unwrap();
    // 2000 replica lists naming a 215-byte segment: ~480 KiB of answer, from a request far
    // under 64 KiB.
    let keys: Vec<String> = (0..2000).map(|i| format!("o{i}")).collect();
    let items: Vec<(String, u64)> = keys.iter().map(|k| (k.clone(), 64)).collect();
    for chunk in items.chunks(100) {
        let r = c
            .batch_put_start(me, chunk.to_vec(), ReplicateConfig::default())
            .await
            .unwrap();
        assert!(r.iter().all(|x| x.is_ok()));
    }
    for chunk in keys.chunks(100) {
        c.batch_put_end(me, chunk.to_vec()).await.unwrap();
    }
    let (big, small) = tokio::join!(
        c.batch_get_replica_list(keys.clone()),
        c.get_replica_list("o7".into())
    );
    assert_eq!(big, Err(ErrorCode::InvalidParams));
    assert_eq!(small.unwrap()[0].len, 64, "the call beside it was answered");
    m.stop().await;
}
