//! Placement: which segments receive an object's replicas.
//!
//! A [`PlacementStrategy`] only orders the candidate segments; [`place`] then walks that order
//! (after any `preferred_segments`) allocating one replica per segment, first on distinct hosts,
//! then on any distinct segment, and returns as many replicas as it could (best effort). A
//! batch's objects keep their predecessor's segments while those have room and carve their
//! replicas back to back from one extent per segment ([`BatchPlacer`]).

mod batch;
mod free_ratio_first;
mod local_first;
mod random;

use std::sync::Arc;

pub use batch::BatchPlacer;
pub use free_ratio_first::FreeRatioFirst;
pub use local_first::LocalFirst;
pub use random::RandomPlacement;

use crate::proto::{ClientId, ReplicateConfig};
use crate::segment::{MountedSegment, Replica};

/// Orders segments by preference for one object.
pub trait PlacementStrategy: Send + Sync + std::fmt::Debug {
    /// Writes into `out` the indices of `segments` in the order they should be tried.
    fn order(&self, segments: &[Arc<MountedSegment>], writer: ClientId, out: &mut Vec<usize>);
}

/// The strategies the master offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AllocationStrategy {
    /// Uniformly random segment order (the default).
    #[default]
    Random,
    /// Segments with the largest free fraction first.
    FreeRatioFirst,
    /// The writer's own segments first, then random.
    LocalFirst,
}

impl AllocationStrategy {
    /// The strategy object.
    pub fn build(self) -> Box<dyn PlacementStrategy> {
        match self {
            AllocationStrategy::Random => Box::new(RandomPlacement),
            AllocationStrategy::FreeRatioFirst => Box::new(FreeRatioFirst),
            AllocationStrategy::LocalFirst => Box::new(LocalFirst),
        }
    }
}

/// Allocates up to `cfg.replica_num` replicas of `len` bytes on distinct segments (one object
/// on its own; a batch uses [`BatchPlacer`]).
pub fn place(
    strategy: &dyn PlacementStrategy,
    segments: &[Arc<MountedSegment>],
    len: u64,
    writer: ClientId,
    cfg: &ReplicateConfig,
) -> Vec<Replica> {
    BatchPlacer::new(strategy, segments, writer, cfg).place(len, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Segment;
    use uuid::Uuid;

    pub(super) fn segs(names: &[&str], size: u64) -> Vec<Arc<MountedSegment>> {
        names
            .iter()
            .map(|n| {
                Arc::new(MountedSegment::new(
                    Segment {
                        id: Uuid::new_v4(),
                        name: n.to_string(),
                        base: 0x1000_0000,
                        size,
                    },
                    Uuid::new_v4(),
                ))
            })
            .collect()
    }

    pub(super) fn cfg(n: usize) -> ReplicateConfig {
        ReplicateConfig {
            replica_num: n,
            ..Default::default()
        }
    }

    #[test]
    fn replicas_go_to_distinct_hosts_when_possible() {
        let s = segs(&["a:1", "a:2", "b:1", "c:1"], 1 << 20);
        for strat in [
            AllocationStrategy::Random,
            AllocationStrategy::FreeRatioFirst,
            AllocationStrategy::LocalFirst,
        ] {
            for _ in 0..50 {
                let r = place(&*strat.build(), &s, 1000, Uuid::new_v4(), &cfg(3));
                assert_eq!(r.len(), 3);
                let mut hosts: Vec<_> = r.iter().map(|r| r.segment().host.clone()).collect();
                hosts.sort();
                hosts.dedup();
                assert_eq!(hosts.len(), 3, "{strat:?}");
            }
        }
    }

    #[test]
    fn best_effort_with_fewer_segments_and_distinct_segments_always() {
        let s = segs(&["a:1", "a:2"], 1 << 20);
        let r = place(&RandomPlacement, &s, 1000, Uuid::new_v4(), &cfg(3));
        assert_eq!(r.len(), 2);
        assert_ne!(r[0].segment().segment.id, r[1].segment().segment.id);
    }

    #[test]
    fn preferred_and_local_segments_come_first() {
        let s = segs(&["a:1", "b:1", "c:1"], 1 << 20);
        let c = ReplicateConfig {
            replica_num: 1,
            preferred_segments: vec!["c:1".into()],
            ..Default::default()
        };
        for _ in 0..20 {
            let r = place(&RandomPlacement, &s, 64, Uuid::new_v4(), &c);
            assert_eq!(r[0].segment().segment.name, "c:1");
            let writer = s[1].owner;
            let r = place(&LocalFirst, &s, 64, writer, &cfg(1));
            assert_eq!(r[0].segment().segment.name, "b:1");
        }
    }

    #[test]
    fn free_ratio_first_picks_the_emptiest() {
        let s = segs(&["a:1", "b:1"], 1 << 20);
        let _hold = Replica::allocate(&s[0], 1 << 19).unwrap();
        for _ in 0..10 {
            let r = place(&FreeRatioFirst, &s, 64, Uuid::new_v4(), &cfg(1));
            assert_eq!(r[0].segment().segment.name, "b:1");
        }
    }

    #[test]
    fn full_segments_are_skipped_and_none_fit_gives_nothing() {
        let s = segs(&["a:1", "b:1"], 4096);
        let _a = Replica::allocate(&s[0], 4096).unwrap();
        let r = place(&RandomPlacement, &s, 4096, Uuid::new_v4(), &cfg(1));
        assert_eq!(r[0].segment().segment.name, "b:1");
        assert!(place(&RandomPlacement, &s, 4096, Uuid::new_v4(), &cfg(1),).is_empty());
    }
}
