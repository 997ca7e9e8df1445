//! One pooled TCP data connection on the initiating side.
//!
//! A dedicated sender thread takes queued parts from a crossbeam channel, records them in the
//! in-flight table and writes as many as are queued with one `writev` (WRITE payloads straight
//! from registered memory). Header-only parts (READs) are written by the submitting thread
//! itself when no other thread is writing, which saves a thread hop per small batch. A dedicated receiver thread reads answers and copies READ payloads
//! straight into registered memory, then reports completions in groups. Whoever sees the
//! connection fail (either thread, the deadline watchdog, or drop) closes the in-flight table,
//! fails every part in it and shuts the socket down, which stops the other thread.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::batch::CompletionSink;
use crate::transport::inflight::{CloseReason, InFlight};
use crate::transport::slicing::{whole_status, PartOutcome, RequestJoin};
use crate::transport::tcp::gpu_staging::{stage_reads, Slot, Staged, Uploads};
use crate::transport::tcp::wire::{hello, ConnKind, FrameKind, FrameReader, Header, OutBatch};
use crate::{OpCode, TransferStatus};

/// Parts gathered into one `writev` at most.
const MAX_PARTS_PER_WRITE: usize = 1024;
/// A lone request at least this large is written by its submitter (see [`Connection::send`]).
const INLINE_MIN_BYTES: u64 = 64 << 10;
/// Header buffer of the receiver.
const READ_BUFFER: usize = 64 << 10;

/// Who to tell when a part finishes.
#[derive(Debug)]
pub enum PartDone {
    /// The part is a whole request.
    Whole {
        /// The request's batch.
        sink: CompletionSink,
        /// The request's index in it.
        index: usize,
    },
    /// The part is one stripe of a larger request.
    Join(Arc<RequestJoin>),
}

/// One frame's worth of a request.
#[derive(Debug)]
pub struct Part {
    /// Direction.
    pub op: OpCode,
    /// Local address.
    pub local: u64,
    /// Remote address.
    pub remote: u64,
    /// Bytes.
    pub len: u64,
    /// The CUDA device the local range is on (`None`: host memory). Device bytes are staged
    /// through host memory on this side.
    pub device: Option<u32>,
    /// Deadline.
    pub deadline: Instant,
    /// Completion target.
    pub done: PartDone,
}

/// Completions of whole requests, grouped per batch and reported under one lock each.
#[derive(Default)]
struct Completions {
    sink: Option<CompletionSink>,
    items: Vec<(usize, TransferStatus)>,
}

impl Completions {
    fn finish(&mut self, part: Part, outcome: PartOutcome) {
        match part.done {
            PartDone::Join(j) => j.part_done(outcome),
            PartDone::Whole { sink, index } => {
                if !self.sink.as_ref().is_some_and(|s| s.same_submission(&sink)) {
                    self.flush();
                    self.sink = Some(sink);
                }
                self.items.push((index, whole_status(outcome, part.len)));
            }
        }
    }

    fn flush(&mut self) {
        if let Some(sink) = &self.sink {
            sink.finish_many(self.items.drain(..));
        }
    }
}

fn outcome_of(reason: &CloseReason, peer: SocketAddr) -> PartOutcome {
    match reason {
        CloseReason::TimedOut => PartOutcome::TimedOut,
        CloseReason::Failed(r) => PartOutcome::Failed(format!("connection to {peer} lost: {r}")),
    }
}

/// The writing side: request ids and the gather buffer, held by whichever thread writes.
struct Writer {
    stream: TcpStream,
    next_id: u64,
    out: OutBatch,
}

struct Shared {
    peer: SocketAddr,
    stream: TcpStream,
    inflight: Mutex<InFlight<Part>>,
    writer: Mutex<Writer>,
    /// When the connection was made; the origin of `last_send_ns`.
    opened: Instant,
    /// When parts were last handed to [`Connection::send`], in ns after `opened`.
    last_send_ns: AtomicU64,
    /// Parts queued for the sender thread and not yet in the in-flight table (or failed).
    queued: AtomicUsize,
}

impl Shared {
    fn close(&self, reason: CloseReason) {
        let (reason, parts) = self.inflight.lock().close(reason);
        let _ = self.stream.shutdown(Shutdown::Both);
        let mut c = Completions::default();
        for p in parts {
            c.finish(p, outcome_of(&reason, self.peer));
        }
        c.flush();
    }
}

/// A data connection to one peer.
pub struct Connection {
    shared: Arc<Shared>,
    tx: Option<Sender<Vec<Part>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Connection {
    /// Connects to incarnation `incarnation` of the engine at `peer` (its descriptor's) and
    /// starts the sender and receiver threads.
    pub fn connect(
        peer: SocketAddr,
        incarnation: u64,
        timeout: Duration,
    ) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&peer, timeout)?;
        stream.set_nodelay(true)?;
        // An idle pooled connection to a host that died is found dead before the next submit
        // has to wait out its deadline on it.
        if let Err(e) = crate::listener::watch_peer(&stream) {
            tracing::debug!(%peer, error = %e, "cannot set keepalive on a data connection");
        }
        io::Write::write_all(&mut &stream, &hello(ConnKind::Data, incarnation))?;
        let shared = Arc::new(Shared {
            peer,
            stream: stream.try_clone()?,
            inflight: Mutex::new(InFlight::default()),
            writer: Mutex::new(Writer {
                stream: stream.try_clone()?,
                next_id: 0,
                out: OutBatch::default(),
            }),
            opened: Instant::now(),
            last_send_ns: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let s = shared.clone();
        let sender = std::thread::Builder::new()
            .name(format!("te-tcp-tx-{peer}"))
            .spawn(move || send_loop(&s, rx))?;
        let s = shared.clone();
        let receiver = std::thread::Builder::new()
            .name(format!("te-tcp-rx-{peer}"))
            .spawn(move || receive_loop(&s, stream));
        let receiver = match receiver {
            Ok(r) => r,
            Err(e) => {
                shared.close(CloseReason::Failed("no receiver thread".into()));
                drop(tx);
                let _ = sender.join();
                return Err(e);
            }
        };
        Ok(Connection {
            shared,
            tx: Some(tx),
            threads: vec![sender, receiver],
        })
    }

    /// Queues parts; gives them back if the connection is gone.
    pub fn send(&self, parts: Vec<Part>) -> Result<(), Vec<Part>> {
        let since_open = self.shared.opened.elapsed().as_nanos();
        self.shared.last_send_ns.fetch_max(
            u64::try_from(since_open).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // A batch's READ frames are written here when no other thread is writing: header-only
        // frames are small, so the socket takes them without blocking unless the peer stopped
        // reading, which the deadline watchdog ends by closing the connection. A lone small
        // request goes through the sender thread, which shares one `writev` among concurrent
        // submitters.
        let batchy = parts.len() > 1 || parts.iter().any(|p| p.len >= INLINE_MIN_BYTES);
        if self.tx.is_some()
            && batchy
            && parts.len() <= MAX_PARTS_PER_WRITE
            && parts.iter().all(|p| p.op == OpCode::Read)
        {
            if let Some(mut w) = self.shared.writer.try_lock() {
                write_parts(&self.shared, &mut w, parts);
                return Ok(());
            }
        }
        let Some(tx) = &self.tx else {
            return Err(parts);
        };
        let n = parts.len();
        self.shared.queued.fetch_add(n, Ordering::AcqRel);
        tx.send(parts).map_err(|e| {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            e.0
        })
    }

    /// Since when the connection has carried nothing, or `None` while parts are queued, in
    /// flight or being received. A caller that holds the only handle to a connection (so no
    /// submit can start on it) may close it once this is `Some` without failing anything.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.shared.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.shared.inflight.lock().is_quiet() {
            return None;
        }
        let ns = self.shared.last_send_ns.load(Ordering::Relaxed);
        Some(self.shared.opened + Duration::from_nanos(ns))
    }

    /// Whether its socket probes the peer while idle (TCP keepalive).
    #[cfg(test)]
    pub(crate) fn probes_peer(&self) -> bool {
        socket2::SockRef::from(&self.shared.stream)
            .keepalive()
            .unwrap_or(false)
    }

    /// Whether the connection still works.
    pub fn is_alive(&self) -> bool {
        self.shared.inflight.lock().closed().is_none()
    }

    /// Closes the connection, timing out its parts, if one is past its deadline at `now`.
    pub fn check_deadline(&self, now: Instant) {
        let expired = self.shared.inflight.lock().expired(now);
        if expired {
            tracing::warn!(peer = %self.shared.peer, "request past its deadline; closing connection");
            self.shared.close(CloseReason::TimedOut);
        }
    }

    /// Fails `parts` as this connection's failure would.
    pub fn fail(&self, parts: Vec<Part>) {
        let reason = self
            .shared
            .inflight
            .lock()
            .closed()
            .cloned()
            .unwrap_or_else(|| CloseReason::Failed("connection closed".into()));
        let mut c = Completions::default();
        for p in parts {
            c.finish(p, outcome_of(&reason, self.shared.peer));
        }
        c.flush();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared
            .close(CloseReason::Failed("engine closed the connection".into()));
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn send_loop(shared: &Shared, rx: Receiver<Vec<Part>>) {
    while let Ok(mut parts) = rx.recv() {
        while parts.len() < MAX_PARTS_PER_WRITE {
            match rx.try_recv() {
                Ok(more) => parts.extend(more),
                Err(_) => break,
            }
        }
        let n = parts.len();
        write_parts(shared, &mut shared.writer.lock(), parts);
        // Only now are they in the table (or finished), so the connection counts as busy
        // without a gap.
        shared.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Copies the payloads of WRITE parts from GPU memory into host staging (writev cannot read
/// device memory), adjacent ranges with one copy and one driver wait per device; parts whose copy
/// failed are finished as failed. Returns the parts to send, each with its staged payload if it
/// has one.
fn stage_gpu_writes(parts: Vec<Part>) -> (Vec<Part>, Vec<Option<Staged>>) {
    let (gpu_writes, mut ready): (Vec<Part>, Vec<Part>) = parts
        .into_iter()
        .partition(|p| p.op == OpCode::Write && p.device.is_some());
    let mut staged: Vec<Option<Staged>> = ready.iter().map(|_| None).collect();
    if gpu_writes.is_empty() {
        return (ready, staged);
    }
    let ranges: Vec<(u32, u64, usize)> = gpu_writes
        .iter()
        .filter_map(|p| p.device.map(|d| (d, p.local, p.len as usize)))
        .collect();
    // SAFETY: the engine checked each local range lies in memory registered on its device,
    // which stays valid while registered; it is only read.
    let copies = unsafe { stage_reads(&ranges) };
    let mut failed = Completions::default();
    for (p, copy) in gpu_writes.into_iter().zip(copies) {
        match copy {
            Ok(bytes) => {
                ready.push(p);
                staged.push(Some(bytes));
            }
            Err(e) => failed.finish(p, PartOutcome::Failed(format!("staging GPU memory: {e}"))),
        }
    }
    failed.flush();
    (ready, staged)
}

/// Records `parts` in the in-flight table and writes their frames with one `writev`.
fn write_parts(shared: &Shared, w: &mut Writer, parts: Vec<Part>) {
    let Writer {
        stream,
        next_id,
        out,
    } = w;
    let (parts, staged) = stage_gpu_writes(parts);
    let mut ids = Vec::with_capacity(parts.len());
    for (p, staged) in parts.iter().zip(staged) {
        *next_id += 1;
        ids.push(*next_id);
        let kind = match p.op {
            OpCode::Read => FrameKind::ReadReq,
            OpCode::Write => FrameKind::WriteReq,
        };
        out.header(&Header {
            kind,
            aux: 0,
            id: *next_id,
            addr: p.remote,
            len: p.len,
        });
        if let Some(bytes) = staged {
            out.staged_slice(bytes);
        } else if p.op == OpCode::Write {
            // SAFETY: the engine checked the local range lies in registered host memory,
            // which stays valid while registered; it is only read.
            unsafe { out.raw(p.local as *const u8, p.len as usize) };
        }
    }
    let refused = {
        let mut table = shared.inflight.lock();
        let mut refused = Vec::new();
        for (id, p) in ids.into_iter().zip(parts) {
            if let Err((p, _)) = table.insert(id, p.deadline, p) {
                refused.push(p);
            }
        }
        refused
    };
    if !refused.is_empty() {
        // The table closes all at once, so nothing of this group was recorded.
        *out = OutBatch::default();
        let reason = shared
            .inflight
            .lock()
            .closed()
            .cloned()
            .unwrap_or(CloseReason::TimedOut);
        let mut c = Completions::default();
        for p in refused {
            c.finish(p, outcome_of(&reason, shared.peer));
        }
        c.flush();
        return;
    }
    if let Err(e) = out.write_to(stream) {
        shared.close(CloseReason::Failed(format!("send: {e}")));
    }
}

fn receive_loop(shared: &Shared, stream: TcpStream) {
    let mut reader = FrameReader::new(stream, READ_BUFFER);
    let mut done = Completions::default();
    // Answers received for GPU memory, copied up together (one driver wait per device) before
    // their parts are reported.
    let mut uploads = Uploads::default();
    let reason = loop {
        if !reader.header_buffered() {
            uploads.flush_idle(&mut |p, o| done.finish(p, o));
            done.flush();
        }
        let raw = match reader.read_header() {
            Ok(Some(raw)) => raw,
            Ok(None) => break "peer closed the connection".to_string(),
            Err(e) => break format!("receive: {e}"),
        };
        let h = match Header::decode(&raw) {
            Ok(h) => h,
            Err(e) => break format!("malformed answer: {e}"),
        };
        let payload = match h.kind {
            FrameKind::ReadResp => h.len,
            FrameKind::Error => u64::from(h.aux),
            _ => 0,
        };
        // A payload not yet buffered may stall: keep its deadline watched while reading it.
        let watch = payload > reader.buffered() as u64;
        let taken = {
            let mut table = shared.inflight.lock();
            if watch {
                table.remove_receiving(h.id)
            } else {
                table.remove(h.id)
            }
        };
        let Some(part) = taken else {
            break format!("answer for unknown request id {}", h.id);
        };
        let matches = h.addr == part.remote
            && match h.kind {
                FrameKind::ReadResp => part.op == OpCode::Read && h.len == part.len,
                FrameKind::WriteResp => part.op == OpCode::Write,
                FrameKind::Error => true,
                _ => false,
            };
        if !matches {
            done.finish(part, PartOutcome::Failed("malformed answer".into()));
            break format!("answer {h:?} does not match its request");
        }
        match h.kind {
            FrameKind::ReadResp => {
                let mut slot = part
                    .device
                    .map(|d| uploads.slot(d, part.len as usize, &mut |p, o| done.finish(p, o)));
                let dst = if let Some(slot) = slot.as_mut() {
                    match slot {
                        Slot::Arena(at) => uploads.arena_bytes(*at, part.len as usize),
                        Slot::Own(st) => &mut st[..],
                    }
                } else {
                    // SAFETY: the engine checked the local range lies in registered host
                    // memory, which stays valid and writable while registered; only this
                    // thread writes it for this part, and only before reporting the part
                    // finished.
                    unsafe {
                        std::slice::from_raw_parts_mut(part.local as *mut u8, part.len as usize)
                    }
                };
                if let Err(e) = reader.read_payload(dst) {
                    let closed = shared.inflight.lock().closed().cloned();
                    let outcome = closed.map_or_else(
                        || PartOutcome::Failed(format!("receive: {e}")),
                        |r| outcome_of(&r, shared.peer),
                    );
                    done.finish(part, outcome);
                    break format!("receive: {e}");
                }
                if watch {
                    shared.inflight.lock().received();
                }
                match slot {
                    Some(slot) => uploads.landed(part, slot),
                    None => done.finish(part, PartOutcome::Done),
                }
            }
            FrameKind::Error => {
                let mut msg = vec![0u8; h.aux as usize];
                if let Err(e) = reader.read_payload(&mut msg) {
                    done.finish(part, PartOutcome::Failed(format!("receive: {e}")));
                    break format!("receive: {e}");
                }
                if watch {
                    shared.inflight.lock().received();
                }
                let msg = String::from_utf8_lossy(&msg).into_owned();
                done.finish(part, PartOutcome::Failed(format!("target refused: {msg}")));
            }
            _ => done.finish(part, PartOutcome::Done),
        }
    };
    uploads.flush_idle(&mut |p, o| done.finish(p, o));
    done.flush();
    tracing::debug!(peer = %shared.peer, %reason, "data connection ended");
    shared.close(CloseReason::Failed(reason));
}
