//! Read-only views for the admin HTTP routes (`/query_key`, `/get_all_keys`,
//! `/query_segment`): unlike the RPCs they grant no lease and refresh no soft pin, so probing
//! never keeps an object from eviction.

use super::MasterService;
use crate::proto::ReplicaDescriptor;

/// What the master knows of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectView {
    /// Object size in bytes.
    pub size: u64,
    /// Whether it is readable (PutEnd done).
    pub complete: bool,
    /// Its replicas in mounted segments.
    pub replicas: Vec<ReplicaDescriptor>,
}

impl MasterService {
    /// One key's metadata, `None` if the key is unknown. Grants no lease.
    pub fn describe_object(&self, key: &str) -> Option<ObjectView> {
        let shard = self.index.shard(self.index.shard_of(key)).read();
        shard.get(key).map(|e| ObjectView {
            size: e.size,
            complete: e.is_complete(),
            replicas: e.descriptors(),
        })
    }

    /// `(used, capacity)` bytes of the mounted segments named `name` (one holder may mount
    /// several), `None` if none is.
    pub fn segment_usage(&self, name: &str) -> Option<(u64, u64)> {
        self.segments()
            .iter()
            .filter(|m| m.is_mounted() && m.segment.name == name)
            .map(|m| m.usage())
            .fold(None, |acc, (capacity, used)| {
                let (u, c) = acc.unwrap_or((0u64, 0u64));
                Some((u.saturating_add(used), c.saturating_add(capacity)))
            })
    }

    /// At most `limit` keys (in no particular order), and whether more exist.
    pub fn keys(&self, limit: usize) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        for s in 0..self.index.num_shards() {
            let shard = self.index.shard(s).read();
            for k in shard.keys() {
                if out.len() == limit {
                    return (out, true);
                }
                out.push(k.clone());
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::ManualClock;
    use crate::proto::{ErrorCode, ReplicateConfig, Segment};
    use crate::service::{MasterService, ServiceConfig};

    fn service_with(keys_done: &[&str], keys_open: &[&str]) -> MasterService {
        let svc = MasterService::new(ServiceConfig::default(), Arc::new(ManualClock::new(1_000)));
        let c = uuid::Uuid::new_v4();
        let seg = Segment {
            id: uuid::Uuid::new_v4(),
            name: "host-a:1".into(),
            base: 0x1000,
            size: 1 << 20,
        };
        svc.mount_segment(c, seg).unwrap();
        let all: Vec<(String, u64)> = keys_done
            .iter()
            .chain(keys_open)
            .map(|k| (k.to_string(), 100))
            .collect();
        for r in svc
            .batch_put_start(c, all, &ReplicateConfig::default(), false)
            .unwrap()
        {
            r.unwrap();
        }
        for r in svc.batch_put_end(c, keys_done).unwrap() {
            r.unwrap();
        }
        svc
    }

    #[test]
    fn describe_object_reports_replicas_and_grants_no_lease() {
        let svc = service_with(&["done"], &["open"]);
        let v = svc.describe_object("done").unwrap();
        assert_eq!((v.size, v.complete, v.replicas.len()), (100, true, 1));
        assert_eq!(v.replicas[0].segment_name, "host-a:1");
        assert_eq!(v.replicas[0].len, 100);
        assert!(!svc.describe_object("open").unwrap().complete);
        assert_eq!(svc.describe_object("missing"), None);
        // No lease: a plain remove succeeds right after the probe...
        svc.describe_object("done").unwrap();
        assert_eq!(svc.batch_remove(&["done"], false).unwrap(), vec![Ok(())]);
        // ...where a read (which leases) would have blocked it.
        let svc = service_with(&["done"], &[]);
        svc.batch_get_replica_list(&["done"]).unwrap()[0]
            .as_ref()
            .unwrap();
        assert_eq!(
            svc.batch_remove(&["done"], false).unwrap(),
            vec![Err(ErrorCode::ObjectHasLease)]
        );
    }

    #[test]
    fn segment_usage_sums_the_segments_of_a_name() {
        let svc = service_with(&["a"], &[]);
        // A holder with two segments (one client: a second client under the name would
        // replace the first as its restart).
        let c = svc.segments()[0].owner;
        let second = Segment {
            id: uuid::Uuid::new_v4(),
            name: "host-a:1".into(),
            base: 0x10_0000_0000,
            size: 1 << 20,
        };
        assert_eq!(svc.segment_usage("host-a:1"), Some((128, 1 << 20)));
        svc.mount_segment(c, second.clone()).unwrap();
        assert_eq!(svc.segment_usage("host-a:1"), Some((128, 2 << 20)));
        assert_eq!(svc.segment_usage("host-b:1"), None);
        svc.unmount_segment(c, second.id).unwrap();
        assert_eq!(svc.segment_usage("host-a:1"), Some((128, 1 << 20)));
        let seg = &svc.segments()[0];
        assert_eq!(seg.allocations(), 1, "the one replica");
    }

    #[test]
    fn keys_are_bounded() {
        let svc = service_with(&["a", "b"], &["c"]);
        let (mut all, more) = svc.keys(10);
        all.sort();
        assert_eq!(
            (all, more),
            (vec!["a".into(), "b".into(), "c".into()], false)
        );
        let (some, more) = svc.keys(2);
        assert_eq!((some.len(), more), (2, true));
        assert!(!svc.keys(3).1);
    }
}
