//! Admin HTTP endpoints: `/metrics` (Prometheus text), `/health` (200 while the process
//! runs), `/role` (`leader` or `standby`).

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Shared;

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics_state = shared.clone();
    let role_state = shared;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let s = metrics_state.clone();
                async move {
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
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/role",
            get(move || {
                let s = role_state.clone();
                async move {
                    if s.is_leader() {
                        "leader\n"
                    } else {
                        "standby\n"
                    }
                }
            }),
        );
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
