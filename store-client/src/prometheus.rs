//! Prometheus exposition of the client metrics, and an optional HTTP endpoint serving them.
//!
//! The collector renders a fresh [`Metrics::snapshot`] on every scrape, so there is one source
//! of truth. Names: `mooncake_client_{ops,keys,bytes,retries}_total{op}`,
//! `mooncake_client_errors_total{op,code}`, `mooncake_client_latency_us{op}` (histogram),
//! `mooncake_client_batch_size_mean{op}`, and the same-host shared-memory path's
//! `mooncake_client_shm_{requests,bytes}_total` and `mooncake_client_shm_peers`.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::{Metrics, OpSnapshot};

/// Renders client metrics on each scrape.
#[derive(Debug)]
pub struct MetricsCollector(pub Arc<Metrics>);

type Get = fn(&OpSnapshot) -> u64;

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.0.snapshot();
        let counters: [(&str, &str, Get); 4] = [
            ("mooncake_client_ops", "Calls finished", |o| o.ops),
            ("mooncake_client_keys", "Keys across calls", |o| o.keys),
            ("mooncake_client_bytes", "Payload bytes moved", |o| o.bytes),
            (
                "mooncake_client_retries",
                "Reads retried on another replica",
                |o| o.retries,
            ),
        ];
        for (name, help, get) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for op in &snap.ops {
                let labels = [("op", op.kind.name())];
                ConstCounter::new(get(op)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut errors = encoder.encode_descriptor(
            "mooncake_client_errors",
            "Failed keys by Mooncake error code",
            None,
            MetricType::Counter,
        )?;
        for op in &snap.ops {
            for (code, n) in &op.errors {
                let code = code.to_string();
                let labels = [("op", op.kind.name()), ("code", code.as_str())];
                ConstCounter::new(*n).encode(errors.encode_family(&labels)?)?;
            }
        }
        let mut latency = encoder.encode_descriptor(
            "mooncake_client_latency_us",
            "Call latency in microseconds",
            None,
            MetricType::Histogram,
        )?;
        for op in &snap.ops {
            let labels = [("op", op.kind.name())];
            let buckets: Vec<(f64, u64)> = op
                .latency_buckets
                .iter()
                .map(|&(b, n)| (b as f64, n))
                .chain(std::iter::once((f64::INFINITY, op.ops)))
                .collect();
            latency
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(op.latency_sum_us as f64, op.ops, &buckets, None)?;
        }
        let mut batch = encoder.encode_descriptor(
            "mooncake_client_batch_size_mean",
            "Mean keys per call",
            None,
            MetricType::Gauge,
        )?;
        for op in &snap.ops {
            let labels = [("op", op.kind.name())];
            ConstGauge::new(op.batch_size_mean).encode(batch.encode_family(&labels)?)?;
        }
        let shm: [(&str, &str, u64); 2] = [
            (
                "mooncake_client_shm_requests",
                "Transfer requests served through same-host shared memory",
                snap.shm.requests,
            ),
            (
                "mooncake_client_shm_bytes",
                "Bytes moved through same-host shared memory",
                snap.shm.bytes,
            ),
        ];
        for (name, help, value) in shm {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let peers = encoder.encode_descriptor(
            "mooncake_client_shm_peers",
            "Same-host peers whose memory is mapped now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(snap.shm.peers as i64).encode(peers)?;
        Ok(())
    }
}

/// Prometheus text for `metrics`.
pub fn render(metrics: &Arc<Metrics>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MetricsCollector(metrics.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would only truncate the page.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// A running `/metrics` endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Serves `GET /metrics` and `GET /health` (`OK` while the client runs) on `addr` (port 0
    /// picks a free one; the address is logged).
    pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "client metrics endpoint: /metrics, /health");
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move { render(&metrics) }
                }),
            )
            .route("/health", axum::routing::get(|| async { "OK" }));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "client metrics endpoint stopped");
            }
        });
        Ok(Self { addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CallRecord, OpKind};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn text_has_counters_errors_and_histogram() {
        let m = Arc::new(Metrics::default());
        let rec = CallRecord {
            keys: 3,
            bytes: 300,
            errors: vec![-704],
            latency: Duration::from_micros(40),
            ..Default::default()
        };
        m.record(OpKind::BatchGet, &rec);
        let text = render(&m);
        assert!(
            text.contains("mooncake_client_keys_total{op=\"batch_get\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("mooncake_client_errors_total{op=\"batch_get\",code=\"-704\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mooncake_client_latency_us_bucket{le=\"50.0\",op=\"batch_get\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mooncake_client_shm_requests_total 0"),
            "{text}"
        );
        assert!(text.contains("mooncake_client_shm_peers 0"), "{text}");
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_over_http() {
        let m = Arc::new(Metrics::default());
        m.record(
            OpKind::Put,
            &CallRecord {
                keys: 1,
                bytes: 7,
                ..Default::default()
            },
        );
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), m)
            .await
            .unwrap();
        let mut s = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("mooncake_client_bytes_total{op=\"put\"} 7"),
            "{body}"
        );
    }
}
