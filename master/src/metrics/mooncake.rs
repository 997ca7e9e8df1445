//! The master's figures under Mooncake's metric names (its `master_metric_manager.cpp`), beside
//! our `mooncake_master_*` series and from the same values: the gauges that deployment scripts
//! and dashboards scrape (`master_total_capacity_bytes`, `master_active_clients`, ...), the
//! per-segment pair labelled with the segment name, the file-tier pair (always 0: there is no
//! file tier), and the request/failure counters of Mooncake's RPCs mapped from ours.
//!
//! Our clients send every key operation as a batch RPC. A call carrying one key counts as
//! Mooncake's single-key RPC (what Mooncake's client sends for one key), a call carrying several
//! as Mooncake's batch RPC; `batch_remove` counts once per key under `master_remove_*`, as
//! Mooncake has no batch remove series. The upserts have no Mooncake series.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::service::MasterService;

/// Label of Mooncake's per-segment gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SegmentLabels {
    /// Segment name (its holder's engine address).
    pub segment: String,
}

/// Mooncake's RPCs that have counters here. The first [`BATCHED`] also have batch counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MooncakeRpc {
    /// PutStart.
    PutStart,
    /// PutEnd.
    PutEnd,
    /// PutRevoke.
    PutRevoke,
    /// GetReplicaList.
    GetReplicaList,
    /// ExistKey.
    ExistKey,
    /// Remove.
    Remove,
    /// RemoveAll.
    RemoveAll,
    /// RemoveByRegex.
    RemoveByRegex,
    /// MountSegment.
    MountSegment,
    /// UnmountSegment.
    UnmountSegment,
    /// RemountSegment.
    RemountSegment,
    /// Ping (the heartbeat).
    Ping,
}

/// How many of [`MooncakeRpc::ALL`] (from the first) have batch counters.
pub const BATCHED: usize = 5;

impl MooncakeRpc {
    /// Every variant, in declaration order (the index is `self as usize`).
    pub const ALL: [MooncakeRpc; 12] = [
        MooncakeRpc::PutStart,
        MooncakeRpc::PutEnd,
        MooncakeRpc::PutRevoke,
        MooncakeRpc::GetReplicaList,
        MooncakeRpc::ExistKey,
        MooncakeRpc::Remove,
        MooncakeRpc::RemoveAll,
        MooncakeRpc::RemoveByRegex,
        MooncakeRpc::MountSegment,
        MooncakeRpc::UnmountSegment,
        MooncakeRpc::RemountSegment,
        MooncakeRpc::Ping,
    ];

    /// The `<op>` of Mooncake's `master_<op>_requests_total`.
    pub fn name(self) -> &'static str {
        match self {
            MooncakeRpc::PutStart => "put_start",
            MooncakeRpc::PutEnd => "put_end",
            MooncakeRpc::PutRevoke => "put_revoke",
            MooncakeRpc::GetReplicaList => "get_replica_list",
            MooncakeRpc::ExistKey => "exist_key",
            MooncakeRpc::Remove => "remove",
            MooncakeRpc::RemoveAll => "remove_all",
            MooncakeRpc::RemoveByRegex => "remove_by_regex",
            MooncakeRpc::MountSegment => "mount_segment",
            MooncakeRpc::UnmountSegment => "unmount_segment",
            MooncakeRpc::RemountSegment => "remount_segment",
            MooncakeRpc::Ping => "ping",
        }
    }
}

/// Where one of our RPCs is counted under Mooncake's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Once per call, as this RPC.
    Call(MooncakeRpc),
    /// Once per key, as this RPC.
    PerKey(MooncakeRpc),
    /// As the batch form of this RPC (one of the first [`BATCHED`]).
    Batch(MooncakeRpc),
}

/// How our RPC `op` carrying `items` keys is counted under Mooncake's names; `None` for ours
/// without a Mooncake counterpart.
pub fn counted_as(op: &str, items: usize) -> Option<Counted> {
    use MooncakeRpc as R;
    let keyed = |rpc| {
        Some(if items == 1 {
            Counted::Call(rpc)
        } else {
            Counted::Batch(rpc)
        })
    };
    match op {
        "batch_put_start" => keyed(R::PutStart),
        "batch_put_end" => keyed(R::PutEnd),
        "batch_put_revoke" => keyed(R::PutRevoke),
        "batch_get_replica_list" => keyed(R::GetReplicaList),
        "batch_exist_key" => keyed(R::ExistKey),
        "batch_remove" => Some(Counted::PerKey(R::Remove)),
        "remove_all" => Some(Counted::Call(R::RemoveAll)),
        "remove_by_regex" => Some(Counted::Call(R::RemoveByRegex)),
        "mount_segment" => Some(Counted::Call(R::MountSegment)),
        "unmount_segment" => Some(Counted::Call(R::UnmountSegment)),
        "remount_segments" => Some(Counted::Call(R::RemountSegment)),
        "ping" => Some(Counted::Call(R::Ping)),
        _ => None,
    }
}

/// Request and failure counters of one RPC.
#[derive(Debug, Default)]
struct CallCounters {
    requests: Counter,
    failures: Counter,
}

/// Mooncake's five counters of one batch RPC.
#[derive(Debug, Default)]
struct BatchCounters {
    requests: Counter,
    failures: Counter,
    partial_successes: Counter,
    items: Counter,
    failed_items: Counter,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct MooncakeSeries {
    allocated: Gauge,
    capacity: Gauge,
    keys: Gauge,
    clients: Gauge,
    segment_allocated: Family<SegmentLabels, Gauge>,
    segment_capacity: Family<SegmentLabels, Gauge>,
    file_allocated: Gauge,
    file_capacity: Gauge,
    calls: [CallCounters; 12],
    batches: [BatchCounters; BATCHED],
}

impl MooncakeSeries {
    /// Registers every series at the top of `registry` (no prefix). Counters are registered
    /// without `_total`: the encoder appends it, which gives Mooncake's exact sample names.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "master_allocated_bytes",
            "Total memory bytes currently allocated across all segments",
            self.allocated.clone(),
        );
        registry.register(
            "master_total_capacity_bytes",
            "Total memory capacity across all mounted segments",
            self.capacity.clone(),
        );
        registry.register(
            "segment_allocated_bytes",
            "Total memory bytes currently allocated of the segment",
            self.segment_allocated.clone(),
        );
        registry.register(
            "segment_total_capacity_bytes",
            "Total memory capacity of the mounted segment",
            self.segment_capacity.clone(),
        );
        registry.register(
            "master_allocated_file_size_bytes",
            "Bytes allocated for file storage (always 0: no file tier)",
            self.file_allocated.clone(),
        );
        registry.register(
            "master_total_file_capacity_bytes",
            "Capacity for file storage (always 0: no file tier)",
            self.file_capacity.clone(),
        );
        registry.register(
            "master_key_count",
            "Total number of keys managed by the master",
            self.keys.clone(),
        );
        registry.register(
            "master_active_clients",
            "Total number of active clients",
            self.clients.clone(),
        );
        for rpc in MooncakeRpc::ALL {
            let c = &self.calls[rpc as usize];
            let op = rpc.name();
            registry.register(
                format!("master_{op}_requests"),
                format!("{op} requests received"),
                c.requests.clone(),
            );
            registry.register(
                format!("master_{op}_failures"),
                format!("Failed {op} requests"),
                c.failures.clone(),
            );
        }
        for rpc in &MooncakeRpc::ALL[..BATCHED] {
            let b = &self.batches[*rpc as usize];
            let op = rpc.name();
            for (what, help, counter) in [
                ("requests", "requests received", &b.requests),
                ("failures", "requests that failed", &b.failures),
                (
                    "partial_successes",
                    "requests that failed for some keys only",
                    &b.partial_successes,
                ),
                ("items", "keys carried", &b.items),
                ("failed_items", "keys that failed", &b.failed_items),
            ] {
                registry.register(
                    format!("master_batch_{op}_{what}"),
                    format!("Batch {op}: {help}"),
                    counter.clone(),
                );
            }
        }
    }

    /// Counts one of our RPCs: `items` keys, `failed_keys` of which failed alone, or the call
    /// as a whole `failed`. A single-key call fails when its key did.
    pub fn record(&self, op: &str, items: usize, failed_keys: u64, failed: bool) {
        let Some(counted) = counted_as(op, items) else {
            return;
        };
        let items = items as u64;
        let failed_keys = if failed {
            items
        } else {
            failed_keys.min(items)
        };
        match counted {
            Counted::Call(rpc) => {
                let c = &self.calls[rpc as usize];
                c.requests.inc();
                if failed || failed_keys > 0 {
                    c.failures.inc();
                }
            }
            Counted::PerKey(rpc) => {
                let c = &self.calls[rpc as usize];
                c.requests.inc_by(items);
                c.failures.inc_by(failed_keys);
            }
            Counted::Batch(rpc) => {
                let Some(b) = self.batches.get(rpc as usize) else {
                    return;
                };
                b.requests.inc();
                b.items.inc_by(items);
                b.failed_items.inc_by(failed_keys);
                if failed || (items > 0 && failed_keys == items) {
                    b.failures.inc();
                } else if failed_keys > 0 {
                    b.partial_successes.inc();
                }
            }
        }
    }

    /// Sets the gauges from `service`'s state now; `(capacity, used)` as already read.
    pub fn refresh(&self, service: &MasterService, capacity: u64, used: u64) {
        self.capacity.set(gauge_value(capacity));
        self.allocated.set(gauge_value(used));
        self.keys.set(gauge_value(service.key_count() as u64));
        self.clients.set(gauge_value(service.client_count() as u64));
        // Summed by name: one holder may mount several segments under its address.
        let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for m in service.segments().iter().filter(|m| m.is_mounted()) {
            let (cap, used) = m.usage();
            let e = by_name.entry(m.segment.name.clone()).or_default();
            e.0 = e.0.saturating_add(cap);
            e.1 = e.1.saturating_add(used);
        }
        // Unmounted segments disappear from the families.
        self.segment_capacity.clear();
        self.segment_allocated.clear();
        for (segment, (cap, used)) in by_name {
            let l = SegmentLabels { segment };
            self.segment_capacity
                .get_or_create(&l)
                .set(gauge_value(cap));
            self.segment_allocated
                .get_or_create(&l)
                .set(gauge_value(used));
        }
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &MooncakeSeries) -> String {
        let mut r = Registry::default();
        s.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    fn value(text: &str, sample: &str) -> u64 {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{sample} ")))
            .unwrap_or_else(|| panic!("no {sample} in\n{text}"));
        line.parse().unwrap()
    }

    #[test]
    fn one_key_calls_count_as_single_rpcs_and_larger_ones_as_batches() {
        assert_eq!(
            counted_as("batch_get_replica_list", 1),
            Some(Counted::Call(MooncakeRpc::GetReplicaList))
        );
        assert_eq!(
            counted_as("batch_get_replica_list", 2),
            Some(Counted::Batch(MooncakeRpc::GetReplicaList))
        );
        assert_eq!(
            counted_as("batch_remove", 3),
            Some(Counted::PerKey(MooncakeRpc::Remove))
        );
        assert_eq!(
            counted_as("remount_segments", 4),
            Some(Counted::Call(MooncakeRpc::RemountSegment))
        );
        assert_eq!(counted_as("batch_upsert_start", 1), None);
        // Every batch-counted RPC has batch counters.
        for op in [
            "batch_put_start",
            "batch_put_end",
            "batch_put_revoke",
            "batch_get_replica_list",
            "batch_exist_key",
        ] {
            let Some(Counted::Batch(rpc)) = counted_as(op, 5) else {
                panic!("{op}");
            };
            assert!((rpc as usize) < BATCHED, "{op}");
        }
    }

    #[test]
    fn counters_carry_mooncakes_exact_sample_names() {
        let s = MooncakeSeries::default();
        s.record("batch_get_replica_list", 1, 0, false);
        s.record("batch_get_replica_list", 1, 1, false);
        s.record("batch_put_start", 4, 1, false);
        s.record("batch_put_start", 3, 3, false);
        s.record("batch_put_start", 2, 0, true);
        s.record("batch_remove", 3, 2, false);
        s.record("ping", 1, 0, false);
        s.record("batch_upsert_start", 1, 0, false);
        let t = text(&s);
        assert_eq!(value(&t, "master_get_replica_list_requests_total"), 2);
        assert_eq!(value(&t, "master_get_replica_list_failures_total"), 1);
        assert_eq!(value(&t, "master_batch_put_start_requests_total"), 3);
        assert_eq!(value(&t, "master_batch_put_start_failures_total"), 2);
        assert_eq!(
            value(&t, "master_batch_put_start_partial_successes_total"),
            1
        );
        assert_eq!(value(&t, "master_batch_put_start_items_total"), 9);
        assert_eq!(value(&t, "master_batch_put_start_failed_items_total"), 6);
        assert_eq!(value(&t, "master_put_start_requests_total"), 0);
        assert_eq!(value(&t, "master_remove_requests_total"), 3);
        assert_eq!(value(&t, "master_remove_failures_total"), 2);
        assert_eq!(value(&t, "master_ping_requests_total"), 1);
        assert_eq!(value(&t, "master_remount_segment_failures_total"), 0);
        assert!(t.contains("# TYPE master_ping_requests counter\n"), "{t}");
        assert!(!t.contains("_total_total"), "{t}");
        assert_eq!(value(&t, "master_total_file_capacity_bytes"), 0);
        assert_eq!(value(&t, "master_allocated_file_size_bytes"), 0);
    }

    #[test]
    fn gauges_follow_the_service_and_unmounted_segments_disappear() {
        use std::sync::Arc;

        use crate::clock::ManualClock;
        use crate::proto::{ReplicateConfig, Segment};
        use crate::service::ServiceConfig;

        let svc = MasterService::new(ServiceConfig::default(), Arc::new(ManualClock::new(1_000)));
        let seg = |name: &str, base| Segment {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            base,
            size: 1 << 20,
        };
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let (a1, a2, b1) = (
            seg("a:1", 0x1000),
            seg("a:1", 0x20_0000),
            seg("b:1", 0x1000),
        );
        for (c, s) in [(a, &a1), (a, &a2), (b, &b1)] {
            svc.mount_segment(c, s.clone()).unwrap();
        }
        let only_b = ReplicateConfig {
            preferred_segments: vec!["b:1".into()],
            ..Default::default()
        };
        svc.batch_put_start(b, vec![("k".to_string(), 4096)], &only_b, false)
            .unwrap()[0]
            .as_ref()
            .unwrap();
        svc.batch_put_end(b, &["k"]).unwrap()[0].unwrap();

        let s = MooncakeSeries::default();
        let (cap, used) = svc.usage();
        s.refresh(&svc, cap, used);
        let t = text(&s);
        assert_eq!(value(&t, "master_total_capacity_bytes"), 3 << 20);
        assert_eq!(value(&t, "master_allocated_bytes"), used);
        assert!(used >= 4096, "{used}");
        assert_eq!(value(&t, "master_key_count"), 1);
        assert_eq!(value(&t, "master_active_clients"), 2);
        assert_eq!(
            value(&t, "segment_total_capacity_bytes{segment=\"a:1\"}"),
            2 << 20
        );
        assert_eq!(value(&t, "segment_allocated_bytes{segment=\"a:1\"}"), 0);
        assert_eq!(value(&t, "segment_allocated_bytes{segment=\"b:1\"}"), used);

        svc.unmount_segment(a, a1.id).unwrap();
        svc.unmount_segment(a, a2.id).unwrap();
        let (cap, used) = svc.usage();
        s.refresh(&svc, cap, used);
        let t = text(&s);
        assert!(!t.contains("segment=\"a:1\""), "{t}");
        assert_eq!(value(&t, "master_total_capacity_bytes"), 1 << 20);
        assert_eq!(
            value(&t, "segment_total_capacity_bytes{segment=\"b:1\"}"),
            1 << 20
        );
    }
}
