//! Periodic maintenance: delayed space release, client expiry, discard of stale writes and
//! eviction above the high watermark.

use super::*;

impl MasterService {
    /// Periodic work: delayed releases, client expiry and stale-write discard (every
    /// `scan_interval`), and eviction above the high watermark.
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        // Dropping the entries returns their space.
        let released: Vec<PendingRelease> = {
            let mut p = self.pending.lock();
            let (due, keep) = std::mem::take(&mut *p)
                .into_iter()
                .partition(|r| r.release_at_ms <= now);
            *p = keep;
            due
        };
        drop(released);
        let last = self.last_scan_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= ms(self.cfg.scan_interval) {
            self.last_scan_ms.store(now, Ordering::Relaxed);
            let dead = self.clients.expire(now);
            for c in &dead {
                tracing::warn!(client = %c, "client expired: dropping its segments and replicas");
            }
            self.unmount_all_of(&dead, now);
            self.stats
                .expired_clients
                .fetch_add(dead.len() as u64, Ordering::Relaxed);
            // A whole-index scan for stale writes a few times per discard timeout is enough
            // (a stale key is discarded at most a quarter timeout late); expiry scans at once.
            let stale_every = ms(self.cfg.put_discard_timeout / 4).max(ms(self.cfg.scan_interval));
            let stale_due =
                now.saturating_sub(self.last_stale_scan_ms.load(Ordering::Relaxed)) >= stale_every;
            if stale_due {
                self.last_stale_scan_ms.store(now, Ordering::Relaxed);
            }
            if stale_due || !dead.is_empty() {
                self.purge(now, &dead, stale_due);
            }
        }
        let (cap, used) = self.segments.usage();
        if cap > 0 && used as f64 > cap as f64 * self.cfg.eviction_high_watermark {
            self.evict(now, false);
        }
    }

    /// Unmounts every segment of `clients` (gone), each quarantined for a lease.
    fn unmount_all_of(&self, clients: &[ClientId], now: u64) {
        for c in clients {
            for id in self.segments.owned_by(*c) {
                let _ = self
                    .segments
                    .unmount(None, id, now + ms(self.cfg.lease_ttl));
            }
        }
    }

    /// Before `client` mounts `segments`: other clients holding another segment (another id)
    /// under one of their names are its predecessors, gone without unmounting (see
    /// [`ServiceConfig::replace_restarted_clients`]); they are dropped now as the TTL would
    /// drop them later: segments unmounted, replicas in them gone, their unfinished writes
    /// discarded, and their next ping (should one come) answered NEED_REMOUNT.
    pub(super) fn replace_predecessors(&self, client: ClientId, segments: &[Segment], now: u64) {
        if !self.cfg.replace_restarted_clients {
            return;
        }
        let mut gone: Vec<ClientId> = segments
            .iter()
            .flat_map(|s| self.segments.owners_of_namesakes(s))
            .filter(|&c| c != client)
            .collect();
        if gone.is_empty() {
            return;
        }
        gone.sort_unstable();
        gone.dedup();
        let refuse_until = now + ms(self.cfg.client_ttl);
        {
            let mut replaced = self.replaced.lock();
            replaced.retain(|_, until| *until > now);
            replaced.extend(gone.iter().map(|&c| (c, refuse_until)));
        }
        for c in &gone {
            tracing::warn!(
                old = %c,
                new = %client,
                "a new client mounted a segment under this client's name: dropping the old \
                 client as restarted"
            );
            self.clients.forget(*c);
        }
        self.unmount_all_of(&gone, now);
        self.stats
            .replaced_clients
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        self.purge(now, &gone, false);
    }

    /// Refuses mounts from a client replaced by its restart within the last client TTL.
    pub(super) fn check_not_replaced(&self, client: ClientId, now: u64) -> Result<(), ErrorCode> {
        match self.replaced.lock().get(&client) {
            Some(&until) if now < until => {
                tracing::warn!(
                    %client,
                    "refusing a mount from a client another one replaced under its segment name \
                     (two live clients sharing a name?)"
                );
                Err(ErrorCode::IllegalClient)
            }
            _ => Ok(()),
        }
    }

    /// One pass over the index: drops replicas in unmounted segments (and objects left with
    /// none), discards PROCESSING objects of `dead_writers` and, if `stale`, those past the
    /// discard timeout.
    pub(super) fn purge(&self, now: u64, dead_writers: &[ClientId], stale: bool) {
        let discard = ms(self.cfg.put_discard_timeout);
        let release_at = now + ms(self.cfg.put_release_timeout);
        let mut later = Vec::new();
        for s in 0..self.index.num_shards() {
            let mut map = self.index.shard(s).write();
            map.retain(|k, e| {
                e.replicas.retain(|r| r.is_live());
                let discard_it = match e.state {
                    ObjectState::Processing { writer, .. } => {
                        dead_writers.contains(&writer)
                            || (stale && e.is_stale_processing(now, discard))
                    }
                    ObjectState::Complete => false,
                };
                let keep = !discard_it && !e.replicas.is_empty();
                if !keep {
                    if let Some(g) = &e.group {
                        self.groups.leave(g, k);
                    }
                }
                if discard_it {
                    later.push(std::mem::take(&mut e.replicas));
                    self.stats
                        .discarded_processing
                        .fetch_add(1, Ordering::Relaxed);
                }
                keep
            });
        }
        for r in later {
            self.delay_release(r, release_at);
        }
    }

    /// One eviction pass: each shard evicts `eviction_ratio` of its evictable objects, least
    /// recently accessed first; soft-pinned objects only if the first pass found nothing (or
    /// `aggressive` when an allocation failed). An `aggressive` pass evicts only objects with
    /// a replica in a segment that takes new replicas now: space freed in a held-back segment
    /// (see [`crate::segment::SegmentRegistry::remount`]) could not serve the allocation.
    /// A victim's group goes with it: its other members that are evictable now (complete,
    /// neither hard-pinned nor leased) are evicted in a second step, shard by shard.
    /// Returns the number of objects evicted.
    pub fn evict(&self, now: u64, aggressive: bool) -> usize {
        let gate = &self.eviction_gate;
        let skipped = || {
            self.stats
                .skipped_eviction_passes
                .fetch_add(1, Ordering::Relaxed)
        };
        if now < gate.futile_until_ms.load(Ordering::Acquire) {
            skipped();
            return 0;
        }
        let seen = gate.finished.load(Ordering::Acquire);
        let _running = gate.running.lock();
        // A pass ran while this caller waited: its outcome answers this caller too, unless this
        // one needs space where allocations can go and that pass did not look for it there.
        let as_strict = !aggressive || gate.last_aggressive.load(Ordering::Acquire);
        if gate.finished.load(Ordering::Acquire) != seen && as_strict {
            skipped();
            return gate.last_evicted.load(Ordering::Acquire) as usize;
        }
        self.stats.eviction_passes.fetch_add(1, Ordering::Relaxed);
        let mut n = self.evict_pass(now, false, aggressive);
        if n == 0 || aggressive {
            n += self.evict_pass(now, true, aggressive);
        }
        if n == 0 {
            self.stats
                .futile_eviction_passes
                .fetch_add(1, Ordering::Relaxed);
            gate.futile_until_ms
                .store(now + FUTILE_EVICTION_BACKOFF_MS, Ordering::Release);
        }
        gate.last_evicted.store(n as u64, Ordering::Release);
        gate.last_aggressive.store(aggressive, Ordering::Release);
        gate.finished.fetch_add(1, Ordering::AcqRel);
        n
    }

    fn evict_pass(&self, now: u64, allow_soft_pinned: bool, usable_only: bool) -> usize {
        let frees_usable = |e: &ObjectEntry| {
            !usable_only
                || e.replicas
                    .iter()
                    .any(|r| r.segment().is_mounted() && r.segment().is_allocatable(now))
        };
        let mut evicted = 0;
        let mut bytes = 0;
        let mut cands: Vec<Candidate> = Vec::new();
        let mut victim_groups: Vec<Arc<ObjectGroup>> = Vec::new();
        for s in 0..self.index.num_shards() {
            let mut map = self.index.shard(s).write();
            cands.clear();
            cands.extend(
                map.iter()
                    .filter(|(_, e)| is_evictable(e, now, allow_soft_pinned) && frees_usable(e))
                    .map(|(k, e)| Candidate {
                        key: k.clone(),
                        last_access_ms: e.last_access_ms(),
                        size: e.size,
                    }),
            );
            let count = victims(cands.len(), self.cfg.eviction_ratio);
            self.eviction.select(&mut cands, count);
            for c in &cands[..count] {
                if let Some(e) = map.remove(&c.key) {
                    if let Some(g) = &e.group {
                        self.groups.leave(g, &c.key);
                        if !victim_groups.iter().any(|v| Arc::ptr_eq(v, g)) {
                            victim_groups.push(g.clone());
                        }
                    }
                    evicted += 1;
                    bytes += c.size;
                }
            }
        }
        let (n, b) = self.evict_fellow_members(&victim_groups, now, allow_soft_pinned);
        evicted += n;
        bytes += b;
        self.stats
            .evicted_objects
            .fetch_add(evicted as u64, Ordering::Relaxed);
        self.stats.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
        evicted
    }

    /// Evicts the members of `groups` (whose victims a pass just evicted) that are evictable
    /// now; the number and bytes evicted. Costs the groups' sizes, one lock per shard.
    fn evict_fellow_members(
        &self,
        groups: &[Arc<ObjectGroup>],
        now: u64,
        allow_soft_pinned: bool,
    ) -> (usize, u64) {
        let members: Vec<(String, &Arc<ObjectGroup>)> = groups
            .iter()
            .flat_map(|g| self.groups.members(g).into_iter().map(move |k| (k, g)))
            .collect();
        let (mut n, mut bytes) = (0, 0);
        let by_shard = self.index.group(members.len(), |i| &members[i].0);
        for (s, pos) in by_shard.iter() {
            let mut map = self.index.shard(s).write();
            for &p in pos {
                let (key, g) = &members[p as usize];
                let fellow = map.get(key).is_some_and(|e| {
                    e.group.as_ref().is_some_and(|eg| Arc::ptr_eq(eg, g))
                        && is_evictable(e, now, allow_soft_pinned)
                });
                if !fellow {
                    continue;
                }
                if let Some(e) = map.remove(key) {
                    self.groups.leave(g, key);
                    n += 1;
                    bytes += e.size;
                }
            }
        }
        self.stats
            .evicted_group_members
            .fetch_add(n as u64, Ordering::Relaxed);
        (n, bytes)
    }
}
