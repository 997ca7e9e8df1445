//! The public calls: copying, zero-copy and metadata operations, single and batch. Each
//! validates its keys and buffers (a bad key fails alone), runs the shared data path, and
//! records metrics for the call.

use std::time::Instant;

use mooncake_master::proto::{ReplicaDescriptor, ReplicateConfig};

use crate::auto_batcher::{AutoBatcher, BatchExecutor};
use crate::buffers::{total_len, BufferSlice};
use crate::error::{ClientError, ErrorCode, KeyError, KeyResult};
use crate::metrics::OpKind;
use crate::staging_alloc::aligned_len;
use crate::validate::{check_keys, KeyProblem};

use super::read::{ReadDst, ReadOut};
use super::results::{record_of, Slots};
use super::write::WriteItem;
use super::Client;

fn problem_error(p: &KeyProblem) -> KeyError {
    match p {
        KeyProblem::BadKey(why) => KeyError::new(ErrorCode::InvalidKey, why.clone()),
        KeyProblem::Duplicate { first } => KeyError::new(
            ErrorCode::InvalidParams,
            format!("duplicate key in one batch (first at index {first}); each key may be written once per batch"),
        ),
    }
}

/// `cfg.group_ids` must be empty or name one group per item of the batch (as the master
/// requires); otherwise the whole batch fails with INVALID_PARAMS, as it would there.
fn check_group_ids(cfg: &ReplicateConfig, n: usize) -> Result<(), KeyError> {
    if cfg.group_ids.is_empty() || cfg.group_ids.len() == n {
        return Ok(());
    }
    Err(KeyError::new(
        ErrorCode::InvalidParams,
        format!(
            "ReplicateConfig.group_ids has {} entries for a batch of {n} keys (one per key, or \
             none)",
            cfg.group_ids.len()
        ),
    ))
}

fn zero_length() -> KeyError {
    KeyError::new(
        ErrorCode::InvalidParams,
        "zero-length values are not stored",
    )
}

fn single<T>(mut v: Vec<KeyResult<T>>) -> KeyResult<T> {
    v.pop().unwrap_or(KeyResult {
        result: Err(KeyError::new(ErrorCode::InternalError, "no result")),
        latency: Default::default(),
    })
}

impl Client {
    fn record<T>(
        &self,
        kind: OpKind,
        results: &[KeyResult<T>],
        retries: u64,
        started: Instant,
        bytes: impl Fn(&T) -> u64,
    ) {
        self.inner
            .metrics
            .record(kind, &record_of(results, retries, started, bytes));
    }

    // ----- copying writes -------------------------------------------------------------

    /// Stores `value` under `key` (objects are immutable: an existing key fails with
    /// `OBJECT_ALREADY_EXISTS`; see [`Client::upsert`]). `Ok` holds the bytes written.
    pub async fn put(&self, key: &str, value: &[u8]) -> KeyResult<u64> {
        let started = Instant::now();
        let r = match &self.put_batcher {
            Some(b) => via_batcher(b, self.stage_one(key, value).await, started).await,
            None => single(
                self.put_copy(&[(key, value)], &self.inner.config.replicate, false)
                    .await,
            ),
        };
        self.record(OpKind::Put, std::slice::from_ref(&r), 0, started, |n| *n);
        r
    }

    /// Copies one value into its own staging lease (auto-batched puts).
    async fn stage_one(&self, key: &str, value: &[u8]) -> Result<WriteItem, KeyError> {
        if let Some(p) = &check_keys(&[key], false)[0] {
            return Err(problem_error(p));
        }
        if value.is_empty() {
            return Err(zero_length());
        }
        let mut lease = self
            .inner
            .staging
            .lease(value.len() as u64)
            .await
            .ok_or_else(|| {
                KeyError::new(
                    ErrorCode::BufferOverflow,
                    "value exceeds the staging buffer; use put_from",
                )
            })?;
        if !lease.write_many(self.inner.engine.copy_pool(), &[(0, value)]) {
            return Err(KeyError::new(
                ErrorCode::BufferOverflow,
                "value does not fit its staging lease",
            ));
        }
        Ok(WriteItem {
            key: key.to_string(),
            parts: vec![BufferSlice::new(lease.addr(), value.len() as u64)],
            len: value.len() as u64,
            group: String::new(),
            _lease: Some(lease),
        })
    }

    /// Stores or overwrites `value` under `key`.
    pub async fn upsert(&self, key: &str, value: &[u8]) -> KeyResult<u64> {
        let started = Instant::now();
        let r = self
            .put_copy(&[(key, value)], &self.inner.config.replicate, true)
            .await;
        self.record(OpKind::Upsert, &r, 0, started, |n| *n);
        single(r)
    }

    /// Stores many values: one BatchPutStart, one transfer batch, one BatchPutEnd, one
    /// BatchPutRevoke. One result per item, in order; a bad item fails alone.
    pub async fn batch_put<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
    ) -> Vec<KeyResult<u64>> {
        self.batch_put_with(items, &self.inner.config.replicate.clone())
            .await
    }

    /// [`Client::batch_put`] with an explicit replication config.
    ///
    /// `cfg.group_ids` puts each item in an object group (one id per item, `""` for none, or
    /// no ids at all; another count fails every item with INVALID_PARAMS): a group's members
    /// share their last access and are evicted together.
    pub async fn batch_put_with<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        cfg: &ReplicateConfig,
    ) -> Vec<KeyResult<u64>> {
        let started = Instant::now();
        let r = self.put_copy(items, cfg, false).await;
        self.record(OpKind::BatchPut, &r, 0, started, |n| *n);
        r
    }

    /// Stores or overwrites many values (batch form of [`Client::upsert`]).
    pub async fn batch_upsert<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
    ) -> Vec<KeyResult<u64>> {
        let started = Instant::now();
        let r = self
            .put_copy(items, &self.inner.config.replicate.clone(), true)
            .await;
        self.record(OpKind::BatchUpsert, &r, 0, started, |n| *n);
        r
    }

    /// [`Client::batch_upsert`] with an explicit replication config (`group_ids` as in
    /// [`Client::batch_put_with`]; an overwritten key moves to its new group).
    pub async fn batch_upsert_with<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        cfg: &ReplicateConfig,
    ) -> Vec<KeyResult<u64>> {
        let started = Instant::now();
        let r = self.put_copy(items, cfg, true).await;
        self.record(OpKind::BatchUpsert, &r, 0, started, |n| *n);
        r
    }

    async fn put_copy<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        cfg: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<KeyResult<u64>> {
        let mut slots = Slots::new(items.len());
        if let Err(e) = check_group_ids(cfg, items.len()) {
            (0..items.len()).for_each(|i| slots.set(i, Err(e.clone())));
            return slots.finish();
        }
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_ref()).collect();
        let capacity = self.inner.staging.capacity();
        let mut valid = Vec::new();
        for (i, p) in check_keys(&keys, true).iter().enumerate() {
            let len = items[i].1.as_ref().len() as u64;
            match p {
                Some(p) => slots.set(i, Err(problem_error(p))),
                None if len == 0 => slots.set(i, Err(zero_length())),
                None if aligned_len(len) > capacity => slots.fail(
                    i,
                    ErrorCode::BufferOverflow,
                    format!("value of {len} bytes exceeds the {capacity}-byte staging buffer; use put_from"),
                ),
                None => valid.push(i),
            }
        }
        // Stage as many values as fit at once; normally the whole batch is one group.
        let mut start = 0;
        while start < valid.len() {
            let mut total = 0u64;
            let mut end = start;
            while end < valid.len()
                && total + aligned_len(items[valid[end]].1.as_ref().len() as u64) <= capacity
            {
                total += aligned_len(items[valid[end]].1.as_ref().len() as u64);
                end += 1;
            }
            let group = &valid[start..end];
            start = end;
            // Values are copied into staging after placement (see `write_items_staged`).
            let values: Vec<&[u8]> = group.iter().map(|&i| items[i].1.as_ref()).collect();
            let work: Vec<WriteItem> = group
                .iter()
                .zip(&values)
                .map(|(&i, v)| WriteItem {
                    key: keys[i].to_string(),
                    parts: Vec::new(),
                    len: v.len() as u64,
                    group: cfg.group_id(i).to_string(),
                    _lease: None,
                })
                .collect();
            let written = self
                .inner
                .write_items_staged(&work, Some(&values), cfg, upsert)
                .await;
            for (&i, r) in group.iter().zip(written) {
                slots.set(i, r);
            }
        }
        slots.finish()
    }

    // ----- zero-copy writes ------------------------------------------------------------

    /// Registers caller memory for the zero-copy calls (and with the transfer engine). GPU
    /// memory is recognised through the CUDA driver and registered as such: the zero-copy
    /// calls then move its bytes with the driver's copies (staged through host memory on TCP).
    /// Finish writing a GPU buffer (synchronise its stream) before a put uses it.
    ///
    /// # Safety
    /// `[ptr, ptr+len)` must stay valid, and must not be freed, until
    /// [`Client::unregister_buffer`] returns; peers read and write it during calls using it.
    pub unsafe fn register_buffer(&self, ptr: *mut u8, len: usize) -> Result<(), ClientError> {
        self.inner.buffers.write().insert(ptr as u64, len as u64)?;
        let location = match transfer_engine::gpu::location_of(ptr as u64) {
            Ok(l) => l,
            Err(e) => {
                self.inner.buffers.write().remove(ptr as u64);
                return Err(e.into());
            }
        };
        // SAFETY: forwarded from this function's contract.
        if let Err(e) = unsafe { self.inner.engine.register_memory(ptr, len, location) } {
            self.inner.buffers.write().remove(ptr as u64);
            return Err(e.into());
        }
        Ok(())
    }

    /// Unregisters memory registered at `ptr`. Do not call it while calls using the memory
    /// are in flight.
    pub fn unregister_buffer(&self, ptr: *mut u8) -> Result<(), ClientError> {
        if self.inner.buffers.write().remove(ptr as u64).is_none() {
            return Err(ClientError::Config(format!(
                "no buffer registered at {ptr:p}"
            )));
        }
        self.inner.engine.unregister_memory(ptr)?;
        Ok(())
    }

    /// The registered buffer that contains byte `addr`, if any.
    pub fn registered_buffer_containing(&self, addr: u64) -> Option<BufferSlice> {
        self.inner.buffers.read().containing(addr)
    }

    /// Stores the bytes of a registered buffer under `key` without copying them.
    pub async fn put_from(&self, key: &str, buf: BufferSlice) -> KeyResult<u64> {
        self.put_from_parts(key, &[buf]).await
    }

    /// Stores the concatenation of registered buffers (e.g. one per layer) under `key`.
    pub async fn put_from_parts(&self, key: &str, parts: &[BufferSlice]) -> KeyResult<u64> {
        let started = Instant::now();
        let r = match &self.put_batcher {
            Some(b) => via_batcher(b, self.check_put_parts(key, parts), started).await,
            None => single(
                self.put_parts(
                    &[(key, parts.to_vec())],
                    &self.inner.config.replicate,
                    false,
                )
                .await,
            ),
        };
        self.record(OpKind::PutFrom, std::slice::from_ref(&r), 0, started, |n| {
            *n
        });
        r
    }

    fn check_put_parts(&self, key: &str, parts: &[BufferSlice]) -> Result<WriteItem, KeyError> {
        if let Some(p) = &check_keys(&[key], false)[0] {
            return Err(problem_error(p));
        }
        let len = total_len(parts);
        if len == 0 {
            return Err(zero_length());
        }
        self.inner
            .buffers
            .read()
            .check_all(parts)
            .map_err(|m| KeyError::new(ErrorCode::InvalidParams, m))?;
        Ok(WriteItem {
            key: key.to_string(),
            parts: parts.to_vec(),
            len,
            group: String::new(),
            _lease: None,
        })
    }

    /// Stores registered buffers under their keys, zero-copy, as one batch.
    pub async fn batch_put_from<K: AsRef<str>>(
        &self,
        items: &[(K, BufferSlice)],
    ) -> Vec<KeyResult<u64>> {
        let items: Vec<(&str, Vec<BufferSlice>)> =
            items.iter().map(|(k, b)| (k.as_ref(), vec![*b])).collect();
        self.batch_put_from_parts(&items, &self.inner.config.replicate.clone())
            .await
    }

    /// Batch zero-copy put where each object is gathered from several buffers (`group_ids`
    /// as in [`Client::batch_put_with`]).
    pub async fn batch_put_from_parts<K: AsRef<str>>(
        &self,
        items: &[(K, Vec<BufferSlice>)],
        cfg: &ReplicateConfig,
    ) -> Vec<KeyResult<u64>> {
        let started = Instant::now();
        let r = self.put_parts(items, cfg, false).await;
        self.record(OpKind::BatchPutFrom, &r, 0, started, |n| *n);
        r
    }

    /// Zero-copy batch upsert: like [`Client::batch_put_from_parts`], but an existing complete
    /// key is overwritten (in place when its size is unchanged and nobody holds a read lease on
    /// it; otherwise in new space, the old bytes kept for the lease's readers). A key that
    /// another writer is still writing fails with `OBJECT_ALREADY_EXISTS`: this caller's bytes
    /// were not stored.
    pub async fn batch_upsert_from_parts<K: AsRef<str>>(
        &self,
        items: &[(K, Vec<BufferSlice>)],
        cfg: &ReplicateConfig,
    ) -> Vec<KeyResult<u64>> {
        let started = Instant::now();
        let r = self.put_parts(items, cfg, true).await;
        self.record(OpKind::BatchUpsert, &r, 0, started, |n| *n);
        r
    }

    async fn put_parts<K: AsRef<str>>(
        &self,
        items: &[(K, Vec<BufferSlice>)],
        cfg: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<KeyResult<u64>> {
        let mut slots = Slots::new(items.len());
        if let Err(e) = check_group_ids(cfg, items.len()) {
            (0..items.len()).for_each(|i| slots.set(i, Err(e.clone())));
            return slots.finish();
        }
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_ref()).collect();
        let mut work = Vec::new();
        let mut idx = Vec::new();
        {
            let buffers = self.inner.buffers.read();
            for (i, p) in check_keys(&keys, true).iter().enumerate() {
                let parts = &items[i].1;
                let len = total_len(parts);
                if let Some(p) = p {
                    slots.set(i, Err(problem_error(p)));
                } else if len == 0 {
                    slots.set(i, Err(zero_length()));
                } else if let Err(m) = buffers.check_all(parts) {
                    slots.fail(i, ErrorCode::InvalidParams, m);
                } else {
                    work.push(WriteItem {
                        key: keys[i].to_string(),
                        parts: parts.clone(),
                        len,
                        group: cfg.group_id(i).to_string(),
                        _lease: None,
                    });
                    idx.push(i);
                }
            }
        }
        let written = self.inner.write_items(&work, cfg, upsert).await;
        for (i, r) in idx.into_iter().zip(written) {
            slots.set(i, r);
        }
        slots.finish()
    }

    // ----- reads -----------------------------------------------------------------------

    /// Reads the value of `key`.
    pub async fn get(&self, key: &str) -> KeyResult<Vec<u8>> {
        let started = Instant::now();
        let (mut r, retries) = self.read_one(key, ReadDst::Copy, started).await;
        let r = KeyResult {
            result: r.result.map(into_bytes),
            latency: std::mem::take(&mut r.latency),
        };
        self.record(
            OpKind::Get,
            std::slice::from_ref(&r),
            retries,
            started,
            |v| v.len() as u64,
        );
        r
    }

    /// Reads the values of `keys`: one BatchGetReplicaList and one transfer batch. One result
    /// per key, in order; missing keys fail alone (`OBJECT_NOT_FOUND`). Repeated keys are read
    /// for each occurrence.
    pub async fn batch_get<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<Vec<u8>>> {
        let started = Instant::now();
        let dsts = keys.iter().map(|_| ReadDst::Copy).collect();
        let (r, retries) = self.read_many(keys, dsts).await;
        let r: Vec<KeyResult<Vec<u8>>> = r
            .into_iter()
            .map(|k| KeyResult {
                result: k.result.map(into_bytes),
                latency: k.latency,
            })
            .collect();
        self.record(OpKind::BatchGet, &r, retries, started, |v| v.len() as u64);
        r
    }

    /// Reads `key` into a registered buffer; `Ok` holds the object's length.
    pub async fn get_into(&self, key: &str, buf: BufferSlice) -> KeyResult<u64> {
        self.get_into_parts(key, &[buf]).await
    }

    /// Reads `key` scattered over registered buffers (filled in order).
    pub async fn get_into_parts(&self, key: &str, parts: &[BufferSlice]) -> KeyResult<u64> {
        let started = Instant::now();
        let (r, retries) = self
            .read_one(key, ReadDst::Parts(parts.to_vec()), started)
            .await;
        let r = KeyResult {
            result: r.result.map(into_len),
            latency: r.latency,
        };
        self.record(
            OpKind::GetInto,
            std::slice::from_ref(&r),
            retries,
            started,
            |n| *n,
        );
        r
    }

    /// Reads many keys into registered buffers as one batch.
    pub async fn batch_get_into<K: AsRef<str>>(
        &self,
        items: &[(K, BufferSlice)],
    ) -> Vec<KeyResult<u64>> {
        let items: Vec<(&str, Vec<BufferSlice>)> =
            items.iter().map(|(k, b)| (k.as_ref(), vec![*b])).collect();
        self.batch_get_into_parts(&items).await
    }

    /// Batch zero-copy read where each object is scattered over several buffers.
    pub async fn batch_get_into_parts<K: AsRef<str>>(
        &self,
        items: &[(K, Vec<BufferSlice>)],
    ) -> Vec<KeyResult<u64>> {
        let started = Instant::now();
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_ref()).collect();
        let dsts = items
            .iter()
            .map(|(_, p)| ReadDst::Parts(p.clone()))
            .collect();
        self.read_many_into(&keys, dsts, started).await
    }

    /// Reads byte ranges of objects into registered buffers as one batch (one replica lookup
    /// of the distinct keys, one transfer batch, further ones only to retry on other
    /// replicas): item `(key, offset, dst)` reads `dst.len` bytes of `key` from byte `offset`
    /// into `dst`. A key may appear in many items; each item gets its own result: bytes read
    /// (0 for an empty range inside the object), or why not (the key is missing, the range
    /// runs past the object, `dst` is not inside one registered buffer).
    pub async fn batch_get_ranges<K: AsRef<str>>(
        &self,
        items: &[(K, u64, BufferSlice)],
    ) -> Vec<KeyResult<u64>> {
        let started = Instant::now();
        let keys: Vec<&str> = items.iter().map(|(k, _, _)| k.as_ref()).collect();
        let dsts = items
            .iter()
            .map(|&(_, offset, dst)| ReadDst::Range { offset, dst })
            .collect();
        self.read_many_into(&keys, dsts, started).await
    }

    /// Zero-copy batch reads (`dsts` are caller buffers): bytes moved per key, recorded as
    /// one batch_get_into.
    async fn read_many_into(
        &self,
        keys: &[&str],
        dsts: Vec<ReadDst>,
        started: Instant,
    ) -> Vec<KeyResult<u64>> {
        let (r, retries) = self.read_many(keys, dsts).await;
        let r: Vec<KeyResult<u64>> = r
            .into_iter()
            .map(|k| KeyResult {
                result: k.result.map(into_len),
                latency: k.latency,
            })
            .collect();
        self.record(OpKind::BatchGetInto, &r, retries, started, |n| *n);
        r
    }

    async fn read_one(
        &self,
        key: &str,
        dst: ReadDst,
        started: Instant,
    ) -> (KeyResult<ReadOut>, u64) {
        match &self.get_batcher {
            Some(b) => {
                let request = match self.check_read(key, &dst) {
                    Some(e) => Err(e),
                    None => Ok((key.to_string(), dst)),
                };
                (via_batcher(b, request, started).await, 0)
            }
            None => {
                let (r, retries) = self.read_many(&[key], vec![dst]).await;
                (single(r), retries)
            }
        }
    }

    fn check_read(&self, key: &str, dst: &ReadDst) -> Option<KeyError> {
        if let Some(p) = &check_keys(&[key], false)[0] {
            return Some(problem_error(p));
        }
        let caller_buffers: &[BufferSlice] = match dst {
            ReadDst::Parts(parts) => parts,
            ReadDst::Range { dst, .. } => std::slice::from_ref(dst),
            ReadDst::Copy => return None,
        };
        self.inner
            .buffers
            .read()
            .check_all(caller_buffers)
            .err()
            .map(|m| KeyError::new(ErrorCode::InvalidParams, m))
    }

    async fn read_many<K: AsRef<str>>(
        &self,
        keys: &[K],
        dsts: Vec<ReadDst>,
    ) -> (Vec<KeyResult<ReadOut>>, u64) {
        let mut slots = Slots::new(keys.len());
        let (mut todo_keys, mut todo_dsts, mut idx) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (k, dst)) in keys.iter().zip(dsts).enumerate() {
            match self.check_read(k.as_ref(), &dst) {
                Some(e) => slots.set(i, Err(e)),
                None => {
                    todo_keys.push(k.as_ref().to_string());
                    todo_dsts.push(dst);
                    idx.push(i);
                }
            }
        }
        let (read, retries) = self.inner.read_keys(todo_keys, todo_dsts).await;
        for (i, r) in idx.into_iter().zip(read) {
            slots.set(i, r);
        }
        (slots.finish(), retries)
    }

    // ----- metadata --------------------------------------------------------------------

    /// Whether `key` exists (and is complete).
    pub async fn exists(&self, key: &str) -> KeyResult<bool> {
        let started = Instant::now();
        let r = self.exists_many(&[key]).await;
        self.record(OpKind::Exists, &r, 0, started, |_| 0);
        single(r)
    }

    /// Existence of many keys, one RPC.
    pub async fn batch_exists<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<bool>> {
        let started = Instant::now();
        let r = self.exists_many(keys).await;
        self.record(OpKind::BatchExists, &r, 0, started, |_| 0);
        r
    }

    /// Removes `key` (fails with `OBJECT_HAS_LEASE` while a reader holds a lease).
    pub async fn remove(&self, key: &str) -> KeyResult<()> {
        let started = Instant::now();
        let r = self.remove_many(&[key], false).await;
        self.record(OpKind::Remove, &r, 0, started, |_| 0);
        single(r)
    }

    /// Removes many keys, one RPC.
    pub async fn batch_remove<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<()>> {
        self.batch_remove_with(keys, false).await
    }

    /// [`Client::batch_remove`], with `force`: leased keys (a reader may be copying them) and
    /// keys still being written go too, their space reused only once the lease or the write's
    /// grace period ends. Without it they fail with `OBJECT_HAS_LEASE` /
    /// `REPLICA_IS_NOT_READY`. Missing keys fail with `OBJECT_NOT_FOUND` either way.
    pub async fn batch_remove_with<K: AsRef<str>>(
        &self,
        keys: &[K],
        force: bool,
    ) -> Vec<KeyResult<()>> {
        let started = Instant::now();
        let r = self.remove_many(keys, force).await;
        self.record(OpKind::BatchRemove, &r, 0, started, |_| 0);
        r
    }

    /// Size in bytes of `key`'s object (a replica lookup: it grants a read lease, as a get
    /// does).
    pub async fn get_size(&self, key: &str) -> KeyResult<u64> {
        single(self.batch_get_size(&[key]).await)
    }

    /// Sizes of many objects, one RPC.
    pub async fn batch_get_size<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<u64>> {
        let started = Instant::now();
        let inner = &self.inner;
        let r = self
            .key_rpc(keys, |todo| async move {
                let lists = inner.master.batch_get_replica_list(todo).await?;
                Ok(lists
                    .into_iter()
                    .map(|l| {
                        l.and_then(|replicas| {
                            replicas
                                .first()
                                .map(|r| r.len)
                                .ok_or(ErrorCode::ReplicaIsNotReady)
                        })
                    })
                    .collect())
            })
            .await;
        self.record(OpKind::BatchGetSize, &r, 0, started, |_| 0);
        r
    }

    /// Where the replicas of many objects live (one replica lookup; it grants read leases,
    /// as a get does): per key its complete replicas, or an error (`OBJECT_NOT_FOUND`, ...).
    pub async fn batch_replica_descriptors<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Vec<KeyResult<Vec<ReplicaDescriptor>>> {
        let inner = &self.inner;
        self.key_rpc(keys, |todo| async move {
            inner.master.batch_get_replica_list(todo).await
        })
        .await
    }

    /// Removes every object of the pool and returns how many; without `force`, objects under
    /// a read lease (a reader may be copying them) and objects still being written stay. With
    /// `force` they go too (their space is reused only once the lease or the write's grace
    /// period ends). Pins protect from eviction, not from removal. An administrative call:
    /// other clients' objects go too.
    pub async fn remove_all(&self, force: bool) -> Result<u64, ClientError> {
        self.inner
            .master
            .remove_all(force)
            .await
            .map_err(|code| ClientError::Refused {
                what: "remove_all",
                code,
            })
    }

    /// Removes every object whose key the regular expression `pattern` matches (anywhere in
    /// the key; anchor with `^...$`), with the same `force` rule as [`Client::remove_all`];
    /// returns how many. INVALID_PARAMS for a pattern the master does not take.
    pub async fn remove_by_regex(&self, pattern: &str, force: bool) -> Result<u64, ClientError> {
        self.inner
            .master
            .remove_by_regex(pattern, force)
            .await
            .map_err(|code| ClientError::Refused {
                what: "remove_by_regex",
                code,
            })
    }

    async fn exists_many<K: AsRef<str>>(&self, keys: &[K]) -> Vec<KeyResult<bool>> {
        let inner = &self.inner;
        self.key_rpc(keys, |todo| async move {
            inner.master.batch_exist_key(todo).await
        })
        .await
    }

    async fn remove_many<K: AsRef<str>>(&self, keys: &[K], force: bool) -> Vec<KeyResult<()>> {
        let inner = &self.inner;
        self.key_rpc(keys, |todo| async move {
            inner.master.batch_remove(todo, force).await
        })
        .await
    }

    /// Checks keys, sends the valid ones in one RPC, and spreads its answers back.
    async fn key_rpc<K, T, F, Fut>(&self, keys: &[K], rpc: F) -> Vec<KeyResult<T>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Result<T, ErrorCode>>, ErrorCode>>,
    {
        let mut slots = Slots::new(keys.len());
        let mut todo = Vec::new();
        let mut idx = Vec::new();
        for (i, p) in check_keys(keys, false).iter().enumerate() {
            match p {
                Some(p) => slots.set(i, Err(problem_error(p))),
                None => {
                    todo.push(keys[i].as_ref().to_string());
                    idx.push(i);
                }
            }
        }
        if !todo.is_empty() {
            match rpc(todo).await {
                Ok(per_key) => {
                    let mut per_key = per_key.into_iter();
                    for &i in &idx {
                        match per_key.next() {
                            Some(Ok(v)) => slots.set(i, Ok(v)),
                            Some(Err(code)) => {
                                slots.fail(i, code, format!("{:?}: {code}", keys[i].as_ref()))
                            }
                            None => slots.fail(
                                i,
                                ErrorCode::RpcFail,
                                "master answered no result for this key",
                            ),
                        }
                    }
                }
                Err(code) => {
                    for &i in &idx {
                        slots.fail(
                            i,
                            code,
                            format!("the call failed for the whole batch: {code}"),
                        );
                    }
                }
            }
        }
        slots.finish()
    }
}

/// Runs one checked request through an auto-batcher (a failed check skips it).
async fn via_batcher<E, T>(
    batcher: &AutoBatcher<E>,
    request: Result<E::Request, KeyError>,
    started: Instant,
) -> KeyResult<T>
where
    E: BatchExecutor<Response = Result<T, KeyError>>,
{
    let result = match request {
        Ok(req) => batcher
            .call(req)
            .await
            .unwrap_or_else(|e| Err(KeyError::new(ErrorCode::InternalError, e.to_string()))),
        Err(e) => Err(e),
    };
    KeyResult {
        result,
        latency: started.elapsed(),
    }
}

fn into_bytes(out: ReadOut) -> Vec<u8> {
    match out {
        ReadOut::Bytes(b) => b,
        ReadOut::Len(_) => Vec::new(),
    }
}

fn into_len(out: ReadOut) -> u64 {
    match out {
        ReadOut::Len(n) => n,
        ReadOut::Bytes(b) => b.len() as u64,
    }
}
