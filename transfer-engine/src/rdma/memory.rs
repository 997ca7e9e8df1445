//! Memory registration: every region the engine registers becomes MRs on every device
//! (several per device when the region exceeds the device's maximum MR size), with
//! LOCAL_WRITE | REMOTE_READ | REMOTE_WRITE access. Their lkeys cut local slices, their rkeys
//! are published in the segment descriptor. Each region also keeps the devices closest to its
//! memory (see `topology`), found once at registration, which transfers prefer.

use std::collections::BTreeMap;
use std::sync::Arc;

use mooncake_sys::verbs::ibverbs::memory_region::MemoryRegion;
use parking_lot::RwLock;

use super::nic::Nic;
use super::plan::{mr_chunks, KeySpan};
use super::qp::access;
use super::wire::RemoteMr;
use crate::registry::Region;
use crate::{Location, TransferError};

/// One piece of a region with its MR on every device.
struct Chunk {
    addr: u64,
    len: u64,
    mrs: Vec<Arc<MemoryRegion>>,
}

/// One registered region: its pieces and the devices preferred for it.
struct RegionMrs {
    chunks: Vec<Chunk>,
    /// Device indices, never empty.
    preferred: Arc<[usize]>,
}

/// MRs of all registered regions, keyed by region start.
#[derive(Default)]
pub struct MrTable {
    regions: RwLock<BTreeMap<u64, RegionMrs>>,
}

impl std::fmt::Debug for MrTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MrTable")
            .field("regions", &self.regions.read().len())
            .finish()
    }
}

impl MrTable {
    /// Registers `region` on every device in `nics`; `prefer` then names the devices closest to
    /// it (called once its pages are pinned; out-of-range or no indices mean every device).
    pub fn register(
        &self,
        region: &Region,
        nics: &[Arc<Nic>],
        prefer: impl FnOnce() -> Vec<usize>,
    ) -> Result<(), TransferError> {
        let max = nics.iter().map(|n| n.max_mr_size).min().unwrap_or(u64::MAX);
        let mut chunks = Vec::new();
        for (addr, len) in mr_chunks(region.addr, region.len, max) {
            let mut mrs = Vec::with_capacity(nics.len());
            for nic in nics {
                let len_usize = usize::try_from(len).map_err(|_| {
                    TransferError::InvalidArgument(format!("region of {len} bytes"))
                })?;
                // SAFETY: the engine's caller guarantees (register_memory's contract) that the
                // region stays valid until unregistered, which deregisters these MRs first.
                let mr =
                    unsafe { nic.pd.reg_mr(addr as usize, len_usize, access()) }.map_err(|e| {
                        let hint = match region.location {
                            Location::Host => "",
                            Location::Cuda(_) => {
                                "; a NIC registers GPU memory only with GPUDirect RDMA (load \
                                 nvidia-peermem), else use the TCP transport, which stages it"
                            }
                        };
                        TransferError::Rdma(format!(
                            "register [{addr:#x}, +{len}) ({:?}) on {}: {e}{hint}",
                            region.location, nic.dev.name
                        ))
                    })?;
                mrs.push(mr);
            }
            chunks.push(Chunk { addr, len, mrs });
        }
        let mut preferred = prefer();
        preferred.retain(|i| *i < nics.len());
        if preferred.is_empty() {
            preferred = (0..nics.len()).collect();
        }
        self.regions.write().insert(
            region.addr,
            RegionMrs {
                chunks,
                preferred: preferred.into(),
            },
        );
        Ok(())
    }

    /// Deregisters the MRs of the region starting at `addr` (no-op if it has none).
    pub fn unregister(&self, addr: u64) {
        self.regions.write().remove(&addr);
    }

    /// With one lookup of the region holding `addr`: `pick` chooses a device (the first of
    /// its answer) from the region's preferred ones (none when `addr` is in no region), and
    /// the MRs on that device overlapping `[addr, addr + len)` come back with its answer, as
    /// lkey spans.
    pub fn local_spans<R>(
        &self,
        addr: u64,
        len: u64,
        pick: impl FnOnce(&[usize]) -> (usize, R),
    ) -> ((usize, R), Vec<KeySpan>) {
        let end = addr.saturating_add(len);
        let regions = self.regions.read();
        let region = regions
            .range(..=addr)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.chunks.last().is_some_and(|c| addr < c.addr + c.len));
        let picked = pick(region.map_or(&[][..], |r| &r.preferred[..]));
        let nic = picked.0;
        let spans = region
            .into_iter()
            .flat_map(|r| &r.chunks)
            .filter(|c| c.addr < end && c.addr + c.len > addr)
            .filter_map(|c| {
                Some(KeySpan {
                    start: c.addr,
                    end: c.addr + c.len,
                    key: c.mrs.get(nic)?.lkey(),
                })
            })
            .collect();
        (picked, spans)
    }

    /// Every MR with its rkey per device, for the segment descriptor.
    pub fn published(&self) -> Vec<RemoteMr> {
        self.regions
            .read()
            .values()
            .flat_map(|r| r.chunks.iter().map(move |c| (c, &r.preferred)))
            .map(|(c, preferred)| RemoteMr {
                addr: c.addr,
                len: c.len,
                rkeys: c.mrs.iter().map(|m| m.rkey()).collect(),
                // Every device is no preference: peers then keep NIC i <-> NIC i (rails).
                preferred: if preferred.len() < c.mrs.len() {
                    preferred.iter().map(|i| *i as u32).collect()
                } else {
                    Vec::new()
                },
            })
            .collect()
    }
}
