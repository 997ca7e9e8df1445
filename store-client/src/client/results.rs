//! Filling one call's per-key results, each stamped with its own latency.

use std::time::Instant;

use crate::error::{ErrorCode, KeyError, KeyResult};
use crate::metrics::CallRecord;

/// Per-key result slots of one call; a slot's latency is taken when it is filled.
pub(crate) struct Slots<T> {
    started: Instant,
    slots: Vec<Option<KeyResult<T>>>,
}

impl<T> Slots<T> {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            started: Instant::now(),
            slots: (0..n).map(|_| None).collect(),
        }
    }

    pub(crate) fn set(&mut self, i: usize, result: Result<T, KeyError>) {
        self.slots[i] = Some(KeyResult {
            result,
            latency: self.started.elapsed(),
        });
    }

    pub(crate) fn fail(&mut self, i: usize, code: ErrorCode, message: impl Into<String>) {
        self.set(i, Err(KeyError::new(code, message)));
    }

    /// Every slot; one never filled is reported as an internal error (a bug, never a panic).
    pub(crate) fn finish(self) -> Vec<KeyResult<T>> {
        let latency = self.started.elapsed();
        self.slots
            .into_iter()
            .map(|s| {
                s.unwrap_or_else(|| KeyResult {
                    result: Err(KeyError::new(
                        ErrorCode::InternalError,
                        "key was never processed",
                    )),
                    latency,
                })
            })
            .collect()
    }
}

/// Metrics record of a finished call; `bytes` says how many bytes a successful key moved.
pub(crate) fn record_of<T>(
    results: &[KeyResult<T>],
    retries: u64,
    started: Instant,
    bytes: impl Fn(&T) -> u64,
) -> CallRecord {
    CallRecord {
        keys: results.len() as u64,
        bytes: results
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .map(&bytes)
            .sum(),
        retries,
        errors: results
            .iter()
            .filter_map(|r| r.result.as_ref().err())
            .map(|e| e.code.code())
            .collect(),
        latency: started.elapsed(),
    }
}
