//! Runs one call's transfer pieces through the engine as one merged batch.

use transfer_engine::{Engine, OpCode, SegmentHandle, TransferRequest, TransferState};

use crate::merge::{merge_pieces_with, Piece, Scratch};

/// Submits `pieces` (targets are raw segment handles) as one engine batch after merging
/// adjacent ones (reads also across small gaps into `scratch`), waits for it, and returns each piece's outcome (`Err` carries the reason).
pub async fn run_pieces(
    engine: &Engine,
    op: OpCode,
    pieces: &[Piece<u64>],
    max_merged_len: u64,
    scratch: Option<Scratch>,
) -> Vec<Result<(), String>> {
    if pieces.is_empty() {
        return Vec::new();
    }
    let merged = merge_pieces_with(pieces, max_merged_len, scratch);
    tracing::trace!(
        pieces = pieces.len(),
        requests = merged.requests.len(),
        ?op,
        "transfer batch"
    );
    let requests: Vec<TransferRequest> = merged
        .requests
        .iter()
        .map(|p| TransferRequest {
            op,
            local_addr: p.local_addr,
            target: SegmentHandle(p.target),
            target_offset: p.remote_addr,
            len: p.len,
        })
        .collect();
    let t0 = std::time::Instant::now();
    let waited = submit_and_wait(engine, &requests).await;
    tracing::trace!(
        requests = requests.len(),
        transfer_us = t0.elapsed().as_micros() as u64,
        "transfer done"
    );
    let statuses = match waited {
        Ok(s) => s,
        Err(e) => return vec![Err(e); pieces.len()],
    };
    merged
        .owner
        .iter()
        .map(|&j| match statuses.get(j).map(|s| &s.state) {
            Some(TransferState::Completed) => Ok(()),
            Some(TransferState::Failed(reason)) => Err(reason.clone()),
            Some(TransferState::TimedOut) => Err("transfer timed out".into()),
            Some(TransferState::Waiting) | None => Err("transfer did not finish".into()),
        })
        .collect()
}

async fn submit_and_wait(
    engine: &Engine,
    requests: &[TransferRequest],
) -> Result<Vec<transfer_engine::TransferStatus>, String> {
    let batch = engine
        .allocate_batch(requests.len())
        .map_err(|e| format!("allocate batch: {e}"))?;
    if let Err(e) = engine.submit(batch, requests) {
        let _ = engine.free_batch(batch);
        return Err(format!("submit: {e}"));
    }
    let mut guard = InFlight {
        engine,
        batch,
        done: false,
    };
    let statuses = engine
        .completion(batch)
        .await
        .map_err(|e| format!("wait: {e}"));
    guard.done = true;
    if let Err(e) = engine.free_batch(batch) {
        tracing::warn!(error = %e, "freeing a finished transfer batch failed");
    }
    statuses
}

/// A submitted batch whose completion is being awaited. If the awaiting future is dropped
/// (the caller cancelled, e.g. with a timeout), the transfers are still running and still
/// write into staging ranges and caller buffers that the caller's own drop is about to
/// release; so the drop waits for them (bounded by the engine's request deadline) and frees
/// the batch. Cancelling therefore costs at most one deadline, but never lets a finished call's
/// memory be written afterwards, nor leaks a batch.
struct InFlight<'a> {
    engine: &'a Engine,
    batch: transfer_engine::BatchId,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.engine.wait(self.batch);
        if let Err(e) = self.engine.free_batch(self.batch) {
            tracing::warn!(error = %e, "freeing a cancelled transfer batch failed");
        }
    }
}
