//! Prometheus metrics of the master: per-RPC request, failure and item counters and latency
//! histograms, capacity/allocated/key/segment/client gauges (refreshed at scrape time) and the
//! service's eviction and expiry counters, all under the `mooncake_master` prefix; and the same
//! figures again under Mooncake's own names ([`mooncake`]).

pub mod mooncake;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::proto::ErrorCode;
use crate::service::{MasterService, ServiceStats};
use mooncake::MooncakeSeries;

/// Label set of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// Operation name ([`crate::proto::Request::op_name`]).
    pub op: &'static str,
}

/// Label set of per-key error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyErrorLabels {
    /// Operation name.
    pub op: &'static str,
    /// Mooncake error name (`NO_AVAILABLE_HANDLE`, `OBJECT_NOT_FOUND`, ...).
    pub code: &'static str,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 s.
    Histogram::new(exponential_buckets(1e-5, 2.0, 20))
}

/// The service's counters (kept per leadership term, exported as totals across terms): name
/// under the prefix, help, and where the service keeps it.
type ServiceCounter = (&'static str, &'static str, fn(&ServiceStats) -> &AtomicU64);

const SERVICE_COUNTERS: [ServiceCounter; 9] = [
    ("evicted_objects", "Objects evicted", |s| &s.evicted_objects),
    ("evicted_bytes", "Bytes evicted", |s| &s.evicted_bytes),
    ("eviction_passes", "Eviction passes run", |s| {
        &s.eviction_passes
    }),
    (
        "discarded_processing",
        "PROCESSING objects discarded (stale or writer gone)",
        |s| &s.discarded_processing,
    ),
    ("expired_clients", "Clients expired by the TTL", |s| {
        &s.expired_clients
    }),
    (
        "replaced_clients",
        "Clients dropped because a new client mounted a segment under their name (a restart)",
        |s| &s.replaced_clients,
    ),
    (
        "futile_eviction_passes",
        "Eviction passes that found nothing to evict (pinned, leased or in-flight objects)",
        |s| &s.futile_eviction_passes,
    ),
    (
        "skipped_eviction_passes",
        "Eviction passes not run: the last one freed nothing, or one ran meanwhile",
        |s| &s.skipped_eviction_passes,
    ),
    (
        "evicted_group_members",
        "Objects evicted with a member of their object group (also in evicted_objects)",
        |s| &s.evicted_group_members,
    ),
];

/// See the module documentation.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<OpLabels, Counter>,
    failures: Family<OpLabels, Counter>,
    items: Family<OpLabels, Counter>,
    key_errors: Family<KeyErrorLabels, Counter>,
    latency: HistogramFamily,
    capacity: Gauge,
    allocated: Gauge,
    keys: Gauge,
    segments: Gauge,
    clients: Gauge,
    /// One per [`SERVICE_COUNTERS`] entry.
    service_counters: [Counter; SERVICE_COUNTERS.len()],
    object_groups: Gauge,
    is_leader: Gauge,
    mooncake: MooncakeSeries,
    /// The service last scraped and its counters then, to export per-term totals as deltas.
    last: Mutex<(usize, [u64; SERVICE_COUNTERS.len()])>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with our metrics under the `mooncake_master` prefix and Mooncake's names at
    /// the top.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            failures: Family::default(),
            items: Family::default(),
            key_errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            capacity: Gauge::default(),
            allocated: Gauge::default(),
            keys: Gauge::default(),
            segments: Gauge::default(),
            clients: Gauge::default(),
            service_counters: std::array::from_fn(|_| Counter::default()),
            object_groups: Gauge::default(),
            is_leader: Gauge::default(),
            mooncake: MooncakeSeries::default(),
            last: Mutex::new((0, [0; SERVICE_COUNTERS.len()])),
            registry: Registry::default(),
        };
        m.mooncake.register(&mut root);
        let registry = root.sub_registry_with_prefix("mooncake_master");
        registry.register("rpc_requests", "RPC calls by operation", m.requests.clone());
        registry.register(
            "rpc_failures",
            "RPC calls that failed as a whole",
            m.failures.clone(),
        );
        registry.register("rpc_items", "Keys carried by batch calls", m.items.clone());
        registry.register(
            "rpc_key_errors",
            "Keys that failed alone in batch calls, by error (a full pool shows as \
             NO_AVAILABLE_HANDLE from batch_put_start)",
            m.key_errors.clone(),
        );
        registry.register(
            "rpc_latency_seconds",
            "Server-side handling time per RPC",
            m.latency.clone(),
        );
        registry.register("capacity_bytes", "Mounted capacity", m.capacity.clone());
        registry.register("allocated_bytes", "Allocated bytes", m.allocated.clone());
        registry.register("keys", "Objects in the index", m.keys.clone());
        registry.register("segments", "Mounted segments", m.segments.clone());
        registry.register("clients", "Live clients", m.clients.clone());
        for ((name, help, _), c) in SERVICE_COUNTERS.iter().zip(&m.service_counters) {
            registry.register(*name, *help, c.clone());
        }
        registry.register(
            "object_groups",
            "Object groups (ReplicateConfig.group_ids) with members",
            m.object_groups.clone(),
        );
        registry.register("is_leader", "1 when serving as leader", m.is_leader.clone());
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Records one RPC: `items` keys, `failed_keys` of which failed alone (see
    /// [`Metrics::record_key_errors`]), or the call as a whole `failed`.
    pub fn record(
        &self,
        op: &'static str,
        items: usize,
        failed_keys: u64,
        failed: bool,
        elapsed: Duration,
    ) {
        self.mooncake.record(op, items, failed_keys, failed);
        let l = OpLabels { op };
        self.requests.get_or_create(&l).inc();
        self.items.get_or_create(&l).inc_by(items as u64);
        if failed {
            self.failures.get_or_create(&l).inc();
        }
        self.latency
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts the keys of one call that failed alone; how many did.
    pub fn record_key_errors(
        &self,
        op: &'static str,
        errors: impl Iterator<Item = ErrorCode>,
    ) -> u64 {
        // Counted per code first: the family's lock is taken once per code, not per key.
        let mut counts: Vec<(ErrorCode, u64)> = Vec::new();
        for e in errors {
            match counts.iter_mut().find(|(c, _)| *c == e) {
                Some((_, n)) => *n += 1,
                None => counts.push((e, 1)),
            }
        }
        let mut total = 0;
        for (e, n) in counts {
            let l = KeyErrorLabels { op, code: e.name() };
            self.key_errors.get_or_create(&l).inc_by(n);
            total += n;
        }
        total
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.is_leader.set(leader as i64);
    }

    /// Prometheus text exposition, gauges refreshed from `service` if there is one.
    pub fn encode(&self, service: Option<&MasterService>) -> String {
        // Held to the end: a concurrent scrape would clear the per-segment gauges mid-encoding.
        let mut last = self.last.lock();
        if let Some(s) = service {
            let (cap, used) = s.usage();
            self.mooncake.refresh(s, cap, used);
            self.capacity.set(cap as i64);
            self.allocated.set(used as i64);
            self.keys.set(s.key_count() as i64);
            self.segments.set(s.segment_count() as i64);
            self.clients.set(s.client_count() as i64);
            self.object_groups.set(s.group_count() as i64);
            let now = SERVICE_COUNTERS.map(|(_, _, of)| of(&s.stats).load(Ordering::Relaxed));
            let id = s as *const MasterService as usize;
            if last.0 != id {
                *last = (id, [0; SERVICE_COUNTERS.len()]);
            }
            for ((c, now), before) in self.service_counters.iter().zip(now).zip(last.1) {
                c.inc_by(now.saturating_sub(before));
            }
            last.1 = now;
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}
