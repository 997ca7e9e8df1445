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
}
