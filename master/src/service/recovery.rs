//! Remount after NEED_REMOUNT or failover: segments come back and reported objects are
//! re-inserted into exactly the ranges they occupy (see the failover design in the README).

use super::*;

impl MasterService {
    /// Re-registers `client` with its segments (idempotent for those still mounted) and
    /// re-inserts the objects it reports; one result per reported object.
    ///
    /// A segment this master has never seen held data under an earlier master (this one
    /// restarted, or took over): it is not allocated in until one read lease after this
    /// master started, when every lease the earlier one granted has ended. Writes it allowed
    /// are taken to be over by then too: a client's transfers fail after its engine's request
    /// timeout, which is 10 s by default like the lease (a deployment that lengthens the
    /// timeout should lengthen the lease with it). Without etcd there is no recovery window,
    /// so this is what keeps a restarted single master from handing out bytes that an
    /// earlier reader is still reading.
    pub fn remount_segments(
        &self,
        client: ClientId,
        segments: Vec<Segment>,
        objects: Vec<HeldObject>,
    ) -> BatchResult<()> {
        let now = self.clock.now_ms();
        self.check_not_replaced(client, now)?;
        for s in &segments {
            self.segments.check_mountable(client, s)?;
        }
        self.replace_predecessors(client, &segments, now);
        for s in segments {
            self.segments
                .remount(client, s, now, self.remounts_allocatable_from_ms)?;
        }
        self.clients.register(client, now);
        Ok(objects
            .into_iter()
            .map(|o| self.restore_object(o, now))
            .collect())
    }

    fn restore_object(&self, o: HeldObject, now: u64) -> Result<(), ErrorCode> {
        check_key(&o.key)?;
        if o.size == 0 || o.replicas.is_empty() || o.replicas.len() > MAX_REPLICAS {
            return Err(ErrorCode::InvalidParams);
        }
        let shard = self.index.shard(self.index.shard_of(&o.key));
        let mut map = shard.write();
        if let Some(e) = map.get(&o.key) {
            let same = e.is_complete()
                && e.size == o.size
                && e.replicas.len() == o.replicas.len()
                && e.replicas
                    .iter()
                    .zip(&o.replicas)
                    .all(|(r, d)| r.addr() == d.addr && r.segment().segment.id == d.segment_id);
            return if same {
                Ok(())
            } else {
                Err(ErrorCode::ObjectAlreadyExists)
            };
        }
        let mut replicas = Vec::with_capacity(o.replicas.len());
        for d in &o.replicas {
            if d.len != o.size {
                return Err(ErrorCode::InvalidReplica);
            }
            // Replicas in segments that did not come back are lost, not an error.
            let Some(seg) = self.segments.get(d.segment_id) else {
                continue;
            };
            let end = d.addr.checked_add(d.len).ok_or(ErrorCode::InvalidReplica)?;
            if d.addr < seg.segment.base || end > seg.segment.base + seg.segment.size {
                return Err(ErrorCode::InvalidReplica);
            }
            replicas.push(Replica::reserve(&seg, d.addr, d.len).ok_or(ErrorCode::InvalidReplica)?);
        }
        if replicas.is_empty() {
            return Err(ErrorCode::SegmentNotFound);
        }
        let mut e = ObjectEntry::processing(o.size, ClientId::nil(), now, replicas, false);
        e.state = ObjectState::Complete;
        map.insert(o.key, e);
        Ok(())
    }
}
