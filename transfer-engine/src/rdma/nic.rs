//! One opened RDMA device as the transport uses it: its protection domain, its completion
//! queue, the limits derived from its attributes, and the poller thread that drains the CQ.
//!
//! Every endpoint on the device posts to queue pairs bound to this one CQ. Posting is bounded
//! twice: per queue pair by its send queue depth (see `window`), and per device by
//! [`Nic::try_reserve`] so that the CQ can never overflow. The poller maps each completion's
//! work request id (endpoint id in the high bits, sequence number in the low) back to its
//! endpoint; a basic CQ is used because rxe's extended-CQ polling returns stale entries.
//!
//! The poller spins on the CQ only briefly after the last completion (on a real NIC,
//! completions of a busy queue pair arrive every few microseconds, so it keeps spinning);
//! after that it arms the CQ and sleeps on its completion channel. A poller that spins while
//! the device is slow takes CPU from whoever moves the data: with soft-RoCE the kernel, on a
//! loaded host the application.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use mooncake_sys::cq_events;
use mooncake_sys::verbs::ibverbs::completion::{
    BasicCompletionQueue, CompletionChannel, PollCompletionQueueError,
};
use mooncake_sys::verbs::ibverbs::protection_domain::ProtectionDomain;
use parking_lot::{Mutex, RwLock};

use super::device::ActiveDevice;
use super::endpoint::{Completion, Endpoint};
use super::window::SEQ_BITS;
use super::wire::DeviceAddr;

/// How long the poller keeps spinning on an empty CQ while work is in flight before it sleeps
/// on the completion channel (soft-RoCE under emulation takes milliseconds per work request;
/// measured in the rxe guest, spinning through them costs READ a quarter of its throughput).
const BUSY_POLL: Duration = Duration::from_micros(100);
/// Longest sleep on the completion channel before the poller looks again (stop requests).
const EVENT_WAIT: Duration = Duration::from_millis(20);
/// Send queue depth asked for per queue pair (less if the device allows less).
const SQ_DEPTH: u32 = 256;
/// Most RDMA READs in flight per queue pair. More lets a responder answer with bursts of
/// thousands of packets, which soft-RoCE on veth drops (then waits out a retransmission).
const MAX_READ_ATOMIC: u8 = 16;
/// CQ entries asked for per device (less if the device allows less).
const CQ_DEPTH: u32 = 8192;

/// An opened device with its PD and CQ.
pub struct Nic {
    /// Position in the transport's device list.
    pub index: usize,
    /// The device.
    pub dev: ActiveDevice,
    /// Protection domain for MRs and queue pairs.
    pub pd: Arc<ProtectionDomain>,
    /// The completion queue of every queue pair on this device.
    pub cq: Arc<BasicCompletionQueue>,
    /// The channel the CQ's completion events arrive on.
    channel: Arc<CompletionChannel>,
    /// Largest MR the device registers.
    pub max_mr_size: u64,
    /// Send queue depth of each queue pair.
    pub sq_depth: u32,
    /// RDMA READs in flight per queue pair, each direction (the device's limit).
    pub read_atomic: u8,
    /// Most work requests in flight on the device at once (half the CQ: completions of
    /// queue pairs reset before draining may still land in it).
    budget: usize,
    outstanding: AtomicUsize,
    endpoints: RwLock<HashMap<u32, Weak<Endpoint>>>,
    poller: Mutex<Option<Thread>>,
    stop: AtomicBool,
}

impl std::fmt::Debug for Nic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nic")
            .field("dev", &self.dev)
            .field("sq_depth", &self.sq_depth)
            .field("budget", &self.budget)
            .finish()
    }
}

impl Nic {
    /// Allocates the PD and CQ of `dev`.
    pub fn open(index: usize, dev: ActiveDevice) -> Result<Nic, String> {
        let attr = dev
            .ctx
            .query_device()
            .map_err(|e| format!("{}: query device: {e}", dev.name))?;
        let pd = dev
            .ctx
            .alloc_pd()
            .map_err(|e| format!("{}: allocate PD: {e}", dev.name))?;
        let cqe = CQ_DEPTH
            .min(u32::try_from(attr.max_cqe()).unwrap_or(0))
            .max(64);
        let channel = CompletionChannel::new(&dev.ctx)
            .map_err(|e| format!("{}: create completion channel: {e}", dev.name))?;
        channel
            .set_nonblocking(true)
            .map_err(|e| format!("{}: completion channel: {e}", dev.name))?;
        let cq = dev
            .ctx
            .create_cq_builder()
            .setup_cqe(cqe)
            .setup_comp_channel(&channel, 0)
            .build()
            .map_err(|e| format!("{}: create CQ of {cqe}: {e}", dev.name))?;
        let read_atomic = attr
            .max_qp_rd_atom()
            .min(attr.max_qp_init_rd_atom())
            .clamp(1, i32::from(MAX_READ_ATOMIC)) as u8;
        let sq_depth = SQ_DEPTH
            .min(u32::try_from(attr.max_qp_wr()).unwrap_or(0))
            .max(1);
        Ok(Nic {
            index,
            max_mr_size: attr.max_mr_size().max(4096),
            pd,
            cq,
            channel,
            sq_depth,
            read_atomic,
            budget: (cqe as usize / 2).max(1),
            outstanding: AtomicUsize::new(0),
            endpoints: RwLock::new(HashMap::new()),
            poller: Mutex::new(None),
            stop: AtomicBool::new(false),
            dev,
        })
    }

    /// How peers address this device.
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr {
            name: self.dev.name.clone(),
            gid: self.dev.gid,
            lid: self.dev.lid,
        }
    }

    /// Reserves room for up to `want` work requests in the CQ; returns how many it got.
    pub fn try_reserve(&self, want: usize) -> usize {
        let mut cur = self.outstanding.load(Ordering::Acquire);
        loop {
            let n = want.min(self.budget.saturating_sub(cur));
            if n == 0 {
                return 0;
            }
            match self.outstanding.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return n,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back `n` reserved work requests (completed, or abandoned by a reset).
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.outstanding.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Whether the device is out of CQ room.
    pub fn saturated(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) >= self.budget
    }

    /// Makes `ep`'s completions reach it.
    pub fn attach(&self, ep: &Arc<Endpoint>) {
        self.endpoints.write().insert(ep.id(), Arc::downgrade(ep));
    }

    /// Wakes the poller (work was posted).
    pub fn wake(&self) {
        if let Some(t) = self.poller.lock().as_ref() {
            t.unpark();
        }
    }

    /// Starts the poller thread.
    pub fn start_poller(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let nic = self.clone();
        let handle = thread::Builder::new()
            .name(format!("rdma-cq-{}", self.dev.name))
            .spawn(move || nic.poll_loop())?;
        *self.poller.lock() = Some(handle.thread().clone());
        Ok(handle)
    }

    /// Asks the poller to exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    fn poll_loop(&self) {
        let mut idle_since: Option<Instant> = None;
        let mut armed = false;
        while !self.stop.load(Ordering::Acquire) {
            match self.cq.start_poll() {
                Ok(poller) => {
                    idle_since = None;
                    armed = false;
                    let mut by_ep: HashMap<u32, Vec<Completion>> = HashMap::new();
                    for wc in poller {
                        let id = (wc.wr_id() >> SEQ_BITS) as u32;
                        by_ep.entry(id).or_default().push(Completion {
                            seq: wc.wr_id() & ((1 << SEQ_BITS) - 1),
                            status: wc.status(),
                            vendor_err: wc.vendor_err(),
                        });
                    }
                    for (id, wcs) in by_ep {
                        let ep = self.endpoints.read().get(&id).and_then(Weak::upgrade);
                        if let Some(ep) = ep {
                            ep.on_completions(&wcs);
                        }
                    }
                }
                Err(PollCompletionQueueError::CompletionQueueEmpty) => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if self.outstanding.load(Ordering::Acquire) == 0 {
                        // Nothing in flight: sleep until a post wakes us.
                        thread::park_timeout(Duration::from_millis(100));
                    } else if since.elapsed() < BUSY_POLL {
                        std::hint::spin_loop();
                        thread::yield_now();
                    } else if !armed {
                        // In flight but quiet: ask for an event, then poll once more (a
                        // completion may have landed before the arming) before sleeping.
                        armed = self.arm();
                    } else {
                        self.wait_for_event();
                        armed = false;
                    }
                }
                Err(e) => {
                    tracing::error!(device = %self.dev.name, error = %e, "polling the CQ failed");
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        self.endpoints.write().clear();
    }

    /// Arms the CQ; on failure falls back to a short sleep and reports it unarmed.
    fn arm(&self) -> bool {
        match cq_events::arm(&self.cq) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(device = %self.dev.name, error = %e, "arming the CQ failed");
                thread::sleep(Duration::from_micros(200));
                false
            }
        }
    }

    /// Sleeps until the armed CQ's next completion event (at most [`EVENT_WAIT`]).
    fn wait_for_event(&self) {
        if let Err(e) = cq_events::wait(&self.channel, EVENT_WAIT) {
            tracing::warn!(device = %self.dev.name, error = %e, "waiting for CQ events failed");
            thread::sleep(Duration::from_micros(200));
        }
    }
}
