//! Approximate LRU: within a shard, evict the objects whose last lease ended earliest.
//! Per-shard selection approximates the global order without a global lock.

use super::{Candidate, EvictionPolicy};

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct OldestLease;

impl EvictionPolicy for OldestLease {
    fn select(&self, candidates: &mut [Candidate], count: usize) {
        if count == 0 || count >= candidates.len() {
            return;
        }
        candidates.select_nth_unstable_by_key(count - 1, |c| c.last_access_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_oldest() {
        let mut c: Vec<Candidate> = [50u64, 10, 40, 20, 30]
            .iter()
            .map(|&t| Candidate {
                key: t.to_string(),
                last_access_ms: t,
                size: 1,
            })
            .collect();
        OldestLease.select(&mut c, 2);
        let mut first: Vec<u64> = c[..2].iter().map(|c| c.last_access_ms).collect();
        first.sort();
        assert_eq!(first, vec![10, 20]);
    }
}
