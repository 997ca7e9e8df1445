//! Heartbeats: ping the master every `ping_interval`; on NEED_REMOUNT (the master lost this
//! client: TTL expiry, restart or a new leader) mount the segment again. Each answer also
//! carries the master's read-lease time, which bounds how long a read may take.
//!
//! The task holds only a weak reference, so it ends when the last client clone is dropped
//! (or after `close`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::Inner;
use crate::error::ErrorCode;

/// The read lease before the master's first heartbeat answer (connect waits for that answer).
pub(crate) const ASSUMED_LEASE_TTL_MS: u64 = 10_000;

pub(super) fn spawn_heartbeat(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let period = inner.config.ping_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if !beat(&weak).await {
                return;
            }
        }
    });
}

/// One heartbeat; `false` when the client is gone or closed.
async fn beat(weak: &Weak<Inner>) -> bool {
    let Some(inner) = weak.upgrade() else {
        return false;
    };
    if inner.closed.load(Ordering::Acquire) {
        return false;
    }
    let _ = beat_once(&inner).await;
    true
}

/// Pings the master once: records its lease time and remounts when it asks for that.
pub(super) async fn beat_once(inner: &Inner) -> Result<(), ErrorCode> {
    match inner.master.ping(inner.id).await {
        Ok(resp) => {
            inner
                .lease_ttl_ms
                .store(resp.lease_ttl_ms, Ordering::Relaxed);
            if resp.need_remount {
                remount(inner).await;
            }
            Ok(())
        }
        Err(code) => {
            tracing::debug!(%code, "heartbeat failed; will retry");
            Err(code)
        }
    }
}

/// Mounts this client's segment again after the master forgot it.
pub(super) async fn remount(inner: &Inner) {
    let segments: Vec<_> = inner.mounted.iter().map(|m| m.segment.clone()).collect();
    if segments.is_empty() {
        // A client without a segment is new to every master it first pings.
        tracing::debug!(client = %inner.id, "registering with the master");
    } else {
        tracing::info!(client = %inner.id, segments = segments.len(), "master asked for a remount");
    }
    if let Err(code) = inner.master.remount_segments(inner.id, segments).await {
        tracing::warn!(%code, "remount failed; will retry on the next heartbeat");
    }
}
