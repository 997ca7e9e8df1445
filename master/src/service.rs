//! The master's state machine: index + segments + placement + leases + eviction + liveness,
//! with no I/O and an injected [`Clock`]. The RPC server calls [`MasterService::handle`]; the
//! driver calls [`MasterService::tick`] periodically for expiry, delayed release and eviction.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::allocator::round_up;
use crate::clock::Clock;
use crate::eviction::{is_evictable, victims, Candidate, EvictionPolicy, OldestLease};
use crate::groups::{GroupRegistry, ObjectGroup};
use crate::index::{Index, ObjectEntry, ObjectState, Shard};
use crate::liveness::Liveness;
use crate::placement::{AllocationStrategy, BatchPlacer, PlacementStrategy};
use crate::proto::{
    BatchResult, ClientId, ErrorCode, HeldObject, PingResponse, ReplicaDescriptor, ReplicateConfig,
    Request, Response, Segment, SegmentId,
};
use crate::replica_lists::ReplicaLists;
use crate::segment::{MountedSegment, Replica, SegmentRegistry};

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 4096;
/// Most replicas one object may ask for.
pub const MAX_REPLICAS: usize = 16;
/// Most preferred segments one call may name.
pub const MAX_PREFERRED_SEGMENTS: usize = 64;

/// Longest pattern RemoveByRegex takes.
pub const MAX_REGEX_LEN: usize = 4096;
/// Most memory a RemoveByRegex pattern may compile to.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Tunables of the state machine (all durations on the injected clock).
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Read lease granted by GetReplicaList (and by ExistKey with `exist_grants_lease`).
    pub lease_ttl: Duration,
    /// Whether ExistKey grants a read lease, as Mooncake's master does by default. Off here:
    /// an existence probe is not a read (the get that follows takes its own lease), and
    /// leasing every probed key keeps probe-heavy callers' keys from ever being evicted
    /// (a full pool then refuses every put) and makes a remove after a probe answer
    /// OBJECT_HAS_LEASE. Without it a probe still counts as an access for eviction order.
    pub exist_grants_lease: bool,
    /// Soft-pin duration.
    pub soft_pin_ttl: Duration,
    /// A client silent this long loses its segments.
    pub client_ttl: Duration,
    /// A PROCESSING object this old may be taken over (and is discarded by `tick`).
    pub put_discard_timeout: Duration,
    /// Space of a discarded PROCESSING object is reused only after this delay (its writer may
    /// still be writing).
    pub put_release_timeout: Duration,
    /// Eviction starts when used/capacity exceeds this.
    pub eviction_high_watermark: f64,
    /// Fraction of evictable objects each pass evicts.
    pub eviction_ratio: f64,
    /// Placement strategy.
    pub strategy: AllocationStrategy,
    /// Number of index shards.
    pub shards: usize,
    /// After becoming leader, no allocation for this long (see the failover design in the
    /// crate README): reads under the previous leader's leases and writes it granted finish.
    pub recovery_window: Duration,
    /// Leadership term reported in Ping.
    pub view_version: u64,
    /// How often `tick` scans the whole index for expired clients and stale writes.
    pub scan_interval: Duration,
    /// A client that mounts a segment under the name of another client's segment replaces
    /// that client at once, as if its TTL had run out. A segment's name is its engine's
    /// address, which a live process keeps bound, so a second mount under it is the first
    /// process restarted after a crash (Mooncake does the same). Without this the restarted
    /// process may be refused its mount and the dead segment keeps taking new replicas until
    /// the TTL. Turn it off only where names are not addresses and two live clients may share
    /// one.
    pub replace_restarted_clients: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            lease_ttl: Duration::from_secs(10),
            exist_grants_lease: false,
            soft_pin_ttl: Duration::from_secs(30 * 60),
            client_ttl: Duration::from_secs(10),
            put_discard_timeout: Duration::from_secs(30),
            put_release_timeout: Duration::from_secs(600),
            eviction_high_watermark: 0.90,
            eviction_ratio: 0.05,
            strategy: AllocationStrategy::Random,
            shards: 128,
            recovery_window: Duration::ZERO,
            view_version: 0,
            scan_interval: Duration::from_secs(1),
            replace_restarted_clients: true,
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Counters the metrics module exports.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Eviction passes run.
    pub eviction_passes: AtomicU64,
    /// Objects evicted.
    pub evicted_objects: AtomicU64,
    /// Bytes evicted.
    pub evicted_bytes: AtomicU64,
    /// PROCESSING objects discarded (stale or writer dead).
    pub discarded_processing: AtomicU64,
    /// Clients expired by the TTL.
    pub expired_clients: AtomicU64,
    /// Clients replaced by a restart under their segment's name (see
    /// [`ServiceConfig::replace_restarted_clients`]).
    pub replaced_clients: AtomicU64,
    /// Eviction passes that freed nothing.
    pub futile_eviction_passes: AtomicU64,
    /// Eviction passes not run: a pass had just freed nothing, or one finished while waiting.
    pub skipped_eviction_passes: AtomicU64,
    /// Objects evicted because a member of their group was (also in `evicted_objects`).
    pub evicted_group_members: AtomicU64,
}

/// Eviction passes scan the whole index under shard write locks, so they run one at a time;
/// callers that waited for one use its outcome; and after a pass that freed nothing none runs
/// for [`FUTILE_EVICTION_BACKOFF_MS`] (on a full pool of pinned or leased objects every failing
/// put and every tick would otherwise scan everything again, stalling the reads of every shard).
#[derive(Debug, Default)]
struct EvictionGate {
    running: Mutex<()>,
    /// Passes finished, and what the last one evicted and whether it was aggressive.
    finished: AtomicU64,
    last_evicted: AtomicU64,
    last_aggressive: AtomicBool,
    /// No pass before this time (ms): the last one freed nothing.
    futile_until_ms: AtomicU64,
}

/// After a pass that freed nothing, no pass runs for this long; leases and soft pins end on
/// scales of seconds, so objects rarely become evictable sooner.
const FUTILE_EVICTION_BACKOFF_MS: u64 = 500;

/// Replicas whose space is returned at `release_at_ms`.
#[derive(Debug)]
struct PendingRelease {
    release_at_ms: u64,
    _replicas: Vec<Replica>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MasterService {
    cfg: ServiceConfig,
    clock: Arc<dyn Clock>,
    index: Index,
    segments: SegmentRegistry,
    clients: Liveness,
    placement: Box<dyn PlacementStrategy>,
    eviction: Box<dyn EvictionPolicy>,
    pending: Mutex<Vec<PendingRelease>>,
    allocations_from_ms: u64,
    /// Segments first seen through a remount are not allocated in before this time.
    remounts_allocatable_from_ms: u64,
    last_scan_ms: AtomicU64,
    last_stale_scan_ms: AtomicU64,
    /// Serializes eviction passes and remembers futile ones (see `evict`).
    eviction_gate: EvictionGate,
    /// Clients replaced by a restart under their name, until when their mounts are refused (a
    /// live one, misconfigured to share a name, would otherwise take it back and forth).
    replaced: Mutex<HashMap<ClientId, u64>>,
    /// Object groups: group id -> member keys (see [`crate::groups`]).
    groups: GroupRegistry,
    /// Counters for metrics.
    pub stats: ServiceStats,
}

/// What every key of one PutStart/UpsertStart batch shares.
struct PutContext<'a> {
    client: ClientId,
    cfg: &'a ReplicateConfig,
    now: u64,
    upsert: bool,
}

fn results<T>(n: usize) -> Vec<Result<T, ErrorCode>> {
    (0..n).map(|_| Err(ErrorCode::InternalError)).collect()
}

fn check_key(key: &str) -> Result<(), ErrorCode> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        Err(ErrorCode::InvalidKey)
    } else {
        Ok(())
    }
}

impl MasterService {
    /// A service with no segments, clients or objects.
    pub fn new(cfg: ServiceConfig, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now_ms();
        MasterService {
            index: Index::new(cfg.shards),
            segments: SegmentRegistry::default(),
            clients: Liveness::new(ms(cfg.client_ttl)),
            placement: cfg.strategy.build(),
            eviction: Box::new(OldestLease),
            pending: Mutex::new(Vec::new()),
            allocations_from_ms: now.saturating_add(ms(cfg.recovery_window)),
            remounts_allocatable_from_ms: now.saturating_add(ms(cfg.lease_ttl)),
            last_scan_ms: AtomicU64::new(now),
            last_stale_scan_ms: AtomicU64::new(now),
            eviction_gate: EvictionGate::default(),
            replaced: Mutex::new(HashMap::new()),
            groups: GroupRegistry::default(),
            stats: ServiceStats::default(),
            clock,
            cfg,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.cfg
    }

    /// Total (capacity, used) bytes over mounted segments.
    pub fn usage(&self) -> (u64, u64) {
        self.segments.usage()
    }

    /// Number of keys.
    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    /// Number of mounted segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Number of live clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Number of object groups with members.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Number of object groups with members, and of (group, key) memberships (walks every
    /// group).
    pub fn group_counts(&self) -> (usize, usize) {
        (self.groups.len(), self.groups.member_count())
    }

    /// Mounted segments.
    pub fn segments(&self) -> Vec<Arc<MountedSegment>> {
        self.segments.snapshot()
    }

    /// Executes one request (keys owned or borrowed from the frame).
    pub fn handle<K: AsRef<str> + Into<String>>(&self, req: Request<K>) -> Response {
        match req {
            Request::MountSegment { client, segment } => {
                Response::Unit(self.mount_segment(client, segment))
            }
            Request::RemountSegments {
                client,
                segments,
                objects,
            } => Response::Units(self.remount_segments(client, segments, objects)),
            Request::UnmountSegment { client, segment } => {
                Response::Unit(self.unmount_segment(client, segment))
            }
            Request::Ping { client } => Response::Ping(Ok(self.ping(client))),
            Request::BatchPutStart {
                client,
                items,
                config,
            } => Response::Replicas(self.batch_put_start(client, items, &config, false)),
            Request::BatchUpsertStart {
                client,
                items,
                config,
            } => Response::Replicas(self.batch_put_start(client, items, &config, true)),
            Request::BatchPutEnd { client, keys } => {
                Response::Units(self.batch_put_end(client, &keys))
            }
            Request::BatchPutRevoke { client, keys } => {
                Response::Units(self.batch_put_revoke(client, &keys))
            }
            Request::BatchGetReplicaList { keys } => {
                Response::Replicas(self.batch_get_replica_list(&keys))
            }
            Request::BatchExistKey { keys } => Response::Bools(self.batch_exist_key(&keys)),
            Request::BatchRemove { keys, force } => {
                Response::Units(self.batch_remove(&keys, force))
            }
            Request::RemoveAll { force } => Response::Count(Ok(self.remove_all(force))),
            Request::RemoveByRegex { pattern, force } => {
                Response::Count(self.remove_by_regex(pattern.as_ref(), force))
            }
        }
    }

    /// Mounts a segment for `client` (which becomes known to liveness).
    pub fn mount_segment(&self, client: ClientId, segment: Segment) -> Result<(), ErrorCode> {
        let now = self.clock.now_ms();
        self.check_not_replaced(client, now)?;
        self.segments.check_mountable(client, &segment)?;
        self.replace_predecessors(client, std::slice::from_ref(&segment), now);
        self.segments.mount(client, segment, now)?;
        self.clients.register(client, now);
        Ok(())
    }

    /// Unmounts a segment of `client`; replicas in it are dropped.
    pub fn unmount_segment(&self, client: ClientId, id: SegmentId) -> Result<(), ErrorCode> {
        let now = self.clock.now_ms();
        self.segments
            .unmount(Some(client), id, now + ms(self.cfg.lease_ttl))?;
        self.purge(now, &[], false);
        Ok(())
    }

    /// Heartbeat.
    pub fn ping(&self, client: ClientId) -> PingResponse {
        let known = self.clients.ping(client, self.clock.now_ms());
        PingResponse {
            need_remount: !known,
            view_version: self.cfg.view_version,
            lease_ttl_ms: ms(self.cfg.lease_ttl),
        }
    }

    /// PutStart (or UpsertStart) of a batch: allocates replicas, objects enter PROCESSING.
    ///
    /// Three steps: each shard's keys are checked under its lock (existing objects, take-overs,
    /// same-size upserts answered in place); the rest get replicas in input order, one batch's
    /// objects back to back in a segment (see [`BatchPlacer`]), with no index lock held; then
    /// they are inserted under the shard locks again (a key another writer created meanwhile
    /// answers OBJECT_ALREADY_EXISTS and its fresh space is freed at once).
    pub fn batch_put_start<K: Into<String>>(
        &self,
        client: ClientId,
        items: Vec<(K, u64)>,
        cfg: &ReplicateConfig,
        upsert: bool,
    ) -> BatchResult<Vec<ReplicaDescriptor>> {
        if cfg.replica_num == 0
            || cfg.replica_num > MAX_REPLICAS
            || cfg.preferred_segments.len() > MAX_PREFERRED_SEGMENTS
            || !(cfg.group_ids.is_empty() || cfg.group_ids.len() == items.len())
            || cfg.group_ids.iter().any(|g| g.len() > MAX_KEY_LEN)
        {
            return Err(ErrorCode::InvalidParams);
        }
        let now = self.clock.now_ms();
        if now < self.allocations_from_ms {
            return Err(ErrorCode::UnavailableInCurrentStatus);
        }
        let mut items: Vec<(String, u64)> = items.into_iter().map(|(k, s)| (k.into(), s)).collect();
        let ctx = PutContext {
            client,
            cfg,
            now,
            upsert,
        };
        let mut out = results(items.len());
        let mut pending = Vec::new();
        let groups = self.index.group(items.len(), |i| &items[i].0);
        let mut needs_space = vec![false; items.len()];
        // Leased objects an upsert replaces, kept aside until it has space (see below).
        let mut displaced: Vec<Option<ObjectEntry>> = (0..items.len()).map(|_| None).collect();
        for (s, pos) in groups.iter() {
            let mut map = self.index.shard(s).write();
            for &p in pos {
                let p = p as usize;
                let found = self.put_start_check(
                    &ctx,
                    &mut map,
                    (&items[p], cfg.group_id(p)),
                    &mut pending,
                    &mut displaced[p],
                );
                match found {
                    Ok(Some(descs)) => out[p] = Ok(descs),
                    Ok(None) => needs_space[p] = true,
                    Err(e) => out[p] = Err(e),
                }
            }
        }
        let mut placed: Vec<Vec<Replica>> = (0..items.len()).map(|_| Vec::new()).collect();
        let wanted: Vec<usize> = (0..items.len()).filter(|&p| needs_space[p]).collect();
        if !wanted.is_empty() {
            let segs: Vec<Arc<MountedSegment>> = self
                .segments
                .snapshot()
                .into_iter()
                .filter(|s| s.is_allocatable(now))
                .collect();
            let short = self.place_batch(&segs, &ctx, &items, &wanted, &mut placed);
            // Evicting helps only keys that would fit in some segment were it empty.
            let largest = segs.iter().map(|s| s.segment.size).max().unwrap_or(0);
            let room_helps = short.iter().any(|&p| items[p].1 <= largest);
            if room_helps && self.evict(now, true) > 0 {
                self.place_batch(&segs, &ctx, &items, &short, &mut placed);
            }
            for (s, pos) in groups.iter() {
                if !pos.iter().any(|&p| needs_space[p as usize]) {
                    continue;
                }
                let mut map = self.index.shard(s).write();
                for &p in pos {
                    let p = p as usize;
                    if needs_space[p] {
                        let replicas = std::mem::take(&mut placed[p]);
                        let key = match displaced[p] {
                            Some(_) => items[p].0.clone(),
                            None => String::new(),
                        };
                        let group = cfg.group_id(p);
                        out[p] =
                            self.put_start_insert(&ctx, &mut map, &mut items[p], group, replicas);
                        if let Some(old) = displaced[p].take() {
                            let no_space = out[p] == Err(ErrorCode::NoAvailableHandle);
                            if no_space && !map.contains_key(&key) {
                                // The upsert failed: the old value stands. While it was out of
                                // the index another writer's remove or eviction of the key may
                                // have taken it out of its group, so it joins again.
                                let mut old = old;
                                if let Some(g) = old.group.take() {
                                    let again = self.groups.join(g.id(), &key);
                                    again.touch(g.last_access_ms(), 0);
                                    old.group = Some(again);
                                }
                                map.insert(key, old);
                            } else {
                                self.unlink(&map, &key, &old);
                                pending.push((old.lease.until_ms(), old.replicas));
                            }
                        }
                    }
                }
            }
        }
        for (at, replicas) in pending {
            self.delay_release(replicas, at);
        }
        Ok(out)
    }

    /// Checks one key of a PutStart batch under its shard lock: `Some` when it is answered
    /// already (an in-place upsert), `None` when it needs new space.
    fn put_start_check(
        &self,
        ctx: &PutContext<'_>,
        map: &mut Shard,
        (item, group): (&(String, u64), &str),
        pending: &mut Vec<(u64, Vec<Replica>)>,
        displaced: &mut Option<ObjectEntry>,
    ) -> Result<Option<Vec<ReplicaDescriptor>>, ErrorCode> {
        let PutContext {
            client,
            cfg,
            now,
            upsert,
        } = *ctx;
        let (key, size) = (item.0.as_str(), item.1);
        check_key(key)?;
        if size == 0 {
            return Err(ErrorCode::InvalidParams);
        }
        let Some(e) = map.get_mut(key) else {
            return Ok(None);
        };
        match e.state {
            ObjectState::Processing { .. }
                if e.is_stale_processing(now, ms(self.cfg.put_discard_timeout)) =>
            {
                // Take over: the old writer may still be writing, so its space is only
                // released after the release timeout.
                if let Some(old) = map.remove(key) {
                    self.unlink(map, key, &old);
                    pending.push((now + ms(self.cfg.put_release_timeout), old.replicas));
                    self.stats
                        .discarded_processing
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            ObjectState::Processing { .. } => return Err(ErrorCode::ObjectAlreadyExists),
            ObjectState::Complete if !upsert => return Err(ErrorCode::ObjectAlreadyExists),
            ObjectState::Complete => {
                if e.lease.is_leased(now) {
                    // Readers may be reading it under their lease: the new value goes to new
                    // space, and the old bytes stay where they are until the lease ends (as
                    // Mooncake replaces a leased object rather than refusing). Kept aside
                    // until the new space is found, and put back if there is none.
                    *displaced = map.remove(key);
                    return Ok(None);
                }
                if e.size == size && e.replicas.iter().all(|r| r.is_live()) {
                    // Same size: overwrite in place, reusing the buffers.
                    e.state = ObjectState::Processing {
                        writer: client,
                        started_ms: now,
                    };
                    e.hard_pin = cfg.hard_pin;
                    let old = e.group.take();
                    e.group = self.join(group, key);
                    if let Some(old) = old {
                        self.leave_unless_kept(&old, e.group.as_ref(), key);
                    }
                    return Ok(Some(e.descriptors()));
                }
                // Different size: nobody reads it (no lease), free it now.
                if let Some(old) = map.remove(key) {
                    self.unlink(map, key, &old);
                }
            }
        }
        Ok(None)
    }

    /// Places the objects at `positions` (in input order) into `placed`; the positions that
    /// got no replica.
    fn place_batch(
        &self,
        segs: &[Arc<MountedSegment>],
        ctx: &PutContext<'_>,
        items: &[(String, u64)],
        positions: &[usize],
        placed: &mut [Vec<Replica>],
    ) -> Vec<usize> {
        let mut placer = BatchPlacer::new(&*self.placement, segs, ctx.client, ctx.cfg);
        let rounded = |p: usize| round_up(items[p].1).unwrap_or(u64::MAX);
        let mut remaining = positions
            .iter()
            .fold(0u64, |acc, &p| acc.saturating_add(rounded(p)));
        let mut short = Vec::new();
        for &p in positions {
            placed[p] = placer.place(items[p].1, remaining);
            remaining = remaining.saturating_sub(rounded(p));
            if placed[p].is_empty() {
                short.push(p);
            }
        }
        short
    }

    /// Inserts one placed key of a PutStart batch under its shard lock.
    fn put_start_insert(
        &self,
        ctx: &PutContext<'_>,
        map: &mut Shard,
        item: &mut (String, u64),
        group: &str,
        replicas: Vec<Replica>,
    ) -> Result<Vec<ReplicaDescriptor>, ErrorCode> {
        if replicas.is_empty() {
            return Err(ErrorCode::NoAvailableHandle);
        }
        let Entry::Vacant(slot) = map.entry(std::mem::take(&mut item.0)) else {
            return Err(ErrorCode::ObjectAlreadyExists);
        };
        let (client, cfg, now) = (ctx.client, ctx.cfg, ctx.now);
        let mut e = ObjectEntry::processing(item.1, client, now, replicas, cfg.hard_pin);
        e.group = self.join(group, slot.key());
        if cfg.soft_pin {
            e.lease.soft_pin(now, ms(self.cfg.soft_pin_ttl));
        }
        Ok(slot.insert(e).descriptors())
    }

    /// PutEnd (and UpsertEnd): the writer's keys become COMPLETE.
    pub fn batch_put_end<K: AsRef<str>>(&self, client: ClientId, keys: &[K]) -> BatchResult<()> {
        self.batch_write_op(keys, |map, key| {
            let e = map.get_mut(key).ok_or(ErrorCode::ObjectNotFound)?;
            e.complete(client)
        })
    }

    /// PutRevoke (and UpsertRevoke): the writer gives up; the space is free at once.
    pub fn batch_put_revoke<K: AsRef<str>>(&self, client: ClientId, keys: &[K]) -> BatchResult<()> {
        self.batch_write_op(keys, |map, key| {
            map.get(key)
                .ok_or(ErrorCode::ObjectNotFound)?
                .check_revoke(client)?;
            if let Some(old) = map.remove(key) {
                self.unlink(map, key, &old);
            }
            Ok(())
        })
    }

    fn batch_write_op<K: AsRef<str>>(
        &self,
        keys: &[K],
        mut op: impl FnMut(&mut Shard, &str) -> Result<(), ErrorCode>,
    ) -> BatchResult<()> {
        let mut out = results(keys.len());
        let groups = self.index.group(keys.len(), |i| keys[i].as_ref());
        for (s, pos) in groups.iter() {
            let mut map = self.index.shard(s).write();
            for &p in pos {
                out[p as usize] = op(&mut map, keys[p as usize].as_ref());
            }
        }
        Ok(out)
    }

    fn batch_read_op<K: AsRef<str>, T>(
        &self,
        keys: &[K],
        mut op: impl FnMut(&Shard, &str, u64) -> Result<T, ErrorCode>,
    ) -> Vec<Result<T, ErrorCode>> {
        let now = self.clock.now_ms();
        if keys.len() == 1 {
            let key = keys[0].as_ref();
            let map = self.index.shard(self.index.shard_of(key)).read();
            return vec![op(&map, key, now)];
        }
        let mut out = results(keys.len());
        let groups = self.index.group(keys.len(), |i| keys[i].as_ref());
        for (s, pos) in groups.iter() {
            let map = self.index.shard(s).read();
            for &p in pos {
                out[p as usize] = op(&map, keys[p as usize].as_ref(), now);
            }
        }
        out
    }

    /// Replica lists of complete keys; grants each a read lease.
    pub fn batch_get_replica_list<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> BatchResult<Vec<ReplicaDescriptor>> {
        self.replica_lists(keys).into_owned()
    }

    /// [`Self::batch_get_replica_list`] in the flat form the RPC path encodes directly.
    pub fn replica_lists<K: AsRef<str>>(&self, keys: &[K]) -> ReplicaLists {
        let ttl = ms(self.cfg.lease_ttl);
        let pin_ttl = ms(self.cfg.soft_pin_ttl);
        let mut lists = ReplicaLists::with_capacity(keys.len());
        let slots = self.batch_read_op(keys, |map, key, now| {
            let e = map.get(key).ok_or(ErrorCode::ObjectNotFound)?;
            if !e.is_complete() {
                return Err(ErrorCode::ReplicaIsNotReady);
            }
            let range = lists.push(e)?;
            e.lease.grant(now, ttl);
            e.lease.refresh_soft_pin(now, pin_ttl);
            if let Some(g) = &e.group {
                g.touch(now, ttl);
            }
            Ok(range)
        });
        lists.set_slots(slots);
        lists
    }

    /// Whether keys exist and are complete; each existing one is touched for eviction order
    /// (and leased with `exist_grants_lease`).
    pub fn batch_exist_key<K: AsRef<str>>(&self, keys: &[K]) -> BatchResult<bool> {
        let ttl = ms(self.cfg.lease_ttl);
        let lease = self.cfg.exist_grants_lease;
        Ok(
            self.batch_read_op(keys, |map, key, now| match map.get(key) {
                Some(e) if e.is_complete() => {
                    if lease {
                        e.lease.grant(now, ttl);
                    } else {
                        e.lease.touch(now, ttl);
                    }
                    if let Some(g) = &e.group {
                        g.touch(now, ttl);
                    }
                    Ok(true)
                }
                _ => Ok(false),
            }),
        )
    }

    /// Removes keys. Without `force`, leased keys answer OBJECT_HAS_LEASE and PROCESSING keys
    /// REPLICA_IS_NOT_READY; with it, their space is released only once nobody can be using it.
    pub fn batch_remove<K: AsRef<str>>(&self, keys: &[K], force: bool) -> BatchResult<()> {
        let now = self.clock.now_ms();
        let mut later = Vec::new();
        let out = self.batch_write_op(keys, |map, key| {
            let e = map.get(key).ok_or(ErrorCode::ObjectNotFound)?;
            self.check_removable(e, now, force)?;
            if let Some(e) = map.remove(key) {
                self.unlink(map, key, &e);
                self.release_after_removal(e, now, &mut later);
            }
            Ok(())
        });
        for (at, r) in later {
            self.delay_release(r, at);
        }
        out
    }

    fn check_removable(&self, e: &ObjectEntry, now: u64, force: bool) -> Result<(), ErrorCode> {
        if force {
            return Ok(());
        }
        if !e.is_complete() {
            return Err(ErrorCode::ReplicaIsNotReady);
        }
        if e.lease.is_leased(now) {
            return Err(ErrorCode::ObjectHasLease);
        }
        Ok(())
    }

    fn release_after_removal(
        &self,
        e: ObjectEntry,
        now: u64,
        later: &mut Vec<(u64, Vec<Replica>)>,
    ) {
        if !e.is_complete() {
            later.push((now + ms(self.cfg.put_release_timeout), e.replicas));
        } else if e.lease.is_leased(now) {
            later.push((e.lease.until_ms(), e.replicas));
        }
        // Otherwise `e` drops here and its space is free at once.
    }

    /// Removes every removable key; the number removed.
    pub fn remove_all(&self, force: bool) -> u64 {
        self.remove_where(|_| true, force)
    }

    /// Removes every removable key `pattern` matches; INVALID_PARAMS for a pattern that is not
    /// a regular expression, longer than [`MAX_REGEX_LEN`] or too large once compiled (the
    /// pattern comes over the network).
    pub fn remove_by_regex(&self, pattern: &str, force: bool) -> Result<u64, ErrorCode> {
        if pattern.len() > MAX_REGEX_LEN {
            return Err(ErrorCode::InvalidParams);
        }
        let re = regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|_| ErrorCode::InvalidParams)?;
        Ok(self.remove_where(|k| re.is_match(k), force))
    }

    fn remove_where(&self, matches: impl Fn(&str) -> bool, force: bool) -> u64 {
        let now = self.clock.now_ms();
        let mut removed = 0;
        let mut later = Vec::new();
        for s in 0..self.index.num_shards() {
            // Keys are matched under the read lock (a pattern may be slow to match), and only
            // the removal takes the write lock, checking each key again.
            let keys: Vec<String> = self
                .index
                .shard(s)
                .read()
                .iter()
                .filter(|(k, e)| matches(k) && self.check_removable(e, now, force).is_ok())
                .map(|(k, _)| k.clone())
                .collect();
            if keys.is_empty() {
                continue;
            }
            let mut map = self.index.shard(s).write();
            for k in keys {
                let still = map
                    .get(&k)
                    .is_some_and(|e| self.check_removable(e, now, force).is_ok());
                if !still {
                    continue;
                }
                if let Some(e) = map.remove(&k) {
                    self.unlink(&map, &k, &e);
                    removed += 1;
                    self.release_after_removal(e, now, &mut later);
                }
            }
        }
        for (at, r) in later {
            self.delay_release(r, at);
        }
        removed
    }

    /// The group `id` with `key` as a member (`None` for `""`, ungrouped). Under `key`'s shard
    /// write lock.
    fn join(&self, id: &str, key: &str) -> Option<Arc<ObjectGroup>> {
        (!id.is_empty()).then(|| self.groups.join(id, key))
    }

    /// After `old` (the entry of `key`) left the index, or was replaced by whatever `map` now
    /// holds under `key`: `key` leaves its group unless the entry now there is in that same
    /// group. Under `key`'s shard write lock.
    fn unlink(&self, map: &Shard, key: &str, old: &ObjectEntry) {
        if let Some(g) = &old.group {
            let now_in = map.get(key).and_then(|e| e.group.as_ref());
            self.leave_unless_kept(g, now_in, key);
        }
    }

    fn leave_unless_kept(
        &self,
        old: &Arc<ObjectGroup>,
        now_in: Option<&Arc<ObjectGroup>>,
        key: &str,
    ) {
        if !now_in.is_some_and(|g| Arc::ptr_eq(g, old)) {
            self.groups.leave(old, key);
        }
    }

    fn delay_release(&self, replicas: Vec<Replica>, at_ms: u64) {
        if !replicas.is_empty() {
            self.pending.lock().push(PendingRelease {
                release_at_ms: at_ms,
                _replicas: replicas,
            });
        }
    }

    /// Visits every object (tests and invariant checks).
    pub fn for_each_object(&self, mut f: impl FnMut(&str, &ObjectEntry)) {
        for s in 0..self.index.num_shards() {
            for (k, e) in self.index.shard(s).read().iter() {
                f(k, e);
            }
        }
    }
}

mod admin;
mod maintenance;
pub use admin::ObjectView;
mod recovery;
#[cfg(test)]
mod tests;
