//! Gather/scatter layout: how an object's bytes map onto the caller's buffers.
//!
//! An object is the concatenation of its parts (one buffer per layer, say). Writing gathers
//! the parts into one replica range; reading scatters a replica range over the parts, filling
//! them in order until the object's length is reached.

use crate::buffers::BufferSlice;

/// One contiguous copy: `len` bytes between local `local_addr` and remote `remote_addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Local address.
    pub local_addr: u64,
    /// Remote address.
    pub remote_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Maps the object range `[remote_addr, remote_addr+len)` onto `parts` in order. Returns
/// `None` if the parts hold fewer than `len` bytes. Empty parts are skipped; parts beyond
/// the object's length are left untouched.
pub fn spans(remote_addr: u64, len: u64, parts: &[BufferSlice]) -> Option<Vec<Span>> {
    let mut out = Vec::with_capacity(parts.len());
    let mut done = 0u64;
    for p in parts {
        if done == len {
            break;
        }
        let n = p.len.min(len - done);
        if n > 0 {
            out.push(Span {
                local_addr: p.addr,
                remote_addr: remote_addr + done,
                len: n,
            });
            done += n;
        }
    }
    (done == len).then_some(out)
}

/// Where one copying read lands in staging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// Staging group (one lease per group; groups are read one after another).
    pub group: usize,
    /// Offset inside the group's lease.
    pub offset: u64,
}

/// Staging layout of copying reads, given as `(segment, remote address, length)` sorted by
/// segment and address: objects go back to back (64-byte aligned), except that an object
/// following another of the same segment within `max_gap` bytes keeps the same gap locally,
/// so that both can be read with one request across the gap. A new group starts whenever
/// `capacity` would be exceeded (every object must fit `capacity` alone). Returns each
/// object's place and each group's size.
pub fn staging_layout<S: PartialEq>(
    objects: &[(S, u64, u64)],
    max_gap: u64,
    capacity: u64,
) -> (Vec<Placed>, Vec<u64>) {
    let mut placed = Vec::with_capacity(objects.len());
    let mut sizes: Vec<u64> = Vec::new();
    let mut group = 0usize;
    let mut used = 0u64;
    // (segment, remote end, local end) of the previous object in this group.
    let mut prev: Option<(&S, u64, u64)> = None;
    for (seg, addr, len) in objects {
        let keep_gap = prev.and_then(|(ps, rend, lend)| {
            let gap = addr.checked_sub(rend)?;
            (ps == seg && gap <= max_gap).then_some(lend + gap)
        });
        let mut offset = keep_gap.unwrap_or_else(|| crate::staging_alloc::aligned_len(used));
        if offset + len > capacity && used > 0 {
            sizes.push(crate::staging_alloc::aligned_len(used));
            group += 1;
            offset = 0;
        }
        used = offset + len;
        prev = Some((seg, addr + len, used));
        placed.push(Placed { group, offset });
    }
    if !objects.is_empty() {
        sizes.push(crate::staging_alloc::aligned_len(used));
    }
    (placed, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_filled_in_order() {
        let parts = [
            BufferSlice::new(100, 10),
            BufferSlice::new(500, 0),
            BufferSlice::new(300, 10),
        ];
        let s = spans(9000, 15, &parts).unwrap();
        assert_eq!(
            s,
            vec![
                Span {
                    local_addr: 100,
                    remote_addr: 9000,
                    len: 10
                },
                Span {
                    local_addr: 300,
                    remote_addr: 9010,
                    len: 5
                },
            ]
        );
        assert_eq!(spans(9000, 21, &parts), None);
        assert_eq!(spans(9000, 0, &parts), Some(vec![]));
    }

    #[test]
    fn staging_keeps_small_remote_gaps_and_splits_at_capacity() {
        let objs = [
            ("a", 0u64, 100u64),
            ("a", 132, 100),
            ("a", 10_000, 50),
            ("b", 10_050, 10),
        ];
        let (placed, sizes) = staging_layout(&objs, 64, 1 << 20);
        let offs: Vec<u64> = placed.iter().map(|p| p.offset).collect();
        // 32-byte gap kept; the far object and the other segment are packed aligned.
        assert_eq!(offs, vec![0, 132, 256, 320]);
        assert_eq!(sizes, vec![384]);
        assert!(placed.iter().all(|p| p.group == 0));

        let (placed, sizes) = staging_layout(&objs, 64, 256);
        let groups: Vec<usize> = placed.iter().map(|p| p.group).collect();
        assert_eq!(groups, vec![0, 0, 1, 1]);
        assert_eq!(sizes, vec![256, 128]);
        for (p, (_, _, len)) in placed.iter().zip(&objs) {
            assert!(p.offset + len <= sizes[p.group]);
        }
    }
}
