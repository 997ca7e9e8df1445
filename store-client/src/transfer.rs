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
    let statuses = engine
        .completion(batch)
        .await
        .map_err(|e| format!("wait: {e}"));
    if let Err(e) = engine.free_batch(batch) {
        tracing::warn!(error = %e, "freeing a finished transfer batch failed");
    }
    statuses
}
