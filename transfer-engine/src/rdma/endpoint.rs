//! An endpoint: this engine's RC queue pair to one device of one peer segment, created on
//! first use, with the slices waiting for it and in flight on it.
//!
//! Life cycle: `Idle` (no queue pair) → `Connecting` (a thread creates the queue pair and
//! runs the handshake over the peer's control channel) → `Ready`. Any error completion, failed
//! post or in-flight slice past its deadline resets it: the queue pair goes to ERROR (so the
//! device stops touching memory) and is dropped, its posted slices are retried a bounded
//! number of times or finished, and the next use connects afresh; the peer replaces its half
//! on that handshake. Only the queue pair's initiator posts on it, so two engines connecting
//! to each other at the same time simply get one queue pair pair per direction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mooncake_sys::verbs::ibverbs::completion::WorkCompletionStatus;
use mooncake_sys::verbs::ibverbs::queue_pair::{
    GenericQueuePair, PostSendGuard, QueuePair, SetScatterGatherEntry, WorkRequestFlags,
};
use parking_lot::Mutex;

use super::nic::Nic;
use super::window::{SendWindow, SEQ_BITS};
use super::{qp, wire};
use crate::transport::slicing::{PartOutcome, RequestJoin};
use crate::OpCode;

/// Most slices posted on a queue pair while the next one to post is a WRITE. A shallow queue
/// keeps WRITEs sent from the poster's context as completions free room (soft-RoCE sends
/// from softirq context otherwise, measurably slower); 32 x 64 KiB in flight still covers a
/// real NIC's bandwidth-delay product. READs use the whole send queue: their data flow is
/// paced by the responder and the READs-in-flight limit.
const WRITE_DEPTH: usize = 32;
/// Every this many work requests of a chain one asks for a completion (and always the last
/// of a chain); the others complete with it. Fewer completions mean fewer poller wake-ups
/// and longer chains reposted at once, as perftest does with its CQ moderation.
const SIGNAL_EVERY: usize = 16;

/// One request as its slices see it.
#[derive(Debug)]
pub struct Req {
    join: RequestJoin,
    deadline: Instant,
    failed: AtomicBool,
}

impl Req {
    /// A request cut into `join`'s parts, due by `deadline`.
    pub fn new(join: RequestJoin, deadline: Instant) -> Self {
        Req {
            join,
            deadline,
            failed: AtomicBool::new(false),
        }
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// One work request's worth of a request.
#[derive(Debug)]
pub struct Slice {
    /// The request it belongs to.
    pub req: Arc<Req>,
    /// READ or WRITE.
    pub op: OpCode,
    /// Local address.
    pub local_addr: u64,
    /// Local MR key.
    pub lkey: u32,
    /// Remote address.
    pub remote_addr: u64,
    /// Remote MR key.
    pub rkey: u32,
    /// Bytes.
    pub len: u32,
    /// Times it was posted and had to be retried.
    pub attempts: u32,
}

/// A completion as the poller hands it over.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// Sequence number (low bits of the work request id).
    pub seq: u64,
    /// ibv_wc_status.
    pub status: u32,
    /// Vendor error.
    pub vendor_err: u32,
}

/// Settings every endpoint of a transport shares.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// This engine's segment name (sent in handshakes).
    pub local_name: String,
    /// Retries of a slice after transport errors before its request fails.
    pub max_retries: u32,
    /// Limit of one handshake.
    pub connect_timeout: Duration,
}

enum Conn {
    Idle,
    Connecting,
    Ready(GenericQueuePair),
}

struct State {
    conn: Conn,
    window: SendWindow<Slice>,
    peer_addr: SocketAddr,
}

/// Outcomes to report once the endpoint's lock is released.
type Outcomes = Vec<(Arc<Req>, PartOutcome)>;

/// This engine's queue pair to one device of one peer.
pub struct Endpoint {
    id: u32,
    nic: Arc<Nic>,
    peer_segment: String,
    peer_device: String,
    cfg: Arc<EndpointConfig>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("device", &self.nic.dev.name)
            .field("peer_segment", &self.peer_segment)
            .field("peer_device", &self.peer_device)
            .finish()
    }
}

/// Statuses after which retrying the same work request cannot help.
fn is_permanent(status: u32) -> bool {
    use WorkCompletionStatus as S;
    [
        S::LocalLengthError,
        S::LocalProtectionError,
        S::LocalAccessError,
        S::RemoteInvalidRequestError,
        S::RemoteAccessError,
    ]
    .iter()
    .any(|s| *s as u32 == status)
}

fn report(outcomes: Outcomes) {
    for (req, outcome) in outcomes {
        if !matches!(outcome, PartOutcome::Done) {
            req.failed.store(true, Ordering::Release);
        }
        req.join.part_done(outcome);
    }
}

impl Endpoint {
    /// An idle endpoint from `nic` to `peer_device` of `peer_segment`.
    pub fn new(
        id: u32,
        nic: Arc<Nic>,
        peer_segment: String,
        peer_device: String,
        peer_addr: SocketAddr,
        cfg: Arc<EndpointConfig>,
    ) -> Arc<Endpoint> {
        let ep = Arc::new(Endpoint {
            id,
            state: Mutex::new(State {
                conn: Conn::Idle,
                window: SendWindow::new(nic.sq_depth as usize),
                peer_addr,
            }),
            nic,
            peer_segment,
            peer_device,
            cfg,
        });
        ep.nic.attach(&ep);
        ep
    }

    /// Id carried in the high bits of its work request ids.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Queues slices and gets them moving (connecting first if need be). Never blocks on the
    /// network.
    pub fn enqueue(self: &Arc<Self>, slices: Vec<Slice>, peer_addr: SocketAddr) {
        let mut st = self.state.lock();
        st.peer_addr = peer_addr;
        for s in slices {
            st.window.push(s);
        }
        let outcomes = self.kick(&mut st);
        drop(st);
        report(outcomes);
    }

    /// Posts what it can if connected, or starts connecting if idle.
    fn kick(self: &Arc<Self>, st: &mut State) -> Outcomes {
        match st.conn {
            Conn::Ready(_) => self.flush(st),
            Conn::Connecting => Vec::new(),
            Conn::Idle => {
                if st.window.pending_len() > 0 {
                    st.conn = Conn::Connecting;
                    let ep = self.clone();
                    let addr = st.peer_addr;
                    let spawned = std::thread::Builder::new()
                        .name("rdma-connect".into())
                        .spawn(move || ep.connect(addr));
                    if let Err(e) = spawned {
                        st.conn = Conn::Idle;
                        return self.fail_pending(st, &format!("cannot start connecting: {e}"));
                    }
                }
                Vec::new()
            }
        }
    }

    fn fail_pending(&self, st: &mut State, why: &str) -> Outcomes {
        st.window
            .take_pending()
            .into_iter()
            .map(|s| (s.req, PartOutcome::Failed(why.to_string())))
            .collect()
    }

    /// Creates the queue pair, runs the handshake, and posts what waits (on its own thread).
    fn connect(self: Arc<Self>, peer_addr: SocketAddr) {
        let result = self.handshake(peer_addr);
        let mut st = self.state.lock();
        let outcomes = match result {
            Ok(qp) => {
                tracing::debug!(device = %self.nic.dev.name, peer = %self.peer_segment,
                    peer_device = %self.peer_device, "RDMA endpoint connected");
                st.conn = Conn::Ready(qp);
                self.flush(&mut st)
            }
            Err(why) => {
                st.conn = Conn::Idle;
                let why = format!(
                    "RDMA connect {} -> {}/{} failed: {why}",
                    self.nic.dev.name, self.peer_segment, self.peer_device
                );
                tracing::warn!("{why}");
                self.fail_pending(&mut st, &why)
            }
        };
        drop(st);
        report(outcomes);
    }

    fn handshake(&self, peer_addr: SocketAddr) -> Result<GenericQueuePair, String> {
        let mut qp = qp::create(&self.nic)?;
        let psn = qp::random_psn();
        let req = wire::ConnectRequest {
            from_segment: self.cfg.local_name.clone(),
            from: self.nic.addr(),
            to_device: self.peer_device.clone(),
            qpn: qp.qp_number(),
            psn,
            mtu: self.nic.dev.mtu,
        };
        let reply = crate::control::transport_call(
            peer_addr,
            super::NAME,
            wire::encode(&req)?,
            self.cfg.connect_timeout,
        )
        .map_err(|e| e.to_string())?;
        let reply: wire::ConnectReply = wire::decode(&reply)?;
        if reply.device.name != self.peer_device {
            return Err(format!(
                "peer answered for device {} instead of {}",
                reply.device.name, self.peer_device
            ));
        }
        qp::connect(
            &mut qp,
            &self.nic,
            &reply.device,
            reply.qpn,
            reply.psn,
            psn,
            reply.mtu.min(self.nic.dev.mtu),
        )?;
        Ok(qp)
    }

    /// Posts as many pending slices as the send queue and the CQ allow, as one chain.
    fn flush(self: &Arc<Self>, st: &mut State) -> Outcomes {
        let mut outcomes: Outcomes = st
            .window
            .take_pending_where(|s| s.req.has_failed())
            .into_iter()
            .map(|s| {
                (
                    s.req,
                    PartOutcome::Failed("another part of the request failed".into()),
                )
            })
            .collect();
        let State { conn, window, .. } = st;
        let Conn::Ready(qp) = conn else {
            return outcomes;
        };
        let want = window.pending_len().min(self.nic.sq_depth as usize);
        if want == 0 {
            return outcomes;
        }
        let got = self.nic.try_reserve(want);
        let seqs = window.launch(got, |s| match s.op {
            OpCode::Write => WRITE_DEPTH,
            OpCode::Read => usize::MAX,
        });
        self.nic.release(got - seqs.len());
        if seqs.is_empty() {
            return outcomes;
        }
        let mut guard = qp.start_post_send();
        for (i, &seq) in seqs.iter().enumerate() {
            let Some(s) = window.get(seq) else { continue };
            let wr_id = (u64::from(self.id) << SEQ_BITS) | seq;
            let signaled = i + 1 == seqs.len() || (i + 1) % SIGNAL_EVERY == 0;
            // sideway's flags are a plain enum without an empty value. Solicited stands in
            // for "no flags": it only marks packets that consume a receive request (SEND,
            // WRITE with immediate), so on RDMA WRITE and READ it changes nothing.
            let flags = if signaled {
                WorkRequestFlags::Signaled
            } else {
                WorkRequestFlags::Solicited
            };
            let wr = guard.construct_wr(wr_id, flags);
            let wr = match s.op {
                OpCode::Write => wr.setup_write(s.rkey, s.remote_addr),
                OpCode::Read => wr.setup_read(s.rkey, s.remote_addr),
            };
            // SAFETY: the local range lies in memory registered with the engine (checked at
            // submit) under MR `lkey`; the caller keeps it valid while the request is in flight,
            // and a reset moves the queue pair to ERROR before the request is reported done.
            unsafe { wr.setup_sge(s.lkey, s.local_addr, s.len) };
        }
        match guard.post() {
            Ok(()) => self.nic.wake(),
            Err(e) => {
                let why = format!("posting to {} failed: {e}", self.nic.dev.name);
                outcomes.extend(self.reset(st, &why, Instant::now(), Vec::new()));
                // Reconnects (on another thread) for what the reset queued again.
                outcomes.extend(self.kick(st));
            }
        }
        outcomes
    }

    /// Resets the queue pair: ERROR, dropped; `failed` (slices whose completion was an error)
    /// and the posted slices are failed, timed out or queued again, oldest first.
    fn reset(&self, st: &mut State, why: &str, now: Instant, failed: Vec<Slice>) -> Outcomes {
        if let Conn::Ready(mut qp) = std::mem::replace(&mut st.conn, Conn::Idle) {
            qp::to_error(&mut qp);
        }
        let taken = st.window.take_posted();
        self.nic.release(taken.len());
        let mut posted = failed;
        posted.extend(taken);
        let mut outcomes = Vec::new();
        let mut retry = Vec::new();
        for mut s in posted {
            if s.req.has_failed() {
                outcomes.push((s.req, PartOutcome::Failed(why.to_string())));
            } else if s.req.deadline <= now {
                outcomes.push((s.req, PartOutcome::TimedOut));
            } else if s.attempts >= self.cfg.max_retries {
                outcomes.push((
                    s.req,
                    PartOutcome::Failed(format!("{why} (after {} retries)", s.attempts)),
                ));
            } else {
                s.attempts += 1;
                retry.push(s);
            }
        }
        tracing::debug!(device = %self.nic.dev.name, peer = %self.peer_segment,
            retried = retry.len(), reason = why, "RDMA endpoint reset");
        st.window.push_front_all(retry);
        outcomes
    }

    /// Handles completions of this endpoint's work requests (poller thread).
    pub fn on_completions(self: &Arc<Self>, wcs: &[Completion]) {
        let mut st = self.state.lock();
        let mut outcomes = Vec::new();
        let mut error: Option<String> = None;
        let mut errored = Vec::new();
        for wc in wcs {
            // Empty for a completion of a queue pair reset earlier.
            let mut done = st.window.complete_through(wc.seq);
            let Some(s) = done.pop() else {
                continue;
            };
            // Work requests before this one completed (in order, unsignaled) without error.
            self.nic.release(done.len() + 1);
            outcomes.extend(done.into_iter().map(|d| (d.req, PartOutcome::Done)));
            if wc.status == WorkCompletionStatus::Success as u32 {
                outcomes.push((s.req, PartOutcome::Done));
                continue;
            }
            let why = format!(
                "RDMA {:?} of {} bytes at remote {:#x} ({} -> {}/{}) failed: {:?} (vendor error {:#x})",
                s.op,
                s.len,
                s.remote_addr,
                self.nic.dev.name,
                self.peer_segment,
                self.peer_device,
                WorkCompletionStatus::from(wc.status),
                wc.vendor_err
            );
            if is_permanent(wc.status) {
                s.req.failed.store(true, Ordering::Release);
                outcomes.push((s.req, PartOutcome::Failed(why.clone())));
            } else {
                errored.push(s);
            }
            error.get_or_insert(why);
        }
        if let Some(why) = error {
            outcomes.extend(self.reset(&mut st, &why, Instant::now(), errored));
        }
        outcomes.extend(self.kick(&mut st));
        drop(st);
        report(outcomes);
    }

    /// Finishes slices past their deadline; resets the queue pair if one of them is in
    /// flight (the device gives no error for a dead peer on every provider).
    pub fn expire(self: &Arc<Self>, now: Instant) {
        let mut st = self.state.lock();
        let mut outcomes: Outcomes = st
            .window
            .take_pending_where(|s| s.req.deadline <= now)
            .into_iter()
            .map(|s| (s.req, PartOutcome::TimedOut))
            .collect();
        if st.window.any_posted(|s| s.req.deadline <= now) {
            outcomes.extend(self.reset(&mut st, "request deadline passed", now, Vec::new()));
            outcomes.extend(self.kick(&mut st));
        }
        drop(st);
        report(outcomes);
    }

    /// Whether the endpoint holds no slice at all.
    pub fn is_quiet(&self) -> bool {
        let st = self.state.lock();
        st.window.pending_len() == 0 && st.window.posted_len() == 0
    }

    /// Fails everything it holds (the transport is shutting down).
    pub fn shutdown(&self) {
        let mut st = self.state.lock();
        let mut outcomes = self.reset(&mut st, "transport shut down", Instant::now(), Vec::new());
        // Whatever reset queued again cannot be retried any more.
        outcomes.extend(self.fail_pending(&mut st, "transport shut down"));
        drop(st);
        report(outcomes);
    }
}
