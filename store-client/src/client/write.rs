//! The write path every put-like call shares: one BatchPutStart (or BatchUpsertStart), one
//! transfer batch of WRITEs for every key × replica (adjacent ones merged), then one
//! BatchPutEnd for the keys that were written and one BatchPutRevoke for those that were not.

use mooncake_master::proto::{ReplicaDescriptor, ReplicateConfig, SegmentId};
use transfer_engine::OpCode;

use crate::buffers::BufferSlice;
use crate::error::{ErrorCode, KeyError};
use crate::layout::spans;
use crate::merge::Piece;
use crate::staging::StagingLease;
use crate::staging_alloc::aligned_len;
use crate::transfer::run_pieces;

use super::{segment_id_of, Inner};

/// One key to write: its bytes are the concatenation of `parts` (registered memory or
/// staging), `len` bytes in all.
#[derive(Debug)]
pub(crate) struct WriteItem {
    pub(crate) key: String,
    pub(crate) parts: Vec<BufferSlice>,
    pub(crate) len: u64,
    /// Object group (`""`: none), from the caller's `ReplicateConfig::group_ids`.
    pub(crate) group: String,
    /// Keeps the staging range the parts point into alive (auto-batched copying puts).
    pub(crate) _lease: Option<StagingLease>,
}

impl Inner {
    /// Engine handle of the segment `name` whose master id is `id`, opened (and cached) on
    /// first use. The engine found under that name must be the one the master knows as `id`:
    /// a holder restarted on the same address is another engine, whose memory must not be
    /// read or written at the old replicas' addresses; its descriptor is fetched once more
    /// before the replica is given up.
    pub(crate) async fn segment_handle(&self, name: &str, id: SegmentId) -> Result<u64, String> {
        if let Some(&(h, inc)) = self.handles.lock().get(name) {
            if segment_id_of(inc) == id {
                return Ok(h);
            }
        }
        for fresh in [false, true] {
            if fresh {
                self.engine.forget_segment(name);
            }
            let (engine, owned) = (self.engine.clone(), name.to_string());
            // Opening may handshake with the peer over the network: keep it off the async
            // workers.
            let handle = tokio::task::spawn_blocking(move || engine.open_segment(&owned))
                .await
                .map_err(|e| format!("opening segment {name}: task failed: {e}"))?
                .map_err(|e| format!("opening segment {name}: {e}"))?;
            let inc = self
                .engine
                .segment_descriptor(handle)
                .map_err(|e| format!("opening segment {name}: {e}"))?
                .incarnation;
            if segment_id_of(inc) == id {
                self.handles
                    .lock()
                    .insert(name.to_string(), (handle.0, inc));
                return Ok(handle.0);
            }
        }
        Err(format!(
            "segment {name} is served by another process than the one the master placed this \
             replica in (its holder restarted): the replica is gone"
        ))
    }

    /// Forgets a cached handle and the engine's descriptor (after its transfers failed, the
    /// peer may have restarted).
    pub(crate) fn forget_segment(&self, name: &str) {
        self.handles.lock().remove(name);
        self.engine.forget_segment(name);
    }

    /// Writes items whose keys are unique, non-empty and whose lengths are > 0; one result
    /// per item, in order (`Ok` = bytes written per replica).
    pub(crate) async fn write_items(
        &self,
        items: &[WriteItem],
        cfg: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<Result<u64, KeyError>> {
        self.write_items_staged(items, None, cfg, upsert).await
    }

    /// Like [`Inner::write_items`]; with `values`, item `i`'s bytes are `values[i]`, copied into
    /// staging only after the master placed them, in the order of their replicas' addresses,
    /// so that objects placed back to back are written with one merged request. The caller
    /// guarantees that the values fit the staging buffer together.
    pub(crate) async fn write_items_staged(
        &self,
        items: &[WriteItem],
        values: Option<&[&[u8]]>,
        cfg: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<Result<u64, KeyError>> {
        if items.is_empty() {
            return Vec::new();
        }
        let start_items: Vec<(String, u64)> =
            items.iter().map(|i| (i.key.clone(), i.len)).collect();
        // The items' own groups: callers drop bad items before this, so `cfg.group_ids` (one
        // per item of the caller's batch) no longer lines up.
        let mut cfg = cfg.clone();
        cfg.group_ids = if items.iter().any(|i| !i.group.is_empty()) {
            items.iter().map(|i| i.group.clone()).collect()
        } else {
            Vec::new()
        };
        let started = if upsert {
            self.master
                .batch_upsert_start(self.id, start_items, cfg)
                .await
        } else {
            self.master.batch_put_start(self.id, start_items, cfg).await
        };
        let mut per_key = match started {
            Ok(v) if v.len() == items.len() => v,
            Ok(v) => {
                let msg = format!(
                    "master answered {} results for {} keys",
                    v.len(),
                    items.len()
                );
                return items
                    .iter()
                    .map(|_| Err(KeyError::new(ErrorCode::RpcFail, msg.clone())))
                    .collect();
            }
            Err(code) => {
                let msg = format!("put start failed for the whole batch: {code}");
                return items
                    .iter()
                    .map(|_| Err(KeyError::new(code, msg.clone())))
                    .collect();
            }
        };
        let started: Vec<bool> = per_key.iter().map(Result::is_ok).collect();
        // Staged values: lay them out in the order of their first replica's placement.
        let mut staged_parts: Vec<Option<Vec<BufferSlice>>> = items.iter().map(|_| None).collect();
        let mut _lease = None;
        if let Some(values) = values {
            let mut order: Vec<usize> = (0..items.len()).filter(|&i| per_key[i].is_ok()).collect();
            let first = |i: usize| match &per_key[i] {
                Ok(r) => r.first().map(|d| (d.segment_name.as_str(), d.addr)),
                Err(_) => None,
            };
            order.sort_by(|&a, &b| first(a).cmp(&first(b)));
            let total: u64 = order
                .iter()
                .map(|&i| aligned_len(values[i].len() as u64))
                .sum();
            match self.staging.lease(total).await {
                Some(mut lease) => {
                    let mut off = 0u64;
                    let mut writes = Vec::with_capacity(order.len());
                    for &i in &order {
                        writes.push((off, values[i]));
                        staged_parts[i] = Some(vec![BufferSlice::new(
                            lease.addr() + off,
                            values[i].len() as u64,
                        )]);
                        off += aligned_len(values[i].len() as u64);
                    }
                    // Inside the lease by construction (it holds `total`, the sum of the
                    // aligned lengths); were it not, nothing is written and every key fails.
                    if lease.write_many(self.engine.copy_pool(), &writes) {
                        _lease = Some(lease);
                    } else {
                        for p in per_key.iter_mut().filter(|p| p.is_ok()) {
                            *p = Err(ErrorCode::BufferOverflow);
                        }
                    }
                }
                None => {
                    for p in per_key.iter_mut().filter(|p| p.is_ok()) {
                        // Nothing was written yet; revoked below like a failed transfer.
                        *p = Err(ErrorCode::BufferOverflow);
                    }
                }
            }
        }
        let mut results: Vec<Result<u64, KeyError>> = Vec::with_capacity(items.len());
        let mut pieces: Vec<Piece<u64>> = Vec::new();
        let mut piece_owner: Vec<usize> = Vec::new();
        for (i, (item, replicas)) in items.iter().zip(per_key).enumerate() {
            let staged;
            let item = match staged_parts[i].take() {
                Some(parts) => {
                    staged = WriteItem {
                        key: item.key.clone(),
                        parts,
                        len: item.len,
                        group: String::new(),
                        _lease: None,
                    };
                    &staged
                }
                None => item,
            };
            match replicas {
                Err(code) => results.push(Err(KeyError::new(
                    code,
                    format!("master refused the put of {:?}: {code}", item.key),
                ))),
                Ok(replicas) => match self.plan_write(item, &replicas).await {
                    Ok(ps) => {
                        piece_owner.extend(std::iter::repeat_n(i, ps.len()));
                        pieces.extend(ps);
                        results.push(Ok(item.len));
                    }
                    Err(e) => results.push(Err(e)),
                },
            }
        }
        let outcomes = run_pieces(
            &self.engine,
            OpCode::Write,
            &pieces,
            self.config.max_merged_len,
            None,
        )
        .await;
        for (owner, outcome) in piece_owner.iter().zip(outcomes) {
            if let (Err(reason), Ok(_)) = (outcome, &results[*owner]) {
                results[*owner] = Err(KeyError::new(
                    ErrorCode::TransferFail,
                    format!("writing a replica failed: {reason}"),
                ));
            }
        }
        self.finish_writes(items, &started, &mut results, upsert)
            .await;
        results
    }

    /// Transfer pieces of one item: its parts gathered into each replica.
    async fn plan_write(
        &self,
        item: &WriteItem,
        replicas: &[ReplicaDescriptor],
    ) -> Result<Vec<Piece<u64>>, KeyError> {
        if replicas.is_empty() {
            return Err(KeyError::new(
                ErrorCode::NoAvailableHandle,
                "master allocated no replica",
            ));
        }
        let mut out = Vec::new();
        for r in replicas {
            if r.len != item.len {
                return Err(KeyError::new(
                    ErrorCode::InvalidReplica,
                    format!(
                        "master allocated {} bytes for a {}-byte value",
                        r.len, item.len
                    ),
                ));
            }
            let target = self
                .segment_handle(&r.segment_name, r.segment_id)
                .await
                .map_err(|m| KeyError::new(ErrorCode::TransferFail, m))?;
            let spans = spans(r.addr, r.len, &item.parts).ok_or_else(|| {
                KeyError::new(
                    ErrorCode::InvalidParams,
                    "buffers hold fewer bytes than the value",
                )
            })?;
            out.extend(spans.into_iter().map(|s| Piece {
                target,
                local_addr: s.local_addr,
                remote_addr: s.remote_addr,
                len: s.len,
            }));
        }
        Ok(out)
    }

    /// Seals written keys (one End call) and revokes the rest (one Revoke call), concurrently.
    async fn finish_writes(
        &self,
        items: &[WriteItem],
        started: &[bool],
        results: &mut [Result<u64, KeyError>],
        upsert: bool,
    ) {
        let (mut ok_idx, mut bad_keys) = (Vec::new(), Vec::new());
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(_) => ok_idx.push(i),
                // Keys the master refused at start hold nothing to revoke.
                Err(_) if started[i] => bad_keys.push(items[i].key.clone()),
                Err(_) => {}
            }
        }
        let ok_keys: Vec<String> = ok_idx.iter().map(|&i| items[i].key.clone()).collect();
        let end = async {
            if ok_keys.is_empty() {
                return Ok(Vec::new());
            }
            if upsert {
                self.master.batch_upsert_end(self.id, ok_keys).await
            } else {
                self.master.batch_put_end(self.id, ok_keys).await
            }
        };
        let revoke = async {
            if bad_keys.is_empty() {
                return Ok(Vec::new());
            }
            if upsert {
                self.master.batch_upsert_revoke(self.id, bad_keys).await
            } else {
                self.master.batch_put_revoke(self.id, bad_keys).await
            }
        };
        let (ended, revoked) = tokio::join!(end, revoke);
        if let Err(code) = revoked {
            tracing::warn!(%code, "revoking failed writes failed; the master will expire them");
        }
        match ended {
            Ok(per_key) => {
                for (&i, r) in ok_idx
                    .iter()
                    .zip(per_key.into_iter().map(Some).chain(std::iter::repeat(None)))
                {
                    match r {
                        Some(Ok(())) => {}
                        Some(Err(code)) => {
                            results[i] = Err(KeyError::new(
                                code,
                                format!("master refused to seal the write: {code}"),
                            ))
                        }
                        None => {
                            results[i] = Err(KeyError::new(
                                ErrorCode::RpcFail,
                                "master answered no result for this key",
                            ))
                        }
                    }
                }
            }
            Err(code) => {
                for &i in &ok_idx {
                    results[i] = Err(KeyError::new(
                        code,
                        format!("sealing the write failed: {code}"),
                    ));
                }
            }
        }
    }
}
