//! GPU memory to and from a peer's mapping: large batches staged through pinned memory on the
//! copy threads.
//!
//! The driver copies pageable memory (a mapping of a peer's memfd is pageable) through its
//! own staging buffers, at one thread's memcpy rate however many threads call it: on an H200
//! host, 64 × 1 MiB from a peer's pool into GPU memory ran at 5.4-5.8 GB/s with one copy
//! thread or eight, below the TCP transport's 9.2 (which receives into pinned buffers on four
//! connections). Here each copy thread moves its share of a large batch between the mapping
//! and pinned staging with memcpy and has the driver copy the staging in one call: the
//! memcpys run side by side, and the driver's DMA from pinned memory is several times faster
//! than either.

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

/// Cuts `pieces` into rounds (in order, pieces cut where a round fills up), and returns them
/// with the pieces no staging helps (device to device).
fn rounds(pieces: &[(usize, Copy)]) -> (Vec<Round>, Vec<(usize, Copy)>) {
    let mut rounds: Vec<Round> = Vec::new();
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
        let mut at = 0;
        while at < c.len {
            let open = rounds
                .iter()
                .rposition(|r| r.device == device && r.up == up && r.bytes < STAGE);
            let r = match open {
                Some(k) => &mut rounds[k],
                None => {
                    rounds.push(Round {
                        device,
                        up,
                        pieces: Vec::new(),
                        bytes: 0,
                    });
                    rounds.last_mut().expect("just pushed")
                }
            };
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
    (rounds, direct)
}

/// Runs one thread's pieces `(copy, piece)`; one outcome per piece.
///
/// # Safety
/// As for [`run`], for every piece; pieces do not overlap.
unsafe fn staged(pieces: &[(usize, Copy)]) -> Vec<(usize, Result<(), String>)> {
    let mut out = Vec::with_capacity(pieces.len());
    let (rounds, mut direct) = rounds(pieces);
    let mut staging: Vec<(u32, gpu::Staging)> = Vec::new();
    for round in rounds {
        let k = match staging.iter().position(|(d, _)| *d == round.device) {
            Some(k) => k,
            None => {
                staging.push((round.device, gpu::Staging::new(round.device, STAGE)));
                staging.len() - 1
            }
        };
        if !staging[k].1.is_pinned() {
            // Staging in pageable memory would only add a copy: the driver's, directly.
            direct.extend(round.pieces);
            continue;
        }
        // SAFETY: forwarded; the buffer holds STAGE bytes, as many as a round moves at most.
        let r = unsafe { stage_round(round.device, round.up, &round.pieces, &mut staging[k].1) };
        out.extend(round.pieces.iter().map(|(i, _)| (*i, r.clone())));
    }
    if !direct.is_empty() {
        let copies: Vec<gpu::GpuCopy> = direct.iter().map(|(_, c)| c.gpu()).collect();
        // SAFETY: the caller vouches for every range; pieces do not overlap.
        let done = unsafe { gpu::copy_many(&copies) };
        out.extend(direct.iter().map(|(i, _)| *i).zip(done));
    }
    out
}

/// Moves one round: host bytes into `buf` then up to the device (`up`), or device bytes into
/// `buf` then out to host memory; device ranges that continue each other in one driver copy,
/// one driver wait for the round.
///
/// # Safety
/// As for [`staged`]; the round's pieces hold at most `buf.len()` bytes.
unsafe fn stage_round(
    device: u32,
    up: bool,
    round: &[(usize, Copy)],
    buf: &mut gpu::Staging,
) -> Result<(), String> {
    let mut entries = Vec::with_capacity(round.len());
    let mut at = 0usize;
    for (_, c) in round {
        let len = c.len as usize;
        let device_addr = if up { c.dst } else { c.src };
        if up {
            // SAFETY: the source lies in host memory the caller vouches for; this piece
            // takes its own part of `buf`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    c.src as *const u8,
                    buf[at..at + len].as_mut_ptr(),
                    len,
                )
            };
        }
        entries.push((device, device_addr, at, len));
        at += len;
    }
    let base = buf.as_mut_ptr() as u64;
    let copies: Vec<gpu::GpuCopy> = runs(&entries, STAGE)
        .iter()
        .map(|r| {
            let host = base + r.offset as u64;
            let (src, src_loc, dst, dst_loc) = if up {
                (host, Location::Host, r.dst, Location::Cuda(device))
            } else {
                (r.dst, Location::Cuda(device), host, Location::Host)
            };
            gpu::GpuCopy {
                dst,
                dst_loc,
                src,
                src_loc,
                len: r.len,
            }
        })
        .collect();
    // SAFETY: device ranges lie in memory the caller vouches for; the host side of each run is
    // its part of `buf`; runs do not overlap.
    let done = unsafe { gpu::copy_many(&copies) };
    if let Some(Err(e)) = done.into_iter().find(Result::is_err) {
        return Err(e);
    }
    if !up {
        let mut at = 0usize;
        for (_, c) in round {
            let len = c.len as usize;
            // SAFETY: the destination lies in host memory the caller vouches for; the bytes
            // are this piece's part of `buf`.
            unsafe {
                std::ptr::copy_nonoverlapping(buf[at..at + len].as_ptr(), c.dst as *mut u8, len)
            };
            at += len;
        }
    }
    Ok(())
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
