//! The read path every get-like call shares: one BatchGetReplicaList, then one transfer
//! batch of READs (a local replica first, then any complete one, adjacent reads merged);
//! keys whose read failed are retried on their next replica in a further batch.

use std::collections::HashMap;

use mooncake_master::proto::ReplicaDescriptor;
use transfer_engine::OpCode;

use crate::buffers::{total_len, BufferSlice};
use crate::error::{ErrorCode, KeyError};
use crate::layout::spans;
use crate::layout::staging_layout;
use crate::merge::{Piece, Scratch};
use crate::replica_choice::{ReplicaCursor, ReplicaView};
use crate::staging_alloc::aligned_len;
use crate::transfer::run_pieces;

use super::Inner;

impl ReplicaView for ReplicaDescriptor {
    fn segment_name(&self) -> &str {
        &self.segment_name
    }
    fn is_complete(&self) -> bool {
        self.status == mooncake_master::proto::ReplicaStatus::Complete
    }
}

/// Where a key's bytes go.
#[derive(Clone, Debug)]
pub(crate) enum ReadDst {
    /// Into a new `Vec<u8>` (through staging).
    Copy,
    /// Scattered over registered caller buffers.
    Parts(Vec<BufferSlice>),
    /// `dst.len` bytes of the object from byte `offset` on, into one registered buffer.
    Range {
        /// First byte of the object to read.
        offset: u64,
        /// Where the bytes go (and how many).
        dst: BufferSlice,
    },
}

/// What a successful read produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOut {
    /// The value (copying calls).
    Bytes(Vec<u8>),
    /// Bytes written into the caller's buffers (zero-copy calls).
    Len(u64),
}

/// One key being read: its replicas, which to try next, and where the bytes go.
struct Target {
    slot: usize,
    replicas: Vec<ReplicaDescriptor>,
    cursor: ReplicaCursor,
    parts: Vec<BufferSlice>,
    /// First byte of the object a ranged read starts at (its replicas are moved by it).
    range_offset: Option<u64>,
    len: u64,
    last_error: Option<String>,
}

impl Target {
    /// Where its bytes were to go, for a new lookup of a read that never started (`copy`: a
    /// copying read, whose `parts` are staging). Takes the caller's buffers out of it.
    fn take_dst(&mut self, copy: bool) -> ReadDst {
        match (copy, self.range_offset) {
            (true, _) => ReadDst::Copy,
            (false, Some(offset)) => ReadDst::Range {
                offset,
                dst: self.parts[0],
            },
            (false, None) => ReadDst::Parts(std::mem::take(&mut self.parts)),
        }
    }

    /// Segment and address of the replica tried first.
    fn first_location(&self) -> Option<(&str, u64)> {
        let r = self.replicas.get(self.cursor.peek()?)?;
        Some((r.segment_name.as_str(), r.addr))
    }
}

/// The distinct keys of `keys` in first-seen order, and for each key the index of its distinct
/// key (`None` when all are distinct, the usual case).
fn distinct_keys(keys: &[String]) -> (Vec<String>, Option<Vec<usize>>) {
    if keys.len() < 2 {
        return (keys.to_vec(), None);
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    let mut of_key = Vec::with_capacity(keys.len());
    let mut distinct = Vec::new();
    for k in keys {
        let next = distinct.len();
        let d = *seen.entry(k.as_str()).or_insert(next);
        if d == next {
            distinct.push(k.clone());
        }
        of_key.push(d);
    }
    let of_key = (distinct.len() < keys.len()).then_some(of_key);
    (distinct, of_key)
}

/// What one lookup-and-read pass produced.
struct Pass {
    /// One result per key.
    results: Vec<Result<ReadOut, KeyError>>,
    /// Replica retries.
    retries: u64,
    /// Keys whose lease ran out before their transfers could start (their group waited for
    /// staging), with where their bytes go: nothing was read for them, and a new lookup may
    /// well succeed.
    unstarted: Vec<(usize, ReadDst)>,
}

impl Pass {
    /// Every one of `n` keys failed with `e`.
    fn failed(n: usize, e: KeyError) -> Pass {
        Pass {
            results: (0..n).map(|_| Err(e.clone())).collect(),
            retries: 0,
            unstarted: Vec::new(),
        }
    }
}

impl Inner {
    /// Reads `keys` (already checked) into `dsts`; one result per key, plus the retry count.
    ///
    /// Keys whose read lease ran out while their group waited for staging (other reads held
    /// it) are looked up again, once, with a new lease; keys whose transfers started and ended
    /// past the lease fail with LEASE_EXPIRED (the holder is slow, and its bytes may be another
    /// object's by then).
    pub(crate) async fn read_keys(
        &self,
        keys: Vec<String>,
        dsts: Vec<ReadDst>,
    ) -> (Vec<Result<ReadOut, KeyError>>, u64) {
        let first = self.read_pass(&keys, dsts).await;
        let (mut results, mut retries) = (first.results, first.retries);
        if first.unstarted.is_empty() {
            return (results, retries);
        }
        tracing::debug!(
            keys = first.unstarted.len(),
            "read lease ran out while waiting for staging; looking the keys up again"
        );
        let again = first.unstarted.len();
        let (slots, again_dsts): (Vec<usize>, Vec<ReadDst>) = first.unstarted.into_iter().unzip();
        let again_keys: Vec<String> = slots.iter().map(|&i| keys[i].clone()).collect();
        let second = self.read_pass(&again_keys, again_dsts).await;
        retries += second.retries + again as u64;
        for (i, r) in slots.into_iter().zip(second.results) {
            results[i] = r;
        }
        (results, retries)
    }

    /// One replica lookup for `keys` and the reads it allows.
    async fn read_pass(&self, keys: &[String], dsts: Vec<ReadDst>) -> Pass {
        let n = keys.len();
        let mut results: Vec<Option<Result<ReadOut, KeyError>>> = (0..n).map(|_| None).collect();
        let mut unstarted = Vec::new();
        if n == 0 {
            return Pass {
                results: Vec::new(),
                retries: 0,
                unstarted,
            };
        }
        let t0 = std::time::Instant::now();
        // A key asked for many times (ranged reads of one object) is looked up once.
        let (distinct, of_key) = distinct_keys(keys);
        let asked = distinct.len();
        let lookup = self.master.batch_get_replica_list(distinct).await;
        tracing::trace!(
            keys = n,
            lookup_us = t0.elapsed().as_micros() as u64,
            "replica lookup"
        );
        let lookups = match lookup {
            Ok(v) if v.len() == asked => match of_key {
                None => v,
                Some(of_key) => of_key
                    .iter()
                    .map(|&d| v.get(d).cloned().unwrap_or(Err(ErrorCode::RpcFail)))
                    .collect(),
            },
            Ok(v) => {
                let msg = format!("master answered {} results for {asked} keys", v.len());
                return Pass::failed(n, KeyError::new(ErrorCode::RpcFail, msg));
            }
            Err(code) => {
                let msg = format!("replica lookup failed for the whole batch: {code}");
                return Pass::failed(n, KeyError::new(code, msg));
            }
        };
        let local = self.mounted.as_ref().map(|m| m.segment.name.clone());
        let near = NearSegments::new(&self.engine);
        let mut direct = Vec::new();
        let mut copy = Vec::new();
        for (i, (lookup, dst)) in lookups.into_iter().zip(dsts).enumerate() {
            let replicas = match lookup {
                Ok(r) => r,
                Err(code) => {
                    results[i] = Some(Err(KeyError::new(
                        code,
                        format!("cannot read {:?}: {code}", keys[i]),
                    )));
                    continue;
                }
            };
            let len = replicas.first().map_or(0, |r| r.len);
            // A ranged read is the read of a smaller object: the same replicas, each moved to
            // the range.
            let (replicas, len) = match &dst {
                ReadDst::Range { offset, dst: d } => {
                    // An empty range inside the object reads nothing and succeeds, as in
                    // Mooncake.
                    match offset.checked_add(d.len).filter(|&end| end <= len) {
                        Some(_) => (
                            replicas
                                .into_iter()
                                .map(|r| ReplicaDescriptor {
                                    addr: r.addr.saturating_add(*offset),
                                    len: d.len,
                                    ..r
                                })
                                .collect(),
                            d.len,
                        ),
                        None => {
                            results[i] = Some(Err(KeyError::new(
                                ErrorCode::InvalidParams,
                                format!(
                                    "range [{offset}, +{}) runs past the {len}-byte object {:?}",
                                    d.len, keys[i]
                                ),
                            )));
                            continue;
                        }
                    }
                }
                _ => (replicas, len),
            };
            let cursor = ReplicaCursor::new(&replicas, local.as_deref(), |s| near.is(s));
            if cursor.readable() == 0 {
                results[i] = Some(Err(KeyError::new(
                    ErrorCode::ReplicaIsNotReady,
                    "no complete replica to read",
                )));
                continue;
            }
            let target = Target {
                slot: i,
                replicas,
                cursor,
                parts: Vec::new(),
                range_offset: None,
                len,
                last_error: None,
            };
            match dst {
                ReadDst::Parts(parts) => {
                    if total_len(&parts) < len {
                        results[i] = Some(Err(KeyError::new(
                            ErrorCode::BufferOverflow,
                            format!(
                                "object is {len} bytes but the buffers hold {}",
                                total_len(&parts)
                            ),
                        )));
                        continue;
                    }
                    direct.push(Target { parts, ..target });
                }
                ReadDst::Range { offset, dst } => direct.push(Target {
                    parts: vec![dst],
                    range_offset: Some(offset),
                    ..target
                }),
                ReadDst::Copy => copy.push(target),
            }
        }
        let mut retries = 0;
        let capacity = self.staging.capacity();
        for t in copy.iter().filter(|t| aligned_len(t.len) > capacity) {
            results[t.slot] = Some(Err(KeyError::new(
                ErrorCode::BufferOverflow,
                format!(
                    "object of {} bytes exceeds the {capacity}-byte staging buffer; use get_into",
                    t.len
                ),
            )));
        }
        copy.retain(|t| aligned_len(t.len) <= capacity);
        // Staging mirrors the order of the replicas in their segments, so that objects stored
        // back to back are read with one merged request.
        copy.sort_by(|a, b| a.first_location().cmp(&b.first_location()));
        // Copying reads go through staging in groups that fit it (keeping small remote gaps,
        // so neighbours merge into one read); zero-copy reads join the first group.
        let objects: Vec<(Option<&str>, u64, u64)> = copy
            .iter()
            .map(|t| {
                let loc = t.first_location();
                (loc.map(|l| l.0), loc.map_or(0, |l| l.1), t.len)
            })
            .collect();
        let (placed, sizes) = staging_layout(&objects, self.config.read_gap, capacity);
        drop(objects);
        let mut groups: Vec<Vec<(Target, u64)>> = sizes.iter().map(|_| Vec::new()).collect();
        for (t, p) in copy.into_iter().zip(placed) {
            groups[p.group].push((t, p.offset));
        }
        if groups.is_empty() {
            groups.push(Vec::new());
        }
        let mut direct = Some(direct);
        for (gi, group) in groups.into_iter().enumerate() {
            let total = sizes.get(gi).copied().unwrap_or(0);
            let lease = match self.staging.lease(total).await {
                Some(l) => l,
                None => {
                    for (t, _) in &group {
                        results[t.slot] = Some(Err(KeyError::new(
                            ErrorCode::BufferOverflow,
                            "staging buffer too small",
                        )));
                    }
                    continue;
                }
            };
            let offsets: Vec<u64> = group.iter().map(|(_, off)| *off).collect();
            let mut targets: Vec<Target> = group
                .into_iter()
                .map(|(mut t, off)| {
                    t.parts = vec![BufferSlice::new(lease.addr() + off, t.len)];
                    t
                })
                .collect();
            targets.extend(direct.take().unwrap_or_default());
            let scratch = Scratch {
                max_gap: self.config.read_gap,
                lo: lease.addr(),
                hi: lease.addr() + lease.len(),
            };
            let outcomes = match self.lease_expired(t0) {
                // Too late to start: the replicas may hold other objects' bytes by now.
                Some(e) => {
                    let n_copy = offsets.len();
                    unstarted.extend(
                        targets
                            .iter_mut()
                            .enumerate()
                            .map(|(k, t)| (t.slot, t.take_dst(k < n_copy))),
                    );
                    targets.iter().map(|_| Err(e.clone())).collect()
                }
                None => {
                    let (mut outcomes, r) = self.read_targets(&mut targets, Some(scratch)).await;
                    retries += r;
                    // Bytes that landed after the lease ran out may be another object's.
                    if let Some(e) = self.lease_expired(t0) {
                        for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                            *o = Err(e.clone());
                        }
                    }
                    outcomes
                }
            };
            // Values out of the staging lease into their own vectors; a large batch on the
            // engine's copy threads (allocation, page faults and memcpy alike).
            // The copy targets come first (one offset each); the rest are direct reads into
            // caller buffers.
            let n_copy = offsets.len();
            let ranges: Vec<Option<(u64, u64)>> = targets[..n_copy]
                .iter()
                .zip(&outcomes)
                .zip(&offsets)
                .map(|((t, o), &off)| o.is_ok().then_some((off, t.len)))
                .collect();
            let copied: u64 = ranges.iter().flatten().map(|&(_, len)| len).sum();
            let mut values = self.engine.copy_pool().map(&ranges, copied, |r| {
                r.and_then(|(off, len)| lease.read_at(off, len).map(<[u8]>::to_vec))
            });
            for (k, (t, outcome)) in targets.iter().zip(outcomes).enumerate() {
                let out = outcome.and_then(|()| match values.get_mut(k) {
                    Some(v) => v.take().map(ReadOut::Bytes).ok_or_else(|| {
                        KeyError::new(ErrorCode::InternalError, "value outside its staging lease")
                    }),
                    None => Ok(ReadOut::Len(t.len)),
                });
                results[t.slot] = Some(out);
            }
        }
        let results = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(KeyError::new(
                        ErrorCode::InternalError,
                        "key was never processed",
                    ))
                })
            })
            .collect();
        Pass {
            results,
            retries,
            unstarted,
        }
    }

    /// The error of reads whose lease, counted from `asked` (just before the replica lookup
    /// was sent, so never later than the master's own count), has run out.
    fn lease_expired(&self, asked: std::time::Instant) -> Option<KeyError> {
        let ttl = self.lease_ttl_ms.load(std::sync::atomic::Ordering::Relaxed);
        let took = asked.elapsed();
        (took >= std::time::Duration::from_millis(ttl)).then(|| {
            KeyError::new(
                ErrorCode::LeaseExpired,
                format!(
                    "the read took {} ms, longer than the master's {ttl} ms read lease: \
                     the object's space may hold other bytes by now; read it again",
                    took.as_millis()
                ),
            )
        })
    }

    /// Reads every target, retrying failed ones on their next replica; one outcome per target.
    async fn read_targets(
        &self,
        targets: &mut [Target],
        scratch: Option<Scratch>,
    ) -> (Vec<Result<(), KeyError>>, u64) {
        let mut outcomes: Vec<Option<Result<(), KeyError>>> =
            targets.iter().map(|_| None).collect();
        let mut retries = 0u64;
        let mut first_round = true;
        loop {
            let mut pieces = Vec::new();
            let mut owner = Vec::new();
            for (k, t) in targets.iter_mut().enumerate() {
                if outcomes[k].is_some() {
                    continue;
                }
                let Some(ri) = t.cursor.next_candidate() else {
                    let why = t
                        .last_error
                        .take()
                        .unwrap_or_else(|| "no readable replica left".into());
                    outcomes[k] = Some(Err(KeyError::new(
                        ErrorCode::TransferFail,
                        format!("every replica failed: {why}"),
                    )));
                    continue;
                };
                if !first_round {
                    retries += 1;
                }
                let r = &t.replicas[ri];
                let target = match self.segment_handle(&r.segment_name, r.segment_id).await {
                    Ok(h) => h,
                    Err(m) => {
                        t.last_error = Some(m);
                        continue;
                    }
                };
                let Some(spans) = spans(r.addr, t.len.min(r.len), &t.parts) else {
                    outcomes[k] = Some(Err(KeyError::new(
                        ErrorCode::BufferOverflow,
                        "buffers hold fewer bytes than the object",
                    )));
                    continue;
                };
                // A key with no bytes to move (cannot happen for stored objects) is done.
                if spans.is_empty() {
                    outcomes[k] = Some(Ok(()));
                }
                for s in spans {
                    pieces.push(Piece {
                        target,
                        local_addr: s.local_addr,
                        remote_addr: s.remote_addr,
                        len: s.len,
                    });
                    owner.push(k);
                }
            }
            if outcomes.iter().all(Option::is_some) && pieces.is_empty() {
                break;
            }
            let results = run_pieces(
                &self.engine,
                OpCode::Read,
                &pieces,
                self.config.max_merged_len,
                // Retries read other replicas, whose gaps the staging layout does not mirror:
                // a read across a gap could then land on another key's bytes.
                scratch.filter(|_| first_round),
            )
            .await;
            let mut failed: Vec<Option<String>> = targets.iter().map(|_| None).collect();
            for (&k, r) in owner.iter().zip(results) {
                if let Err(reason) = r {
                    failed[k].get_or_insert(reason);
                }
            }
            let mut touched: Vec<bool> = targets.iter().map(|_| false).collect();
            for &k in &owner {
                touched[k] = true;
            }
            for (k, t) in targets.iter_mut().enumerate() {
                if !touched[k] || outcomes[k].is_some() {
                    continue;
                }
                match failed[k].take() {
                    None => outcomes[k] = Some(Ok(())),
                    Some(reason) => {
                        tracing::debug!(reason, "replica read failed; trying the next replica");
                        if let Some(r) = t.cursor.last().and_then(|ri| t.replicas.get(ri)) {
                            // The peer may be gone or restarted: open it afresh next time.
                            self.forget_segment(&r.segment_name);
                        }
                        t.last_error = Some(reason);
                    }
                }
            }
            first_round = false;
            if outcomes.iter().all(Option::is_some) {
                break;
            }
        }
        let outcomes = outcomes.into_iter().map(|o| o.unwrap_or(Ok(()))).collect();
        (outcomes, retries)
    }
}

/// Which segments are on this host (read through shared memory), asked of the engine once
/// per segment and call.
struct NearSegments<'a> {
    engine: &'a transfer_engine::Engine,
    known: std::cell::RefCell<HashMap<String, bool>>,
}

impl<'a> NearSegments<'a> {
    fn new(engine: &'a transfer_engine::Engine) -> Self {
        Self {
            engine,
            known: Default::default(),
        }
    }

    fn is(&self, segment: &str) -> bool {
        if let Some(&near) = self.known.borrow().get(segment) {
            return near;
        }
        let near = self.engine.is_same_host(segment);
        self.known.borrow_mut().insert(segment.to_string(), near);
        near
    }
}

#[cfg(test)]
mod tests {
    use super::distinct_keys;

    #[test]
    fn repeated_keys_are_looked_up_once() {
        let keys: Vec<String> = ["a", "b", "a", "c", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (d, of) = distinct_keys(&keys);
        assert_eq!(d, vec!["a", "b", "c"]);
        assert_eq!(of, Some(vec![0, 1, 0, 2, 1]));
        let keys: Vec<String> = ["x", "y"].iter().map(|s| s.to_string()).collect();
        assert_eq!(distinct_keys(&keys), (keys.clone(), None));
    }
}
