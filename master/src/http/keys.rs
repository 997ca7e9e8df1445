//! Object routes of Mooncake's master; none grants a lease (unlike Mooncake's, which read
//! through GetReplicaList):
//!
//! - `/query_key?key=K`: 200 with one JSON line per replica,
//!   `{"size_":…,"buffer_address_":…,"transport_endpoint_":"…"}` (Mooncake's descriptor
//!   fields); 404 with `OBJECT_NOT_FOUND` or `REPLICA_IS_NOT_READY` (still being written);
//!   400 without `key`.
//! - `/batch_query_keys?keys=K1,K2`: `{"success":true,"data":{"K1":{"ok":true,"values":[…]},
//!   "K2":{"ok":false,"error":"OBJECT_NOT_FOUND"}}}`, at most [`MAX_BATCH_QUERY_KEYS`] keys;
//!   400 without keys or with more.
//! - `/get_all_keys[?limit=N]`: keys, one per line, at most `limit` (default
//!   [`DEFAULT_KEYS_LIMIT`], at most [`MAX_KEYS_LIMIT`]); a cut list carries the header
//!   `x-mooncake-truncated: true`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::Response;
use serde::{Serialize, Serializer};

use super::{error, json, lines, text, unavailable, Params};
use crate::proto::{ErrorCode, ReplicaDescriptor};
use crate::server::Shared;
use crate::service::MasterService;

/// Keys `/get_all_keys` returns without `limit`.
pub const DEFAULT_KEYS_LIMIT: usize = 100_000;
/// Most keys `/get_all_keys` returns whatever `limit` asks.
pub const MAX_KEYS_LIMIT: usize = 1_000_000;
/// Most keys one `/batch_query_keys` may name.
pub const MAX_BATCH_QUERY_KEYS: usize = 10_000;

const TRUNCATED: HeaderName = HeaderName::from_static("x-mooncake-truncated");

/// One replica as Mooncake's `buffer_descriptor` JSON.
#[derive(Serialize)]
struct Buffer<'a> {
    size_: u64,
    buffer_address_: u64,
    transport_endpoint_: &'a str,
}

impl<'a> From<&'a ReplicaDescriptor> for Buffer<'a> {
    fn from(r: &'a ReplicaDescriptor) -> Self {
        Buffer {
            size_: r.len,
            buffer_address_: r.addr,
            transport_endpoint_: &r.segment_name,
        }
    }
}

/// A readable key's replicas, or why there are none to read.
fn replicas(svc: &MasterService, key: &str) -> Result<Vec<ReplicaDescriptor>, ErrorCode> {
    match svc.describe_object(key) {
        None => Err(ErrorCode::ObjectNotFound),
        Some(v) if !v.complete => Err(ErrorCode::ReplicaIsNotReady),
        Some(v) => Ok(v.replicas),
    }
}

pub(super) async fn query_key(State(s): State<Arc<Shared>>, Query(q): Params) -> Response {
    let Some(svc) = s.current() else {
        return unavailable();
    };
    let Some(key) = q.get("key") else {
        return text(StatusCode::BAD_REQUEST, "missing ?key=\n".into());
    };
    match replicas(&svc, key) {
        Ok(reps) => {
            let mut body = String::new();
            for r in &reps {
                body.push_str(&serde_json::to_string(&Buffer::from(r)).unwrap_or_default());
                body.push('\n');
            }
            text(StatusCode::OK, body)
        }
        Err(code) => text(StatusCode::NOT_FOUND, code.name().to_string()),
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum KeyResult<'a> {
    Found { ok: bool, values: Vec<Buffer<'a>> },
    Missing { ok: bool, error: &'static str },
}

/// Keys and their results, a JSON object in the order asked.
struct InOrder<'a>(Vec<(&'a str, KeyResult<'a>)>);

impl Serialize for InOrder<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Serialize)]
struct Batch<'a> {
    success: bool,
    data: InOrder<'a>,
}

pub(super) async fn batch_query_keys(State(s): State<Arc<Shared>>, Query(q): Params) -> Response {
    let Some(svc) = s.current() else {
        return unavailable();
    };
    let keys: Vec<&str> = q
        .get("keys")
        .map(|k| k.split(',').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParams,
            "No keys provided. Use ?keys=key1,key2,...",
        );
    }
    if keys.len() > MAX_BATCH_QUERY_KEYS {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParams,
            &format!("at most {MAX_BATCH_QUERY_KEYS} keys per query"),
        );
    }
    let found: Vec<(&str, Result<Vec<ReplicaDescriptor>, ErrorCode>)> =
        keys.iter().map(|&k| (k, replicas(&svc, k))).collect();
    let data = InOrder(
        found
            .iter()
            .map(|(k, r)| {
                let v = match r {
                    Ok(reps) => KeyResult::Found {
                        ok: true,
                        values: reps.iter().map(Buffer::from).collect(),
                    },
                    Err(code) => KeyResult::Missing {
                        ok: false,
                        error: code.name(),
                    },
                };
                (*k, v)
            })
            .collect(),
    );
    json(
        StatusCode::OK,
        &Batch {
            success: true,
            data,
        },
    )
}

pub(super) async fn all_keys(State(s): State<Arc<Shared>>, Query(q): Params) -> Response {
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
