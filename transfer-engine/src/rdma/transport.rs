//! The RDMA [`Transport`]: requests cut into slices and posted on endpoints, queue pair
//! handshakes answered for peers, MRs published in the descriptor, and a watchdog that
//! enforces every request's deadline.
//!
//! Each request goes through one local device and one peer device: in turn among the devices
//! preferred for its local region (the NICs closest to that memory, see `topology`), and among
//! those the peer published for the target region, or, if it published none, the peer device
//! with the local device's index (NIC i to NIC i, which keeps rail-optimised fabrics on one
//! rail).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mooncake_sys::verbs::ibverbs::queue_pair::{GenericQueuePair, QueuePair};
use parking_lot::Mutex;

use super::device::discover;
use super::endpoint::{Endpoint, EndpointConfig, Req, Slice};
use super::memory::MrTable;
use super::nic::Nic;
use super::plan::{plan_slices, PlannedSlice};
use super::topology::{Sysfs, Topology};
use super::wire::{self, ConnectReply, ConnectRequest, RdmaSegmentInfo};
use super::{qp, NAME};
use crate::batch::CompletionSink;
use crate::descriptor::SegmentDescriptor;
use crate::registry::Region;
use crate::transport::slicing::RequestJoin;
use crate::transport::{Transport, TransportContext};
use crate::{Location, TransferError, TransferRequest, TransferStatus};

/// How often the watchdog checks deadlines.
const WATCHDOG_TICK: Duration = Duration::from_millis(20);

/// (local device index, peer segment, peer device).
type EndpointKey = (usize, String, String);

struct Shared {
    nics: Vec<Arc<Nic>>,
    mrs: MrTable,
    topology: Topology,
    ep_cfg: Arc<EndpointConfig>,
    slice_size: u32,
    request_timeout: Duration,
    endpoints: Mutex<HashMap<EndpointKey, Arc<Endpoint>>>,
    /// Queue pairs peers connected to us (we only answer on them), replaced on re-handshake.
    passive: Mutex<HashMap<EndpointKey, GenericQueuePair>>,
    next_id: AtomicU32,
    /// Turn counter for choosing devices among the preferred ones.
    next_turn: AtomicUsize,
    stop: AtomicBool,
}

/// RDMA transport over every active device the configuration allows.
pub struct RdmaTransport {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RdmaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaTransport")
            .field("devices", &self.device_names())
            .finish()
    }
}

impl RdmaTransport {
    /// Opens the devices, starts one CQ poller per device and the deadline watchdog.
    pub fn new(ctx: &TransportContext) -> Result<RdmaTransport, TransferError> {
        let cfg = &ctx.config.rdma;
        let devices =
            discover(&super::device_filter(cfg), cfg.gid_index).map_err(TransferError::Rdma)?;
        let nics = devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| Nic::open(i, d).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransferError::Rdma)?;
        let names: Vec<String> = nics.iter().map(|n| n.dev.name.clone()).collect();
        let topology = Topology::read(Sysfs::default(), &names);
        let shared = Arc::new(Shared {
            mrs: MrTable::default(),
            topology,
            ep_cfg: Arc::new(EndpointConfig {
                local_name: ctx.local_name.clone(),
                max_retries: cfg.max_retries,
                connect_timeout: ctx.config.request_timeout.max(Duration::from_secs(1)),
            }),
            slice_size: u32::try_from(cfg.slice_size.clamp(1, 1 << 30)).unwrap_or(1 << 30),
            request_timeout: ctx.config.request_timeout,
            endpoints: Mutex::new(HashMap::new()),
            passive: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            next_turn: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            nics,
        });
        let mut t = RdmaTransport {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        for nic in &shared.nics {
            t.threads.push(nic.start_poller()?);
        }
        let s = shared.clone();
        t.threads.push(
            std::thread::Builder::new()
                .name("rdma-watchdog".into())
                .spawn(move || s.watchdog())?,
        );
        for nic in &shared.nics {
            tracing::info!(device = %nic.dev.name, gid_index = nic.dev.gid_index,
                mtu = nic.dev.mtu, sq_depth = nic.sq_depth, "RDMA device in use");
        }
        shared.topology.log();
        Ok(t)
    }

    /// Names of the devices in use.
    pub fn device_names(&self) -> Vec<String> {
        self.shared
            .nics
            .iter()
            .map(|n| n.dev.name.clone())
            .collect()
    }
}

impl Drop for RdmaTransport {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for nic in &self.shared.nics {
            nic.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let eps: Vec<_> = self
            .shared
            .endpoints
            .lock()
            .drain()
            .map(|(_, e)| e)
            .collect();
        for ep in eps {
            ep.shutdown();
        }
        self.shared.passive.lock().clear();
    }
}

impl Shared {
    fn watchdog(&self) {
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(WATCHDOG_TICK);
            let eps: Vec<_> = self.endpoints.lock().values().cloned().collect();
            let now = Instant::now();
            for ep in eps {
                ep.expire(now);
            }
        }
    }

    fn endpoint(&self, nic: usize, target: &SegmentDescriptor, device: &str) -> Arc<Endpoint> {
        let key = (nic, target.name.clone(), device.to_string());
        self.endpoints
            .lock()
            .entry(key)
            .or_insert_with(|| {
                Endpoint::new(
                    self.next_id.fetch_add(1, Ordering::Relaxed),
                    self.nics[nic].clone(),
                    target.name.clone(),
                    device.to_string(),
                    target.tcp_addr,
                    self.ep_cfg.clone(),
                )
            })
            .clone()
    }

    fn answer(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let req: ConnectRequest = wire::decode(payload)?;
        let (index, nic) = self
            .nics
            .iter()
            .enumerate()
            .find(|(_, n)| n.dev.name == req.to_device)
            .ok_or_else(|| format!("no RDMA device {:?} here", req.to_device))?;
        let mtu = req.mtu.min(nic.dev.mtu);
        qp::mtu_from(mtu)?;
        let mut queue_pair = qp::create(nic)?;
        let psn = qp::random_psn();
        qp::connect(&mut queue_pair, nic, &req.from, req.qpn, req.psn, psn, mtu)?;
        let reply = ConnectReply {
            device: nic.addr(),
            qpn: queue_pair.qp_number(),
            psn,
            mtu,
        };
        let key = (index, req.from_segment.clone(), req.from.name.clone());
        if let Some(mut old) = self.passive.lock().insert(key, queue_pair) {
            qp::to_error(&mut old);
        }
        tracing::debug!(device = %nic.dev.name, peer = %req.from_segment,
            peer_device = %req.from.name, "RDMA handshake answered");
        wire::encode(&reply)
    }
}

/// The (local device, peer device) for the request of turn `turn`: in turn among `local` (the
/// local region's preferred devices; all `nics` if empty) and among `peer` (the target
/// region's, as published; if none, the local device's index modulo `peer_devices`). Both
/// counts are non-zero.
fn pick_devices(
    turn: usize,
    local: &[usize],
    peer: &[u32],
    nics: usize,
    peer_devices: usize,
) -> (usize, usize) {
    let nic = match local {
        [] => turn % nics,
        l => l[turn % l.len()],
    };
    let dev = match peer {
        [] => nic % peer_devices,
        p => p[turn % p.len()] as usize,
    };
    (nic, dev)
}

/// The work requests of one request, from its plan.
fn to_slices(req: &TransferRequest, r: &Arc<Req>, plan: Vec<PlannedSlice>) -> Vec<Slice> {
    plan.into_iter()
        .map(|p| Slice {
            req: r.clone(),
            op: req.op,
            local_addr: req.local_addr + p.offset,
            lkey: p.lkey,
            remote_addr: req.target_offset + p.offset,
            rkey: p.rkey,
            len: p.len,
            attempts: 0,
        })
        .collect()
}

impl Transport for RdmaTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn register_memory(&self, region: &Region) -> Result<(), TransferError> {
        let s = &self.shared;
        s.mrs
            .register(region, &s.nics, || s.topology.for_region(region))
    }

    /// Every registered region is reachable: GPU memory registers only where the NIC can
    /// reach it itself (GPUDirect RDMA).
    fn reaches(&self, _location: Location) -> bool {
        true
    }

    fn unregister_memory(&self, region: &Region) -> Result<(), TransferError> {
        self.shared.mrs.unregister(region.addr);
        Ok(())
    }

    fn descriptor_data(&self) -> Option<Vec<u8>> {
        let info = RdmaSegmentInfo {
            devices: self.shared.nics.iter().map(|n| n.addr()).collect(),
            mrs: self.shared.mrs.published(),
        };
        match info.encode() {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot publish RDMA keys");
                None
            }
        }
    }

    fn handle_control(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.shared.answer(payload)
    }

    fn submit(
        &self,
        target: &Arc<SegmentDescriptor>,
        items: Vec<(usize, TransferRequest)>,
        sink: &CompletionSink,
    ) {
        let s = &self.shared;
        let info = match target
            .transports
            .get(NAME)
            .map(|b| RdmaSegmentInfo::decode(b))
        {
            Some(Ok(info)) if !info.devices.is_empty() => info,
            other => {
                let why = match other {
                    Some(Err(e)) => e,
                    _ => format!(
                        "segment {:?} publishes no RDMA device (is it running the TCP transport?)",
                        target.name
                    ),
                };
                sink.finish_many(
                    items
                        .iter()
                        .map(|(i, _)| (*i, TransferStatus::failed(&why))),
                );
                return;
            }
        };
        let deadline = Instant::now() + s.request_timeout;
        let mut per_ep: HashMap<u32, (Arc<Endpoint>, Vec<Slice>)> = HashMap::new();
        for (index, req) in items {
            let turn = s.next_turn.fetch_add(1, Ordering::Relaxed);
            let peer = info.preferred_at(req.target_offset);
            let ((nic, dev), lspans) = s.mrs.local_spans(req.local_addr, req.len, |local| {
                pick_devices(turn, local, peer, s.nics.len(), info.devices.len())
            });
            let rspans = info.spans(dev, req.target_offset, req.len);
            let plan = match plan_slices(
                req.local_addr,
                req.target_offset,
                req.len,
                s.slice_size,
                &lspans,
                &rspans,
            ) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => {
                    sink.finish(index, TransferStatus::completed(0));
                    continue;
                }
                Err(e) => {
                    sink.finish(index, TransferStatus::failed(e));
                    continue;
                }
            };
            let join = RequestJoin::new(sink.clone(), index, req.len, plan.len());
            let r = Arc::new(Req::new(join, deadline));
            let ep = s.endpoint(nic, target, &info.devices[dev].name);
            let slices = to_slices(&req, &r, plan);
            per_ep
                .entry(ep.id())
                .or_insert_with(|| (ep, Vec::new()))
                .1
                .extend(slices);
        }
        for (_, (ep, slices)) in per_ep {
            ep.enqueue(slices, target.tcp_addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_rotate_within_the_preferred_sets() {
        // Local region prefers NICs 2 and 3 of 4; the peer's region prefers its devices 5, 6, 7.
        let mut used = (Vec::new(), Vec::new());
        for turn in 0..12 {
            let (nic, dev) = pick_devices(turn, &[2, 3], &[5, 6, 7], 4, 8);
            assert!(
                [2, 3].contains(&nic) && [5, 6, 7].contains(&dev),
                "{turn}: {nic} {dev}"
            );
            used.0.push(nic);
            used.1.push(dev);
        }
        for n in [2, 3] {
            assert_eq!(used.0.iter().filter(|x| **x == n).count(), 6, "even spread");
        }
        for d in [5, 6, 7] {
            assert_eq!(used.1.iter().filter(|x| **x == d).count(), 4, "even spread");
        }
        // A turn counter that wraps keeps the choice in range.
        let (nic, dev) = pick_devices(usize::MAX, &[1], &[0, 3], 2, 4);
        assert!(nic == 1 && (dev == 0 || dev == 3));
    }

    #[test]
    fn without_preferences_nic_i_talks_to_peer_device_i() {
        // Today's behaviour: all local NICs in turn, peer device = local index mod count.
        let picks: Vec<_> = (0..6).map(|t| pick_devices(t, &[], &[], 3, 2)).collect();
        assert_eq!(picks, [(0, 0), (1, 1), (2, 0), (0, 0), (1, 1), (2, 0)]);
        // A local preference with a peer that published none (older peer, or no preference).
        let picks: Vec<_> = (0..4)
            .map(|t| pick_devices(t, &[1, 3], &[], 4, 4))
            .collect();
        assert_eq!(picks, [(1, 1), (3, 3), (1, 1), (3, 3)]);
    }
}
