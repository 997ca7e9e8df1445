//! Batch placement: the objects of one PutStart batch are placed in input order, each first
//! trying the segments its predecessor's replicas went to ("sticky" per replica slot), and
//! every replica is carved from an extent ([`Run`]) that its segment hands out for the rest of
//! the batch at once. The batch's small objects thus lie back to back in a segment, in input
//! order, and a client moving them from (or into) one buffer merges their transfers into few
//! requests. Objects of one batch on distinct segments, distinct hosts first, as for one object.

use std::sync::Arc;

use super::PlacementStrategy;
use crate::proto::{ClientId, ReplicateConfig};
use crate::segment::{MountedSegment, Replica, Run};

/// Places the objects of one batch; see the module documentation. The parts of the extents
/// left uncarved are freed when it is dropped.
#[derive(Debug)]
pub struct BatchPlacer<'a> {
    strategy: &'a dyn PlacementStrategy,
    segments: &'a [Arc<MountedSegment>],
    writer: ClientId,
    cfg: &'a ReplicateConfig,
    /// Segments of the previous object's replicas, in replica order.
    sticky: Vec<usize>,
    /// Candidate segments of the current object, in the order they are tried.
    order: Vec<usize>,
    /// Segments of the current object's replicas.
    chosen: Vec<usize>,
    /// Segments already tried for the current object (`used` is reset through it).
    tried: Vec<usize>,
    used: Vec<bool>,
    /// The extent being carved in each segment.
    runs: Vec<Option<Run>>,
}

impl<'a> BatchPlacer<'a> {
    /// A placer for one batch of `writer` over `segments`.
    pub fn new(
        strategy: &'a dyn PlacementStrategy,
        segments: &'a [Arc<MountedSegment>],
        writer: ClientId,
        cfg: &'a ReplicateConfig,
    ) -> Self {
        BatchPlacer {
            strategy,
            segments,
            writer,
            cfg,
            sticky: Vec::new(),
            order: Vec::new(),
            chosen: Vec::new(),
            tried: Vec::new(),
            used: vec![false; segments.len()],
            runs: (0..segments.len()).map(|_| None).collect(),
        }
    }

    /// Up to `cfg.replica_num` replicas of `len` bytes for the batch's next object, on distinct
    /// segments (best effort). `remaining` is the bytes of this object and of every later one
    /// of the batch: the extent asked for when a segment has none left to carve from.
    pub fn place(&mut self, len: u64, remaining: u64) -> Vec<Replica> {
        let want = self.cfg.replica_num.min(self.segments.len());
        let mut replicas: Vec<Replica> = Vec::with_capacity(want);
        if want == 0 || len == 0 {
            return replicas;
        }
        self.order.clear();
        self.order.extend_from_slice(&self.sticky);
        self.chosen.clear();
        // The full order (preferred, then the strategy's) is only built when the previous
        // object's segments do not take every replica.
        let mut extended = false;
        // Pass 0 keeps hosts distinct; pass 1 only keeps segments distinct.
        for pass in 0..2 {
            let mut j = 0;
            while replicas.len() < want {
                if j == self.order.len() {
                    if extended {
                        break;
                    }
                    extended = true;
                    self.extend_order();
                    continue;
                }
                let i = self.order[j];
                j += 1;
                if self.used[i] {
                    continue;
                }
                let host = &self.segments[i].host;
                if pass == 0 && replicas.iter().any(|r| &r.segment().host == host) {
                    continue;
                }
                // Tried once either way: a full segment will not fit in pass 1 either.
                self.used[i] = true;
                self.tried.push(i);
                if let Some(r) = self.allocate(i, len, remaining) {
                    replicas.push(r);
                    self.chosen.push(i);
                }
            }
        }
        for i in self.tried.drain(..) {
            self.used[i] = false;
        }
        if !self.chosen.is_empty() {
            std::mem::swap(&mut self.sticky, &mut self.chosen);
        }
        replicas
    }

    /// Appends the preferred segments, then the strategy's order.
    fn extend_order(&mut self) {
        for name in &self.cfg.preferred_segments {
            self.order.extend(
                self.segments
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| &s.segment.name == name)
                    .map(|(i, _)| i),
            );
        }
        self.strategy
            .order(self.segments, self.writer, &mut self.order);
    }

    /// `len` bytes in segment `i`: the next piece of its extent, or the first of a new one.
    fn allocate(&mut self, i: usize, len: u64, remaining: u64) -> Option<Replica> {
        if let Some(r) = self.runs[i].as_mut().and_then(|run| run.carve(len)) {
            return Some(r);
        }
        // Free what is left of the old extent first: it may join the new one.
        self.runs[i] = None;
        let mut run = Run::allocate(&self.segments[i], len, remaining)?;
        let r = run.carve(len);
        self.runs[i] = Some(run);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::round_up;
    use crate::placement::tests::{cfg, segs};
    use crate::placement::{AllocationStrategy, RandomPlacement};
    use uuid::Uuid;

    /// Places every object of `lens` as one batch.
    fn place_batch(p: &mut BatchPlacer<'_>, lens: &[u64]) -> Vec<Vec<Replica>> {
        let mut remaining: u64 = lens.iter().map(|&l| round_up(l).unwrap()).sum();
        lens.iter()
            .map(|&l| {
                let r = p.place(l, remaining);
                remaining -= round_up(l).unwrap();
                r
            })
            .collect()
    }

    #[test]
    fn a_batch_lies_back_to_back_in_input_order_and_leaves_nothing_reserved() {
        let s = segs(&["a:1"], 1 << 20);
        // Some space in use before the batch, with a hole too small for it.
        let _before = Replica::allocate(&s[0], 100).unwrap();
        let hole = Replica::allocate(&s[0], 3 * 4096).unwrap();
        let _after = Replica::allocate(&s[0], 64).unwrap();
        drop(hole);
        let c = cfg(1);
        let mut p = BatchPlacer::new(&RandomPlacement, &s, Uuid::new_v4(), &c);
        let objs = place_batch(&mut p, &[4096; 32]);
        drop(p);
        for w in objs.windows(2) {
            assert_eq!(w[1][0].addr(), w[0][0].addr() + 4096);
        }
        assert_eq!(s[0].usage().1, 32 * 4096 + 128 + 64, "no extent left over");
        drop(objs);
        assert_eq!(s[0].usage().1, 128 + 64, "pieces are freed one by one");
    }

    #[test]
    fn replicas_stay_on_distinct_segments_each_slot_back_to_back() {
        let s = segs(&["a:1", "b:1", "c:1", "d:1"], 1 << 20);
        let c = cfg(2);
        for strat in [
            AllocationStrategy::Random,
            AllocationStrategy::FreeRatioFirst,
            AllocationStrategy::LocalFirst,
        ] {
            let strat = strat.build();
            let mut p = BatchPlacer::new(&*strat, &s, Uuid::new_v4(), &c);
            let objs = place_batch(&mut p, &[1000; 16]);
            for o in &objs {
                assert_eq!(o.len(), 2);
                assert_ne!(o[0].segment().host, o[1].segment().host);
            }
            for w in objs.windows(2) {
                for (prev, next) in w[0].iter().zip(&w[1]) {
                    assert!(Arc::ptr_eq(prev.segment(), next.segment()));
                    assert_eq!(next.addr(), prev.addr() + 1024);
                }
            }
        }
    }

    #[test]
    fn a_full_segment_hands_the_rest_of_the_batch_to_another() {
        let s = segs(&["a:1", "b:1"], 16 * 4096);
        let c = cfg(1);
        let mut p = BatchPlacer::new(&RandomPlacement, &s, Uuid::new_v4(), &c);
        let objs = place_batch(&mut p, &[4096; 40]);
        let placed: Vec<&Replica> = objs.iter().flatten().collect();
        assert_eq!(placed.len(), 32, "both segments filled, the rest refused");
        let first = placed[0].segment().clone();
        assert!(placed[..16]
            .iter()
            .all(|r| Arc::ptr_eq(r.segment(), &first)));
        assert!(placed[16..]
            .iter()
            .all(|r| !Arc::ptr_eq(r.segment(), &first)));
        assert!(objs[32..].iter().all(|o| o.is_empty()));
    }

    #[test]
    fn preferred_segments_take_the_batch() {
        let s = segs(&["a:1", "b:1", "c:1"], 1 << 20);
        let c = ReplicateConfig {
            replica_num: 1,
            preferred_segments: vec!["b:1".into()],
            ..Default::default()
        };
        let mut p = BatchPlacer::new(&RandomPlacement, &s, Uuid::new_v4(), &c);
        for o in place_batch(&mut p, &[64; 8]) {
            assert_eq!(o[0].segment().segment.name, "b:1");
        }
    }
}
