//! State-machine tests with a manual clock.

use super::*;
use crate::clock::ManualClock;
use crate::proto::ReplicaStatus;
use proptest::prelude::*;
use uuid::Uuid;

const SEG: u64 = 1 << 20;

struct Fixture {
    clock: Arc<ManualClock>,
    svc: MasterService,
}

fn fixture(cfg: ServiceConfig) -> Fixture {
    let clock = Arc::new(ManualClock::new(1_000));
    let svc = MasterService::new(cfg, clock.clone());
    Fixture { clock, svc }
}

fn segment(name: &str, size: u64) -> Segment {
    Segment {
        id: Uuid::new_v4(),
        name: name.to_string(),
        base: 0x7f00_0000_0000,
        size,
    }
}

fn items(keys: &[&str], size: u64) -> Vec<(String, u64)> {
    keys.iter().map(|k| (k.to_string(), size)).collect()
}

fn keys(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

fn put(
    svc: &MasterService,
    c: ClientId,
    key: &str,
    size: u64,
) -> Result<Vec<ReplicaDescriptor>, ErrorCode> {
    let d = svc
        .batch_put_start(c, items(&[key], size), &ReplicateConfig::default(), false)
        .unwrap()
        .remove(0)?;
    svc.batch_put_end(c, &keys(&[key])).unwrap().remove(0)?;
    Ok(d)
}

/// Writes `names` (`size` bytes each) hard-pinned, as one batch; panics if any fails.
fn put_hard_pinned(svc: &MasterService, c: ClientId, names: &[&str], size: u64) {
    let hard = ReplicateConfig {
        hard_pin: true,
        ..Default::default()
    };
    for r in svc
        .batch_put_start(c, items(names, size), &hard, false)
        .unwrap()
    {
        r.unwrap();
    }
    for r in svc.batch_put_end(c, &keys(names)).unwrap() {
        r.unwrap();
    }
}

/// Every replica in the index, as (segment, addr, len); panics if two overlap.
fn assert_no_overlap(svc: &MasterService) -> usize {
    let mut all: Vec<(SegmentId, u64, u64)> = Vec::new();
    svc.for_each_object(|_, e| {
        for r in &e.replicas {
            all.push((r.segment().segment.id, r.addr(), r.len()));
        }
    });
    all.sort();
    for w in all.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(w[0].1 + w[0].2 <= w[1].1, "overlap: {:?} {:?}", w[0], w[1]);
        }
    }
    all.len()
}

#[test]
fn object_lifecycle_processing_then_complete_and_immutable() {
    let f = fixture(ServiceConfig::default());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    f.svc.mount_segment(a, segment("h1:1", SEG)).unwrap();
    let r = f
        .svc
        .batch_put_start(
            a,
            items(&["k", "k", ""], 100),
            &ReplicateConfig::default(),
            false,
        )
        .unwrap();
    let d = r[0].clone().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, ReplicaStatus::Processing);
    assert_eq!(d[0].len, 100);
    assert_eq!(
        r[1],
        Err(ErrorCode::ObjectAlreadyExists),
        "second in the same batch"
    );
    assert_eq!(r[2], Err(ErrorCode::InvalidKey));
    assert_eq!(
        f.svc.batch_get_replica_list(&keys(&["k"])).unwrap()[0],
        Err(ErrorCode::ReplicaIsNotReady)
    );
    assert_eq!(f.svc.batch_exist_key(&keys(&["k"])).unwrap()[0], Ok(false));
    assert_eq!(
        f.svc.batch_put_end(b, &keys(&["k"])).unwrap()[0],
        Err(ErrorCode::IllegalClient)
    );
    assert_eq!(
        f.svc.batch_put_end(a, &keys(&["k", "nope"])).unwrap(),
        vec![Ok(()), Err(ErrorCode::ObjectNotFound)]
    );
    let got = f.svc.batch_get_replica_list(&keys(&["k"])).unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(got[0].addr, d[0].addr);
    assert_eq!(got[0].status, ReplicaStatus::Complete);
    assert_eq!(f.svc.batch_exist_key(&keys(&["k"])).unwrap()[0], Ok(true));
    // Immutable.
    assert_eq!(
        put(&f.svc, b, "k", 100),
        Err(ErrorCode::ObjectAlreadyExists)
    );
    assert_eq!(
        f.svc.batch_put_end(a, &keys(&["k"])).unwrap()[0],
        Err(ErrorCode::InvalidWrite)
    );
    assert_eq!(
        f.svc.batch_put_revoke(a, &keys(&["k"])).unwrap()[0],
        Err(ErrorCode::InvalidWrite)
    );
}

#[test]
fn zero_size_bad_replica_num_and_no_segments() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    let cfg = ReplicateConfig::default();
    assert_eq!(
        f.svc
            .batch_put_start(a, items(&["k"], 10), &cfg, false)
            .unwrap()[0],
        Err(ErrorCode::NoAvailableHandle)
    );
    f.svc.mount_segment(a, segment("h1:1", SEG)).unwrap();
    assert_eq!(
        f.svc
            .batch_put_start(a, items(&["k"], 0), &cfg, false)
            .unwrap()[0],
        Err(ErrorCode::InvalidParams)
    );
    let zero = ReplicateConfig {
        replica_num: 0,
        ..Default::default()
    };
    assert_eq!(
        f.svc.batch_put_start(a, items(&["k"], 10), &zero, false),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        f.svc
            .batch_put_start(a, items(&["k"], SEG + 1), &cfg, false)
            .unwrap()[0],
        Err(ErrorCode::NoAvailableHandle)
    );
}

#[test]
fn revoke_frees_space_at_once() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", SEG)).unwrap();
    f.svc
        .batch_put_start(a, items(&["k"], SEG), &ReplicateConfig::default(), false)
        .unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(f.svc.usage(), (SEG, SEG));
    assert_eq!(f.svc.batch_put_revoke(a, &keys(&["k"])).unwrap()[0], Ok(()));
    assert_eq!(f.svc.usage(), (SEG, 0));
    assert!(put(&f.svc, a, "k", SEG).is_ok(), "key and space reusable");
}

#[test]
fn stale_processing_is_taken_over_and_its_space_released_later() {
    let cfg = ServiceConfig::default();
    let f = fixture(cfg.clone());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    f.svc.mount_segment(a, segment("h1:1", SEG)).unwrap();
    f.svc
        .batch_put_start(a, items(&["k"], 1000), &ReplicateConfig::default(), false)
        .unwrap()[0]
        .clone()
        .unwrap();
    f.clock.advance_ms(ms(cfg.put_discard_timeout) - 1);
    assert_eq!(
        put(&f.svc, b, "k", 1000),
        Err(ErrorCode::ObjectAlreadyExists)
    );
    f.clock.advance_ms(1);
    put(&f.svc, b, "k", 1000).unwrap();
    assert_eq!(f.svc.usage().1, 2048, "old space is not reused yet");
    assert_eq!(
        f.svc.batch_put_end(a, &keys(&["k"])).unwrap()[0],
        Err(ErrorCode::InvalidWrite),
        "old writer lost it"
    );
    f.clock.advance_ms(ms(cfg.put_release_timeout));
    f.svc.ping(a);
    f.svc.tick();
    assert_eq!(f.svc.usage().1, 1024);
}

#[test]
fn tick_discards_stale_processing_keys() {
    let cfg = ServiceConfig::default();
    let f = fixture(cfg.clone());
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", SEG)).unwrap();
    f.svc
        .batch_put_start(a, items(&["k"], 1000), &ReplicateConfig::default(), false)
        .unwrap();
    f.svc.ping(a);
    f.clock.advance_ms(ms(cfg.put_discard_timeout));
    f.svc.ping(a);
    f.svc.tick();
    assert_eq!(f.svc.key_count(), 0, "no key stays stuck in PROCESSING");
    assert_eq!(f.svc.stats.discarded_processing.load(Ordering::Relaxed), 1);
}

#[test]
fn dead_client_loses_segments_replicas_and_processing_writes_then_remounts() {
    let cfg = ServiceConfig::default();
    let f = fixture(cfg.clone());
    let (holder, other) = (Uuid::new_v4(), Uuid::new_v4());
    let seg = segment("h1:1", SEG);
    f.svc.mount_segment(holder, seg.clone()).unwrap();
    f.svc.mount_segment(other, segment("h2:1", SEG)).unwrap();
    let pin_h = ReplicateConfig {
        preferred_segments: vec!["h1:1".into()],
        ..Default::default()
    };
    let r = f
        .svc
        .batch_put_start(other, items(&["in-holder"], 100), &pin_h, false)
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap()[0].segment_id, seg.id);
    f.svc.batch_put_end(other, &keys(&["in-holder"])).unwrap();
    let pin_o = ReplicateConfig {
        preferred_segments: vec!["h2:1".into()],
        ..Default::default()
    };
    f.svc
        .batch_put_start(holder, items(&["holder-writing"], 100), &pin_o, false)
        .unwrap()[0]
        .clone()
        .unwrap();
    for _ in 0..11 {
        f.clock.advance_ms(1000);
        assert!(!f.svc.ping(other).need_remount);
        f.svc.tick();
    }
    assert_eq!(
        f.svc.batch_get_replica_list(&keys(&["in-holder"])).unwrap()[0],
        Err(ErrorCode::ObjectNotFound)
    );
    assert_eq!(
        f.svc.key_count(),
        0,
        "the dead writer's PROCESSING key is discarded too"
    );
    assert_eq!(f.svc.segment_count(), 1);
    assert!(f.svc.ping(holder).need_remount);
    f.svc
        .remount_segments(holder, vec![seg.clone()], vec![])
        .unwrap();
    assert!(!f.svc.ping(holder).need_remount);
    // Readers may hold leases on the forgotten bytes: the remounted segment takes new
    // replicas only after a lease TTL.
    let d = f
        .svc
        .batch_put_start(other, items(&["again"], 100), &pin_h, false)
        .unwrap();
    assert_ne!(d[0].as_ref().unwrap()[0].segment_id, seg.id);
    f.clock.advance_ms(ms(cfg.lease_ttl));
    f.svc.ping(other);
    f.svc.ping(holder);
    let d = f
        .svc
        .batch_put_start(other, items(&["again2"], 100), &pin_h, false)
        .unwrap();
    assert_eq!(d[0].as_ref().unwrap()[0].segment_id, seg.id);
}

#[test]
fn leases_block_removal_without_force_and_delay_forced_release() {
    let cfg = ServiceConfig::default();
    let f = fixture(cfg.clone());
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", SEG)).unwrap();
    put(&f.svc, a, "k", 1000).unwrap();
    assert_eq!(
        f.svc.batch_remove(&keys(&["k"]), false).unwrap()[0],
        Ok(()),
        "no lease yet"
    );
    put(&f.svc, a, "k", 1000).unwrap();
    f.svc.batch_get_replica_list(&keys(&["k"])).unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(
        f.svc.batch_remove(&keys(&["k"]), false).unwrap()[0],
        Err(ErrorCode::ObjectHasLease)
    );
    assert_eq!(f.svc.remove_all(false), 0);
    assert_eq!(f.svc.batch_remove(&keys(&["k"]), true).unwrap()[0], Ok(()));
    assert_eq!(f.svc.usage().1, 1024, "a reader may still be reading");
    f.clock.advance_ms(ms(cfg.lease_ttl));
    f.svc.tick();
    assert_eq!(f.svc.usage().1, 0);
    put(&f.svc, a, "k2", 1000).unwrap();
    f.clock.advance_ms(1);
    assert_eq!(f.svc.remove_all(false), 1);
}

#[test]
fn upsert_reuses_equal_size_buffers_and_keeps_leased_bytes_for_their_readers() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    let cfg = ReplicateConfig::default();
    f.svc.mount_segment(a, segment("h1:1", SEG)).unwrap();
    let d1 = put(&f.svc, a, "k", 1000).unwrap();
    let d2 = f
        .svc
        .batch_put_start(a, items(&["k"], 1000), &cfg, true)
        .unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(d1[0].addr, d2[0].addr);
    assert_eq!(d2[0].status, ReplicaStatus::Processing);
    f.svc.batch_put_end(a, &keys(&["k"])).unwrap()[0].unwrap();
    let d3 = f
        .svc
        .batch_put_start(a, items(&["k"], 5000), &cfg, true)
        .unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(d3[0].len, 5000);
    assert_eq!(f.svc.usage().1, 5056);
    f.svc.batch_put_end(a, &keys(&["k"])).unwrap()[0].unwrap();
    f.svc.batch_get_replica_list(&keys(&["k"])).unwrap();
    // Leased: the new value goes to new space; the old stays readable where its readers were
    // told it is until their lease ends.
    let d4 = f
        .svc
        .batch_put_start(a, items(&["k"], 5000), &cfg, true)
        .unwrap()[0]
        .clone()
        .unwrap();
    assert_ne!(d4[0].addr, d3[0].addr);
    f.svc.batch_put_end(a, &keys(&["k"])).unwrap()[0].unwrap();
    assert_eq!(
        f.svc.usage().1,
        2 * 5056,
        "the old bytes are kept for their readers"
    );
    f.clock.advance_ms(ms(ServiceConfig::default().lease_ttl));
    f.svc.tick();
    assert_eq!(f.svc.usage().1, 5056, "and released when the lease ends");
    let now = f.svc.batch_get_replica_list(&keys(&["k"])).unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(now[0].addr, d4[0].addr);
    // Upsert of a new key is a put.
    assert!(f
        .svc
        .batch_put_start(a, items(&["new"], 10), &cfg, true)
        .unwrap()[0]
        .is_ok());
}

/// One shard, one 4 KiB segment filled by objects a, b, c and d (1 KiB each, written 1 ms
/// apart in that order), evicting `ratio` of the candidates per pass.
fn four_in_a_full_pool(ratio: f64) -> (Fixture, ClientId) {
    let f = fixture(ServiceConfig {
        eviction_ratio: ratio,
        shards: 1,
        ..Default::default()
    });
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", 4096)).unwrap();
    for k in ["a", "b", "c", "d"] {
        put(&f.svc, a, k, 1024).unwrap();
        f.clock.advance_ms(1);
    }
    (f, a)
}

#[test]
fn full_pool_evicts_unleased_objects_to_make_room() {
    let (f, a) = four_in_a_full_pool(0.5);
    f.svc.batch_get_replica_list(&keys(&["a"])).unwrap()[0]
        .clone()
        .unwrap();
    // Full: the next put evicts the oldest unleased (b) and succeeds.
    put(&f.svc, a, "e", 1024).unwrap();
    let ex = f.svc.batch_exist_key(&keys(&["a", "b", "e"])).unwrap();
    assert_eq!(ex, vec![Ok(true), Ok(false), Ok(true)]);
    assert!(f.svc.stats.evicted_objects.load(Ordering::Relaxed) >= 1);
}

#[test]
fn nothing_evictable_means_no_available_handle() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", 2048)).unwrap();
    put_hard_pinned(&f.svc, a, &["p"], 1024);
    put(&f.svc, a, "l", 1024).unwrap();
    f.svc.batch_get_replica_list(&keys(&["l"])).unwrap();
    assert_eq!(put(&f.svc, a, "x", 1024), Err(ErrorCode::NoAvailableHandle));
    assert_eq!(f.svc.key_count(), 2);
}

#[test]
fn watermark_tick_evicts_but_spares_leased_and_hard_pinned() {
    let f = fixture(ServiceConfig {
        eviction_ratio: 1.0,
        ..Default::default()
    });
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", 100 * 1024)).unwrap();
    let hard = ReplicateConfig {
        hard_pin: true,
        ..Default::default()
    };
    for i in 0..95 {
        let k = format!("k{i}");
        let c = if i % 10 == 0 {
            hard.clone()
        } else {
            ReplicateConfig::default()
        };
        f.svc
            .batch_put_start(a, vec![(k.clone(), 1024)], &c, false)
            .unwrap()[0]
            .clone()
            .unwrap();
        f.svc.batch_put_end(a, &[k]).unwrap();
    }
    let leased: Vec<String> = (1..95).step_by(7).map(|i| format!("k{i}")).collect();
    f.svc.batch_get_replica_list(&leased).unwrap();
    f.svc.tick();
    let mut left = Vec::new();
    f.svc.for_each_object(|k, _| left.push(k.to_string()));
    for i in (0..95).step_by(10) {
        assert!(left.contains(&format!("k{i}")), "hard-pinned k{i} evicted");
    }
    for k in &leased {
        assert!(left.contains(k), "leased {k} evicted");
    }
    assert!(left.len() < 95);
}

#[test]
fn soft_pinned_objects_go_last() {
    let f = fixture(ServiceConfig {
        eviction_ratio: 1.0,
        shards: 1,
        ..Default::default()
    });
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", 1 << 20)).unwrap();
    let soft = ReplicateConfig {
        soft_pin: true,
        ..Default::default()
    };
    f.svc
        .batch_put_start(a, items(&["s"], 100), &soft, false)
        .unwrap();
    f.svc.batch_put_end(a, &keys(&["s"])).unwrap();
    put(&f.svc, a, "u", 100).unwrap();
    assert_eq!(f.svc.evict(f.clock.now_ms(), false), 1);
    assert_eq!(
        f.svc.batch_exist_key(&keys(&["s", "u"])).unwrap(),
        vec![Ok(true), Ok(false)]
    );
    f.clock.advance_ms(ms(f.svc.config().lease_ttl));
    assert_eq!(
        f.svc.evict(f.clock.now_ms(), false),
        1,
        "only soft-pinned left: evicted"
    );
}

#[test]
fn a_batch_is_placed_back_to_back_in_input_order() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", SEG)).unwrap();
    put(&f.svc, a, "k5", 100).unwrap();
    let names: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
    // The keys' shard order is not their input order (else this would hold trivially).
    let groups = f.svc.index.group(names.len(), |i| &names[i]);
    let by_shard: Vec<u32> = groups.iter().flat_map(|(_, pos)| pos.to_vec()).collect();
    assert!(by_shard.windows(2).any(|w| w[0] > w[1]));
    let r = f
        .svc
        .batch_put_start(
            a,
            names.iter().map(|k| (k.clone(), 4096)).collect(),
            &ReplicateConfig::default(),
            false,
        )
        .unwrap();
    assert_eq!(r[5], Err(ErrorCode::ObjectAlreadyExists));
    let addrs: Vec<u64> = r
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 5)
        .map(|(_, d)| d.as_ref().unwrap()[0].addr)
        .collect();
    for w in addrs.windows(2) {
        assert_eq!(w[1], w[0] + 4096, "input order, back to back");
    }
    assert_eq!(f.svc.usage().1, 63 * 4096 + 128, "nothing else held");
    assert_eq!(assert_no_overlap(&f.svc), 64);
}

#[test]
fn a_batch_that_does_not_fit_evicts_then_is_placed_together() {
    let f = fixture(ServiceConfig {
        eviction_ratio: 1.0,
        shards: 1,
        ..Default::default()
    });
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", 8192)).unwrap();
    put(&f.svc, a, "old1", 4096).unwrap();
    put(&f.svc, a, "old2", 4096).unwrap();
    let r = f
        .svc
        .batch_put_start(
            a,
            items(&["n1", "n2"], 4096),
            &ReplicateConfig::default(),
            false,
        )
        .unwrap();
    let n1 = r[0].as_ref().unwrap()[0].addr;
    assert_eq!(r[1].as_ref().unwrap()[0].addr, n1 + 4096);
    assert_eq!(
        f.svc.batch_exist_key(&keys(&["old1", "old2"])).unwrap(),
        vec![Ok(false), Ok(false)]
    );
}

#[test]
fn replicas_land_on_distinct_segments_best_effort() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    for n in ["h1:1", "h2:1", "h3:1"] {
        f.svc
            .mount_segment(Uuid::new_v4(), segment(n, SEG))
            .unwrap();
    }
    let three = ReplicateConfig {
        replica_num: 3,
        ..Default::default()
    };
    let d = f
        .svc
        .batch_put_start(a, items(&["k"], 100), &three, false)
        .unwrap()[0]
        .clone()
        .unwrap();
    let mut names: Vec<_> = d.iter().map(|r| r.segment_name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3);
    let five = ReplicateConfig {
        replica_num: 5,
        ..Default::default()
    };
    let d = f
        .svc
        .batch_put_start(a, items(&["k2"], 100), &five, false)
        .unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(d.len(), 3, "best effort");
}

#[test]
fn mount_rejects_duplicates_and_overlaps_and_unmount_drops_replicas() {
    let f = fixture(ServiceConfig::default());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let s = segment("h1:1", SEG);
    f.svc.mount_segment(a, s.clone()).unwrap();
    f.svc.mount_segment(a, s.clone()).unwrap();
    assert_eq!(
        f.svc.mount_segment(b, s.clone()),
        Err(ErrorCode::SegmentAlreadyExists)
    );
    let overlapping = Segment {
        id: Uuid::new_v4(),
        base: s.base + 10,
        ..s.clone()
    };
    assert_eq!(
        f.svc.mount_segment(a, overlapping),
        Err(ErrorCode::SegmentAlreadyExists)
    );
    assert_eq!(
        f.svc.mount_segment(a, segment("h1:1", 0)),
        Err(ErrorCode::InvalidParams)
    );
    put(&f.svc, a, "k", 10).unwrap();
    assert_eq!(
        f.svc.unmount_segment(b, s.id),
        Err(ErrorCode::IllegalClient)
    );
    f.svc.unmount_segment(a, s.id).unwrap();
    assert_eq!(
        f.svc.batch_get_replica_list(&keys(&["k"])).unwrap()[0],
        Err(ErrorCode::ObjectNotFound)
    );
    assert_eq!(
        f.svc.unmount_segment(a, s.id),
        Err(ErrorCode::SegmentNotFound)
    );
}

#[test]
fn recovery_window_blocks_allocation_and_reported_objects_are_kept() {
    let cfg = ServiceConfig {
        recovery_window: Duration::from_secs(10),
        ..Default::default()
    };
    let old = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    let s = segment("h1:1", 64 * 1024);
    old.svc.mount_segment(a, s.clone()).unwrap();
    let mut held = Vec::new();
    for i in 0..16 {
        let k = format!("k{i}");
        let d = put(&old.svc, a, &k, 1000).unwrap();
        held.push(HeldObject {
            key: k,
            size: 1000,
            replicas: d,
        });
    }
    // A new leader: empty state, recovery window.
    let f = fixture(cfg);
    assert!(f.svc.ping(a).need_remount);
    assert_eq!(
        f.svc
            .batch_put_start(a, items(&["x"], 10), &ReplicateConfig::default(), false),
        Err(ErrorCode::UnavailableInCurrentStatus)
    );
    let mut reports = held.clone();
    reports.push(HeldObject {
        key: "clash".into(),
        size: 1000,
        replicas: held[0].replicas.clone(),
    });
    reports.push(HeldObject {
        key: "bad".into(),
        size: 10,
        replicas: held[1].replicas.clone(),
    });
    let r = f.svc.remount_segments(a, vec![s.clone()], reports).unwrap();
    assert!(r[..16].iter().all(|r| r.is_ok()));
    assert_eq!(
        r[16],
        Err(ErrorCode::InvalidReplica),
        "overlaps a reported object"
    );
    assert_eq!(r[17], Err(ErrorCode::InvalidReplica), "length mismatch");
    // Idempotent re-report.
    assert_eq!(
        f.svc
            .remount_segments(a, vec![s.clone()], held[..1].to_vec())
            .unwrap()[0],
        Ok(())
    );
    f.clock.advance_ms(10_000);
    for i in 0..48 {
        let _ = put(&f.svc, a, &format!("new{i}"), 1000);
    }
    assert_eq!(assert_no_overlap(&f.svc), 64);
    for h in &held {
        let got = f
            .svc
            .batch_get_replica_list(std::slice::from_ref(&h.key))
            .unwrap()[0]
            .clone()
            .unwrap();
        assert_eq!(got[0].addr, h.replicas[0].addr);
    }
}

#[test]
fn handle_dispatches_and_remove_all_counts() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    let r = f.svc.handle(Request::<String>::MountSegment {
        client: a,
        segment: segment("h:1", SEG),
    });
    assert_eq!(r, Response::Unit(Ok(())));
    put(&f.svc, a, "k", 1).unwrap();
    assert_eq!(
        f.svc.handle(Request::<String>::RemoveAll { force: false }),
        Response::Count(Ok(1))
    );
    assert!(
        matches!(f.svc.handle(Request::<String>::Ping { client: a }), Response::Ping(Ok(p)) if !p.need_remount)
    );
}

#[test]
fn remove_by_regex_removes_matching_removable_keys_and_refuses_bad_patterns() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h:1", SEG)).unwrap();
    for k in ["req1/L00", "req1/L01", "req2/L00", "xreq1/L00"] {
        put(&f.svc, a, k, 16).unwrap();
    }
    // A lease protects req1/L01 from a plain removal.
    f.svc.batch_get_replica_list(&keys(&["req1/L01"])).unwrap();
    let by = |pattern: &str, force| {
        f.svc.handle(Request::<String>::RemoveByRegex {
            pattern: pattern.to_string(),
            force,
        })
    };
    assert_eq!(by("^req1/", false), Response::Count(Ok(1)));
    assert_eq!(by("^req1/", true), Response::Count(Ok(1)));
    assert_eq!(
        by("L00$", false),
        Response::Count(Ok(2)),
        "req2/L00 and xreq1/L00"
    );
    assert_eq!(
        by("(unclosed", false),
        Response::Count(Err(ErrorCode::InvalidParams))
    );
    let long = "a".repeat(MAX_REGEX_LEN + 1);
    assert_eq!(
        by(&long, false),
        Response::Count(Err(ErrorCode::InvalidParams))
    );
    // Compiles to more than the size limit.
    assert_eq!(
        by("(a{1000}){1000}", false),
        Response::Count(Err(ErrorCode::InvalidParams))
    );
    assert_eq!(assert_no_overlap(&f.svc), 0);
}

/// Every grouped object is a member of its group in the registry, and nothing else is.
fn assert_groups_match_index(svc: &MasterService) {
    let mut grouped = 0;
    svc.for_each_object(|k, e| {
        if let Some(g) = &e.group {
            grouped += 1;
            assert!(
                svc.groups.members(g).iter().any(|m| m == k),
                "{k} not in {}",
                g.id()
            );
        }
    });
    assert_eq!(svc.group_counts().1, grouped, "stale memberships");
}

/// Puts and completes `key` (1 KiB) in group `group` (`""`: ungrouped).
fn put_in_group(svc: &MasterService, c: ClientId, key: &str, group: &str, upsert: bool) {
    let cfg = ReplicateConfig {
        group_ids: vec![group.to_string()],
        ..Default::default()
    };
    svc.batch_put_start(c, items(&[key], 1024), &cfg, upsert)
        .unwrap()
        .remove(0)
        .unwrap();
    svc.batch_put_end(c, &keys(&[key]))
        .unwrap()
        .remove(0)
        .unwrap();
}

/// Whether each key is in the index, without counting as an access (as a probe would).
fn present(svc: &MasterService, k: &[&str]) -> Vec<bool> {
    let mut all = Vec::new();
    svc.for_each_object(|key, _| all.push(key.to_string()));
    k.iter().map(|k| all.iter().any(|a| a == k)).collect()
}

#[test]
fn a_group_shares_its_last_access_and_is_evicted_together() {
    // One shard, one victim per pass; written 1 ms apart in this order, so that without
    // groups the oldest unleased object (a2) would go first.
    let f = fixture(ServiceConfig {
        eviction_ratio: 0.01,
        shards: 1,
        ..Default::default()
    });
    let c = Uuid::new_v4();
    f.svc.mount_segment(c, segment("h1:1", 5 * 1024)).unwrap();
    for (k, g) in [
        ("a1", "a"),
        ("a2", "a"),
        ("b1", "b"),
        ("b2", "b"),
        ("c", ""),
    ] {
        put_in_group(&f.svc, c, k, g, false);
        f.clock.advance_ms(1);
    }
    assert_eq!(f.svc.group_counts(), (2, 4));
    // Reading a1 (leased) refreshes a2's access too: b1 is now the least recently accessed,
    // and its fellow b2 goes with it, although c is older than b2.
    f.svc.batch_get_replica_list(&keys(&["a1"])).unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(f.svc.evict(f.clock.now_ms(), false), 2);
    let all = ["a1", "a2", "b1", "b2", "c"];
    assert_eq!(present(&f.svc, &all), [true, true, false, false, true]);
    assert_eq!(f.svc.stats.evicted_group_members.load(Ordering::Relaxed), 1);
    // c goes before a2.
    assert_eq!(f.svc.evict(f.clock.now_ms(), false), 1);
    assert_eq!(present(&f.svc, &all), [true, true, false, false, false]);
    // A probe of a2 counts for a1 as well; once the lease ended both go together.
    f.clock.advance_ms(ms(f.svc.config().lease_ttl));
    assert_eq!(f.svc.batch_exist_key(&keys(&["a2"])).unwrap(), [Ok(true)]);
    assert_eq!(f.svc.evict(f.clock.now_ms(), false), 2);
    assert_eq!(f.svc.key_count(), 0);
    assert_eq!(
        f.svc.group_counts(),
        (0, 0),
        "evicted members leave their group"
    );
}

#[test]
fn an_evicted_members_fellows_stay_when_leased_pinned_or_being_written() {
    let f = fixture(ServiceConfig {
        eviction_ratio: 0.01,
        shards: 1,
        ..Default::default()
    });
    let c = Uuid::new_v4();
    f.svc.mount_segment(c, segment("h1:1", 1 << 20)).unwrap();
    let in_g = |hard_pin| ReplicateConfig {
        hard_pin,
        group_ids: vec!["g".into()],
        ..Default::default()
    };
    put_in_group(&f.svc, c, "victim", "g", false);
    f.svc
        .batch_put_start(c, items(&["pinned"], 1024), &in_g(true), false)
        .unwrap();
    f.svc.batch_put_end(c, &keys(&["pinned"])).unwrap();
    put_in_group(&f.svc, c, "fellow", "g", false);
    put_in_group(&f.svc, c, "leased", "g", false);
    f.svc
        .batch_put_start(c, items(&["writing"], 1024), &in_g(false), false)
        .unwrap()[0]
        .clone()
        .unwrap();
    f.svc.batch_get_replica_list(&keys(&["leased"])).unwrap();
    // One victim (victim or fellow: they share the group's access) takes the other along;
    // the leased, hard-pinned and PROCESSING members stay.
    assert_eq!(f.svc.evict(f.clock.now_ms(), false), 2);
    assert_eq!(
        present(&f.svc, &["victim", "fellow", "pinned", "leased"]),
        [false, false, true, true]
    );
    assert_eq!(f.svc.key_count(), 3, "the write in progress stays");
    assert_eq!(f.svc.group_counts(), (1, 3));
    assert_groups_match_index(&f.svc);
    f.svc.batch_put_end(c, &keys(&["writing"])).unwrap()[0].unwrap();
}

#[test]
fn group_ids_must_match_the_batch() {
    let f = fixture(ServiceConfig::default());
    let c = Uuid::new_v4();
    f.svc.mount_segment(c, segment("h1:1", SEG)).unwrap();
    for groups in [vec!["g"], vec!["g", "g", "g"]] {
        let cfg = ReplicateConfig {
            group_ids: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        };
        for upsert in [false, true] {
            assert_eq!(
                f.svc
                    .batch_put_start(c, items(&["x", "y"], 10), &cfg, upsert),
                Err(ErrorCode::InvalidParams)
            );
        }
    }
    let long = ReplicateConfig {
        group_ids: vec!["g".repeat(MAX_KEY_LEN + 1)],
        ..Default::default()
    };
    assert_eq!(
        f.svc.batch_put_start(c, items(&["x"], 10), &long, false),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(f.svc.key_count(), 0);
    // "" is ungrouped in a mixed batch.
    let mixed = ReplicateConfig {
        group_ids: vec!["g".into(), String::new()],
        ..Default::default()
    };
    let r = f
        .svc
        .batch_put_start(c, items(&["x", "y"], 10), &mixed, false)
        .unwrap();
    assert!(r.iter().all(Result::is_ok));
    assert_eq!(f.svc.group_counts(), (1, 1));
}

#[test]
fn removed_replaced_and_dropped_objects_leave_their_groups() {
    // Clients outlive the discard timeouts below.
    let f = fixture(ServiceConfig {
        client_ttl: Duration::from_secs(3600),
        ..Default::default()
    });
    let (c, d) = (Uuid::new_v4(), Uuid::new_v4());
    f.svc.mount_segment(c, segment("h1:1", SEG)).unwrap();
    for k in ["r1", "r2", "u1", "u2", "x"] {
        put_in_group(&f.svc, c, k, "g", false);
    }
    assert_eq!(f.svc.group_counts(), (1, 5));
    // Upsert in place into another group, then into no group.
    put_in_group(&f.svc, c, "u1", "h", true);
    assert_eq!(f.svc.group_counts(), (2, 5));
    put_in_group(&f.svc, c, "u1", "", true);
    assert_eq!(f.svc.group_counts(), (1, 4));
    // Upsert of another size (new space), and of a leased object (its old value kept aside).
    let bigger = ReplicateConfig {
        group_ids: vec!["h".into()],
        ..Default::default()
    };
    f.svc
        .batch_put_start(c, items(&["u2"], 4096), &bigger, true)
        .unwrap()[0]
        .clone()
        .unwrap();
    f.svc.batch_put_end(c, &keys(&["u2"])).unwrap();
    assert_eq!(f.svc.group_counts(), (2, 4));
    f.svc.batch_get_replica_list(&keys(&["u2"])).unwrap();
    put_in_group(&f.svc, c, "u2", "h", true);
    assert_eq!(
        f.svc.group_counts(),
        (2, 4),
        "same group kept across a leased upsert"
    );
    f.svc.batch_get_replica_list(&keys(&["u2"])).unwrap();
    put_in_group(&f.svc, c, "u2", "g", true);
    assert_eq!(f.svc.group_counts(), (1, 4));
    assert_groups_match_index(&f.svc);
    // Remove, revoke, regex removal.
    f.svc.batch_remove(&keys(&["r1"]), false).unwrap()[0].unwrap();
    let in_g = ReplicateConfig {
        group_ids: vec!["g".into()],
        ..Default::default()
    };
    f.svc
        .batch_put_start(c, items(&["w"], 10), &in_g, false)
        .unwrap();
    f.svc.batch_put_revoke(c, &keys(&["w"])).unwrap()[0].unwrap();
    assert_eq!(f.svc.remove_by_regex("^r", true), Ok(1));
    assert_groups_match_index(&f.svc);
    // A write taken over after the discard timeout, then a write discarded by the tick.
    f.svc
        .batch_put_start(c, items(&["t"], 10), &in_g, false)
        .unwrap();
    f.clock.advance_ms(ms(f.svc.config().put_discard_timeout));
    f.svc
        .batch_put_start(c, items(&["t"], 10), &ReplicateConfig::default(), false)
        .unwrap()[0]
        .clone()
        .unwrap();
    assert_groups_match_index(&f.svc);
    f.svc
        .batch_put_start(c, items(&["s"], 10), &in_g, false)
        .unwrap();
    f.clock.advance_ms(ms(f.svc.config().put_discard_timeout));
    f.svc.tick();
    assert_eq!(present(&f.svc, &["s"]), [false]);
    assert_groups_match_index(&f.svc);
    // Objects lost with their segment (mounted only now, so that it holds nothing else).
    let seg_d = segment("h2:1", SEG);
    f.svc.mount_segment(d, seg_d.clone()).unwrap();
    let on_d = ReplicateConfig {
        preferred_segments: vec!["h2:1".into()],
        group_ids: vec!["d".into()],
        ..Default::default()
    };
    f.svc
        .batch_put_start(d, items(&["on-d"], 10), &on_d, false)
        .unwrap()[0]
        .clone()
        .unwrap();
    f.svc.batch_put_end(d, &keys(&["on-d"])).unwrap();
    assert_eq!(f.svc.group_counts().0, 2);
    f.svc.unmount_segment(d, seg_d.id).unwrap();
    assert_eq!(present(&f.svc, &["on-d"]), [false]);
    assert_groups_match_index(&f.svc);
    assert_eq!(f.svc.group_counts(), (1, 2), "u2 and x in g");
    f.svc.remove_all(true);
    assert_eq!(
        f.svc.group_counts(),
        (0, 0),
        "no membership outlives its object"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u16),
    Get(u8),
    Remove(u8, bool),
    Upsert(u8, u16),
    Advance(u16),
    Evict,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), 1u16..20_000).prop_map(|(k, s)| Op::Put(k % 64, s)),
        1 => (any::<u8>(), 1u16..20_000).prop_map(|(k, s)| Op::Upsert(k % 64, s)),
        2 => any::<u8>().prop_map(|k| Op::Get(k % 64)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(k, f)| Op::Remove(k % 64, f)),
        1 => (0u16..5000).prop_map(Op::Advance),
        1 => Just(Op::Evict),
        1 => Just(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn index_invariants_hold_under_random_operations(ops in proptest::collection::vec(op(), 1..150)) {
        let f = fixture(ServiceConfig { shards: 4, eviction_ratio: 0.3, ..Default::default() });
        let a = Uuid::new_v4();
        for n in ["h1:1", "h2:1"] {
            f.svc.mount_segment(a, segment(n, 128 * 1024)).unwrap();
        }
        let two = ReplicateConfig { replica_num: 2, hard_pin: false, ..Default::default() };
        let hard = ReplicateConfig { hard_pin: true, ..Default::default() };
        for op in ops {
            match op {
                Op::Put(k, s) | Op::Upsert(k, s) => {
                    let mut c = if k % 5 == 0 { hard.clone() } else { two.clone() };
                    // Keys fall into a few groups (and some in none), differently by size.
                    c.group_ids = vec![match s % 3 { 0 => String::new(), g => format!("g{}", (k as u16 + g) % 4) }];
                    let key = format!("k{k}");
                    let upsert = matches!(op, Op::Upsert(..));
                    if let Ok(d) = f.svc.batch_put_start(a, vec![(key.clone(), s as u64)], &c, upsert).unwrap().remove(0) {
                        prop_assert!(d.iter().all(|r| r.len == s as u64));
                        f.svc.batch_put_end(a, &[key]).unwrap();
                    }
                }
                Op::Get(k) => { let _ = f.svc.batch_get_replica_list(&[format!("k{k}")]); }
                Op::Remove(k, force) => { let _ = f.svc.batch_remove(&[format!("k{k}")], force); }
                Op::Advance(ms) => {
                    f.clock.advance_ms(ms as u64);
                    f.svc.ping(a);
                }
                Op::Evict | Op::Tick => {
                    let now = f.clock.now_ms();
                    let mut protected = Vec::new();
                    f.svc.for_each_object(|k, e| if e.hard_pin || e.lease.is_leased(now) { protected.push(k.to_string()) });
                    if matches!(op, Op::Evict) { f.svc.evict(now, true); } else { f.svc.tick(); }
                    for k in protected {
                        prop_assert_eq!(f.svc.batch_exist_key(std::slice::from_ref(&k)).unwrap()[0], Ok(true), "{} evicted", k);
                    }
                }
            }
            assert_no_overlap(&f.svc);
            assert_groups_match_index(&f.svc);
            let (cap, used) = f.svc.usage();
            prop_assert!(used <= cap);
        }
        // Freed space is reusable: after removing everything and waiting out leases, all is free.
        f.svc.remove_all(true);
        prop_assert_eq!(f.svc.group_counts(), (0, 0));
        f.clock.advance_ms(ms(f.svc.config().lease_ttl) + 1);
        f.svc.ping(a);
        f.svc.tick();
        prop_assert_eq!(f.svc.usage().1, 0);
        prop_assert!(put(&f.svc, a, "whole", 128 * 1024).is_ok());
    }
}

#[test]
fn segments_remounted_after_a_restart_are_held_back_for_one_lease() {
    // A single master (no recovery window) that just started: a remount brings back a segment
    // an earlier master handed out; a fresh mount brings an empty one.
    let f = fixture(ServiceConfig::default());
    let lease = ServiceConfig::default().lease_ttl.as_millis() as u64;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let old = segment("h1:1", 64 * 1024);
    f.clock.advance_ms(1_000);
    f.svc
        .remount_segments(a, vec![old.clone()], Vec::new())
        .unwrap();
    assert_eq!(
        put(&f.svc, a, "early", 1000),
        Err(ErrorCode::NoAvailableHandle)
    );
    let fresh = segment("h2:1", 64 * 1024);
    f.svc.mount_segment(b, fresh.clone()).unwrap();
    let d = put(&f.svc, b, "fresh", 1000).unwrap();
    assert_eq!(
        d[0].segment_id, fresh.id,
        "only the fresh segment takes objects"
    );
    // One lease after the start, every lease of the earlier master has ended.
    f.clock.advance_ms(lease - 1_000);
    f.svc.unmount_segment(b, fresh.id).unwrap();
    let d = put(&f.svc, a, "later", 1000).unwrap();
    assert_eq!(d[0].segment_id, old.id);

    // Long after the start, a client whose segment the master expired remounts it: the
    // quarantine of its unmount applies, not the start-up hold.
    f.svc.unmount_segment(a, old.id).unwrap();
    f.clock.advance_ms(lease);
    f.svc
        .remount_segments(a, vec![old.clone()], Vec::new())
        .unwrap();
    assert!(put(&f.svc, a, "after-expiry", 1000).is_ok());
}

#[test]
fn probes_take_no_lease_but_count_as_accesses_unless_configured_as_mooncake() {
    let (f, a) = four_in_a_full_pool(0.25);
    // Probing every key leases none of them: a full pool still evicts to make room, and it
    // evicts the least recently probed ("b"), not the oldest write ("a", probed last).
    for k in ["b", "c", "d", "a"] {
        assert_eq!(f.svc.batch_exist_key(&keys(&[k])).unwrap(), vec![Ok(true)]);
        f.clock.advance_ms(1);
    }
    put(&f.svc, a, "e", 1024).expect("room made by evicting an unleased object");
    let ex = f.svc.batch_exist_key(&keys(&["a", "b"])).unwrap();
    assert_eq!(
        ex,
        vec![Ok(true), Ok(false)],
        "the least recently probed went"
    );
    // Configured as Mooncake's master: a probe leases, so the probed object stays put.
    let g = fixture(ServiceConfig {
        exist_grants_lease: true,
        ..Default::default()
    });
    g.svc.mount_segment(a, segment("h1:1", 4096)).unwrap();
    put(&g.svc, a, "k", 1024).unwrap();
    g.svc.batch_exist_key(&keys(&["k"])).unwrap();
    assert_eq!(
        g.svc.batch_remove(&keys(&["k"]), false).unwrap(),
        vec![Err(ErrorCode::ObjectHasLease)]
    );
    // By default a remove after a probe is not refused.
    let h = fixture(ServiceConfig::default());
    h.svc.mount_segment(a, segment("h1:1", 4096)).unwrap();
    put(&h.svc, a, "k", 1024).unwrap();
    h.svc.batch_exist_key(&keys(&["k"])).unwrap();
    assert_eq!(
        h.svc.batch_remove(&keys(&["k"]), false).unwrap(),
        vec![Ok(())]
    );
}

#[test]
fn a_failed_allocation_evicts_only_where_space_can_be_used() {
    // Just after a restart a remounted segment is held back; evicting the objects reported in
    // it would free nothing an allocation could use.
    let old = fixture(ServiceConfig::default());
    let b = Uuid::new_v4();
    let held_seg = segment("h2:1", 64 * 1024);
    old.svc.mount_segment(b, held_seg.clone()).unwrap();
    let d = put(&old.svc, b, "kept", 1000).unwrap();

    let f = fixture(ServiceConfig {
        eviction_ratio: 1.0,
        shards: 1,
        ..Default::default()
    });
    let report = HeldObject {
        key: "kept".into(),
        size: 1000,
        replicas: d,
    };
    let r = f
        .svc
        .remount_segments(b, vec![held_seg], vec![report])
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    let a = Uuid::new_v4();
    let fresh = segment("h1:1", 4096);
    f.svc.mount_segment(a, fresh.clone()).unwrap();
    put(&f.svc, a, "x", 4096).unwrap();
    let z = put(&f.svc, a, "z", 4096).expect("x evicted to make room");
    assert_eq!(z[0].segment_id, fresh.id);
    assert_eq!(
        f.svc.batch_exist_key(&keys(&["kept", "x"])).unwrap(),
        vec![Ok(true), Ok(false)]
    );
}

#[test]
fn a_client_mounting_under_another_clients_segment_name_replaces_it() {
    let f = fixture(ServiceConfig::default());
    let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
    let before = segment("h1:1", SEG);
    f.svc.mount_segment(old, before.clone()).unwrap();
    put(&f.svc, old, "kept-by-old", 10).unwrap();
    f.svc
        .batch_put_start(
            old,
            items(&["unfinished"], 10),
            &ReplicateConfig::default(),
            false,
        )
        .unwrap()
        .remove(0)
        .unwrap();
    // A mount that is refused anyway replaces nobody.
    assert_eq!(
        f.svc.mount_segment(new, segment("h1:1", 0)),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(f.svc.segments()[0].owner, old);
    // Its restart: same name and, as often, the same addresses; a new engine, so a new id.
    let after = segment("h1:1", SEG);
    f.svc.mount_segment(new, after.clone()).unwrap();
    let segs = f.svc.segments();
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].owner, segs[0].segment.id), (new, after.id));
    for k in ["kept-by-old", "unfinished"] {
        assert_eq!(
            f.svc.batch_get_replica_list(&keys(&[k])).unwrap()[0],
            Err(ErrorCode::ObjectNotFound),
            "{k}"
        );
    }
    assert!(f.svc.ping(old).need_remount, "the old client is forgotten");
    assert!(!f.svc.ping(new).need_remount);
    assert_eq!(f.svc.stats.replaced_clients.load(Ordering::Relaxed), 1);
    let d = put(&f.svc, new, "fresh", 10).unwrap();
    assert_eq!(d[0].segment_id, after.id);
    // The same segment mounted again by its owner, or its id claimed by another client,
    // replaces nobody.
    f.svc.mount_segment(new, after.clone()).unwrap();
    let third = Uuid::new_v4();
    assert_eq!(
        f.svc.mount_segment(third, after.clone()),
        Err(ErrorCode::SegmentAlreadyExists)
    );
    // The replaced client cannot take the name back for a client TTL (two live clients
    // misconfigured to share a name would otherwise drop each other over and over).
    assert_eq!(
        f.svc.mount_segment(old, segment("h1:1", SEG)),
        Err(ErrorCode::IllegalClient)
    );
    assert_eq!(f.svc.segments().len(), 1);
    assert_eq!(f.svc.segments()[0].owner, new);

    // Switched off, the namesake is refused when it overlaps (and mounted beside otherwise).
    let f = fixture(ServiceConfig {
        replace_restarted_clients: false,
        ..Default::default()
    });
    f.svc.mount_segment(old, before.clone()).unwrap();
    assert_eq!(
        f.svc.mount_segment(new, segment("h1:1", SEG)),
        Err(ErrorCode::SegmentAlreadyExists)
    );
    assert_eq!(f.svc.stats.replaced_clients.load(Ordering::Relaxed), 0);
}

#[test]
fn a_full_pool_with_nothing_evictable_is_not_scanned_again_for_every_put() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", 64 * 1024)).unwrap();
    let all: Vec<String> = (0..16).map(|i| format!("pinned{i}")).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    put_hard_pinned(&f.svc, a, &all, 4096);
    let passes = || f.svc.stats.eviction_passes.load(Ordering::Relaxed);
    for i in 0..1000 {
        assert_eq!(
            put(&f.svc, a, &format!("x{i}"), 4096),
            Err(ErrorCode::NoAvailableHandle)
        );
        f.svc.tick();
    }
    assert_eq!(
        passes(),
        1,
        "one futile pass, then none until the backoff ends"
    );
    assert_eq!(
        f.svc.stats.futile_eviction_passes.load(Ordering::Relaxed),
        1
    );
    f.clock.advance_ms(FUTILE_EVICTION_BACKOFF_MS);
    f.svc.tick();
    assert_eq!(passes(), 2, "tried again after the backoff");
    assert_eq!(f.svc.key_count(), 16);
}

#[test]
fn an_object_larger_than_every_segment_evicts_nothing() {
    let (f, a) = four_in_a_full_pool(0.5);
    assert_eq!(
        put(&f.svc, a, "huge", 1 << 30),
        Err(ErrorCode::NoAvailableHandle)
    );
    assert_eq!(f.svc.key_count(), 4, "eviction could not have made it fit");
    assert_eq!(f.svc.stats.eviction_passes.load(Ordering::Relaxed), 0);
}

#[test]
fn an_upsert_of_a_leased_object_that_finds_no_space_keeps_the_old_value() {
    let f = fixture(ServiceConfig::default());
    let a = Uuid::new_v4();
    f.svc.mount_segment(a, segment("h1:1", 2048)).unwrap();
    put_hard_pinned(&f.svc, a, &["p"], 1024);
    let old = put(&f.svc, a, "k", 1024).unwrap();
    f.svc.batch_get_replica_list(&keys(&["k"])).unwrap()[0]
        .clone()
        .unwrap();
    let up = f
        .svc
        .batch_put_start(a, items(&["k"], 1024), &ReplicateConfig::default(), true)
        .unwrap();
    assert_eq!(up[0], Err(ErrorCode::NoAvailableHandle));
    let still = f.svc.batch_get_replica_list(&keys(&["k"])).unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(still[0].addr, old[0].addr, "the old value stands");
    assert_eq!(still[0].status, ReplicaStatus::Complete);
}
