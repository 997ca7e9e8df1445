//! Slice planning: how one request is cut into work requests.
//!
//! A work request moves bytes between one local memory region (MR) and one remote MR, so a
//! request is cut at the slice size and again wherever either side crosses from one MR to the
//! next (regions larger than the device's maximum MR size are registered as several MRs). Pure
//! code: the MR layouts come in as sorted [`KeySpan`]s.

/// One registered MR as seen for planning: `[start, end)` and the key a work request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpan {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// lkey (local side) or rkey (remote side).
    pub key: u32,
}

/// One planned work request, relative to the request it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedSlice {
    /// Offset of the slice inside the request.
    pub offset: u64,
    /// Length in bytes (> 0).
    pub len: u32,
    /// Key of the local MR holding the slice.
    pub lkey: u32,
    /// Key of the remote MR holding the slice.
    pub rkey: u32,
}

/// The span of `spans` (sorted, non-overlapping) holding `addr`.
fn span_at(spans: &[KeySpan], addr: u64) -> Option<&KeySpan> {
    let idx = spans.partition_point(|s| s.start <= addr);
    spans.get(idx.checked_sub(1)?).filter(|s| addr < s.end)
}

/// Cuts `len` bytes between `local` and `remote` into slices of at most `max_slice` bytes that
/// never cross an MR boundary on either side. Fails when some byte of either range has no MR.
pub fn plan_slices(
    local: u64,
    remote: u64,
    len: u64,
    max_slice: u32,
    local_spans: &[KeySpan],
    remote_spans: &[KeySpan],
) -> Result<Vec<PlannedSlice>, String> {
    let max_slice = u64::from(max_slice.max(1));
    let mut out = Vec::with_capacity(len.div_ceil(max_slice) as usize);
    let mut offset = 0u64;
    while offset < len {
        let la = local
            .checked_add(offset)
            .ok_or("local range wraps the address space")?;
        let ra = remote
            .checked_add(offset)
            .ok_or("remote range wraps the address space")?;
        let l = span_at(local_spans, la)
            .ok_or_else(|| format!("local address {la:#x} is not in an RDMA-registered region"))?;
        let r = span_at(remote_spans, ra).ok_or_else(|| {
            format!("remote address {ra:#x} is not in a region the target registered for RDMA")
        })?;
        let n = (len - offset)
            .min(max_slice)
            .min(l.end - la)
            .min(r.end - ra);
        out.push(PlannedSlice {
            offset,
            len: n as u32,
            lkey: l.key,
            rkey: r.key,
        });
        offset += n;
    }
    Ok(out)
}

/// Cuts `[addr, addr + len)` into consecutive pieces of at most `max` bytes (MR registration
/// of regions larger than the device's maximum MR size).
pub fn mr_chunks(addr: u64, len: u64, max: u64) -> Vec<(u64, u64)> {
    let max = max.max(1);
    (0..len.div_ceil(max))
        .map(|i| {
            let off = i * max;
            (addr + off, max.min(len - off))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spans(start: u64, sizes: &[u64], key0: u32) -> Vec<KeySpan> {
        let mut at = start;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let k = KeySpan {
                    start: at,
                    end: at + s,
                    key: key0 + i as u32,
                };
                at += s;
                k
            })
            .collect()
    }

    #[test]
    fn cuts_at_slice_size_and_both_mr_boundaries() {
        let local = spans(1000, &[100, 100], 10);
        let remote = spans(5000, &[30, 500], 20);
        let p = plan_slices(1000, 5000, 200, 64, &local, &remote).unwrap();
        let got: Vec<_> = p
            .iter()
            .map(|s| (s.offset, s.len, s.lkey, s.rkey))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 30, 10, 20),
                (30, 64, 10, 21),
                (94, 6, 10, 21),
                (100, 64, 11, 21),
                (164, 36, 11, 21)
            ]
        );
    }

    #[test]
    fn missing_mr_is_an_error_naming_the_side() {
        let local = spans(1000, &[100], 1);
        let remote = spans(5000, &[50], 2);
        let e = plan_slices(1000, 5000, 60, 64, &local, &remote).unwrap_err();
        assert!(e.contains("remote address 0x13ba"), "{e}");
        let e = plan_slices(900, 5000, 10, 64, &local, &remote).unwrap_err();
        assert!(e.contains("local address"), "{e}");
        assert!(plan_slices(1000, 5000, 0, 64, &local, &remote)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn mr_chunks_cover_region() {
        assert_eq!(mr_chunks(10, 25, 10), vec![(10, 10), (20, 10), (30, 5)]);
        assert_eq!(mr_chunks(10, 5, u64::MAX), vec![(10, 5)]);
    }

    proptest! {
        #[test]
        fn slices_tile_the_request_within_mrs(
            lsizes in prop::collection::vec(1u64..5000, 1..6),
            rsizes in prop::collection::vec(1u64..5000, 1..6),
            max in 1u32..3000,
            lo in 0u64..1000,
            ro in 0u64..1000,
            want in 1u64..20_000,
        ) {
            let local = spans(1 << 20, &lsizes, 100);
            let remote = spans(1 << 30, &rsizes, 200);
            let ltotal: u64 = lsizes.iter().sum();
            let rtotal: u64 = rsizes.iter().sum();
            let lo = lo % ltotal;
            let ro = ro % rtotal;
            let len = want.min(ltotal - lo).min(rtotal - ro);
            let plan = plan_slices((1 << 20) + lo, (1 << 30) + ro, len, max, &local, &remote).unwrap();
            let mut next = 0;
            for s in &plan {
                prop_assert_eq!(s.offset, next);
                prop_assert!(s.len > 0 && s.len <= max);
                let la = (1 << 20) + lo + s.offset;
                let ra = (1 << 30) + ro + s.offset;
                let l = span_at(&local, la).unwrap();
                let r = span_at(&remote, ra).unwrap();
                prop_assert!(la + u64::from(s.len) <= l.end && l.key == s.lkey);
                prop_assert!(ra + u64::from(s.len) <= r.end && r.key == s.rkey);
                next += u64::from(s.len);
            }
            prop_assert_eq!(next, len);
        }
    }
}
