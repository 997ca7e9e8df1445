//! Free-ratio-first placement: segments with the largest free fraction first, which keeps
//! segments evenly filled.

use std::sync::Arc;

use super::PlacementStrategy;
use crate::proto::ClientId;
use crate::segment::MountedSegment;

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct FreeRatioFirst;

impl PlacementStrategy for FreeRatioFirst {
    fn order(&self, segments: &[Arc<MountedSegment>], _writer: ClientId, out: &mut Vec<usize>) {
        let mut ratios: Vec<(f64, usize)> = segments
            .iter()
            .enumerate()
            .map(|(i, s)| (s.free_ratio(), i))
            .collect();
        ratios.sort_by(|a, b| b.0.total_cmp(&a.0));
        out.extend(ratios.into_iter().map(|(_, i)| i));
    }
}
