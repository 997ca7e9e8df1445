//! Object groups (Mooncake's `ReplicateConfig.group_ids`): objects put under one group id
//! (say the TP/K/V shards of one prefix chunk) are useless apart, so they share one last
//! access (reading or probing any member counts for all of them) and eviction takes a
//! victim's evictable fellow members with it. Leases stay per object.
//!
//! Each grouped object holds its group's [`ObjectGroup`] (the shared access time, touched in
//! O(1) under a shard read lock); the [`GroupRegistry`] maps group ids to member keys for
//! eviction and hands new members the same `ObjectGroup`. It is striped by group id (puts of
//! grouped keys from many clients do not all queue on one mutex); its mutexes are leaf locks:
//! taken under a shard lock, never held while taking one. A key joins or leaves a group only under its own
//! shard's write lock, so membership changes of one key are ordered.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::index::KeyHashBuilder;

/// Stripes of the registry.
const STRIPES: usize = 64;

/// The state members of one group share.
#[derive(Debug)]
pub struct ObjectGroup {
    id: String,
    /// Latest access of any member (ms, on the same scale as [`crate::lease::Lease`]'s).
    last_access_ms: AtomicU64,
}

impl ObjectGroup {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Records an access of a member at `now`: counts for every member's eviction order as a
    /// touch of each would.
    pub fn touch(&self, now_ms: u64, ttl_ms: u64) {
        let until = now_ms.saturating_add(ttl_ms);
        // Members are read together (all shards of a chunk at once): a plain load first keeps
        // readers of one group from bouncing its cache line with writes within one millisecond.
        if self.last_access_ms.load(Ordering::Relaxed) < until {
            self.last_access_ms.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Latest access of any member (0 when none was accessed since the group formed).
    pub fn last_access_ms(&self) -> u64 {
        self.last_access_ms.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Members {
    group: Arc<ObjectGroup>,
    keys: HashSet<String, KeyHashBuilder>,
}

type Stripe = HashMap<String, Members, KeyHashBuilder>;

/// Group id → current member keys (see the module documentation).
#[derive(Debug)]
pub struct GroupRegistry {
    stripes: Box<[Mutex<Stripe>]>,
    hasher: KeyHashBuilder,
}

impl Default for GroupRegistry {
    fn default() -> Self {
        GroupRegistry {
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(HashMap::with_hasher(KeyHashBuilder::default())))
                .collect(),
            hasher: KeyHashBuilder::default(),
        }
    }
}

impl GroupRegistry {
    fn stripe(&self, id: &str) -> &Mutex<Stripe> {
        &self.stripes[self.hasher.hash_one(id) as usize % STRIPES]
    }

    /// Adds `key` to group `id` (created when new); the group's shared state. Idempotent.
    pub fn join(&self, id: &str, key: &str) -> Arc<ObjectGroup> {
        let mut groups = self.stripe(id).lock();
        // Looked up before any allocation: most joins find their group (K/V shards of a chunk).
        if let Some(m) = groups.get_mut(id) {
            if !m.keys.contains(key) {
                m.keys.insert(key.to_string());
            }
            return m.group.clone();
        }
        let group = Arc::new(ObjectGroup {
            id: id.to_string(),
            last_access_ms: AtomicU64::new(0),
        });
        let mut keys = HashSet::with_hasher(self.hasher.clone());
        keys.insert(key.to_string());
        groups.insert(
            id.to_string(),
            Members {
                group: group.clone(),
                keys,
            },
        );
        group
    }

    /// Removes `key` from `group` (when that is still the registered group of its id); a group
    /// left without members is forgotten.
    pub fn leave(&self, group: &Arc<ObjectGroup>, key: &str) {
        let mut groups = self.stripe(group.id()).lock();
        let Some(m) = groups.get_mut(group.id()) else {
            return;
        };
        if !Arc::ptr_eq(&m.group, group) {
            return;
        }
        m.keys.remove(key);
        if m.keys.is_empty() {
            groups.remove(group.id());
        }
    }

    /// The current members of `group` (empty when it is gone).
    pub fn members(&self, group: &Arc<ObjectGroup>) -> Vec<String> {
        match self.stripe(group.id()).lock().get(group.id()) {
            Some(m) if Arc::ptr_eq(&m.group, group) => m.keys.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Number of groups with members.
    pub fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no group has members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of (group, key) memberships.
    pub fn member_count(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().values().map(|m| m.keys.len()).sum::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_join_share_state_and_the_last_to_leave_forgets_the_group() {
        let r = GroupRegistry::default();
        let a1 = r.join("a", "a1");
        let a2 = r.join("a", "a2");
        assert!(Arc::ptr_eq(&a1, &a2));
        assert!(Arc::ptr_eq(&r.join("a", "a1"), &a1), "idempotent");
        a1.touch(100, 10);
        a2.touch(50, 10);
        assert_eq!(a2.last_access_ms(), 110);
        let mut m = r.members(&a1);
        m.sort();
        assert_eq!(m, vec!["a1", "a2"]);
        r.leave(&a1, "a1");
        assert_eq!(r.members(&a1), vec!["a2"]);
        r.leave(&a1, "a2");
        assert!(r.is_empty());
        // A group formed again under the same id is a new group: the old handle touches
        // nothing of it and lists no members.
        let again = r.join("a", "a3");
        assert!(!Arc::ptr_eq(&again, &a1));
        r.leave(&a1, "a3");
        assert_eq!(r.member_count(), 1);
        assert!(r.members(&a1).is_empty());
    }
}
