//! Request merging: transfers whose remote and local ranges are both adjacent become one.
//!
//! A batch of small objects placed back to back in one segment, read into (or written from)
//! back-to-back local memory, reaches the engine as a handful of large requests instead of
//! thousands of small ones. The function is pure: it sees only addresses and lengths, and
//! returns, beside the merged list, which merged request carries each input piece so that a
//! merged request's outcome can be handed back to every piece inside it.

/// One piece of a transfer before merging: `len` bytes between local memory and a range in
/// the segment named by `target` (any comparable segment handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<T> {
    /// The segment the remote range lives in.
    pub target: T,
    /// Local address (inside registered memory).
    pub local_addr: u64,
    /// Address in the target segment.
    pub remote_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Merged requests and, for each input piece, the index of the merged request holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged<T> {
    /// Requests to hand to the engine.
    pub requests: Vec<Piece<T>>,
    /// `owner[i]` is the index in `requests` that covers input piece `i`.
    pub owner: Vec<usize>,
}

/// Local scratch memory a merged READ may also fill: two reads whose remote and local ranges
/// are separated by the same gap of at most `max_gap` bytes become one read covering the gap,
/// when the local gap lies inside `[lo, hi)` (memory the caller owns and discards, such as
/// its staging lease). Never used for writes: a write across a gap would overwrite bytes the
/// caller does not own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    /// Largest gap worth reading across (about what one extra request costs in bytes).
    pub max_gap: u64,
    /// First byte of the scratch range.
    pub lo: u64,
    /// One past its last byte.
    pub hi: u64,
}

/// Merges pieces whose remote ranges (same target) and local ranges are both contiguous,
/// never building a request longer than `max_len` (a single piece longer than that stays
/// as it is). Zero-length pieces get their own empty request so that every input has an owner.
pub fn merge_pieces<T: Copy + Ord>(pieces: &[Piece<T>], max_len: u64) -> Merged<T> {
    merge_pieces_with(pieces, max_len, None)
}

/// [`merge_pieces`], also reading across small gaps into `scratch` (reads only).
pub fn merge_pieces_with<T: Copy + Ord>(
    pieces: &[Piece<T>],
    max_len: u64,
    scratch: Option<Scratch>,
) -> Merged<T> {
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|&i| {
        (
            pieces[i].target,
            pieces[i].remote_addr,
            pieces[i].local_addr,
        )
    });
    let mut requests: Vec<Piece<T>> = Vec::new();
    let mut owner = vec![0usize; pieces.len()];
    for i in order {
        let p = pieces[i];
        if let Some(last) = requests.last_mut() {
            let gap = gap_between(last, &p, scratch);
            let joins = p.len > 0
                && last.len > 0
                && last.target == p.target
                && gap.is_some()
                && last
                    .len
                    .saturating_add(p.len)
                    .saturating_add(gap.unwrap_or(0))
                    <= max_len;
            if let (true, Some(gap)) = (joins, gap) {
                last.len += gap + p.len;
                owner[i] = requests.len() - 1;
                continue;
            }
        }
        owner[i] = requests.len();
        requests.push(p);
    }
    Merged { requests, owner }
}

/// The gap `p` may be joined to `last` across: 0 when both ranges continue exactly, a small
/// equal gap when both sides skip the same bytes and the local ones are scratch; else `None`.
fn gap_between<T>(last: &Piece<T>, p: &Piece<T>, scratch: Option<Scratch>) -> Option<u64> {
    let remote_end = last.remote_addr.checked_add(last.len)?;
    let local_end = last.local_addr.checked_add(last.len)?;
    let gap = p.remote_addr.checked_sub(remote_end)?;
    if p.local_addr.checked_sub(local_end)? != gap {
        return None;
    }
    if gap == 0 {
        return Some(0);
    }
    let s = scratch?;
    (gap <= s.max_gap && local_end >= s.lo && p.local_addr <= s.hi).then_some(gap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn piece(target: u8, local: u64, remote: u64, len: u64) -> Piece<u8> {
        Piece {
            target,
            local_addr: local,
            remote_addr: remote,
            len,
        }
    }

    #[test]
    fn adjacent_pieces_become_one_request() {
        let pieces = [
            piece(1, 1000, 5000, 10),
            piece(1, 1010, 5010, 20),
            piece(1, 1030, 5030, 5),
        ];
        let m = merge_pieces(&pieces, u64::MAX);
        assert_eq!(m.requests, vec![piece(1, 1000, 5000, 35)]);
        assert_eq!(m.owner, vec![0, 0, 0]);
    }

    #[test]
    fn out_of_order_input_still_merges() {
        let pieces = [piece(1, 1010, 5010, 20), piece(1, 1000, 5000, 10)];
        let m = merge_pieces(&pieces, u64::MAX);
        assert_eq!(m.requests, vec![piece(1, 1000, 5000, 30)]);
    }

    #[test]
    fn local_gap_or_other_segment_keeps_requests_apart() {
        let pieces = [
            piece(1, 1000, 5000, 10),
            piece(1, 1011, 5010, 10),
            piece(2, 1021, 5020, 10),
        ];
        let m = merge_pieces(&pieces, u64::MAX);
        assert_eq!(m.requests.len(), 3);
    }

    #[test]
    fn max_len_caps_a_merged_request() {
        let pieces = [
            piece(1, 0, 0, 10),
            piece(1, 10, 10, 10),
            piece(1, 20, 20, 10),
        ];
        let m = merge_pieces(&pieces, 20);
        assert_eq!(m.requests, vec![piece(1, 0, 0, 20), piece(1, 20, 20, 10)]);
        assert_eq!(m.owner, vec![0, 0, 1]);
    }

    #[test]
    fn reads_merge_across_small_scratch_gaps_only() {
        let scratch = Scratch {
            max_gap: 64,
            lo: 1000,
            hi: 2000,
        };
        // Same 32-byte gap on both sides, inside scratch: one read covering the gap.
        let pieces = [piece(1, 1000, 5000, 32), piece(1, 1064, 5064, 32)];
        let m = merge_pieces_with(&pieces, u64::MAX, Some(scratch));
        assert_eq!(m.requests, vec![piece(1, 1000, 5000, 96)]);
        assert_eq!(m.owner, vec![0, 0]);
        // Without scratch (writes), or with unequal gaps, too large a gap, or a gap outside
        // the scratch range: separate requests.
        assert_eq!(merge_pieces(&pieces, u64::MAX).requests.len(), 2);
        let unequal = [piece(1, 1000, 5000, 32), piece(1, 1096, 5064, 32)];
        assert_eq!(
            merge_pieces_with(&unequal, u64::MAX, Some(scratch))
                .requests
                .len(),
            2
        );
        let far = [piece(1, 1000, 5000, 32), piece(1, 1132, 5132, 32)];
        assert_eq!(
            merge_pieces_with(&far, u64::MAX, Some(scratch))
                .requests
                .len(),
            2
        );
        let outside = [piece(1, 3000, 5000, 32), piece(1, 3064, 5064, 32)];
        assert_eq!(
            merge_pieces_with(&outside, u64::MAX, Some(scratch))
                .requests
                .len(),
            2
        );
    }

    proptest! {
        /// Every input byte is covered exactly by its owner, with the same local/remote pairing,
        /// and merged requests never overlap one another in the remote space of a segment.
        #[test]
        fn merged_requests_cover_exactly_the_pieces(
            raw in prop::collection::vec((0u8..3, 0u64..2, 0u64..2, 0u64..16), 0..40),
            max_len in 1u64..200,
            rotate in 0usize..40,
            use_scratch in any::<bool>(),
        ) {
            // Lay pieces out back to back with occasional one-byte gaps, never overlapping.
            let (mut cur_l, mut cur_r) = (10_000u64, 90_000u64);
            let mut pieces: Vec<Piece<u8>> = raw.iter().map(|&(t, gl, gr, len)| {
                let p = piece(t % 2, cur_l + gl, cur_r + gr, len);
                cur_l += gl + len;
                cur_r += gr + len;
                p
            }).collect();
            if !pieces.is_empty() {
                let k = rotate % pieces.len();
                pieces.rotate_left(k);
            }
            let scratch = use_scratch.then_some(Scratch { max_gap: 2, lo: 10_000, hi: 10_000 + 40 * 20 });
            let m = merge_pieces_with(&pieces, max_len, scratch);
            prop_assert_eq!(m.owner.len(), pieces.len());
            for (i, p) in pieces.iter().enumerate() {
                let r = m.requests[m.owner[i]];
                prop_assert_eq!(r.target, p.target);
                prop_assert!(r.remote_addr <= p.remote_addr);
                prop_assert!(p.remote_addr + p.len <= r.remote_addr + r.len);
                prop_assert_eq!(p.remote_addr - r.remote_addr, p.local_addr - r.local_addr);
            }
            // Without scratch a request's length is the sum of its pieces; with it, the
            // difference is gap bytes, which lie inside the scratch range.
            for (j, r) in m.requests.iter().enumerate() {
                let sum: u64 = (0..pieces.len()).filter(|&i| m.owner[i] == j).map(|i| pieces[i].len).sum();
                match scratch {
                    None => prop_assert_eq!(sum, r.len),
                    Some(s) => {
                        let count = (0..pieces.len()).filter(|&i| m.owner[i] == j).count() as u64;
                        prop_assert!(sum <= r.len && r.len - sum <= s.max_gap * (count - 1));
                        if r.len > sum {
                            prop_assert!(r.local_addr >= s.lo && r.local_addr + r.len <= s.hi);
                        }
                    }
                }
                prop_assert!(r.len <= max_len || (0..pieces.len()).filter(|&i| m.owner[i] == j).count() == 1);
            }
        }
    }
}
