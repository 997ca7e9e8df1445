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

/// GPU-bound answers received and not yet copied up.
#[derive(Default)]
pub struct Uploads {
    arena: Option<gpu::Staging>,
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

impl Uploads {
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
            self.arena = Some(gpu::Staging::new(device, ARENA_BYTES));
        }
        let at = self.used;
        self.used += len;
        Slot::Arena(at)
    }

    /// The arena bytes of a slot, to receive into.
    pub fn arena_bytes(&mut self, offset: usize, len: usize) -> &mut [u8] {
        match self.arena.as_mut() {
            Some(a) => &mut a[offset..offset + len],
            None => &mut [],
        }
    }

    /// Records that `part`'s payload has landed in its slot.
    pub fn landed(&mut self, part: Part, slot: Slot) {
        match slot {
            Slot::Arena(offset) => self.in_arena.push((part, offset)),
            Slot::Own(st) => self.own.push((part, st)),
        }
    }

    /// Copies everything received up to its devices (one driver wait) and finishes its parts.
    pub fn flush(&mut self, done: &mut impl FnMut(Part, PartOutcome)) {
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
        let mut writes: Vec<(u32, u64, &[u8])> = merged
            .iter()
            .map(|r| (r.device, r.dst, &arena[r.offset..r.offset + r.len]))
            .collect();
        writes.extend(
            self.own
                .iter()
                .map(|(p, st)| (p.device.unwrap_or(0), p.local, &st[..])),
        );
        // SAFETY: the engine checked each part's local range lies in memory registered on its
        // device, which stays valid and writable while registered; runs join only parts whose
        // ranges continue each other; only this thread writes them, before finishing them.
        let results = unsafe { gpu::write_device_many(&writes) };
        let mut results = results.into_iter();
        let mut arena_parts = std::mem::take(&mut self.in_arena).into_iter();
        for r in &merged {
            let outcome = results
                .next()
                .unwrap_or_else(|| Err("no copy was made".into()));
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
        self.used = 0;
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

/// Copies each `(device, address, len)` into host memory, one copy per run of ranges that
/// continue each other and one driver wait per device for all; one result per input, in order.
///
/// # Safety
/// Every range lies in a region registered on its device, kept valid while registered; it is
/// only read.
pub unsafe fn stage_reads(reads: &[(u32, u64, usize)]) -> Vec<Result<Staged, String>> {
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
    let staged = unsafe { gpu::read_device_many(&ranges) };
    let mut out = Vec::with_capacity(reads.len());
    for (r, st) in merged.iter().zip(staged) {
        match st {
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
