//! Local-first placement: the writer's own segments first (a local memcpy instead of a network
//! transfer), then the others in random order.

use std::sync::Arc;

use super::random::random_rotation;
use super::PlacementStrategy;
use crate::proto::ClientId;
use crate::segment::MountedSegment;

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalFirst;

impl PlacementStrategy for LocalFirst {
    fn order(&self, segments: &[Arc<MountedSegment>], writer: ClientId, out: &mut Vec<usize>) {
        out.extend(
            segments
                .iter()
                .enumerate()
                .filter(|(_, s)| s.owner == writer)
                .map(|(i, _)| i),
        );
        let start = out.len();
        random_rotation(segments.len(), out);
        // Keep the rotation's non-local part after the local segments.
        let mut w = start;
        for r in start..out.len() {
            if segments[out[r]].owner != writer {
                out[w] = out[r];
                w += 1;
            }
        }
        out.truncate(w);
    }
}
