//! Which master this is in HA, as Mooncake's master answers (always 200, on a standby too):
//!
//! - `/health`: `{"status":"ok","role":…,"ha_state":…,"service_ready":…}`, plus
//!   `"leader_address"` and `"view_version"` when a leader is known;
//! - `/role`: `leader` or `standby` (no newline);
//! - `/ha_status`: the runtime state, `starting`, `candidate`, `standby` or `serving`;
//! - `/leader`: `{"present":false}` or `{"present":true,"leader_address":…,"view_version":…}`.
//!
//! A leader (or single master) names itself; a standby names the leader etcd holds, looked
//! up every [`crate::ha::LEADER_POLL`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{json, with_type, PLAIN};
use crate::server::Shared;

#[derive(Serialize)]
struct Health<'a> {
    status: &'a str,
    role: &'a str,
    ha_state: &'a str,
    service_ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    view_version: Option<u64>,
}

#[derive(Serialize)]
struct Leader<'a> {
    present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    view_version: Option<u64>,
}

pub(super) async fn health(State(s): State<Arc<Shared>>) -> Response {
    let (state, leader) = s.ha_status();
    json(
        StatusCode::OK,
        &Health {
            status: "ok",
            role: state.role(),
            ha_state: state.name(),
            service_ready: s.current().is_some(),
            leader_address: leader.as_ref().map(|l| l.address.as_str()),
            view_version: leader.as_ref().map(|l| l.view_version),
        },
    )
}

pub(super) async fn role(State(s): State<Arc<Shared>>) -> Response {
    with_type(StatusCode::OK, PLAIN, s.ha_status().0.role().into())
}

pub(super) async fn ha_status(State(s): State<Arc<Shared>>) -> Response {
    with_type(StatusCode::OK, PLAIN, s.ha_status().0.name().into())
}

pub(super) async fn leader(State(s): State<Arc<Shared>>) -> Response {
    let (_, leader) = s.ha_status();
    json(
        StatusCode::OK,
        &Leader {
            present: leader.is_some(),
            leader_address: leader.as_ref().map(|l| l.address.as_str()),
            view_version: leader.as_ref().map(|l| l.view_version),
        },
    )
}
