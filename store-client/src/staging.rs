//! The registered staging buffer the copying calls move bytes through.
//!
//! `put` copies the caller's value into a leased range of staging memory and the engine
//! writes it to the replicas from there; `get` has the engine read into staging and copies
//! out. A lease is exclusive: its range is touched only by its holder and by the transfers
//! the holder submits. Leases wait (asynchronously) while the buffer is full.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use transfer_engine::transport::parallel_copy::{CopyPool, HostCopy};
use transfer_engine::AlignedBuffer;

use crate::staging_alloc::RangeAllocator;

/// Staging memory plus the accounting of who uses which range.
#[derive(Debug)]
pub struct Staging {
    buffer: AlignedBuffer,
    alloc: Mutex<RangeAllocator>,
    freed: Notify,
}

impl Staging {
    /// Wraps `buffer` (already registered with the engine by the caller).
    pub fn new(buffer: AlignedBuffer) -> Self {
        let alloc = Mutex::new(RangeAllocator::new(buffer.len() as u64));
        Self {
            buffer,
            alloc,
            freed: Notify::new(),
        }
    }

    /// Address of the first staging byte.
    pub fn addr(&self) -> u64 {
        self.buffer.addr()
    }

    /// Start address and length of the whole buffer.
    pub fn region(&self) -> (u64, usize) {
        (self.buffer.addr(), self.buffer.len())
    }

    /// Most bytes one lease can get.
    pub fn capacity(&self) -> u64 {
        self.alloc.lock().capacity()
    }

    /// Leases `len` bytes, waiting while the buffer is full; `None` if `len` exceeds capacity.
    pub async fn lease(self: &Arc<Self>, len: u64) -> Option<StagingLease> {
        if len > self.capacity() {
            return None;
        }
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            // Registered before the check so that a free between check and wait is not missed.
            notified.as_mut().enable();
            if let Some(offset) = self.alloc.lock().allocate(len) {
                return Some(StagingLease {
                    staging: self.clone(),
                    offset,
                    len,
                });
            }
            notified.await;
        }
    }
}

/// An exclusive range of staging memory; returned to the pool on drop.
#[derive(Debug)]
pub struct StagingLease {
    staging: Arc<Staging>,
    offset: u64,
    len: u64,
}

impl StagingLease {
    /// Address of the range's first byte.
    pub fn addr(&self) -> u64 {
        self.staging.addr() + self.offset
    }

    /// Length of the range.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies each `(at, bytes)` into the range, a large set on `pool`'s threads. Copies
    /// nothing and returns `false` if any would end outside the range.
    #[must_use = "false means nothing was written"]
    pub fn write_many(&mut self, pool: &CopyPool, items: &[(u64, &[u8])]) -> bool {
        let inside = items.iter().all(|&(at, bytes)| {
            at.checked_add(bytes.len() as u64)
                .is_some_and(|end| end <= self.len)
        });
        if !inside {
            return false;
        }
        let base = self.addr();
        let copies: Vec<HostCopy> = items
            .iter()
            .map(|&(at, bytes)| HostCopy {
                src: bytes.as_ptr() as u64,
                dst: base + at,
                len: bytes.len() as u64,
            })
            .collect();
        // SAFETY: every destination lies inside this lease (checked above), which lies inside
        // the staging allocation and is exclusive to `&mut self`, with no transfer of it
        // running while its holder writes; every source is a borrowed slice alive for the
        // call. Overlapping destinations are copied in order (the pool checks).
        unsafe { pool.run(&copies) };
        true
    }

    /// The bytes `[at, at+len)` of the range, `None` if outside it.
    pub fn read_at(&self, at: u64, len: u64) -> Option<&[u8]> {
        let end = at.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: the range lies inside this lease (checked above) and so inside the staging
        // allocation, which outlives `self`; the transfers that fill it have completed before
        // the holder reads (the holder awaits their completion first).
        Some(unsafe {
            std::slice::from_raw_parts(
                self.staging
                    .buffer
                    .as_ptr()
                    .add((self.offset + at) as usize),
                len as usize,
            )
        })
    }
}

impl Drop for StagingLease {
    fn drop(&mut self) {
        self.staging.alloc.lock().free(self.offset, self.len);
        self.staging.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn leases_are_disjoint_and_waiters_wake_on_free() {
        let staging = Arc::new(Staging::new(AlignedBuffer::new(4096).unwrap()));
        assert!(staging.lease(8192).await.is_none());
        let mut a = staging.lease(3000).await.unwrap();
        let pool = CopyPool::new(2);
        assert!(a.write_many(&pool, &[(0, b"hello"), (10, b"world")]));
        // One write past the end: nothing is written.
        assert!(!a.write_many(&pool, &[(20, b"kept"), (2999, b"xx")]));
        assert_eq!(a.read_at(0, 5), Some(&b"hello"[..]));
        assert_eq!(a.read_at(10, 5), Some(&b"world"[..]));
        assert_eq!(a.read_at(20, 4), Some(&[0u8; 4][..]));
        let s2 = staging.clone();
        let waiter = tokio::spawn(async move { s2.lease(2000).await.map(|l| l.addr()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "only 1 KiB is free");
        let a_addr = a.addr();
        drop(a);
        assert_eq!(waiter.await.unwrap(), Some(a_addr));
    }
}
