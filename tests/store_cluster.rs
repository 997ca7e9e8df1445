//! Store client across processes: an embedded master, pool holders as child processes
//! (`mooncake-bench store-holder`), and a reading/writing client in this process, all over
//! real TCP on 127.0.0.1, or through same-host shared memory where a test says so. Every value
//! lives in another process's segment.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, master, master_with, reader, reader_with, value, Holder};
use mooncake_master::service::ServiceConfig;
use store_client::{BufferSlice, ErrorCode, OpKind, ReplicateConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_results_per_key_with_missing_keys_and_invalid_buffers() {
    let m = master(Duration::from_secs(30)).await;
    let addr = m.rpc_addr().to_string();
    let _holder = Holder::spawn(&addr, "64M", 1000);
    let c = reader(&addr, false).await;

    let n = 16usize;
    let size = 8192usize;
    let mut src = vec![0u8; n * size];
    for i in 0..n {
        src[i * size..(i + 1) * size].copy_from_slice(&value(i, size));
    }
    let mut dst = vec![0u8; n * size];
    // SAFETY: both vectors outlive every call using them and are unregistered at the end.
    unsafe {
        c.register_buffer(src.as_mut_ptr(), src.len()).unwrap();
        c.register_buffer(dst.as_mut_ptr(), dst.len()).unwrap();
    }
    let (sb, db) = (src.as_ptr() as u64, dst.as_ptr() as u64);
    let stray = vec![7u8; size]; // never registered
    let mut items: Vec<(String, BufferSlice)> = (0..n)
        .map(|i| {
            (
                format!("obj{i}"),
                BufferSlice::new(sb + (i * size) as u64, size as u64),
            )
        })
        .collect();
    items.push(("outside".into(), BufferSlice::of(&stray)));
    items.push((String::new(), BufferSlice::new(sb, 16)));
    items.push(("obj3".into(), BufferSlice::new(sb, 16)));
    items.push(("empty".into(), BufferSlice::new(sb, 0)));
    let put = c.batch_put_from(&items).await;
    assert_eq!(put.len(), items.len());
    for (i, r) in put[..n].iter().enumerate() {
        assert_eq!(r.value(), Some(&(size as u64)), "key {i}: {r:?}");
    }
    assert_eq!(put[n].code(), ErrorCode::InvalidParams, "{:?}", put[n]);
    assert!(put[n]
        .result
        .as_ref()
        .unwrap_err()
        .message
        .contains("register"));
    assert_eq!(put[n + 1].code(), ErrorCode::InvalidKey);
    assert_eq!(put[n + 2].code(), ErrorCode::InvalidParams, "duplicate");
    assert_eq!(put[n + 3].code(), ErrorCode::InvalidParams, "zero length");
    // The refused keys were never stored.
    let ex = c.batch_exists(&["outside", "empty", "obj0"]).await;
    assert_eq!(
        ex.iter().map(|r| r.value().copied()).collect::<Vec<_>>(),
        vec![Some(false), Some(false), Some(true)]
    );

    // Zero-copy reads: present keys land in place; missing, undersized and unregistered fail alone.
    let mut gets: Vec<(String, BufferSlice)> = (0..n)
        .rev()
        .map(|i| {
            (
                format!("obj{i}"),
                BufferSlice::new(db + (i * size) as u64, size as u64),
            )
        })
        .collect();
    gets.insert(5, ("missing-1".into(), BufferSlice::new(db, size as u64)));
    gets.push(("obj1".into(), BufferSlice::new(db, 100)));
    gets.push(("obj2".into(), BufferSlice::of(&stray)));
    gets.push(("missing-2".into(), BufferSlice::new(db, size as u64)));
    let got = c.batch_get_into(&gets).await;
    assert_eq!(got.len(), gets.len());
    for (k, r) in got.iter().enumerate() {
        match gets[k].0.as_str() {
            "missing-1" | "missing-2" => assert_eq!(r.code(), ErrorCode::ObjectNotFound),
            _ if k == n + 1 => assert_eq!(r.code(), ErrorCode::BufferOverflow),
            _ if k == n + 2 => assert_eq!(r.code(), ErrorCode::InvalidParams),
            _ => assert_eq!(r.value(), Some(&(size as u64)), "{}: {r:?}", gets[k].0),
        }
    }
    // The failed entries targeted slot 0 but never wrote it: slot 0 holds obj0.
    assert_eq!(dst, src, "every present object landed in its own slot");

    // Copying reads of the same mix.
    let keys = ["obj4", "nope", "obj9", "", "obj4"];
    let vals = c.batch_get(&keys).await;
    assert_eq!(vals[0].value(), Some(&value(4, size)));
    assert_eq!(vals[1].code(), ErrorCode::ObjectNotFound);
    assert_eq!(vals[2].value(), Some(&value(9, size)));
    assert_eq!(vals[3].code(), ErrorCode::InvalidKey);
    assert_eq!(vals[4].value(), Some(&value(4, size)));

    let rm = c.batch_remove(&["nope", "outside"]).await;
    assert!(
        rm.iter().all(|r| r.code() == ErrorCode::ObjectNotFound),
        "{rm:?}"
    );
    let snap = c.metrics();
    let bgi = snap.op(OpKind::BatchGetInto).unwrap();
    assert_eq!((bgi.ops, bgi.keys), (1, gets.len() as u64));
    assert_eq!(bgi.errors.get(&ErrorCode::ObjectNotFound.code()), Some(&2));
    assert_eq!(bgi.bytes, (n * size) as u64);
    c.unregister_buffer(src.as_mut_ptr()).unwrap();
    c.unregister_buffer(dst.as_mut_ptr()).unwrap();
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_another_replica_when_a_holder_dies() {
    fall_back_when_a_holder_dies(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_another_replica_when_a_shared_memory_holder_dies() {
    // The reader has the dead holder's pool mapped (the put wrote through it): the mapping
    // must not serve reads once the holder is gone.
    fall_back_when_a_holder_dies(true).await;
}

async fn fall_back_when_a_holder_dies(shm: bool) {
    let m = master(Duration::from_secs(30)).await;
    let addr = m.rpc_addr().to_string();
    let mut holders = [
        Holder::spawn_with(&addr, "32M", 1000, shm),
        Holder::spawn_with(&addr, "32M", 1000, shm),
    ];
    let c = reader_with(&addr, false, shm).await;
    let (keys, vals) = put_objects(&c, "two-copies", 12, |i| 4096 + i, two_copies(None)).await;

    // Every key has a replica in each holder; kill the holder key 0 would be read from first.
    let lists = c
        .master()
        .batch_get_replica_list(keys.clone())
        .await
        .unwrap();
    for l in &lists {
        let l = l.as_ref().unwrap();
        assert_eq!(l.len(), 2);
        assert_ne!(l[0].segment_name, l[1].segment_name);
    }
    let first = lists[0].as_ref().unwrap()[0].segment_name.clone();
    let victim = holders
        .iter()
        .position(|h| h.info.segment == first)
        .expect("holder of key 0");
    let mapped = c.engine().shm_stats();
    assert_eq!(mapped.peers, if shm { 2 } else { 0 }, "{mapped:?}");
    holders[victim].kill();

    let got = c.batch_get(&keys).await;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.value(), Some(&vals[i]), "key {i}: {r:?}");
    }
    assert!(
        c.metrics().op(OpKind::BatchGet).unwrap().retries >= 1,
        "key 0 needed a second replica"
    );
    assert_eq!(c.get(&keys[0]).await.value(), Some(&vals[0]));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_remounts_after_the_master_expired_it() {
    remount_after_expiry(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_holder_remounts_after_the_master_expired_it() {
    // A paused holder's pool stays mapped here; the master's liveness check alone decides
    // that its segment is gone.
    remount_after_expiry(true).await;
}

async fn remount_after_expiry(shm: bool) {
    let m = master(Duration::from_secs(1)).await;
    let addr = m.rpc_addr().to_string();
    let holder = Holder::spawn_with(&addr, "16M", 100, shm);
    let c = reader_with(&addr, false, shm).await;
    assert!(c.put("before", b"v1").await.is_ok());

    // A paused holder stops pinging; the master expires it and drops its segment.
    holder.signal("STOP");
    eventually(
        Duration::from_secs(20),
        "master drops the silent holder's segment",
        || async {
            !c.put(&format!("probe-{:?}", std::time::Instant::now()), b"x")
                .await
                .is_ok()
        },
    )
    .await;
    // Resumed, its next ping answers NEED_REMOUNT and it mounts the segment again.
    holder.signal("CONT");
    let v = value(1, 3000);
    eventually(
        Duration::from_secs(20),
        "holder remounts its segment",
        || async { c.put("after", &v).await.is_ok() },
    )
    .await;
    assert_eq!(c.get("after").await.value(), Some(&v));
    assert_eq!(c.engine().shm_stats().peers > 0, shm);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_outlasts_its_lease_fails_instead_of_answering_bytes() {
    // Once a read lease has run out the master may give the space to another object, so bytes
    // that arrive later cannot be trusted. A paused holder makes the transfer outlast it.
    let (m, holder, lease) = short_lease_cluster().await;
    let addr = m.rpc_addr().to_string();
    let c = reader(&addr, false).await;
    let (keys, vals) =
        put_objects(&c, "leased", 2, |i| 65536 + i, ReplicateConfig::default()).await;
    assert_eq!(
        c.get(&keys[0]).await.value(),
        Some(&vals[0]),
        "a prompt read"
    );

    holder.signal("STOP");
    let lookups = || replica_lookups(&m);
    let before = lookups();
    let one = {
        let (c, key) = (c.clone(), keys[0].clone());
        tokio::spawn(async move { c.get(&key).await })
    };
    let both = {
        let (c, keys) = (c.clone(), keys.clone());
        tokio::spawn(async move { c.batch_get(&keys).await })
    };
    // Both reads have their replicas (and leases) before the lease time starts to run here.
    eventually(Duration::from_secs(20), "both lookups answered", || async {
        lookups() >= before + 2
    })
    .await;
    tokio::time::sleep(lease * 3).await;
    holder.signal("CONT");
    let (one, both) = (one.await.unwrap(), both.await.unwrap());
    assert_eq!(one.code(), ErrorCode::LeaseExpired, "{:?}", one.latency);
    for r in &both {
        assert_eq!(r.code(), ErrorCode::LeaseExpired, "{:?}", r.latency);
    }
    // A new lookup takes a new lease.
    let again = c.batch_get(&keys).await;
    for (r, v) in again.iter().zip(&vals) {
        assert_eq!(r.value(), Some(v));
    }
    c.close().await;
}

/// A holder on a fixed port holding two objects a reader wrote, SIGKILLed and started again
/// on that port: (old, new, reader, keys, values).
async fn restart_holder_on_its_port(
    master: &str,
) -> (
    Holder,
    Holder,
    store_client::Client,
    Vec<String>,
    Vec<Vec<u8>>,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut old = Holder::spawn_at(master, "16M", 1000, false, Some(port));
    let c = reader(master, false).await;
    let (keys, vals) =
        put_objects(&c, "restart", 2, |i| 4096 + i, ReplicateConfig::default()).await;
    assert_eq!(c.get(&keys[0]).await.value(), Some(&vals[0]));
    old.kill();
    let new = Holder::spawn_at(master, "16M", 1000, false, Some(port));
    assert_eq!(
        new.info.segment, old.info.segment,
        "same name, same address"
    );
    (old, new, c, keys, vals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_restarted_on_its_address_replaces_its_dead_predecessor_at_once() {
    // Its TTL is far off, but the new process's mount under the old name shows the old one
    // is gone: the master drops it, its objects with it, and places nothing more there.
    let m = master(Duration::from_secs(30)).await;
    let addr = m.rpc_addr().to_string();
    let (_old, new, c, keys, _vals) = restart_holder_on_its_port(&addr).await;
    let segs = m.service().unwrap().segments();
    assert_eq!(segs.len(), 1, "only the new process's segment");
    assert_eq!(segs[0].segment.base, new.info.base);
    for k in &keys {
        assert_eq!(c.get(k).await.code(), ErrorCode::ObjectNotFound);
    }
    let (keys, vals) = put_objects(&c, "after", 32, |_| 4096, ReplicateConfig::default()).await;
    for (k, v) in keys.iter().zip(&vals) {
        assert_eq!(c.get(k).await.value(), Some(v));
    }
    assert!(m
        .metrics_text()
        .contains("mooncake_master_replaced_clients_total 1"));
    c.close().await;
}

/// A master with a 300 ms read lease (returned) and one 16 MiB holder.
async fn short_lease_cluster() -> (mooncake_master::RunningMaster, Holder, Duration) {
    let lease = Duration::from_millis(300);
    let m = master_with(ServiceConfig {
        lease_ttl: lease,
        client_ttl: Duration::from_secs(30),
        ..ServiceConfig::default()
    })
    .await;
    let holder = Holder::spawn(&m.rpc_addr().to_string(), "16M", 1000);
    (m, holder, lease)
}

/// Replica lookups the master has answered.
fn replica_lookups(m: &mooncake_master::RunningMaster) -> u64 {
    m.metrics_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("mooncake_master_rpc_requests_total{op=\"batch_get_replica_list\"} ")
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_lease_ran_out_while_waiting_for_staging_is_looked_up_again() {
    // The first read holds the whole staging buffer while its paused holder does not answer;
    // the second read waits for staging until its lease has run out. It never started, so it
    // looks its key up again (a new lease) instead of failing.
    let (m, holder, lease) = short_lease_cluster().await;
    let addr = m.rpc_addr().to_string();
    let mut cfg = store_client::ClientConfig::new(&addr)
        .protocol(store_client::Protocol::Tcp)
        .shared_memory(false)
        .segment_size(0)
        .staging_size(1 << 20);
    cfg.ping_interval = Duration::from_millis(200);
    let c = store_client::Client::connect(cfg).await.unwrap();
    let (keys, vals) =
        put_objects(&c, "staged", 2, |_| 768 << 10, ReplicateConfig::default()).await;

    holder.signal("STOP");
    let before = replica_lookups(&m);
    let first = {
        let (c, key) = (c.clone(), keys[0].clone());
        tokio::spawn(async move { c.get(&key).await })
    };
    eventually(Duration::from_secs(20), "first lookup answered", || async {
        replica_lookups(&m) > before
    })
    .await;
    let second = {
        let (c, key) = (c.clone(), keys[1].clone());
        tokio::spawn(async move { c.get(&key).await })
    };
    eventually(
        Duration::from_secs(20),
        "second lookup answered",
        || async { replica_lookups(&m) > before + 1 },
    )
    .await;
    tokio::time::sleep(lease * 3).await;
    holder.signal("CONT");
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(
        first.code(),
        ErrorCode::LeaseExpired,
        "its transfer ended late"
    );
    assert_eq!(second.value(), Some(&vals[1]), "{:?}", second.result);
    assert!(replica_lookups(&m) > before + 2, "looked up again");
    assert!(c.metrics().op(OpKind::Get).is_some_and(|o| o.retries >= 1));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_holder_restarted_on_its_address_are_never_read_from_the_new_one() {
    // The master still lists the dead holder's replicas (its TTL has not run out, and it keeps
    // namesake clients, so the restart does not replace it) when a new process takes over its
    // address: the new process's memory must never answer for them.
    let m = master_with(ServiceConfig {
        client_ttl: Duration::from_secs(30),
        replace_restarted_clients: false,
        ..ServiceConfig::default()
    })
    .await;
    let addr = m.rpc_addr().to_string();
    let (_old, new, c, keys, _vals) = restart_holder_on_its_port(&addr).await;
    assert_eq!(m.service().unwrap().segments().len(), 2, "both mounted");
    for k in &keys {
        let r = c.get(k).await;
        assert_eq!(r.code(), ErrorCode::TransferFail, "{:?}", r.result.err());
    }
    // Once the stale descriptor is gone, the replica is recognised as another process's.
    let r = c.get(&keys[1]).await;
    let e = r.result.expect_err("a read of a dead holder's replica");
    assert!(e.message.contains("holder restarted"), "{e:?}");
    drop(new);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_batcher_gives_each_concurrent_caller_its_own_result() {
    let m = master(Duration::from_secs(30)).await;
    let addr = m.rpc_addr().to_string();
    let _holder = Holder::spawn(&addr, "64M", 1000);
    let c = Arc::new(reader(&addr, true).await);
    assert!(c.auto_batching());
    let tasks = 64usize;
    let per_task = 6usize;
    // One registered region per task for its zero-copy reads.
    let slot = 2048usize;
    let mut region = vec![0u8; tasks * slot];
    // SAFETY: `region` outlives every call using it and is unregistered at the end.
    unsafe {
        c.register_buffer(region.as_mut_ptr(), region.len())
            .unwrap()
    };
    let base = region.as_ptr() as u64;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let id = t * per_task + i;
                    let key = format!("task{t}/item{i}");
                    let v = value(id, 100 + id % 1900);
                    assert_eq!(c.put(&key, &v).await.value(), Some(&(v.len() as u64)));
                    assert_eq!(c.get(&key).await.value(), Some(&v), "{key}");
                    assert_eq!(
                        c.get(&format!("{key}/absent")).await.code(),
                        ErrorCode::ObjectNotFound
                    );
                    let into = BufferSlice::new(base + (t * slot) as u64, slot as u64);
                    assert_eq!(
                        c.get_into(&key, into).await.value(),
                        Some(&(v.len() as u64))
                    );
                    // SAFETY: this task alone uses its slot, and the read into it has finished.
                    let landed =
                        unsafe { std::slice::from_raw_parts(into.addr as *const u8, v.len()) };
                    assert_eq!(landed, v.as_slice(), "{key} zero-copy");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let snap = c.metrics();
    assert_eq!(
        snap.op(OpKind::Get).unwrap().ops,
        (tasks * per_task * 2) as u64
    );
    assert_eq!(
        snap.op(OpKind::Get)
            .unwrap()
            .errors
            .get(&ErrorCode::ObjectNotFound.code()),
        Some(&((tasks * per_task) as u64))
    );
    c.unregister_buffer(region.as_mut_ptr()).unwrap();
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_clients_move_bytes_through_shared_memory() {
    let m = master(Duration::from_secs(30)).await;
    let addr = m.rpc_addr().to_string();
    let _holder = Holder::spawn_with(&addr, "32M", 1000, true);
    let c = reader_with(&addr, false, true).await;
    let cfg = ReplicateConfig::default();
    let (keys, vals) = put_objects(&c, "shm", 24, |i| 1 + i * 4099, cfg).await;
    let got = c.batch_get(&keys).await;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.value(), Some(&vals[i]), "key {i}");
    }
    // Zero-copy into a registered buffer, and a range of one object.
    let mut dst = vec![0u8; vals[7].len()];
    // SAFETY: `dst` outlives its registration (unregistered below).
    unsafe { c.register_buffer(dst.as_mut_ptr(), dst.len()).unwrap() };
    let r = c.get_into(&keys[7], BufferSlice::of(&dst)).await;
    assert_eq!(r.value(), Some(&(vals[7].len() as u64)));
    assert_eq!(dst, vals[7]);
    c.unregister_buffer(dst.as_mut_ptr()).unwrap();

    let s = c.engine().shm_stats();
    assert_eq!(s.peers, 1, "{s:?}");
    assert_eq!(
        c.metrics().shm,
        s,
        "the client's metrics carry the same counters"
    );
    assert!(
        s.requests >= 3,
        "put, get and get_into went through the mapping: {s:?}"
    );
    let total: u64 = vals.iter().map(|v| v.len() as u64).sum();
    assert!(s.bytes >= 2 * total + vals[7].len() as u64, "{s:?}");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_prefer_a_replica_on_this_host() {
    let m = master(Duration::from_secs(30)).await;
    let addr = m.rpc_addr().to_string();
    // One holder shares its pool with this host's clients, the other only serves over TCP
    // (standing for a holder on another host).
    let far = Holder::spawn_with(&addr, "32M", 1000, false);
    let _near = Holder::spawn_with(&addr, "32M", 1000, true);
    let c = reader_with(&addr, false, true).await;
    // The far holder preferred: the master lists its replica first.
    let cfg = two_copies(Some(&far.info.segment));
    let (keys, vals) = put_objects(&c, "two", 32, |i| 2048 + i, cfg).await;
    let lists = c
        .master()
        .batch_get_replica_list(keys.clone())
        .await
        .unwrap();
    let far_first = lists
        .iter()
        .filter(|l| l.as_ref().unwrap()[0].segment_name == far.info.segment)
        .count();
    assert_eq!(far_first, keys.len(), "the far replica is listed first");

    let before = c.engine().shm_stats().requests;
    let got = c.batch_get(&keys).await;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.value(), Some(&vals[i]), "key {i}");
    }
    // Adjacent objects merge into few requests: count bytes, not requests.
    let moved = c.engine().shm_stats().bytes - before;
    let total: u64 = vals.iter().map(|v| v.len() as u64).sum();
    assert!(
        moved >= total,
        "only {moved} of {total} bytes came through shared memory"
    );
    c.close().await;
}

/// Two replicas each, the first in `preferred` if given.
fn two_copies(preferred: Option<&str>) -> ReplicateConfig {
    ReplicateConfig {
        replica_num: 2,
        preferred_segments: preferred.into_iter().map(str::to_string).collect(),
        ..Default::default()
    }
}

/// Stores `n` objects `prefix/i` of `size(i)` bytes with `cfg` in one batch.
async fn put_objects(
    c: &store_client::Client,
    prefix: &str,
    n: usize,
    size: impl Fn(usize) -> usize,
    cfg: ReplicateConfig,
) -> (Vec<String>, Vec<Vec<u8>>) {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}/{i}")).collect();
    let vals: Vec<Vec<u8>> = (0..n).map(|i| value(i, size(i))).collect();
    let items: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&vals)
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let put = c.batch_put_with(&items, &cfg).await;
    assert!(put.iter().all(|r| r.is_ok()), "{put:?}");
    (keys, vals)
}
