//! The object index: key → [`ObjectEntry`], split over many shards each behind its own
//! `RwLock`, so that batch calls from many clients proceed in parallel. A batch groups its
//! keys by shard first ([`ShardGroups`]) and takes each shard's lock once.

mod hasher;
mod object;

use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::RwLock;

pub use hasher::{KeyHashBuilder, KeyHasher};
pub use object::{ObjectEntry, ObjectState};

/// One shard's map.
pub type Shard = HashMap<String, ObjectEntry, KeyHashBuilder>;

/// See the module documentation.
#[derive(Debug)]
pub struct Index {
    shards: Box<[RwLock<Shard>]>,
    hasher: KeyHashBuilder,
    mask: usize,
}

/// Positions of a batch's keys grouped by shard (a counting sort).
#[derive(Debug, Default)]
pub struct ShardGroups {
    order: Vec<u32>,
    bounds: Vec<u32>,
}

impl ShardGroups {
    /// `(shard, positions of the batch's keys in that shard)` for every non-empty shard.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &[u32])> + '_ {
        self.bounds.windows(2).enumerate().filter_map(|(s, w)| {
            let (a, b) = (w[0] as usize, w[1] as usize);
            (a < b).then(|| (s, &self.order[a..b]))
        })
    }
}

impl Index {
    /// An index with `shards` shards (rounded up to a power of two).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        let hasher = KeyHashBuilder::default();
        Index {
            shards: (0..n)
                .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
            mask: n - 1,
        }
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    /// The shard holding `key`.
    pub fn shard_of(&self, key: &str) -> usize {
        // High bits: the shard map uses the low ones (and the top 7 for its control bytes).
        ((self.hasher.hash_one(key) >> 40) as usize) & self.mask
    }

    /// Shard `i`.
    pub fn shard(&self, i: usize) -> &RwLock<Shard> {
        &self.shards[i]
    }

    /// Groups the `n` keys given by `key(i)` by shard.
    pub fn group<'a>(&self, n: usize, key: impl Fn(usize) -> &'a str) -> ShardGroups {
        let shards: Vec<u32> = (0..n).map(|i| self.shard_of(key(i)) as u32).collect();
        let mut bounds = vec![0u32; self.shards.len() + 1];
        for &s in &shards {
            bounds[s as usize + 1] += 1;
        }
        for i in 1..bounds.len() {
            bounds[i] += bounds[i - 1];
        }
        let mut next = bounds.clone();
        let mut order = vec![0u32; n];
        for (i, &s) in shards.iter().enumerate() {
            let slot = &mut next[s as usize];
            order[*slot as usize] = i as u32;
            *slot += 1;
        }
        ShardGroups { order, bounds }
    }

    /// Number of keys (takes every shard's read lock).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_covers_every_key_once_in_its_shard() {
        let idx = Index::new(16);
        let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
        let g = idx.group(keys.len(), |i| &keys[i]);
        let mut seen = vec![false; keys.len()];
        for (s, pos) in g.iter() {
            for &p in pos {
                assert_eq!(idx.shard_of(&keys[p as usize]), s);
                assert!(!seen[p as usize]);
                seen[p as usize] = true;
            }
        }
        assert!(seen.iter().all(|&b| b));
        assert!(g.iter().count() > 8, "keys spread over shards");
    }
}
