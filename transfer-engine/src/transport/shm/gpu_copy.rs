//! GPU memory to and from a peer's mapping: large batches staged through pinned memory on the
//! copy threads.
//!
//! The driver copies pageable memory (a mapping of a peer's memfd is pageable) through its
//! own staging buffers, at one thread's memcpy rate however many threads call it: on an H200
//! host, 64 × 1 MiB from a peer's pool into GPU memory ran at 5.4-5.8 GB/s with one copy
//! thread or eight, below the TCP transport's 9.2 (which receives into pinned buffers on four
//! connections). Here each copy thread moves its share of a large batch between the mapping
//! and pinned staging with memcpy, 1 MiB rounds through two buffers in turn, and has the
//! driver copy each round in one call while it fills the next: the memcpys run side by side,
//! and the driver's DMA from pinned memory is several times faster than either.

use std::collections::BTreeMap;

use crate::batch::CompletionSink;
use crate::transport::local::{run_device_copies, Copy};
use crate::transport::parallel_copy::{CopyPool, HostCopy};
use crate::transport::tcp::gpu_staging::runs;
use crate::{gpu, Location, TransferStatus};

/// Runs copies with device memory on one side and the mapping on the other, finishing each
/// through `sink`.
///
/// # Safety
/// Both ranges of every copy lie in memory valid (at its location) for the call.
pub(crate) unsafe fn run(copies: Vec<Copy>, sink: &CompletionSink, copier: &CopyPool) {
    if copies.is_empty() {
        return;
    }
    let plain: Vec<HostCopy> = copies.iter().map(Copy::plain).collect();
    let spread = copier.spread(&plain, |g| {
        let pieces: Vec<(usize, Copy)> = g
            .iter()
            .map(|&(i, p)| {
                let piece = Copy {
                    src: p.src,
                    dst: p.dst,
                    len: p.len,
                    ..copies[i]
                };
                (i, piece)
            })
            .collect();
        // SAFETY: every piece lies inside a copy the caller vouches for; no piece writes
        // bytes another one touches (`plan` checked).
        unsafe { staged(&pieces) }
    });
    let Some(outcomes) = spread else {
        // SAFETY: forwarded.
        return unsafe { run_device_copies(copies, sink) };
    };
    let mut failed: Vec<Option<String>> = copies.iter().map(|_| None).collect();
    for (i, r) in outcomes.into_iter().flatten() {
        if let (Err(e), Some(slot @ None)) = (r, failed.get_mut(i)) {
            *slot = Some(e);
        }
    }
    sink.finish_many(copies.iter().zip(failed).map(|(c, f)| match f {
        None => (c.index, TransferStatus::completed(c.len)),
        Some(e) => (c.index, TransferStatus::failed(e)),
    }));
}

/// Pinned staging each copy thread moves bytes through, per round: the staging pool's
/// pre-warmed size, so that no round waits for memory to be pinned.
const STAGE: usize = 1 << 20;

/// Pieces that move through one staging buffer together: one device, one direction.
#[derive(Debug)]
struct Round {
    device: u32,
    /// Host to device (else device to host).
    up: bool,
    /// `(copy, piece)`, at most [`STAGE`] bytes in all.
    pieces: Vec<(usize, Copy)>,
    bytes: usize,
}

/// Cuts `pieces` into rounds (pieces cut where a round fills up), grouped by device and
/// direction and in order within each, and returns them with the pieces no staging helps
/// (device to device).
fn rounds(pieces: &[(usize, Copy)]) -> (Vec<Round>, Vec<(usize, Copy)>) {
    let mut by_kind: BTreeMap<(u32, bool), Vec<Round>> = BTreeMap::new();
    let mut direct = Vec::new();
    for &(i, c) in pieces {
        let (device, up) = match (c.src_loc, c.dst_loc) {
            (Location::Host, Location::Cuda(d)) => (d, true),
            (Location::Cuda(d), Location::Host) => (d, false),
            _ => {
                direct.push((i, c));
                continue;
            }
        };
        let kind = by_kind.entry((device, up)).or_default();
        let mut at = 0;
        while at < c.len {
            if kind.last().is_none_or(|r| r.bytes == STAGE) {
                kind.push(Round {
                    device,
                    up,
                    pieces: Vec::new(),
                    bytes: 0,
                });
            }
            let Some(r) = kind.last_mut() else { break };
            let len = ((STAGE - r.bytes) as u64).min(c.len - at);
            r.pieces.push((
                i,
                Copy {
                    src: c.src + at,
                    dst: c.dst + at,
                    len,
                    ..c
                },
            ));
            r.bytes += len as usize;
            at += len;
        }
    }
    (by_kind.into_values().flatten().collect(), direct)
}

/// Runs one thread's pieces `(copy, piece)`; one outcome per piece.
///
/// # Safety
/// As for [`run`], for every piece; pieces do not overlap.
unsafe fn staged(pieces: &[(usize, Copy)]) -> Vec<(usize, Result<(), String>)> {
    let mut out = Vec::with_capacity(pieces.len());
    let (rounds, mut direct) = rounds(pieces);
    // Per device and direction: the rounds go through two pinned buffers in turn, so that
    // one round's memcpy overlaps the previous round's DMA.
    for these in rounds.chunk_by(|a, b| (a.device, a.up) == (b.device, b.up)) {
        let device = these[0].device;
        let mut bufs = [
            gpu::Staging::new(device, STAGE),
            gpu::Staging::new(device, STAGE),
        ];
        if !bufs.iter().all(gpu::Staging::is_pinned) {
            // Staging in pageable memory would only add a copy: the driver's, directly.
            direct.extend(these.iter().flat_map(|r| r.pieces.iter().copied()));
            continue;
        }
        let base = bufs.each_mut().map(|b| b.as_mut_ptr() as u64);
        // SAFETY (both closures): each round holds at most STAGE bytes, the size of each
        // buffer; `copy_rounds` runs round k only once round k - 2 (the same buffer's last
        // use) has landed and been spread, and spreads round k only once it has landed; the
        // pieces' ranges are the caller's, valid for the call.
        let fill = |k: usize| unsafe { round_copies(&these[k], base[k % 2]) };
        let spread = |k: usize| unsafe { spread_round(&these[k], base[k % 2]) };
        // SAFETY: the copies `fill` returns lie in the caller's device ranges and the pinned
        // buffers, which live until the end of this iteration, after the call has drained.
        let r = unsafe { gpu::copy_rounds(device, these.len(), fill, spread) };
        out.extend(
            these
                .iter()
                .flat_map(|round| round.pieces.iter().map(|(i, _)| (*i, r.clone()))),
        );
    }
    if !direct.is_empty() {
        let copies: Vec<gpu::GpuCopy> = direct.iter().map(|(_, c)| c.gpu()).collect();
        // SAFETY: the caller vouches for every range; pieces do not overlap.
        let done = unsafe { gpu::copy_many(&copies) };
        out.extend(direct.iter().map(|(i, _)| *i).zip(done));
    }
    out
}

/// The driver copies of one round through the staging buffer at `buf` (STAGE bytes): for an
/// upload, first gathers the pieces' host bytes into it. Device ranges that continue each other
/// make one copy.
///
/// # Safety
/// `buf` is a pinned buffer of STAGE bytes nothing else uses now; the round's host ranges are
/// valid.
unsafe fn round_copies(round: &Round, buf: u64) -> Vec<(u64, u64, usize)> {
    let mut entries = Vec::with_capacity(round.pieces.len());
    let mut at = 0usize;
    for (_, c) in &round.pieces {
        let len = c.len as usize;
        if round.up {
            // SAFETY: the source lies in host memory the caller vouches for; this piece takes
            // its own part of `buf` (a round holds at most STAGE bytes).
            unsafe {
                std::ptr::copy_nonoverlapping(c.src as *const u8, (buf as *mut u8).add(at), len)
            };
        }
        let device_addr = if round.up { c.dst } else { c.src };
        entries.push((round.device, device_addr, at, len));
        at += len;
    }
    runs(&entries, STAGE)
        .iter()
        .map(|r| {
            let host = buf + r.offset as u64;
            if round.up {
                (r.dst, host, r.len)
            } else {
                (host, r.dst, r.len)
            }
        })
        .collect()
}

/// After a download round has landed in `buf`: copies each piece's bytes out to its host
/// destination (nothing for an upload).
///
/// # Safety
/// As for [`round_copies`]; the round's copies into `buf` have landed.
unsafe fn spread_round(round: &Round, buf: u64) {
    if round.up {
        return;
    }
    let mut at = 0usize;
    for (_, c) in &round.pieces {
        let len = c.len as usize;
        // SAFETY: the destination lies in host memory the caller vouches for; the bytes are
        // this piece's part of `buf`, landed.
        unsafe { std::ptr::copy_nonoverlapping((buf as *const u8).add(at), c.dst as *mut u8, len) };
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(src: u64, src_loc: Location, dst: u64, dst_loc: Location, len: u64) -> Copy {
        Copy {
            index: 0,
            src,
            src_loc,
            dst,
            dst_loc,
            len,
        }
    }

    #[test]
    fn rounds_fill_one_staging_buffer_per_device_and_direction() {
        let (h, g0, g1) = (Location::Host, Location::Cuda(0), Location::Cuda(1));
        let pieces = [
            (0, piece(0, h, 1 << 40, g0, (STAGE + STAGE / 2) as u64)),
            (1, piece(1 << 41, g0, 1 << 20, h, 4096)),
            (2, piece(1 << 30, h, 1 << 42, g1, 100)),
            (
                3,
                piece(
                    1 << 31,
                    h,
                    (1 << 40) + (4 << 20),
                    g0,
                    (STAGE / 2 + 1) as u64,
                ),
            ),
            (4, piece(1 << 43, g0, 1 << 44, g1, 8)),
        ];
        let (rounds, direct) = rounds(&pieces);
        assert_eq!(direct.len(), 1);
        assert_eq!(direct[0].0, 4);
        // Every byte of every staged piece once, no round over STAGE, each round one kind.
        let mut moved = [0u64; 4];
        for r in &rounds {
            assert!(
                r.bytes <= STAGE
                    && r.bytes == r.pieces.iter().map(|(_, c)| c.len as usize).sum::<usize>()
            );
            for (i, c) in &r.pieces {
                let whole = pieces[*i].1;
                assert_eq!((c.src - whole.src), (c.dst - whole.dst));
                let kind = match (c.src_loc, c.dst_loc) {
                    (Location::Host, Location::Cuda(d)) => (d, true),
                    (Location::Cuda(d), _) => (d, false),
                    _ => unreachable!(),
                };
                assert_eq!(kind, (r.device, r.up));
                moved[*i] += c.len;
            }
        }
        for i in 0..4 {
            assert_eq!(moved[i], pieces[i].1.len, "piece {i}");
        }
        // The 1.5 STAGE upload fills a round and opens a second one, which the later upload
        // to the same device tops up to exactly STAGE; the rest spills into a third.
        let ups: Vec<usize> = rounds
            .iter()
            .filter(|r| r.up && r.device == 0)
            .map(|r| r.bytes)
            .collect();
        assert_eq!(ups, vec![STAGE, STAGE, 1]);
    }
}
