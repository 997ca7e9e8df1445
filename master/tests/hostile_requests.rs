//! Requests as a hostile or buggy client could send them: every field of every call at its
//! edges (sizes of 0 and near `u64::MAX`, ranges that overflow, unknown clients and segments,
//! empty and oversized keys, odd regular expressions, reported objects that lie), in random
//! sequences against one service. Nothing may panic, and the space accounting must stay sane.

use std::sync::Arc;

use mooncake_master::clock::ManualClock;
use mooncake_master::codec::decode_payload;
use mooncake_master::proto::{
    HeldObject, ReplicaDescriptor, ReplicaStatus, ReplicateConfig, Request, Response, Segment,
};
use mooncake_master::service::{MasterService, ServiceConfig};
use proptest::prelude::*;
use uuid::Uuid;

/// A few fixed ids, so that calls meet each other's clients and segments.
fn id(i: u8) -> Uuid {
    Uuid::from_u128(0x1000 + u128::from(i % 4))
}

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u64::MAX - 4095),
        Just(1u64 << 63),
        1u64..70_000,
        any::<u64>(),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (0u8..8).prop_map(|i| format!("k{i}")),
        "[a-z/]{1,12}",
        (4000usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        any::<u8>(),
        prop_oneof![Just("h1:1"), Just("h2:1"), Just(""), Just(":")],
        edge_u64(),
        edge_u64(),
    )
        .prop_map(|(i, name, base, size)| Segment {
            id: id(i),
            name: name.to_string(),
            base,
            size,
        })
}

fn config() -> impl Strategy<Value = ReplicateConfig> {
    (
        prop_oneof![Just(0usize), 1usize..4, Just(usize::MAX)],
        proptest::collection::vec(prop_oneof![Just("h1:1".to_string()), "[a-z]{0,3}"], 0..3),
        any::<bool>(),
        any::<bool>(),
        // Group ids of any count (usually not the batch's: refused), few distinct ones.
        proptest::collection::vec(prop_oneof![Just(String::new()), "[ab]"], 0..4),
    )
        .prop_map(
            |(replica_num, preferred_segments, soft_pin, hard_pin, group_ids)| ReplicateConfig {
                replica_num,
                preferred_segments,
                soft_pin,
                hard_pin,
                group_ids,
            },
        )
}

fn held() -> impl Strategy<Value = HeldObject> {
    let replica =
        (any::<u8>(), edge_u64(), edge_u64()).prop_map(|(i, addr, len)| ReplicaDescriptor {
            segment_name: "h1:1".into(),
            segment_id: id(i),
            addr,
            len,
            status: ReplicaStatus::Complete,
        });
    (key(), edge_u64(), proptest::collection::vec(replica, 0..3)).prop_map(
        |(key, size, replicas)| HeldObject {
            key,
            size,
            replicas,
        },
    )
}

fn request() -> impl Strategy<Value = Request> {
    let keys = || proptest::collection::vec(key(), 0..6);
    let items = || proptest::collection::vec((key(), edge_u64()), 0..6);
    prop_oneof![
        3 => (any::<u8>(), segment()).prop_map(|(c, segment)| Request::MountSegment { client: id(c), segment }),
        1 => (any::<u8>(), proptest::collection::vec(segment(), 0..3), proptest::collection::vec(held(), 0..4))
            .prop_map(|(c, segments, objects)| Request::RemountSegments { client: id(c), segments, objects }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(c, s)| Request::UnmountSegment { client: id(c), segment: id(s) }),
        1 => any::<u8>().prop_map(|c| Request::Ping { client: id(c) }),
        4 => (any::<u8>(), items(), config()).prop_map(|(c, items, config)| Request::BatchPutStart { client: id(c), items, config }),
        3 => (any::<u8>(), keys()).prop_map(|(c, keys)| Request::BatchPutEnd { client: id(c), keys }),
        1 => (any::<u8>(), keys()).prop_map(|(c, keys)| Request::BatchPutRevoke { client: id(c), keys }),
        2 => (any::<u8>(), items(), config()).prop_map(|(c, items, config)| Request::BatchUpsertStart { client: id(c), items, config }),
        2 => keys().prop_map(|keys| Request::BatchGetReplicaList { keys }),
        1 => keys().prop_map(|keys| Request::BatchExistKey { keys }),
        1 => (keys(), any::<bool>()).prop_map(|(keys, force)| Request::BatchRemove { keys, force }),
        1 => any::<bool>().prop_map(|force| Request::RemoveAll { force }),
        1 => (prop_oneof![Just("(".to_string()), Just("^k".to_string()), Just("(a*)*b".to_string()), "[a-z.*+?()|]{0,20}"], any::<bool>())
            .prop_map(|(pattern, force)| Request::RemoveByRegex { pattern, force }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn hostile_request_sequences_never_panic(
        steps in proptest::collection::vec((request(), 0u16..3000), 1..60)
    ) {
        let clock = Arc::new(ManualClock::new(1_000));
        let cfg = ServiceConfig { shards: 4, ..Default::default() };
        let svc = MasterService::new(cfg, clock.clone());
        for (req, advance) in steps {
            let n = match &req {
                Request::BatchPutStart { items, .. } | Request::BatchUpsertStart { items, .. } => Some(items.len()),
                Request::BatchGetReplicaList { keys } | Request::BatchExistKey { keys } => Some(keys.len()),
                _ => None,
            };
            let resp = svc.handle(req);
            // A batch call that succeeds as a whole answers once per key.
            match (&resp, n) {
                (Response::Replicas(Ok(v)), Some(n)) => prop_assert_eq!(v.len(), n),
                (Response::Bools(Ok(v)), Some(n)) => prop_assert_eq!(v.len(), n),
                _ => {}
            }
            clock.advance_ms(u64::from(advance));
            svc.tick();
            let (capacity, used) = svc.usage();
            prop_assert!(used <= capacity, "used {} of {}", used, capacity);
        }
    }

    #[test]
    fn random_frames_decode_or_fail_without_panicking(
        payload in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        let clock = Arc::new(ManualClock::new(1_000));
        let svc = MasterService::new(ServiceConfig::default(), clock);
        // As the server decodes them: keys borrowed from the frame.
        if let Ok((_, req)) = decode_payload::<Request<&str>>(&payload) {
            let _ = svc.handle(req);
        }
    }
}

#[test]
fn segments_larger_than_any_address_space_are_refused() {
    use mooncake_master::proto::ErrorCode;
    use mooncake_master::segment::MAX_SEGMENT_SIZE;
    let svc = MasterService::new(ServiceConfig::default(), Arc::new(ManualClock::new(0)));
    let seg = |i: u8, size: u64| Segment {
        id: id(i),
        name: format!("h{i}:1"),
        base: 0,
        size,
    };
    assert_eq!(svc.mount_segment(id(0), seg(0, MAX_SEGMENT_SIZE)), Ok(()));
    assert_eq!(
        svc.mount_segment(id(1), seg(1, MAX_SEGMENT_SIZE + 1)),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(svc.mount_segment(id(2), seg(2, MAX_SEGMENT_SIZE)), Ok(()));
    assert_eq!(svc.usage(), (2 * MAX_SEGMENT_SIZE, 0));
}
