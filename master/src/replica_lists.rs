//! Replica lists of a GetReplicaList batch in a flat, allocation-light form.
//!
//! Building `Vec<Result<Vec<ReplicaDescriptor>, _>>` costs two allocations and a string copy
//! per key. [`ReplicaLists`] instead keeps one flat array of replica references (segment index,
//! address, length) and one range per key, and serializes to exactly the bytes of the owned
//! form, so the RPC path encodes straight from it while clients decode the usual types.

use std::sync::Arc;

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use crate::index::ObjectEntry;
use crate::proto::{BatchResult, ErrorCode, ReplicaDescriptor, ReplicaStatus, SegmentId};
use crate::segment::MountedSegment;

/// Position of `Response::Replicas` in [`crate::proto::Response`] (checked by a test).
const RESPONSE_REPLICAS_VARIANT: u32 = 2;

#[derive(Clone, Copy, Debug)]
struct ReplicaRef {
    seg: u32,
    addr: u64,
    len: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ReplicaLists {
    segs: Vec<Arc<MountedSegment>>,
    reps: Vec<ReplicaRef>,
    slots: Vec<Result<(u32, u32), ErrorCode>>,
}

impl ReplicaLists {
    /// Room for `n` keys.
    pub fn with_capacity(n: usize) -> Self {
        ReplicaLists {
            segs: Vec::new(),
            reps: Vec::with_capacity(n),
            slots: Vec::new(),
        }
    }

    /// Appends the live replicas of a complete object; the range to store as its slot
    /// (`OBJECT_NOT_FOUND` when none is live).
    pub fn push(&mut self, e: &ObjectEntry) -> Result<(u32, u32), ErrorCode> {
        let start = self.reps.len() as u32;
        for r in e.replicas.iter().filter(|r| r.is_live()) {
            let seg = match self.segs.iter().rposition(|s| Arc::ptr_eq(s, r.segment())) {
                Some(i) => i,
                None => {
                    self.segs.push(r.segment().clone());
                    self.segs.len() - 1
                }
            };
            self.reps.push(ReplicaRef {
                seg: seg as u32,
                addr: r.addr(),
                len: r.len(),
            });
        }
        let end = self.reps.len() as u32;
        if start == end {
            Err(ErrorCode::ObjectNotFound)
        } else {
            Ok((start, end))
        }
    }

    /// Sets the per-key outcomes (input order).
    pub fn set_slots(&mut self, slots: Vec<Result<(u32, u32), ErrorCode>>) {
        self.slots = slots;
    }

    fn descriptor(&self, r: &ReplicaRef) -> DescriptorRef<'_> {
        let s = &self.segs[r.seg as usize].segment;
        DescriptorRef {
            segment_name: &s.name,
            segment_id: s.id,
            addr: r.addr,
            len: r.len,
            status: ReplicaStatus::Complete,
        }
    }

    /// The error of every key that has no replica list.
    pub fn key_errors(&self) -> impl Iterator<Item = ErrorCode> + '_ {
        self.slots.iter().filter_map(|s| s.err())
    }

    /// The owned form.
    pub fn into_owned(self) -> BatchResult<Vec<ReplicaDescriptor>> {
        Ok(self
            .slots
            .iter()
            .map(|s| {
                s.map(|(a, b)| {
                    self.reps[a as usize..b as usize]
                        .iter()
                        .map(|r| {
                            let d = self.descriptor(r);
                            ReplicaDescriptor {
                                segment_name: d.segment_name.to_string(),
                                segment_id: d.segment_id,
                                addr: d.addr,
                                len: d.len,
                                status: d.status,
                            }
                        })
                        .collect()
                })
            })
            .collect())
    }
}

/// Same fields, order and wire form as [`ReplicaDescriptor`].
#[derive(Serialize)]
struct DescriptorRef<'a> {
    segment_name: &'a str,
    segment_id: SegmentId,
    addr: u64,
    len: u64,
    status: ReplicaStatus,
}

struct OneList<'a>(&'a ReplicaLists, u32, u32);

impl Serialize for OneList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let reps = &self.0.reps[self.1 as usize..self.2 as usize];
        let mut seq = s.serialize_seq(Some(reps.len()))?;
        for r in reps {
            seq.serialize_element(&self.0.descriptor(r))?;
        }
        seq.end()
    }
}

struct AllLists<'a>(&'a ReplicaLists);

impl Serialize for AllLists<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.slots.len()))?;
        for slot in &self.0.slots {
            let item: Result<OneList<'_>, ErrorCode> = slot.map(|(a, b)| OneList(self.0, a, b));
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

impl Serialize for ReplicaLists {
    /// As `BatchResult<Vec<ReplicaDescriptor>>` (always `Ok`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ok: Result<AllLists<'_>, ErrorCode> = Ok(AllLists(self));
        ok.serialize(s)
    }
}

/// Serializes as `Response::Replicas(lists)`.
pub struct ReplicasResponse<'a>(pub &'a ReplicaLists);

impl Serialize for ReplicasResponse<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("Response", RESPONSE_REPLICAS_VARIANT, "Replicas", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::codec::{decode_payload, encode_frame};
    use crate::proto::{ClientId, ReplicateConfig, Response, Segment};
    use crate::service::{MasterService, ServiceConfig};

    #[test]
    fn flat_encoding_is_byte_identical_to_the_owned_response() {
        let svc = MasterService::new(ServiceConfig::default(), Arc::new(ManualClock::new(5)));
        let me = ClientId::new_v4();
        for i in 0..3 {
            let seg = Segment {
                id: ClientId::new_v4(),
                name: format!("host{i}:1"),
                base: 1 << 30,
                size: 1 << 20,
            };
            svc.mount_segment(me, seg).unwrap();
        }
        let two = ReplicateConfig {
            replica_num: 2,
            ..Default::default()
        };
        let items: Vec<(String, u64)> = (0..50).map(|i| (format!("k{i}"), 100 + i)).collect();
        svc.batch_put_start(me, items, &two, false).unwrap();
        let done: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        svc.batch_put_end(me, &done).unwrap();
        // Complete, PROCESSING and missing keys, in a shuffled order.
        let keys: Vec<String> = (0..60).rev().map(|i| format!("k{i}")).collect();
        let mut fast = Vec::new();
        encode_frame(7, &ReplicasResponse(&svc.replica_lists(&keys)), &mut fast).unwrap();
        let owned = Response::Replicas(svc.replica_lists(&keys).into_owned());
        let mut slow = Vec::new();
        encode_frame(7, &owned, &mut slow).unwrap();
        assert_eq!(fast, slow);
        let (id, back): (u64, Response) = decode_payload(&fast[4..]).unwrap();
        assert_eq!((id, back), (7, owned.clone()));
        let Response::Replicas(Ok(lists)) = owned else {
            panic!("not replicas")
        };
        assert_eq!(lists[0], Err(ErrorCode::ObjectNotFound));
        assert_eq!(lists[10], Err(ErrorCode::ReplicaIsNotReady));
        assert_eq!(lists[59].as_ref().unwrap().len(), 2);
        assert_eq!(lists[59].as_ref().unwrap()[0].len, 100);
    }
}
