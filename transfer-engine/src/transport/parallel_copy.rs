//! Host-to-host copies of one batch spread over a few threads.
//!
//! The memcpy transports (same process, same-host shared memory) copy in the submitting
//! thread. One thread moves 5-10 GB/s, and memory touched for the first time (a fresh pool)
//! adds its page faults to that thread alone, while a server's memory bandwidth is several
//! times that: on a 16-core host, 64 × 1 MiB through shared memory ran at half the rate of the
//! TCP transport, whose four connections receive in four threads. Batches of at least
//! [`PARALLEL_MIN`] bytes are therefore cut into pieces run on a small pool; smaller ones stay
//! in the caller's thread, where a wake-up of other threads would cost more than it saves.
//!
//! A batch in which one copy's destination overlaps another range of the batch (or its own
//! source) keeps running in order in the caller's thread, as it always has, so that the last
//! write to a byte wins and a memmove stays a memmove.

use std::sync::OnceLock;

/// Batches with fewer host bytes are copied in the caller's thread.
pub const PARALLEL_MIN: u64 = 2 << 20;
/// Pieces are at least this large (smaller copies stay whole).
const MIN_PIECE: u64 = 256 << 10;
/// At most this many copy threads by default: a few threads already reach most of a socket's
/// memory bandwidth.
const MAX_AUTO_THREADS: usize = 8;
/// At most this many copy threads when asked for more.
const MAX_THREADS: usize = 64;

/// One copy: `len` bytes from `src` to `dst` (addresses in this process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCopy {
    /// Source address.
    pub src: u64,
    /// Destination address.
    pub dst: u64,
    /// Bytes.
    pub len: u64,
}

/// Whether some copy's destination overlaps any other range of `copies` (a source or a
/// destination, its own source included).
fn writes_overlap(copies: &[HostCopy]) -> bool {
    // (start, end, is a destination), swept by start.
    let mut ranges: Vec<(u64, u64, bool)> = Vec::with_capacity(2 * copies.len());
    for c in copies {
        ranges.push((c.src, c.src.saturating_add(c.len), false));
        ranges.push((c.dst, c.dst.saturating_add(c.len), true));
    }
    ranges.sort_unstable();
    let (mut end_any, mut end_dst) = (0u64, 0u64);
    for (start, end, is_dst) in ranges {
        // Every earlier range starts at or before `start`: it overlaps if it ends after it.
        if start < end_dst || (is_dst && start < end_any) {
            return true;
        }
        end_any = end_any.max(end);
        if is_dst {
            end_dst = end_dst.max(end);
        }
    }
    false
}

/// The pieces `copies` run as on `threads` threads, each with the index of its copy, or
/// `None` when one thread should run them as they are, in order (one thread, too few bytes, or
/// overlapping writes).
pub(crate) fn plan(copies: &[HostCopy], threads: usize) -> Option<Vec<(usize, HostCopy)>> {
    let total: u64 = copies.iter().map(|c| c.len).sum();
    if threads < 2 || total < PARALLEL_MIN || writes_overlap(copies) {
        return None;
    }
    // Several pieces per thread, so that threads finishing early take over the rest.
    let piece = total.div_ceil(threads as u64 * 4).max(MIN_PIECE);
    let mut out = Vec::with_capacity(copies.len());
    for (i, c) in copies.iter().enumerate() {
        let mut at = 0;
        while at < c.len {
            let len = piece.min(c.len - at);
            out.push((
                i,
                HostCopy {
                    src: c.src + at,
                    dst: c.dst + at,
                    len,
                },
            ));
            at += len;
        }
    }
    Some(out)
}

/// `pieces` in `groups` runs of consecutive pieces with about equal bytes (for copies a
/// driver runs one call per group).
pub(crate) fn group(pieces: Vec<(usize, HostCopy)>, groups: usize) -> Vec<Vec<(usize, HostCopy)>> {
    let total: u64 = pieces.iter().map(|(_, c)| c.len).sum();
    let share = total.div_ceil(groups.max(1) as u64).max(1);
    let mut out: Vec<Vec<(usize, HostCopy)>> = vec![Vec::new()];
    let mut filled = 0;
    for p in pieces {
        if filled >= share {
            out.push(Vec::new());
            filled = 0;
        }
        filled += p.1.len;
        if let Some(g) = out.last_mut() {
            g.push(p);
        }
    }
    out
}

/// Copy threads of one engine, started on the first batch large enough to use them. Work run
/// on them only copies: it never takes the engine's locks or submits transfers, so a
/// submitting thread may wait for it while holding a lock.
pub struct CopyPool {
    threads: usize,
    pool: OnceLock<Option<rayon::ThreadPool>>,
}

impl CopyPool {
    /// A pool of `threads` threads (at most 64); 0 picks the number of CPUs this process may
    /// use, at most eight; 1 copies every batch in the caller's thread.
    pub fn new(threads: usize) -> CopyPool {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_AUTO_THREADS)
        } else {
            threads.min(MAX_THREADS)
        };
        CopyPool {
            threads,
            pool: OnceLock::new(),
        }
    }

    /// Threads a large batch is spread over.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The pool, if a batch may use it here: more than one thread, started (on first use),
    /// and the caller not a worker of another rayon pool, which would wait for ours by running
    /// its own pool's jobs meanwhile; those may need locks the caller holds (the memcpy
    /// transport copies under the registry's read lock), so such a caller copies in place.
    fn usable(&self) -> Option<&rayon::ThreadPool> {
        if self.threads < 2 {
            return None;
        }
        let pool = self.pool()?;
        if rayon::current_thread_index().is_some() && pool.current_thread_index().is_none() {
            return None;
        }
        Some(pool)
    }

    /// Runs `f` on each group of the pieces of `copies` (one group per thread, in parallel)
    /// and returns the groups' results, or `None` when the caller should run the copies
    /// itself, as they are (see [`plan`]; or the pool is not usable from here).
    pub fn spread<R: Send>(
        &self,
        copies: &[HostCopy],
        f: impl Fn(&[(usize, HostCopy)]) -> R + Sync,
    ) -> Option<Vec<R>> {
        use rayon::prelude::*;
        let pieces = plan(copies, self.threads)?;
        let pool = self.usable()?;
        let groups = group(pieces, self.threads);
        Some(pool.install(|| groups.par_iter().map(|g| f(g)).collect()))
    }

    /// `f` of every item, in order: on the pool's threads when the items stand for at least
    /// [`PARALLEL_MIN`] bytes (`bytes`), else in the caller's thread. For copies the caller
    /// makes itself, such as values copied out of a staging buffer into their own vectors
    /// (allocation, page faults and memcpy alike spread over the threads).
    pub fn map<T: Sync, R: Send>(
        &self,
        items: &[T],
        bytes: u64,
        f: impl Fn(&T) -> R + Sync,
    ) -> Vec<R> {
        use rayon::prelude::*;
        if bytes >= PARALLEL_MIN {
            if let Some(pool) = self.usable() {
                return pool.install(|| items.par_iter().map(&f).collect());
            }
        }
        items.iter().map(f).collect()
    }

    fn pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool
            .get_or_init(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.threads)
                    .thread_name(|i| format!("mooncake-copy-{i}"))
                    .build()
                    .map_err(|e| {
                        tracing::warn!(error = %e, "no copy threads; copying in the caller's thread")
                    })
                    .ok()
            })
            .as_ref()
    }

    /// Runs every copy; returns when all are done.
    ///
    /// # Safety
    /// Both ranges of every copy lie in memory valid for the call (at host addresses).
    pub unsafe fn run(&self, copies: &[HostCopy]) {
        use rayon::prelude::*;
        if let Some(pieces) = plan(copies, self.threads) {
            if let Some(pool) = self.usable() {
                pool.install(|| {
                    pieces.par_iter().for_each(|(_, c)| {
                        // SAFETY: each piece lies inside a copy the caller vouches for; no
                        // piece writes bytes another piece reads or writes (`plan` checked).
                        unsafe { copy(c) }
                    })
                });
                return;
            }
        }
        for c in copies {
            // SAFETY: the caller's guarantee.
            unsafe { copy(c) }
        }
    }
}

/// # Safety
/// As for [`CopyPool::run`].
unsafe fn copy(c: &HostCopy) {
    // SAFETY: the caller's guarantee; `copy` tolerates overlap.
    unsafe { std::ptr::copy(c.src as *const u8, c.dst as *mut u8, c.len as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(src: u64, dst: u64, len: u64) -> HostCopy {
        HostCopy { src, dst, len }
    }

    #[test]
    fn small_batches_and_one_thread_stay_serial() {
        assert_eq!(plan(&[c(0, 1 << 40, PARALLEL_MIN - 1)], 8), None);
        assert_eq!(plan(&[c(0, 1 << 40, 64 << 20)], 1), None);
        assert!(plan(&[c(0, 1 << 40, PARALLEL_MIN)], 2).is_some());
    }

    #[test]
    fn overlapping_writes_run_in_order_in_one_thread() {
        let big = 4 << 20;
        // A memmove within one buffer.
        assert_eq!(plan(&[c(1000, 1000 + 4096, big)], 8), None);
        // Two destinations overlapping; a destination overlapping another copy's source
        // (before and after it in address order).
        assert_eq!(
            plan(&[c(0, 1 << 40, big), c(1 << 30, (1 << 40) + big - 1, 8)], 8),
            None
        );
        assert_eq!(plan(&[c(0, 1 << 40, big), c(1 << 40, 1 << 41, 8)], 8), None);
        assert_eq!(plan(&[c(1 << 40, 0, big), c(1 << 30, big - 1, 8)], 8), None);
        // Sources may overlap each other; touching ranges do not overlap.
        let shared_source = [
            c(0, 1 << 40, big),
            c(0, 1 << 41, big),
            c(big, (1 << 40) + big, 8),
        ];
        assert!(plan(&shared_source, 8).is_some());
    }

    proptest! {
        /// The sweep agrees with comparing every pair of ranges.
        #[test]
        fn overlap_check_matches_pairwise(
            spans in proptest::collection::vec((0u64..200, 0u64..200, 1u64..40), 1..12),
        ) {
            let copies: Vec<HostCopy> = spans.iter().map(|&(s, d, l)| c(s, d, l)).collect();
            let meets = |a: u64, al: u64, b: u64, bl: u64| a < b + bl && b < a + al;
            let mut pairwise = false;
            for (i, x) in copies.iter().enumerate() {
                pairwise |= meets(x.src, x.len, x.dst, x.len);
                for y in &copies[i + 1..] {
                    pairwise |= meets(x.dst, x.len, y.dst, y.len)
                        || meets(x.dst, x.len, y.src, y.len)
                        || meets(x.src, x.len, y.dst, y.len);
                }
            }
            prop_assert_eq!(writes_overlap(&copies), pairwise);
        }
    }

    proptest! {
        /// Pieces cover every copy exactly, in order.
        #[test]
        fn pieces_cover_each_copy_exactly(
            lens in proptest::collection::vec(1u64..(8 << 20), 1..40),
            threads in 2usize..16,
        ) {
            let copies: Vec<HostCopy> = lens
                .iter()
                .enumerate()
                .map(|(i, &l)| c((i as u64) << 32, (1 << 48) + ((i as u64) << 32), l))
                .collect();
            let Some(pieces) = plan(&copies, threads) else {
                prop_assert!(lens.iter().sum::<u64>() < PARALLEL_MIN);
                return Ok(());
            };
            let mut it = pieces.iter().peekable();
            for (i, cp) in copies.iter().enumerate() {
                let mut at = 0;
                while at < cp.len {
                    let (index, p) = it.next().expect("a piece for every byte");
                    prop_assert_eq!(*index, i);
                    prop_assert_eq!(p.src, cp.src + at);
                    prop_assert_eq!(p.dst, cp.dst + at);
                    prop_assert!(p.len > 0);
                    at += p.len;
                }
                prop_assert_eq!(at, cp.len);
            }
            prop_assert!(it.peek().is_none());
            // Grouped: the same pieces in order, no group empty, at most one per thread.
            let groups = group(pieces.clone(), threads);
            prop_assert!(groups.len() <= threads && groups.iter().all(|g| !g.is_empty()));
            prop_assert_eq!(groups.concat(), pieces);
        }
    }

    #[test]
    fn map_keeps_the_order_serial_or_parallel() {
        let pool = CopyPool::new(3);
        let items: Vec<u64> = (0..1000).collect();
        let serial = pool.map(&items, 0, |i| i * 3);
        let parallel = pool.map(&items, PARALLEL_MIN, |i| i * 3);
        assert_eq!(serial, items.iter().map(|i| i * 3).collect::<Vec<_>>());
        assert_eq!(parallel, serial);
    }

    #[test]
    fn parallel_copies_move_every_byte() {
        let pool = CopyPool::new(4);
        let src: Vec<u8> = (0..(12u32 << 20))
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        let mut dst = vec![0u8; src.len()];
        // Uneven copies, one below the piece size, in a scrambled order.
        let cuts = [0usize, 5 << 20, (5 << 20) + 100, 9 << 20, 12 << 20];
        let mut copies: Vec<HostCopy> = cuts
            .windows(2)
            .map(|w| {
                c(
                    src[w[0]..].as_ptr() as u64,
                    dst[w[0]..].as_mut_ptr() as u64,
                    (w[1] - w[0]) as u64,
                )
            })
            .collect();
        copies.reverse();
        assert!(plan(&copies, pool.threads()).is_some());
        // SAFETY: every range lies in `src` or `dst`, both alive for the call.
        unsafe { pool.run(&copies) };
        assert!(dst == src);
    }
}
