//! Prometheus metrics of the master: per-RPC request, failure and item counters and latency
//! histograms, capacity/allocated/key/segment/client gauges (refreshed at scrape time) and the
//! service's eviction and expiry counters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::service::MasterService;

/// Label set of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// Operation name ([`crate::proto::Request::op_name`]).
    pub op: &'static str,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs .. ~5 s.
    Histogram::new(exponential_buckets(1e-5, 2.0, 20))
}

/// See the module documentation.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<OpLabels, Counter>,
    failures: Family<OpLabels, Counter>,
    items: Family<OpLabels, Counter>,
    latency: HistogramFamily,
    capacity: Gauge,
    allocated: Gauge,
    keys: Gauge,
    segments: Gauge,
    clients: Gauge,
    evicted_objects: Gauge,
    evicted_bytes: Gauge,
    eviction_passes: Gauge,
    discarded: Gauge,
    expired_clients: Gauge,
    is_leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under the `mooncake_master` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mooncake_master");
        let m = Metrics {
            requests: Family::default(),
            failures: Family::default(),
            items: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            capacity: Gauge::default(),
            allocated: Gauge::default(),
            keys: Gauge::default(),
            segments: Gauge::default(),
            clients: Gauge::default(),
            evicted_objects: Gauge::default(),
            evicted_bytes: Gauge::default(),
            eviction_passes: Gauge::default(),
            discarded: Gauge::default(),
            expired_clients: Gauge::default(),
            is_leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("rpc_requests", "RPC calls by operation", m.requests.clone());
        registry.register(
            "rpc_failures",
            "RPC calls that failed as a whole",
            m.failures.clone(),
        );
        registry.register("rpc_items", "Keys carried by batch calls", m.items.clone());
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
        // Monotonic values kept by the service; exported as totals.
        registry.register(
            "evicted_objects_total",
            "Objects evicted",
            m.evicted_objects.clone(),
        );
        registry.register(
            "evicted_bytes_total",
            "Bytes evicted",
            m.evicted_bytes.clone(),
        );
        registry.register(
            "eviction_passes_total",
            "Eviction passes run",
            m.eviction_passes.clone(),
        );
        registry.register(
            "discarded_processing_total",
            "PROCESSING objects discarded (stale or writer gone)",
            m.discarded.clone(),
        );
        registry.register(
            "expired_clients_total",
            "Clients expired by the TTL",
            m.expired_clients.clone(),
        );
        registry.register("is_leader", "1 when serving as leader", m.is_leader.clone());
        Metrics { registry, ..m }
    }

    /// Records one RPC.
    pub fn record(&self, op: &'static str, items: usize, failed: bool, elapsed: Duration) {
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

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.is_leader.set(leader as i64);
    }

    /// Prometheus text exposition, gauges refreshed from `service` if there is one.
    pub fn encode(&self, service: Option<&MasterService>) -> String {
        if let Some(s) = service {
            let (cap, used) = s.usage();
            self.capacity.set(cap as i64);
            self.allocated.set(used as i64);
            self.keys.set(s.key_count() as i64);
            self.segments.set(s.segment_count() as i64);
            self.clients.set(s.client_count() as i64);
            let st = &s.stats;
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
            self.evicted_objects.set(get(&st.evicted_objects));
            self.evicted_bytes.set(get(&st.evicted_bytes));
            self.eviction_passes.set(get(&st.eviction_passes));
            self.discarded.set(get(&st.discarded_processing));
            self.expired_clients.set(get(&st.expired_clients));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}
