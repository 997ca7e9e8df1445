//! Admin HTTP endpoints: `/metrics` (Prometheus text), `/health` (200 while the process
//! runs), `/role` (`leader` or `standby`), and the admin routes of Mooncake's C++ master that
//! deployments probe (SGLang's `check_server` and k8s readiness probes poll
//! `/get_all_segments` until it lists a segment):
//!
//! - `/get_all_segments`: the name of every mounted segment, one per line (sorted).
//! - `/query_key?key=K`: 200 with one JSON line per replica,
//!   `{"size_":…,"buffer_address_":…,"transport_endpoint_":"…"}` (Mooncake's descriptor
//!   fields); 404 with `OBJECT_NOT_FOUND` or `REPLICA_IS_NOT_READY` (still being written);
//!   400 without `key`. Unlike Mooncake's, it grants no read lease.
//! - `/get_all_keys[?limit=N]`: keys, one per line, at most `limit` (default
//!   [`DEFAULT_KEYS_LIMIT`], at most [`MAX_KEYS_LIMIT`]); a cut list carries the header
//!   `x-mooncake-truncated: true`.
//! - `/metrics/summary`: one line, `role=…, keys=…, segments=…, clients=…, capacity_bytes=…,
//!   allocated_bytes=…`.
//!
//! The service routes answer 503 (`service plane is not active`) on a standby, as Mooncake's do.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proto::ErrorCode;
use crate::server::Shared;

/// Keys `/get_all_keys` returns without `limit`.
pub const DEFAULT_KEYS_LIMIT: usize = 100_000;
/// Most keys `/get_all_keys` returns whatever `limit` asks.
pub const MAX_KEYS_LIMIT: usize = 1_000_000;

const TEXT: &str = "text/plain; version=0.0.4";
const TRUNCATED: HeaderName = HeaderName::from_static("x-mooncake-truncated");

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/summary", get(summary))
        .route("/health", get(|| async { "ok\n" }))
        .route("/role", get(role))
        .route("/get_all_segments", get(all_segments))
        .route("/get_all_keys", get(all_keys))
        .route("/query_key", get(query_key))
        .with_state(shared);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("admin http server: {e}");
    }
}

type Params = Query<HashMap<String, String>>;

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT)], body).into_response()
}

/// Mooncake's answer on a standby.
fn unavailable() -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "service plane is not active\n".into(),
    )
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let body = s.metrics.encode(s.current().as_deref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn role_name(s: &Shared) -> &'static str {
    if s.is_leader() {
        "leader"
    } else {
        "standby"
    }
}

async fn role(State(s): State<Arc<Shared>>) -> String {
    format!("{}\n", role_name(&s))
}

async fn summary(State(s): State<Arc<Shared>>) -> Response {
    let mut body = format!("role={}", role_name(&s));
    if let Some(svc) = s.current() {
        let (capacity, used) = svc.usage();
        let _ = write!(
            body,
            ", keys={}, segments={}, clients={}, capacity_bytes={capacity}, allocated_bytes={used}",
            svc.key_count(),
            svc.segment_count(),
            svc.client_count(),
        );
    }
    body.push('\n');
    text(StatusCode::OK, body)
}

async fn all_segments(State(s): State<Arc<Shared>>) -> Response {
    let Some(svc) = s.current() else {
        return unavailable();
    };
    let mut names: Vec<String> = svc
        .segments()
        .iter()
        .filter(|m| m.is_mounted())
        .map(|m| m.segment.name.clone())
        .collect();
    names.sort();
    text(StatusCode::OK, lines(&names))
}

async fn all_keys(State(s): State<Arc<Shared>>, Query(q): Params) -> Response {
    let Some(svc) = s.current() else {
        return unavailable();
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_KEYS_LIMIT,
        Some(Ok(l)) => l.min(MAX_KEYS_LIMIT),
        Some(Err(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "limit must be a number of keys\n".into(),
            )
        }
    };
    let (keys, more) = svc.keys(limit);
    let mut r = text(StatusCode::OK, lines(&keys));
    if more {
        r.headers_mut()
            .insert(TRUNCATED, header::HeaderValue::from_static("true"));
    }
    r
}

async fn query_key(State(s): State<Arc<Shared>>, Query(q): Params) -> Response {
    let Some(svc) = s.current() else {
        return unavailable();
    };
    let Some(key) = q.get("key") else {
        return text(StatusCode::BAD_REQUEST, "missing ?key=\n".into());
    };
    let code = match svc.describe_object(key) {
        None => ErrorCode::ObjectNotFound,
        Some(v) if !v.complete => ErrorCode::ReplicaIsNotReady,
        Some(v) => {
            let mut body = String::new();
            for r in &v.replicas {
                let _ = writeln!(
                    body,
                    "{{\"size_\":{},\"buffer_address_\":{},\"transport_endpoint_\":\"{}\"}}",
                    r.len,
                    r.addr,
                    json_escape(&r.segment_name)
                );
            }
            return text(StatusCode::OK, body);
        }
    };
    text(StatusCode::NOT_FOUND, code.name().to_string())
}

fn lines(items: &[String]) -> String {
    let mut body = String::with_capacity(items.iter().map(|i| i.len() + 1).sum());
    for i in items {
        body.push_str(i);
        body.push('\n');
    }
    body
}

/// `s` as the inside of a JSON string.
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escape_keeps_strings_valid() {
        assert_eq!(json_escape("host:1"), "host:1");
        assert_eq!(json_escape("a\"b\\c\nd\u{1}"), "a\\\"b\\\\c\\u000ad\\u0001");
    }

    #[test]
    fn lines_end_each_item() {
        assert_eq!(lines(&["a".into(), "b".into()]), "a\nb\n");
        assert_eq!(lines(&[]), "");
    }
}
