//! Segment routes of Mooncake's master (a holder may mount several segments under one name;
//! the name is what clients and Mooncake's tools know):
//!
//! - `/get_all_segments`: the name of every mounted segment, one per line (sorted).
//! - `/query_segment?segment=NAME`: `NAME\nUsed(bytes): U\nCapacity(bytes) : C\n` (Mooncake's
//!   text, bytes summed over the segments of that name); 500 `Failed to query segment…` when
//!   none is mounted, as Mooncake answers; 400 without `segment`.
//! - `/get_segments_detail`: `{"total_segments":N,"segments":[…]}`, one object per segment
//!   with Mooncake's fields (`segment_name`, `segment_id`, `client_id`, `base_address` in hex,
//!   `size_bytes`, `size_human`, `te_endpoint`, `protocol` (empty: the master does not know
//!   it), `status`, `allocator_used_bytes`, `allocator_capacity_bytes`,
//!   `allocator_usage_percent`) and ours, `allocations` (replicas and not yet released
//!   ranges allocated in it).
//! - `/api/v1/segments/status?segment=NAME`: `{"success":true,"segment":…,"status":1,
//!   "status_name":"OK"}`; 404 with Mooncake's JSON error when none is mounted, 400 without
//!   `segment`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{error, json, lines, text, unavailable, Params};
use crate::proto::ErrorCode;
use crate::segment::MountedSegment;
use crate::server::Shared;

/// Mooncake's `SegmentStatus::OK` (mounted and available), the only status a mounted segment
/// has here.
const STATUS_OK: (i32, &str) = (1, "OK");

pub(super) async fn all_segments(State(s): State<Arc<Shared>>) -> Response {
    let Some(svc) = s.current() else {
        return unavailable();
    };
    let mut names: Vec<String> = mounted(&svc.segments())
        .map(|m| m.segment.name.clone())
        .collect();
    names.sort();
    text(StatusCode::OK, lines(&names))
}

fn mounted(segs: &[Arc<MountedSegment>]) -> impl Iterator<Item = &Arc<MountedSegment>> {
    segs.iter().filter(|m| m.is_mounted())
}

pub(super) async fn query_segment(State(s): State<Arc<Shared>>, Query(q): Params) -> Response {
    let Some(svc) = s.current() else {
        return unavailable();
    };
    let Some(name) = q.get("segment") else {
        return text(StatusCode::BAD_REQUEST, "missing ?segment=\n".into());
    };
    match svc.segment_usage(name) {
        Some((used, capacity)) => text(
            StatusCode::OK,
            format!("{name}\nUsed(bytes): {used}\nCapacity(bytes) : {capacity}\n"),
        ),
        None => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "Failed to query segment: {}\n",
                ErrorCode::SegmentNotFound.name()
            ),
        ),
    }
}

#[derive(Serialize)]
struct Detail {
    segment_name: String,
    segment_id: String,
    client_id: String,
    base_address: String,
    size_bytes: u64,
    size_human: String,
    te_endpoint: String,
    protocol: &'static str,
    status: &'static str,
    allocator_used_bytes: u64,
    allocator_capacity_bytes: u64,
    allocator_usage_percent: f64,
    allocations: usize,
}

#[derive(Serialize)]
struct Details {
    total_segments: usize,
    segments: Vec<Detail>,
}

fn detail(m: &MountedSegment) -> Detail {
    let (capacity, used) = m.usage();
    Detail {
        segment_name: m.segment.name.clone(),
        segment_id: m.segment.id.to_string(),
        client_id: m.owner.to_string(),
        base_address: format!("{:#x}", m.segment.base),
        size_bytes: m.segment.size,
        size_human: format!(
            "{} GiB",
            six_digits(m.segment.size as f64 / (1u64 << 30) as f64)
        ),
        te_endpoint: m.segment.name.clone(),
        protocol: "",
        status: STATUS_OK.1,
        allocator_used_bytes: used,
        allocator_capacity_bytes: capacity,
        allocator_usage_percent: if capacity == 0 {
            0.0
        } else {
            used as f64 / capacity as f64 * 100.0
        },
        allocations: m.allocations(),
    }
}

/// `x` to six significant digits, as C++ streams print a double by default.
fn six_digits(x: f64) -> f64 {
    format!("{x:.5e}").parse().unwrap_or(x)
}

pub(super) async fn segments_detail(State(s): State<Arc<Shared>>) -> Response {
    let Some(svc) = s.current() else {
        return unavailable();
    };
    let segs = svc.segments();
    let mut sorted: Vec<&Arc<MountedSegment>> = mounted(&segs).collect();
    sorted
        .sort_by(|a, b| (&a.segment.name, a.segment.base).cmp(&(&b.segment.name, b.segment.base)));
    let segments: Vec<Detail> = sorted.into_iter().map(|m| detail(m)).collect();
    json(
        StatusCode::OK,
        &Details {
            total_segments: segments.len(),
            segments,
        },
    )
}

#[derive(Serialize)]
struct Status<'a> {
    success: bool,
    segment: &'a str,
    status: i32,
    status_name: &'a str,
}

pub(super) async fn segment_status(State(s): State<Arc<Shared>>, Query(q): Params) -> Response {
    let Some(name) = q.get("segment").filter(|n| !n.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParams,
            "Missing segment query parameter",
        );
    };
    let Some(svc) = s.current() else {
        return unavailable();
    };
    if svc.segment_usage(name).is_none() {
        let code = ErrorCode::SegmentNotFound;
        return error(StatusCode::NOT_FOUND, code, code.name());
    }
    json(
        StatusCode::OK,
        &Status {
            success: true,
            segment: name,
            status: STATUS_OK.0,
            status_name: STATUS_OK.1,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_cpp_streams() {
        assert_eq!(six_digits(1.0).to_string(), "1");
        assert_eq!(six_digits(3.125).to_string(), "3.125");
        assert_eq!(six_digits(1.0 / 3.0).to_string(), "0.333333");
        assert_eq!(six_digits(1.0 / 7.0).to_string(), "0.142857");
    }
}
