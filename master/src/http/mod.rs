//! Admin HTTP endpoints: `/metrics` (Prometheus text) and the admin routes of Mooncake's C++
//! master, with its paths, status codes and body formats, which deployments probe (SGLang's
//! `check_server` and k8s readiness probes poll `/get_all_segments` until it lists a segment):
//!
//! - `role`: `/health`, `/role`, `/ha_status`, `/leader` (which master this is in HA);
//! - `keys`: `/query_key`, `/batch_query_keys`, `/get_all_keys` (objects);
//! - `segments`: `/get_all_segments`, `/query_segment`, `/get_segments_detail`,
//!   `/api/v1/segments/status` (mounted segments);
//! - `/metrics/summary`: one line, `role=…, state=…, service_ready=…, keys=…, segments=…,
//!   clients=…, capacity_bytes=…, allocated_bytes=…, leader=…, view_version=…`.
//!
//! Every route only reads: none grants a lease or refreshes a soft pin, and none returns an
//! unbounded list of keys. The service routes answer 503 with Mooncake's JSON error
//! (`service plane is not active`) on a standby. Mooncake's drain-job routes
//! (`/api/v1/drain_jobs…`) are not served: this master does not migrate replicas.

mod keys;
mod role;
mod segments;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proto::ErrorCode;
use crate::server::Shared;

pub use keys::{DEFAULT_KEYS_LIMIT, MAX_BATCH_QUERY_KEYS, MAX_KEYS_LIMIT};

const TEXT: &str = "text/plain; version=0.0.4";
const PLAIN: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/summary", get(summary))
        .route("/health", get(role::health))
        .route("/role", get(role::role))
        .route("/ha_status", get(role::ha_status))
        .route("/leader", get(role::leader))
        .route("/get_all_segments", get(segments::all_segments))
        .route("/query_segment", get(segments::query_segment))
        .route("/get_segments_detail", get(segments::segments_detail))
        .route("/api/v1/segments/status", get(segments::segment_status))
        .route("/get_all_keys", get(keys::all_keys))
        .route("/query_key", get(keys::query_key))
        .route("/batch_query_keys", get(keys::batch_query_keys))
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

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Prometheus-style text, as Mooncake's data routes answer.
fn text(status: StatusCode, body: String) -> Response {
    with_type(status, TEXT, body)
}

fn json<T: Serialize>(status: StatusCode, payload: &T) -> Response {
    match serde_json::to_string(payload) {
        Ok(body) => with_type(status, JSON, body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        ),
    }
}

/// Mooncake's JSON error body.
#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    error_code: i32,
    error_message: &'a str,
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    json(
        status,
        &ErrorBody {
            success: false,
            error_code: code.code(),
            error_message: message,
        },
    )
}

/// Mooncake's answer on a standby.
fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::UnavailableInCurrentMode,
        "service plane is not active",
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

async fn summary(State(s): State<Arc<Shared>>) -> Response {
    let (state, leader) = s.ha_status();
    let svc = s.current();
    let mut body = format!(
        "role={}, state={}, service_ready={}",
        state.role(),
        state.name(),
        svc.is_some()
    );
    if let Some(svc) = svc {
        let (capacity, used) = svc.usage();
        let _ = write!(
            body,
            ", keys={}, segments={}, clients={}, capacity_bytes={capacity}, allocated_bytes={used}",
            svc.key_count(),
            svc.segment_count(),
            svc.client_count(),
        );
    }
    if let Some(l) = leader {
        let _ = write!(
            body,
            ", leader={}, view_version={}",
            l.address, l.view_version
        );
    }
    body.push('\n');
    text(StatusCode::OK, body)
}

fn lines(items: &[String]) -> String {
    let mut body = String::with_capacity(items.iter().map(|i| i.len() + 1).sum());
    for i in items {
        body.push_str(i);
        body.push('\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_each_item() {
        assert_eq!(lines(&["a".into(), "b".into()]), "a\nb\n");
        assert_eq!(lines(&[]), "");
    }
}
