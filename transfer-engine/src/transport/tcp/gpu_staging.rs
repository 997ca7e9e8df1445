//! GPU bytes staged through pinned host memory in runs: payloads whose device ranges continue
//! each other move with one driver copy.
//!
//! - [`Uploads`]: READ answers bound for GPU memory, on the initiating side, are received into
//!   one pinned arena per connection, back to back, and copied up per run.
//! - [`stage_reads`]: device ranges to send (WRITE payloads, answers to peers' READs of
//!   exported GPU memory) are copied down per run into one staging buffer each.
//!
//! One copy per payload cost about 8 µs for 64 KiB payloads on an H200 host (a group of 30
//! such copies waited 240-260 µs, against 67 µs for a 1 MiB copy), which held 64 KiB GPU
//! transfers over TCP at half to two thirds of the host-memory rate. A batch that fills or
//! drains a contiguous GPU buffer (one layer's KV blocks) now costs a few large copies.

use std::sync::Arc;

use crate::gpu;
use crate::transport::slicing::PartOutcome;

use super::connection::Part;

/// Pinned bytes each connection receives GPU-bound answers into; larger answers get a staging
/// buffer of their own.
pub const ARENA_BYTES: usize = 4 << 20;

/// A run of arena bytes copied to one device range: `entries[first..first + count]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Device.
    pub device: u32,
    /// Device address.
    pub dst: u64,
    /// Arena offset.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
    /// First entry of the run.
    pub first: usize,
    /// Entries in the run.
    pub count: usize,
}

/// Groups `(device, device address, host offset, len)` entries, in order, into runs of at
/// most `max_len` bytes (unless one entry is larger) whose host bytes and device ranges both
/// continue each other.
pub fn runs(entries: &[(u32, u64, usize, usize)], max_len: usize) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (i, &(device, dst, offset, len)) in entries.iter().enumerate() {
        if let Some(r) = out.last_mut() {
            if r.device == device
                && r.dst.checked_add(r.len as u64) == Some(dst)
                && r.offset + r.len == offset
                && r.len + len <= max_len
            {
                r.len += len;
                r.count += 1;
                continue;
            }
        }
        out.push(Run {
            device,
            dst,
            offset,
            len,
            first: i,
            count: 1,
        });
    }
    out
}

/// Copies `(device, device address, host bytes)` up; one result per entry, in order. The
/// driver's copy in production, host memory in unit tests.
///
/// # Safety
/// Every destination range is writable memory of its device, used by nobody else meanwhile.
pub type CopyUp = unsafe fn(&[(u32, u64, &[u8])]) -> Vec<Result<(), String>>;

/// GPU-bound answers received and not yet copied up.
pub struct Uploads {
    copy: CopyUp,
    /// Receive arena, taken from the staging pool for a burst and given back when idle.
    arena: Option<gpu::Staging>,
    /// The device the arena was pinned for.
    device: u32,
    /// Parts whose payload is in the arena, with its offset.
    in_arena: Vec<(Part, usize)>,
    used: usize,
    /// Parts too large for the arena, each with its own staging buffer.
    own: Vec<(Part, gpu::Staging)>,
}

/// Where the receiver puts a GPU-bound payload.
pub enum Slot {
    /// In the arena, at this offset.
    Arena(usize),
    /// In a staging buffer of its own.
    Own(gpu::Staging),
}

impl Default for Uploads {
    fn default() -> Self {
        Self::with_copy(gpu::write_device_many)
    }
}

impl Uploads {
    /// Uploads that copy with `copy`.
    pub fn with_copy(copy: CopyUp) -> Self {
        Uploads {
            copy,
            arena: None,
            device: 0,
            in_arena: Vec::new(),
            used: 0,
            own: Vec::new(),
        }
    }

    /// Whether nothing waits to be copied.
    pub fn is_empty(&self) -> bool {
        self.in_arena.is_empty() && self.own.is_empty()
    }

    /// Room for a payload of `len` bytes bound for `device`; copies up (and finishes) what
    /// the arena holds first if it has no room left.
    pub fn slot(
        &mut self,
        device: u32,
        len: usize,
        done: &mut impl FnMut(Part, PartOutcome),
    ) -> Slot {
        if len > ARENA_BYTES {
            return Slot::Own(gpu::Staging::new(device, len));
        }
        if self.used + len > ARENA_BYTES {
            self.flush(done);
        }
        if self.arena.is_none() {
            self.device = device;
        }
        let at = self.used;
        self.used += len;
        Slot::Arena(at)
    }

    /// The arena bytes of a slot, to receive into.
    pub fn arena_bytes(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let device = self.device;
        let arena = self
            .arena
            .get_or_insert_with(|| gpu::Staging::new(device, ARENA_BYTES));
        &mut arena[offset..offset + len]
    }

    /// Records that `part`'s payload has landed in its slot.
    pub fn landed(&mut self, part: Part, slot: Slot) {
        match slot {
            Slot::Arena(offset) => self.in_arena.push((part, offset)),
            Slot::Own(st) => self.own.push((part, st)),
        }
    }

    /// Like [`Self::flush`], then gives the arena back to the staging pool: a connection
    /// holds pinned memory only while answers for GPU memory stream in.
    pub fn flush_idle(&mut self, done: &mut impl FnMut(Part, PartOutcome)) {
        self.flush(done);
        self.arena = None;
    }

    /// Copies everything received up to its devices (one driver wait per device) and
    /// finishes its parts.
    pub fn flush(&mut self, done: &mut impl FnMut(Part, PartOutcome)) {
        self.used = 0;
        if self.is_empty() {
            return;
        }
        let entries: Vec<(u32, u64, usize, usize)> = self
            .in_arena
            .iter()
            .map(|(p, off)| (p.device.unwrap_or(0), p.local, *off, p.len as usize))
            .collect();
        let merged = runs(&entries, ARENA_BYTES);
        let arena: &[u8] = self.arena.as_deref().unwrap_or(&[]);
        // Always found: every recorded offset lies in the arena it was received into.
        let slices: Vec<Option<&[u8]>> = merged
            .iter()
            .map(|r| arena.get(r.offset..r.offset + r.len))
            .collect();
        let mut writes: Vec<(u32, u64, &[u8])> = merged
            .iter()
            .zip(&slices)
            .filter_map(|(r, b)| Some((r.device, r.dst, (*b)?)))
            .collect();
        writes.extend(
            self.own
                .iter()
                .map(|(p, st)| (p.device.unwrap_or(0), p.local, &st[..])),
        );
        // SAFETY: the engine checked each part's local range lies in memory registered on its
        // device, which stays valid and writable while registered; runs join only parts whose
        // ranges continue each other; only this thread writes them, before finishing them.
        let mut results = unsafe { (self.copy)(&writes) }.into_iter();
        let mut arena_parts = std::mem::take(&mut self.in_arena).into_iter();
        for (r, bytes) in merged.iter().zip(&slices) {
            let outcome = match bytes {
                Some(_) => results
                    .next()
                    .unwrap_or_else(|| Err("no copy was made".into())),
                None => Err("received bytes missing from the arena".into()),
            };
            for (part, _) in arena_parts.by_ref().take(r.count) {
                done(part, outcome_of(&outcome));
            }
        }
        for (part, _) in std::mem::take(&mut self.own) {
            let outcome = results
                .next()
                .unwrap_or_else(|| Err("no copy was made".into()));
            done(part, outcome_of(&outcome));
        }
    }
}

/// Most bytes one staging buffer of [`stage_reads`] holds (unless one range is larger): a
/// 1 MiB copy has already left most of the per-copy cost behind, and 1 MiB buffers are the
/// pool's pre-warmed size.
const MAX_STAGED_RUN: usize = 1 << 20;

/// Device bytes copied into host memory: a slice of a run's staging buffer.
pub struct Staged {
    run: Arc<gpu::Staging>,
    offset: usize,
    len: usize,
}

impl Staged {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.run[self.offset..self.offset + self.len]
    }
}

/// Copies `(device, device address, len)` ranges into new staging buffers; one result per
/// range, in order. The driver's copy in production, host memory in unit tests.
///
/// # Safety
/// Every source range is readable memory of its device.
pub type CopyDown = unsafe fn(&[(u32, u64, usize)]) -> Vec<Result<gpu::Staging, String>>;

/// Copies each `(device, address, len)` into host memory, one copy per run of ranges that
/// continue each other and one driver wait per device for all; one result per input, in order.
///
/// # Safety
/// Every range lies in a region registered on its device, kept valid while registered; it is
/// only read.
pub unsafe fn stage_reads(reads: &[(u32, u64, usize)]) -> Vec<Result<Staged, String>> {
    // SAFETY: forwarded.
    unsafe { stage_reads_with(reads, gpu::read_device_many) }
}

/// [`stage_reads`] with the copy given.
///
/// # Safety
/// As for [`stage_reads`].
pub unsafe fn stage_reads_with(
    reads: &[(u32, u64, usize)],
    copy: CopyDown,
) -> Vec<Result<Staged, String>> {
    let mut at = 0;
    let entries: Vec<(u32, u64, usize, usize)> = reads
        .iter()
        .map(|&(device, src, len)| {
            let e = (device, src, at, len);
            at += len;
            e
        })
        .collect();
    let merged = runs(&entries, MAX_STAGED_RUN);
    let ranges: Vec<(u32, u64, usize)> = merged.iter().map(|r| (r.device, r.dst, r.len)).collect();
    // SAFETY: forwarded; each run covers ranges the caller vouches for.
    let staged = unsafe { copy(&ranges) };
    let mut staged = staged.into_iter();
    let mut out = Vec::with_capacity(reads.len());
    for r in &merged {
        match staged
            .next()
            .unwrap_or_else(|| Err("no copy was made".into()))
        {
            Ok(st) => {
                let run = Arc::new(st);
                for &(_, _, offset, len) in &entries[r.first..r.first + r.count] {
                    out.push(Ok(Staged {
                        run: run.clone(),
                        offset: offset - r.offset,
                        len,
                    }));
                }
            }
            Err(e) => out.extend((0..r.count).map(|_| Err(e.clone()))),
        }
    }
    out
}

fn outcome_of(r: &Result<(), String>) -> PartOutcome {
    match r {
        Ok(()) => PartOutcome::Done,
        Err(e) => PartOutcome::Failed(format!("copying into GPU memory: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::cell::Cell;
    use std::sync::Arc;
    use std::time::Instant;

    use crate::batch::{BatchTable, CompletionSink};
    use crate::transport::tcp::connection::PartDone;
    use crate::OpCode;

    thread_local! {
        /// A device address whose run the test copies fail.
        static POISON: Cell<u64> = const { Cell::new(u64::MAX) };
    }

    /// "Device" memory is host memory here: copies land at the destination address.
    unsafe fn host_copy_up(writes: &[(u32, u64, &[u8])]) -> Vec<Result<(), String>> {
        writes
            .iter()
            .map(|&(_, dst, bytes)| {
                if dst == POISON.get() {
                    return Err("poisoned".into());
                }
                // SAFETY: the tests pass destinations inside their own live buffers.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, bytes.len())
                };
                Ok(())
            })
            .collect()
    }

    unsafe fn host_copy_down(reads: &[(u32, u64, usize)]) -> Vec<Result<gpu::Staging, String>> {
        reads
            .iter()
            .map(|&(d, src, len)| {
                if src == POISON.get() {
                    return Err("poisoned".into());
                }
                let mut st = gpu::Staging::new(d, len);
                // SAFETY: the tests pass sources inside their own live buffers.
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, st.as_mut_ptr(), len) };
                Ok(st)
            })
            .collect()
    }

    fn sink() -> CompletionSink {
        let t = BatchTable::default();
        let b = t.get(t.allocate(1).unwrap()).unwrap();
        CompletionSink::new(b, 0, 1)
    }

    fn part(local: u64, len: usize, index: usize, sink: &CompletionSink) -> Part {
        Part {
            op: OpCode::Read,
            local,
            remote: 0,
            len: len as u64,
            device: Some(0),
            deadline: Instant::now(),
            done: PartDone::Whole {
                sink: sink.clone(),
                index,
            },
        }
    }

    /// Receives `pieces` (offset in `dst`, len) as answers, then flushes; returns each part's
    /// outcome by index (None: never finished) and how many times each was finished.
    fn receive(dst: &mut [u8], pieces: &[(usize, usize)]) -> Vec<Vec<PartOutcome>> {
        let sink = sink();
        let base = dst.as_mut_ptr() as u64;
        let mut finished: Vec<Vec<PartOutcome>> = pieces.iter().map(|_| Vec::new()).collect();
        let mut index_of = std::collections::HashMap::new();
        for (i, &(off, _)) in pieces.iter().enumerate() {
            index_of.insert(base + off as u64, i);
        }
        let mut done = |p: Part, o: PartOutcome| finished[index_of[&p.local]].push(o);
        let mut up = Uploads::with_copy(host_copy_up);
        for (i, &(off, len)) in pieces.iter().enumerate() {
            let p = part(base + off as u64, len, i, &sink);
            let mut slot = up.slot(0, len, &mut done);
            // The "network" payload of piece i: its index repeated.
            let bytes = match &mut slot {
                Slot::Arena(at) => up.arena_bytes(*at, len),
                Slot::Own(st) => &mut st[..],
            };
            bytes.fill(i as u8);
            up.landed(p, slot);
        }
        up.flush_idle(&mut done);
        assert!(up.is_empty());
        finished
    }

    #[test]
    fn uploads_fill_refill_and_land_every_byte_once() {
        let k = 64 << 10;
        // Adjacent pieces for more than two arenas, a gap, and one piece above the arena.
        let mut pieces = Vec::new();
        let mut at = 0;
        for i in 0..150 {
            let len = if i % 10 == 9 { 1 + i * 37 } else { k };
            pieces.push((at, len));
            at += len + if i == 70 { 4096 } else { 0 };
        }
        pieces.push((at, ARENA_BYTES + 5));
        at += ARENA_BYTES + 5;
        let mut dst = vec![0xeeu8; at];
        let finished = receive(&mut dst, &pieces);
        for (i, f) in finished.iter().enumerate() {
            assert_eq!(f, &vec![PartOutcome::Done], "piece {i} finished {f:?}");
            let (off, len) = pieces[i];
            assert!(
                dst[off..off + len].iter().all(|&b| b == i as u8),
                "bytes of piece {i}"
            );
        }
    }

    #[test]
    fn a_failed_copy_fails_only_its_run() {
        let k = 64 << 10;
        // Two runs (a gap between pieces 2 and 3); the copy of the second one fails.
        let pieces = [(0, k), (k, k), (2 * k, k), (4 * k, k), (5 * k, k)];
        let mut dst = vec![0u8; 6 * k];
        POISON.set(dst.as_ptr() as u64 + 4 * k as u64);
        let finished = receive(&mut dst, &pieces);
        POISON.set(u64::MAX);
        for (i, f) in finished.iter().enumerate() {
            assert_eq!(f.len(), 1, "piece {i} finished once");
            assert_eq!(matches!(f[0], PartOutcome::Done), i < 3, "piece {i}: {f:?}");
        }
    }

    #[test]
    fn staged_reads_map_runs_back_to_their_inputs() {
        let src: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        let base = src.as_ptr() as u64;
        // Adjacent ranges (merged up to the run cap), a jump back, and a poisoned run.
        let reads: Vec<(u32, u64, usize)> = vec![
            (0, base, 1000),
            (0, base + 1000, 300_000),
            (0, base + 301_000, 900_000), // over the 1 MiB cap: a new run
            (0, base + 7, 10),            // goes backwards: a new run
            (0, base + 2_000_000, 5),     // poisoned
            (0, base + 2_000_005, 5),     // continues the poisoned run
        ];
        POISON.set(base + 2_000_000);
        // SAFETY: every range lies in `src`, alive for the call.
        let out = unsafe { stage_reads_with(&reads, host_copy_down) };
        POISON.set(u64::MAX);
        assert_eq!(out.len(), reads.len());
        for (i, (&(_, a, len), r)) in reads.iter().zip(&out).enumerate() {
            let off = (a - base) as usize;
            match r {
                Ok(st) => {
                    assert!(i < 4, "read {i} should have failed");
                    assert_eq!(st.bytes(), &src[off..off + len], "bytes of read {i}");
                }
                Err(_) => assert!(i >= 4, "read {i} failed"),
            }
        }
        let runs_of = |i: usize| match &out[i] {
            Ok(st) => Arc::as_ptr(&st.run) as usize,
            Err(_) => 0,
        };
        assert_eq!(
            runs_of(0),
            runs_of(1),
            "adjacent reads share a staging buffer"
        );
        assert_ne!(runs_of(1), runs_of(2), "the run cap splits");
    }

    #[test]
    fn adjacent_destinations_and_offsets_merge() {
        let k = 64 << 10;
        let e = [
            (0, 0x1000_0000, 0, k),
            (0, 0x1000_0000 + k as u64, k, k),
            (0, 0x1000_0000 + 2 * k as u64, 2 * k, k),
        ];
        assert_eq!(
            runs(&e, usize::MAX),
            vec![Run {
                device: 0,
                dst: 0x1000_0000,
                offset: 0,
                len: 3 * k,
                first: 0,
                count: 3
            }]
        );
    }

    #[test]
    fn gaps_other_devices_and_reordering_split_runs() {
        let e = [
            (0, 100, 0, 10),
            (0, 110, 10, 10), // continues
            (0, 130, 20, 10), // gap in the destination
            (1, 140, 30, 10), // another device
            (1, 130, 40, 10), // destination goes backwards
            (1, 140, 60, 10), // arena gap
        ];
        let r = runs(&e, usize::MAX);
        let shape: Vec<(usize, usize, usize)> =
            r.iter().map(|r| (r.first, r.count, r.len)).collect();
        assert_eq!(
            shape,
            vec![(0, 2, 20), (2, 1, 10), (3, 1, 10), (4, 1, 10), (5, 1, 10)]
        );
    }

    #[test]
    fn runs_stop_at_the_size_cap() {
        let e = [(0, 0, 0, 4), (0, 4, 4, 4), (0, 8, 8, 4), (0, 12, 12, 20)];
        let shape: Vec<(usize, usize)> = runs(&e, 8).iter().map(|r| (r.first, r.count)).collect();
        assert_eq!(shape, vec![(0, 2), (2, 1), (3, 1)]);
    }

    #[test]
    fn no_overflow_at_the_top_of_the_address_space() {
        let e = [(0, u64::MAX - 9, 0, 10), (0, 0, 10, 10)];
        assert_eq!(runs(&e, usize::MAX).len(), 2);
    }
}
