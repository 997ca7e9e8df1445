//! Caller memory registered for zero-copy, and the range checks every zero-copy call makes.
//!
//! A [`BufferSlice`] names caller memory by address and length. Before any byte moves, each
//! slice must lie wholly inside one buffer registered with [`RegisteredBuffers::insert`]
//! (the engine can only move registered memory, and the check keeps a wrong address from
//! reaching it); a slice that does not gets a per-key error and the rest of the batch proceeds.

use std::collections::BTreeMap;

/// A range of caller memory: `len` bytes at address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferSlice {
    /// First byte's address in this process.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

impl BufferSlice {
    /// A slice from an address and a length.
    pub fn new(addr: u64, len: u64) -> Self {
        Self { addr, len }
    }

    /// The slice covering `bytes` (the memory must be registered for a zero-copy call to use it).
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            addr: bytes.as_ptr() as u64,
            len: bytes.len() as u64,
        }
    }

    /// One past the last byte, `None` if the range wraps the address space.
    pub fn end(&self) -> Option<u64> {
        self.addr.checked_add(self.len)
    }
}

/// Why a buffer could not be registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// Zero length or a range that wraps the address space.
    #[error("buffer at {addr:#x} with length {len} is empty or wraps the address space")]
    Invalid {
        /// Address given.
        addr: u64,
        /// Length given.
        len: u64,
    },
    /// Overlaps a buffer registered before.
    #[error(
        "buffer at {addr:#x} overlaps the registered buffer at {other:#x}; unregister it first"
    )]
    Overlap {
        /// Address given.
        addr: u64,
        /// The registered buffer it overlaps.
        other: u64,
    },
}

/// The set of registered buffers: disjoint ranges keyed by start address.
#[derive(Debug, Default)]
pub struct RegisteredBuffers {
    by_addr: BTreeMap<u64, u64>,
}

impl RegisteredBuffers {
    /// Adds `[addr, addr+len)`; refuses empty, wrapping or overlapping ranges.
    pub fn insert(&mut self, addr: u64, len: u64) -> Result<(), RegisterError> {
        let end = addr
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(RegisterError::Invalid { addr, len })?;
        if let Some((&a, &l)) = self.by_addr.range(..end).next_back() {
            if a + l > addr {
                return Err(RegisterError::Overlap { addr, other: a });
            }
        }
        self.by_addr.insert(addr, len);
        Ok(())
    }

    /// Removes the buffer registered at exactly `addr`; returns its length.
    pub fn remove(&mut self, addr: u64) -> Option<u64> {
        self.by_addr.remove(&addr)
    }

    /// Whether `slice` lies wholly inside one registered buffer.
    pub fn contains(&self, slice: BufferSlice) -> bool {
        let Some(end) = slice.end() else { return false };
        match self.by_addr.range(..=slice.addr).next_back() {
            Some((&a, &l)) => end <= a + l,
            None => false,
        }
    }

    /// The registered buffer that contains byte `addr`, if any.
    pub fn containing(&self, addr: u64) -> Option<BufferSlice> {
        let (&a, &l) = self.by_addr.range(..=addr).next_back()?;
        (addr < a + l).then(|| BufferSlice::new(a, l))
    }

    /// Checks every slice of one key; the error message names the first offender.
    pub fn check_all(&self, slices: &[BufferSlice]) -> Result<(), String> {
        match slices.iter().find(|s| !self.contains(**s)) {
            None => Ok(()),
            Some(s) => Err(format!(
                "buffer [{:#x}, +{}) is not inside memory registered with register_buffer",
                s.addr, s.len
            )),
        }
    }
}

/// Total length of a key's slices.
pub fn total_len(slices: &[BufferSlice]) -> u64 {
    slices.iter().map(|s| s.len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containing_finds_the_buffer_of_an_address() {
        let mut r = RegisteredBuffers::default();
        r.insert(1000, 100).unwrap();
        r.insert(1200, 50).unwrap();
        assert_eq!(r.containing(1000), Some(BufferSlice::new(1000, 100)));
        assert_eq!(r.containing(1099), Some(BufferSlice::new(1000, 100)));
        assert_eq!(r.containing(1100), None);
        assert_eq!(r.containing(999), None);
        assert_eq!(r.containing(1249), Some(BufferSlice::new(1200, 50)));
    }

    #[test]
    fn slices_must_lie_inside_one_buffer() {
        let mut r = RegisteredBuffers::default();
        r.insert(1000, 100).unwrap();
        r.insert(1100, 100).unwrap();
        assert!(r.contains(BufferSlice::new(1000, 100)));
        assert!(r.contains(BufferSlice::new(1150, 50)));
        assert!(
            !r.contains(BufferSlice::new(1050, 100)),
            "spans two buffers"
        );
        assert!(!r.contains(BufferSlice::new(999, 2)));
        assert!(!r.contains(BufferSlice::new(1190, 11)));
        assert!(!r.contains(BufferSlice::new(u64::MAX - 1, 5)));
        assert!(r
            .check_all(&[BufferSlice::new(1000, 10), BufferSlice::new(5000, 1)])
            .unwrap_err()
            .contains("0x1388"));
    }

    #[test]
    fn overlapping_or_empty_registration_is_refused() {
        let mut r = RegisteredBuffers::default();
        r.insert(1000, 100).unwrap();
        assert_eq!(
            r.insert(1050, 10),
            Err(RegisterError::Overlap {
                addr: 1050,
                other: 1000
            })
        );
        assert_eq!(
            r.insert(900, 101),
            Err(RegisterError::Overlap {
                addr: 900,
                other: 1000
            })
        );
        assert!(matches!(r.insert(5, 0), Err(RegisterError::Invalid { .. })));
        r.insert(900, 100).unwrap();
        assert_eq!(r.remove(1000), Some(100));
        assert!(!r.contains(BufferSlice::new(1000, 1)));
    }
}
