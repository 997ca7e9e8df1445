//! Random placement: a rotation of the segment list from a random start, O(1) per object.

use std::sync::Arc;

use rand::Rng;

use super::PlacementStrategy;
use crate::proto::ClientId;
use crate::segment::MountedSegment;

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomPlacement;

/// Appends a rotation of `0..n` starting at a random index.
pub(super) fn random_rotation(n: usize, out: &mut Vec<usize>) {
    if n == 0 {
        return;
    }
    let start = rand::rng().random_range(0..n);
    out.extend((start..n).chain(0..start));
}

impl PlacementStrategy for RandomPlacement {
    fn order(&self, segments: &[Arc<MountedSegment>], _writer: ClientId, out: &mut Vec<usize>) {
        random_rotation(segments.len(), out);
    }
}
