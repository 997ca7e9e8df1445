//! The client against a real embedded master and a second client holding the pool, all in
//! this process but talking over real TCP sockets (engine and RPC).

use std::sync::Arc;

use mooncake_master::proto::ClientId;
use mooncake_master::{MasterConfig, MasterServer, RunningMaster};
use store_client::{
    BatchPolicyConfig, BufferSlice, Client, ClientConfig, ErrorCode, OpKind, Protocol,
    ReplicateConfig,
};

async fn cluster(auto_batch: bool) -> (RunningMaster, Client, Client) {
    let master = MasterServer::start(MasterConfig::default()).await.unwrap();
    let addr = master.rpc_addr().to_string();
    let holder = Client::connect(
        ClientConfig::new(&addr)
            .protocol(Protocol::Tcp)
            .segment_size(32 << 20),
    )
    .await
    .unwrap();
    let mut cfg = ClientConfig::new(&addr)
        .protocol(Protocol::Tcp)
        .segment_size(0)
        .staging_size(8 << 20);
    if auto_batch {
        cfg = cfg.auto_batch(BatchPolicyConfig::default());
    }
    let reader = Client::connect(cfg).await.unwrap();
    (master, holder, reader)
}

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_results_per_key_with_partial_failures() {
    let (_m, holder, reader) = cluster(false).await;
    let vals: Vec<Vec<u8>> = (0..8).map(|i| value(i, 4096 + i)).collect();
    let mut items: Vec<(String, Vec<u8>)> =
        (0..8).map(|i| (format!("k{i}"), vals[i].clone())).collect();
    items.push((String::new(), b"x".to_vec())); // empty key
    items.push(("k1".into(), b"dup".to_vec())); // duplicate
    items.push(("zero".into(), Vec::new())); // zero-length
    let put = reader.batch_put(&items).await;
    assert_eq!(put.len(), 11);
    for r in &put[..8] {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(put[8].code(), ErrorCode::InvalidKey);
    assert_eq!(put[9].code(), ErrorCode::InvalidParams);
    assert_eq!(put[10].code(), ErrorCode::InvalidParams);
    // Putting an existing key fails alone.
    let again = reader
        .batch_put(&[("k0", b"new".as_slice()), ("fresh", b"ok".as_slice())])
        .await;
    assert_eq!(again[0].code(), ErrorCode::ObjectAlreadyExists);
    assert!(again[1].is_ok());

    let keys = ["k3", "missing", "k0", "", "k7", "k3"];
    let got = reader.batch_get(&keys).await;
    assert_eq!(got[0].value(), Some(&vals[3]));
    assert_eq!(got[1].code(), ErrorCode::ObjectNotFound);
    assert_eq!(got[2].value(), Some(&vals[0]));
    assert_eq!(got[3].code(), ErrorCode::InvalidKey);
    assert_eq!(got[4].value(), Some(&vals[7]));
    assert_eq!(
        got[5].value(),
        Some(&vals[3]),
        "a repeated key is read for each occurrence"
    );
    // The holder reads its own segment (local replica).
    assert_eq!(holder.get("k5").await.value(), Some(&vals[5]));

    let ex = reader.batch_exists(&["k1", "nope"]).await;
    assert_eq!(ex[0].value(), Some(&true));
    assert_eq!(ex[1].value(), Some(&false));
    let rm = reader.batch_remove(&["fresh", "nope"]).await;
    assert!(rm[0].is_ok());
    assert_eq!(rm[1].code(), ErrorCode::ObjectNotFound);
    assert_eq!(reader.get("fresh").await.code(), ErrorCode::ObjectNotFound);

    let up = reader.upsert("k2", b"replaced").await;
    assert!(up.is_ok(), "{up:?}");
    assert_eq!(
        reader.get("k2").await.value().map(Vec::as_slice),
        Some(&b"replaced"[..])
    );

    let m = reader.metrics();
    let bg = m.op(OpKind::BatchGet).unwrap();
    assert_eq!((bg.ops, bg.keys), (1, 6));
    assert_eq!(bg.errors.get(&ErrorCode::ObjectNotFound.code()), Some(&1));
    assert_eq!(
        bg.bytes,
        (vals[3].len() * 2 + vals[0].len() + vals[7].len()) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_with_multi_buffer_layers_and_invalid_buffers() {
    let (_m, _holder, reader) = cluster(false).await;
    let mut src = vec![0u8; 64 << 10];
    for (i, b) in src.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut dst = vec![0u8; 64 << 10];
    // SAFETY: both vectors outlive the client's use of them and are unregistered below.
    unsafe {
        reader.register_buffer(src.as_mut_ptr(), src.len()).unwrap();
        reader.register_buffer(dst.as_mut_ptr(), dst.len()).unwrap();
    }
    let base = src.as_ptr() as u64;
    // Object "layers" gathered from four 1 KiB layer buffers spread over the source.
    let layers: Vec<BufferSlice> = (0..4)
        .map(|l| BufferSlice::new(base + l * 8192, 1024))
        .collect();
    let outside = vec![0u8; 128];
    let items = vec![
        ("plain".to_string(), vec![BufferSlice::new(base, 4096)]),
        ("layers".to_string(), layers.clone()),
        ("bad".to_string(), vec![BufferSlice::of(&outside)]),
    ];
    let put = reader
        .batch_put_from_parts(&items, &Default::default())
        .await;
    assert!(put[0].is_ok() && put[1].is_ok(), "{put:?}");
    assert_eq!(put[2].code(), ErrorCode::InvalidParams);

    let dbase = dst.as_ptr() as u64;
    let scatter: Vec<BufferSlice> = (0..4)
        .map(|l| BufferSlice::new(dbase + 32768 + l * 4096, 1024))
        .collect();
    let got = reader
        .batch_get_into_parts(&[
            ("plain", vec![BufferSlice::new(dbase, 4096)]),
            ("layers", scatter.clone()),
            ("plain", vec![BufferSlice::new(dbase + 8192, 100)]), // too small
            ("plain", vec![BufferSlice::of(&outside)]),           // not registered
        ])
        .await;
    assert_eq!(got[0].value(), Some(&4096));
    assert_eq!(got[1].value(), Some(&4096));
    assert_eq!(got[2].code(), ErrorCode::BufferOverflow);
    assert_eq!(got[3].code(), ErrorCode::InvalidParams);
    assert_eq!(&dst[..4096], &src[..4096]);
    for l in 0..4usize {
        let d = 32768 + l * 4096;
        let s = l * 8192;
        assert_eq!(&dst[d..d + 1024], &src[s..s + 1024], "layer {l}");
    }
    reader.unregister_buffer(src.as_mut_ptr()).unwrap();
    reader.unregister_buffer(dst.as_mut_ptr()).unwrap();
}

/// Each stored key's group on the master (`""`: none).
fn groups_on_master(m: &RunningMaster, keys: &[&str]) -> Vec<String> {
    let svc = m.service().unwrap();
    let mut all = std::collections::HashMap::new();
    svc.for_each_object(|k, e| {
        all.insert(
            k.to_string(),
            e.group.as_ref().map_or("", |g| g.id()).to_string(),
        );
    });
    keys.iter()
        .map(|k| all.get(*k).cloned().unwrap_or_else(|| "<absent>".into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_puts_carry_each_keys_group_past_the_keys_that_fail() {
    let (m, _holder, reader) = cluster(false).await;
    let mut src = vec![7u8; 16 << 10];
    // SAFETY: the vector outlives the client's use of it and is unregistered below.
    unsafe { reader.register_buffer(src.as_mut_ptr(), src.len()).unwrap() };
    let base = src.as_ptr() as u64;
    // A key that fails in the client (empty) sits between grouped ones: the groups that reach
    // the master must still be those of the keys' own positions.
    let cfg = ReplicateConfig {
        group_ids: vec![
            "g1".into(),
            "g1".into(),
            "g2".into(),
            String::new(),
            "g2".into(),
        ],
        ..Default::default()
    };
    let zc: Vec<(String, Vec<BufferSlice>)> = ["z0", "z1", "", "z3", "z4"]
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                k.to_string(),
                vec![BufferSlice::new(base + i as u64 * 1024, 1024)],
            )
        })
        .collect();
    let put = reader.batch_put_from_parts(&zc, &cfg).await;
    assert_eq!(put[2].code(), ErrorCode::InvalidKey);
    assert!([0, 1, 3, 4].iter().all(|&i| put[i].is_ok()), "{put:?}");
    assert_eq!(
        groups_on_master(&m, &["z0", "z1", "z3", "z4"]),
        ["g1", "g1", "", "g2"]
    );
    let copies: Vec<(&str, &[u8])> = ["c0", "c1", "c1", "c3", "c4"]
        .iter()
        .map(|k| (*k, &src[..100]))
        .collect();
    let put = reader.batch_put_with(&copies, &cfg).await;
    assert_eq!(put[2].code(), ErrorCode::InvalidParams, "duplicate");
    assert_eq!(
        groups_on_master(&m, &["c0", "c1", "c3", "c4"]),
        ["g1", "g1", "", "g2"]
    );
    // Upserts move a key to its new group.
    let up = ReplicateConfig {
        group_ids: vec!["g3".into()],
        ..Default::default()
    };
    let r = reader.batch_upsert_with(&[("c0", &src[..100])], &up).await;
    assert!(r[0].is_ok());
    assert_eq!(groups_on_master(&m, &["c0", "c1"]), ["g3", "g1"]);
    // A count that is not the batch's fails every key, nothing is written.
    for n in [1, 3] {
        let bad = ReplicateConfig {
            group_ids: vec!["g".into(); n],
            ..Default::default()
        };
        let two = [("n0", &src[..10]), ("n1", &src[..10])];
        let r = reader.batch_put_with(&two, &bad).await;
        assert!(
            r.iter().all(|r| r.code() == ErrorCode::InvalidParams),
            "{r:?}"
        );
        let parts = [("n0", vec![BufferSlice::new(base, 10)])];
        let r = reader.batch_upsert_from_parts(&parts, &bad).await;
        assert_eq!(n == 1, r[0].is_ok(), "{r:?}");
    }
    assert_eq!(groups_on_master(&m, &["n0", "n1"]), ["g", "<absent>"]);
    reader.unregister_buffer(src.as_mut_ptr()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_get_their_own_bytes_and_errors() {
    let (_m, holder, reader) = cluster(false).await;
    let a = value(1, 10_000);
    let b = value(2, 300);
    let put = reader.batch_put(&[("ra", &a[..]), ("rb", &b[..])]).await;
    assert!(put.iter().all(|r| r.is_ok()), "{put:?}");
    let mut dst = vec![0u8; 32 << 10];
    // SAFETY: the vector outlives the client's use of it and is unregistered below.
    unsafe { reader.register_buffer(dst.as_mut_ptr(), dst.len()).unwrap() };
    let d = dst.as_ptr() as u64;
    let outside = vec![0u8; 64];
    let items = vec![
        ("ra", 1, BufferSlice::new(d, 4)),              // head of a
        ("ra", 9_000, BufferSlice::new(d + 100, 1000)), // its last 1000 bytes
        ("rb", 2, BufferSlice::new(d + 50, 5)),         // another key, into the gap
        ("ra", 0, BufferSlice::new(d + 2000, 10_000)),  // all of a
        ("ra", 9_999, BufferSlice::new(d + 20_000, 2)), // runs past the end
        ("ra", 5, BufferSlice::new(d + 20_100, 0)),     // empty: reads nothing
        ("missing", 0, BufferSlice::new(d + 20_200, 8)),
        ("rb", 0, BufferSlice::of(&outside)), // not registered
    ];
    let got = reader.batch_get_ranges(&items).await;
    let lens: Vec<Option<u64>> = got.iter().map(|r| r.value().copied()).collect();
    assert_eq!(
        lens,
        vec![
            Some(4),
            Some(1000),
            Some(5),
            Some(10_000),
            None,
            Some(0),
            None,
            None
        ],
        "{got:?}"
    );
    assert_eq!(got[4].code(), ErrorCode::InvalidParams);
    assert_eq!(got[6].code(), ErrorCode::ObjectNotFound);
    assert_eq!(got[7].code(), ErrorCode::InvalidParams);
    assert_eq!(&dst[..4], &a[1..5]);
    assert_eq!(&dst[100..1100], &a[9_000..10_000]);
    assert_eq!(&dst[50..55], &b[2..7]);
    assert_eq!(&dst[2000..12_000], &a[..]);
    assert!(
        dst[20_000..20_300].iter().all(|&x| x == 0),
        "failed ranges wrote nothing"
    );
    // One key asked for many times (looked up once): 100 slices of a, back to back.
    let many: Vec<(&str, u64, BufferSlice)> = (0..100u64)
        .map(|k| ("ra", k * 100, BufferSlice::new(d + 22_000 + k * 100, 100)))
        .collect();
    let got = reader.batch_get_ranges(&many).await;
    assert!(got.iter().all(|r| r.value() == Some(&100)), "{got:?}");
    assert_eq!(&dst[22_000..32_000], &a[..]);
    // The pool holder reads its own replica (the local path).
    let mut mine = vec![0u8; 16];
    // SAFETY: the vector outlives the holder's use of it and is unregistered below.
    unsafe {
        holder
            .register_buffer(mine.as_mut_ptr(), mine.len())
            .unwrap()
    };
    let got = holder
        .batch_get_ranges(&[("rb", 290, BufferSlice::new(mine.as_ptr() as u64, 10))])
        .await;
    assert_eq!(got[0].value(), Some(&10), "{got:?}");
    assert_eq!(&mine[..10], &b[290..300]);
    holder.unregister_buffer(mine.as_mut_ptr()).unwrap();
    reader.unregister_buffer(dst.as_mut_ptr()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_batched_single_calls_each_get_their_own_result() {
    let (_m, _holder, reader) = cluster(true).await;
    let reader = Arc::new(reader);
    let tasks: Vec<_> = (0..32usize)
        .map(|t| {
            let c = reader.clone();
            tokio::spawn(async move {
                for i in 0..8usize {
                    let key = format!("t{t}-{i}");
                    let v = value(t * 100 + i, 512 + t);
                    assert!(c.put(&key, &v).await.is_ok());
                    assert_eq!(c.get(&key).await.value(), Some(&v));
                    assert_eq!(
                        c.get(&format!("none-{t}-{i}")).await.code(),
                        ErrorCode::ObjectNotFound
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let m = reader.metrics();
    assert_eq!(m.op(OpKind::Get).unwrap().ops, 32 * 16);
    assert_eq!(m.op(OpKind::Put).unwrap().ops, 32 * 8);
}

#[test]
fn blocking_facade_and_submit_handles() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let master = rt
        .block_on(MasterServer::start(MasterConfig::default()))
        .unwrap();
    let cfg = ClientConfig::new(master.rpc_addr().to_string())
        .protocol(Protocol::Tcp)
        .segment_size(8 << 20);
    let c = store_client::BlockingClient::connect(cfg).unwrap();
    assert!(c.put("b", b"blocking").is_ok());
    assert_eq!(
        c.get("b").value().map(Vec::as_slice),
        Some(&b"blocking"[..])
    );
    let mut h = c.client().submit_batch_get(vec!["b".into(), "c".into()]);
    let _maybe_early = h.poll();
    let r = c
        .client()
        .submit_batch_get(vec!["b".into(), "c".into()])
        .wait_blocking()
        .unwrap();
    assert_eq!(r[0].value().map(Vec::as_slice), Some(&b"blocking"[..]));
    assert_eq!(r[1].code(), ErrorCode::ObjectNotFound);
    c.close();
    drop(c);
    drop(master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_drop_unmount_the_segment() {
    let master = MasterServer::start(MasterConfig::default()).await.unwrap();
    let addr = master.rpc_addr().to_string();
    let writer = Client::connect(
        ClientConfig::new(&addr)
            .protocol(Protocol::Tcp)
            .segment_size(0),
    )
    .await
    .unwrap();
    // No pool yet: nowhere to place a value.
    assert_eq!(
        writer.put("a", b"x").await.code(),
        ErrorCode::NoAvailableHandle
    );
    for way in ["close", "drop"] {
        let holder = Client::connect(
            ClientConfig::new(&addr)
                .protocol(Protocol::Tcp)
                .segment_size(1 << 20),
        )
        .await
        .unwrap();
        let key = format!("k-{way}");
        assert!(writer.put(&key, b"v").await.is_ok(), "{way}: pool mounted");
        if way == "close" {
            holder.close().await;
        } else {
            drop(holder);
        }
        // Unmounting takes the holder's objects out of the pool.
        let mut tries = 0;
        while writer.exists(&key).await.value() != Some(&false) {
            tries += 1;
            assert!(tries < 200, "{way}: segment still mounted");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            writer.put("later", b"x").await.code(),
            ErrorCode::NoAvailableHandle,
            "{way}"
        );
    }
}

/// Calls cancelled mid-flight (a caller's timeout) must neither leak engine batches nor let a
/// later call's staging range be overwritten by a cancelled call's transfers: a read of other
/// keys right after each cancelled read returns exactly its own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_leave_staging_and_batches_intact() {
    let (_m, _holder, reader) = cluster(false).await;
    let n = 64;
    let put = |prefix: &'static str, seed: usize| {
        let vals: Vec<Vec<u8>> = (0..n).map(|i| value(seed + i, 16 << 10)).collect();
        let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        (keys, vals)
    };
    let (a_keys, a_vals) = put("a", 0);
    let (b_keys, b_vals) = put("b", 1000);
    for (keys, vals) in [(&a_keys, &a_vals), (&b_keys, &b_vals)] {
        let items: Vec<(&str, &[u8])> = keys
            .iter()
            .zip(vals)
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert!(reader.batch_put(&items).await.iter().all(|r| r.is_ok()));
    }
    for round in 0..300u64 {
        // Timeouts from 0 to ~300 µs cancel the A read at every stage of its life.
        let limit = std::time::Duration::from_micros(round);
        let _ = tokio::time::timeout(limit, reader.batch_get(&a_keys)).await;
        let got = reader.batch_get(&b_keys).await;
        for (i, r) in got.iter().enumerate() {
            assert_eq!(
                r.value(),
                Some(&b_vals[i]),
                "round {round}, key b{i}: {:?}",
                r.result.as_ref().err()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_per_key_and_remove_all() {
    let (_m, holder, reader) = cluster(false).await;
    let items: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("sized{i}"), value(i, 100 + 1000 * i)))
        .collect();
    assert!(reader.batch_put(&items).await.iter().all(|r| r.is_ok()));
    assert_eq!(reader.get_size("sized3").await.value(), Some(&3100));
    let sizes = reader
        .batch_get_size(&["sized0", "nope", "", "sized4"])
        .await;
    assert_eq!(sizes[0].value(), Some(&100));
    assert_eq!(sizes[1].code(), ErrorCode::ObjectNotFound);
    assert_eq!(sizes[2].code(), ErrorCode::InvalidKey);
    assert_eq!(sizes[3].value(), Some(&4100));
    let m = reader.metrics();
    assert_eq!(m.op(OpKind::BatchGetSize).map(|o| o.keys), Some(5));

    // The size lookups leased three objects: a plain removal takes the other two, a forced
    // one the rest.
    assert_eq!(
        reader.remove_by_regex("^sized[12]$", false).await.unwrap(),
        2
    );
    assert!(matches!(
        reader.remove_by_regex("(", false).await,
        Err(store_client::ClientError::Refused {
            code: ErrorCode::InvalidParams,
            ..
        })
    ));
    assert_eq!(reader.remove_all(false).await.unwrap(), 0);
    assert_eq!(reader.remove_all(true).await.unwrap(), 3);
    assert_eq!(
        reader.get_size("sized3").await.code(),
        ErrorCode::ObjectNotFound
    );
    assert_eq!(holder.remove_all(false).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_in_reserved_huge_pages_hold_objects_or_fall_back() {
    use transfer_engine::{available_reserved_huge_pages, reserved_huge_page_size};
    let master = MasterServer::start(MasterConfig::default()).await.unwrap();
    let addr = master.rpc_addr().to_string();
    const SEGMENT: usize = 8 << 20;
    let page = reserved_huge_page_size().unwrap_or(2 << 20);
    let needed = SEGMENT.div_ceil(page);
    let before = available_reserved_huge_pages().unwrap_or(0);
    let holder = Client::connect(
        ClientConfig::new(&addr)
            .protocol(Protocol::Tcp)
            .segment_size(SEGMENT as u64)
            .reserved_huge_pages(true),
    )
    .await
    .unwrap();
    let after = available_reserved_huge_pages().unwrap_or(0);
    let took = before.saturating_sub(after);
    // Either the whole segment in huge pages or none (a fallback); with a margin available
    // (CI reserves 64 pages), the former.
    assert!(took == 0 || took >= needed, "{before} -> {after}");
    if before >= needed + 4 {
        assert!(took >= needed, "{before} available before, {after} after");
    }
    // Asking for more than is available falls back to ordinary pages (checked only where
    // that is a small amount of ordinary memory).
    let too_many = (after + 8) * page;
    if too_many <= 256 << 20 {
        let fallback = Client::connect(
            ClientConfig::new(&addr)
                .protocol(Protocol::Tcp)
                .segment_size(too_many as u64)
                .reserved_huge_pages(true),
        )
        .await
        .unwrap();
        fallback.close().await;
    }

    let reader = Client::connect(
        ClientConfig::new(&addr)
            .protocol(Protocol::Tcp)
            .segment_size(0),
    )
    .await
    .unwrap();
    let keys: Vec<String> = (0..16).map(|i| format!("huge/{i}")).collect();
    let values: Vec<Vec<u8>> = (0..16).map(|i| value(i, 256 << 10)).collect();
    let items: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert!(reader.batch_put(&items).await.iter().all(|r| r.is_ok()));
    let got = reader.batch_get(&keys).await;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.value(), Some(&values[i]), "key {i}");
    }
    assert!(
        reader.metrics().shm.requests > 0,
        "the holder's pool was mapped by the reader"
    );
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_upserts_overwrite_and_forced_removes_take_leased_keys() {
    let (m, _holder, reader) = cluster(false).await;
    let mut src: Vec<u8> = (0..8192usize).map(|i| (i % 249) as u8).collect();
    // SAFETY: `src` outlives the client's use of it and is unregistered below.
    unsafe { reader.register_buffer(src.as_mut_ptr(), src.len()) }.unwrap();
    let base = src.as_ptr() as u64;
    let (lo, hi) = (
        BufferSlice::new(base, 4096),
        BufferSlice::new(base + 4096, 4096),
    );
    let cfg = Default::default();
    let new = reader
        .batch_upsert_from_parts(&[("u/a", vec![lo]), ("u/b", vec![lo])], &cfg)
        .await;
    assert!(new.iter().all(|r| r.is_ok()), "{new:?}");
    // Same size (in place) and another size (new space), with no read in between.
    let again = reader
        .batch_upsert_from_parts(
            &[
                ("u/a", vec![hi]),
                ("u/b", vec![BufferSlice::new(base + 4096, 1000)]),
            ],
            &cfg,
        )
        .await;
    assert!(again.iter().all(|r| r.is_ok()), "{again:?}");
    assert_eq!(reader.get("u/a").await.value(), Some(&src[4096..].to_vec()));
    assert_eq!(
        reader.get("u/b").await.value(),
        Some(&src[4096..5096].to_vec())
    );
    // The reads leased both keys: an upsert still replaces the value (in new space; the old
    // bytes stay for the lease's readers).
    let leased = reader
        .batch_upsert_from_parts(&[("u/a", vec![lo])], &cfg)
        .await;
    assert!(leased[0].is_ok(), "{leased:?}");
    assert_eq!(reader.get("u/a").await.value(), Some(&src[..4096].to_vec()));
    // A key another client is still writing is not this caller's to overwrite.
    let service = m.service().unwrap();
    let other = ClientId::from_u128(0x5eed);
    let started = service
        .batch_put_start(other, vec![("u/busy", 4096u64)], &cfg, false)
        .unwrap();
    assert!(started[0].is_ok(), "{started:?}");
    let busy = reader
        .batch_upsert_from_parts(&[("u/busy", vec![lo])], &cfg)
        .await;
    assert_eq!(busy[0].code(), ErrorCode::ObjectAlreadyExists);
    // Copying upserts with an explicit config.
    for v in [&b"one"[..], b"three"] {
        let r = reader.batch_upsert_with(&[("u/c", v)], &cfg).await;
        assert!(r[0].is_ok(), "{r:?}");
    }
    assert_eq!(
        reader.get("u/c").await.value().map(Vec::as_slice),
        Some(&b"three"[..])
    );
    // Removes: without force leased and unfinished keys stay, with force they go.
    let kept = reader
        .batch_remove_with(&["u/a", "u/busy", "nope"], false)
        .await;
    let codes: Vec<_> = kept.iter().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [
            ErrorCode::ObjectHasLease,
            ErrorCode::ReplicaIsNotReady,
            ErrorCode::ObjectNotFound
        ]
    );
    let forced = reader
        .batch_remove_with(&["u/a", "u/busy", "nope"], true)
        .await;
    assert!(forced[0].is_ok() && forced[1].is_ok(), "{forced:?}");
    assert_eq!(forced[2].code(), ErrorCode::ObjectNotFound);
    let gone = reader.batch_exists(&["u/a", "u/busy", "u/b"]).await;
    let gone: Vec<_> = gone.iter().map(|r| r.value().copied()).collect();
    assert_eq!(gone, [Some(false), Some(false), Some(true)]);
    reader.unregister_buffer(src.as_mut_ptr()).unwrap();
}
