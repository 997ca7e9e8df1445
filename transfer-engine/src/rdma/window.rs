//! The send window of one queue pair: slices waiting to be posted and slices posted but not
//! completed, bounded by the send queue depth.
//!
//! Pure bookkeeping. Posted slices get a sequence number (the low bits of the work request
//! id) so that a completion finds its slice; slices beyond the window wait in FIFO order and
//! never fail for lack of room. A reset takes every posted slice back so that the caller can
//! retry or fail it.

use std::collections::{BTreeMap, VecDeque};

/// Sequence numbers wrap at this many bits (the rest of a work request id names the endpoint).
pub const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// Pending and posted slices of one queue pair.
#[derive(Debug)]
pub struct SendWindow<T> {
    pending: VecDeque<T>,
    posted: BTreeMap<u64, T>,
    next_seq: u64,
    depth: usize,
}

impl<T> SendWindow<T> {
    /// An empty window that lets at most `depth` slices be posted at once.
    pub fn new(depth: usize) -> Self {
        SendWindow {
            pending: VecDeque::new(),
            posted: BTreeMap::new(),
            next_seq: 0,
            depth: depth.max(1),
        }
    }

    /// Queues a slice behind the others.
    pub fn push(&mut self, item: T) {
        self.pending.push_back(item);
    }

    /// Queues slices ahead of the others, keeping their order (retries go first).
    pub fn push_front_all(&mut self, items: Vec<T>) {
        for item in items.into_iter().rev() {
            self.pending.push_front(item);
        }
    }

    /// Moves pending slices to posted in FIFO order and returns their sequence numbers: at most
    /// `max`, never more than the window depth in total, and a slice only while fewer than
    /// `cap(slice)` are posted (a tighter depth for some kinds of slices; the first slice that
    /// does not fit stops the launch, so order is kept).
    pub fn launch(&mut self, max: usize, cap: impl Fn(&T) -> usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < max && self.posted.len() < self.depth {
            match self.pending.front() {
                Some(next) if self.posted.len() < cap(next) => {}
                _ => break,
            }
            let Some(item) = self.pending.pop_front() else {
                break;
            };
            let seq = self.next_seq;
            self.next_seq = (self.next_seq + 1) & SEQ_MASK;
            self.posted.insert(seq, item);
            seqs.push(seq);
        }
        seqs
    }

    /// A posted slice.
    pub fn get(&self, seq: u64) -> Option<&T> {
        self.posted.get(&seq)
    }

    /// Takes only the posted slice `seq` names; `None` for a stale or unknown one. The
    /// engine completes through [`SendWindow::complete_through`]; the bookkeeping tests use
    /// this single-slice form.
    #[cfg(test)]
    pub fn complete(&mut self, seq: u64) -> Option<T> {
        self.posted.remove(&seq)
    }

    /// Takes the posted slice a completion names and every slice posted before it, oldest
    /// first; empty for a stale or unknown one. A queue pair completes its work requests in
    /// order, so a completion of a signaled request also completes the unsignaled ones
    /// posted before it.
    pub fn complete_through(&mut self, seq: u64) -> Vec<T> {
        if !self.posted.contains_key(&seq) {
            return Vec::new();
        }
        // Posted sequence numbers span less than half the sequence space, so "posted at or
        // before `seq`" is "at most half the space behind it", across a wrap too.
        let behind = |k: u64| seq.wrapping_sub(k) & SEQ_MASK;
        let mut keys: Vec<u64> = self
            .posted
            .keys()
            .copied()
            .filter(|&k| behind(k) < 1 << (SEQ_BITS - 1))
            .collect();
        keys.sort_by_key(|&k| std::cmp::Reverse(behind(k)));
        keys.into_iter()
            .filter_map(|k| self.posted.remove(&k))
            .collect()
    }

    /// Takes every posted slice back (the queue pair was reset), oldest first.
    pub fn take_posted(&mut self) -> Vec<T> {
        std::mem::take(&mut self.posted).into_values().collect()
    }

    /// Takes every pending slice.
    pub fn take_pending(&mut self) -> Vec<T> {
        self.pending.drain(..).collect()
    }

    /// Takes the pending slices for which `f` holds, keeping the others in order.
    pub fn take_pending_where(&mut self, mut f: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for item in self.pending.drain(..) {
            if f(&item) {
                taken.push(item);
            } else {
                kept.push_back(item);
            }
        }
        self.pending = kept;
        taken
    }

    /// Whether some posted slice satisfies `f`.
    pub fn any_posted(&self, f: impl FnMut(&T) -> bool) -> bool {
        self.posted.values().any(f)
    }

    /// Slices waiting to be posted.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Slices posted and not completed.
    pub fn posted_len(&self) -> usize {
        self.posted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_depth_and_fifo() {
        let mut w = SendWindow::new(3);
        for i in 0..5 {
            w.push(i);
        }
        let s = w.launch(10, |_| usize::MAX);
        assert_eq!(s.len(), 3, "never more than the depth posted");
        assert_eq!(
            s.iter().map(|q| *w.get(*q).unwrap()).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(w.launch(10, |_| usize::MAX).is_empty(), "window full");
        assert_eq!(w.complete(s[1]), Some(1));
        assert_eq!(w.complete(s[1]), None, "a completion is consumed once");
        let s2 = w.launch(10, |_| usize::MAX);
        assert_eq!(s2.len(), 1);
        assert_eq!(*w.get(s2[0]).unwrap(), 3);
        assert_eq!((w.pending_len(), w.posted_len()), (1, 3));
        assert_eq!(w.launch(0, |_| usize::MAX).len(), 0, "max bounds too");
    }

    #[test]
    fn per_kind_cap_keeps_fifo_order() {
        let mut w = SendWindow::new(8);
        for v in [1, 2, 10, 11, 3] {
            w.push(v);
        }
        // Values >= 10 may only be posted while fewer than 3 slices are posted.
        let cap = |v: &i32| if *v >= 10 { 3 } else { usize::MAX };
        let s = w.launch(10, cap);
        assert_eq!(
            s.len(),
            3,
            "1, 2, then 10 (2 posted < 3); 11 waits at 3 posted"
        );
        assert_eq!(w.pending_len(), 2, "3 stays behind 11");
        assert_eq!(
            w.launch(10, cap).len(),
            0,
            "11 does not fit while 3 are posted"
        );
        w.complete(s[0]);
        let s2 = w.launch(10, cap);
        assert_eq!(
            s2.iter().map(|q| *w.get(*q).unwrap()).collect::<Vec<_>>(),
            [11, 3]
        );
    }

    #[test]
    fn reset_returns_posted_for_retry_ahead_of_pending() {
        let mut w = SendWindow::new(2);
        for i in 0..4 {
            w.push(i);
        }
        let first = w.launch(2, |_| usize::MAX);
        let back = w.take_posted();
        assert_eq!(back, vec![0, 1]);
        assert_eq!(
            w.complete(first[0]),
            None,
            "stale completion after reset ignored"
        );
        w.push_front_all(back);
        let again = w.launch(2, |_| usize::MAX);
        assert_eq!(
            again
                .iter()
                .map(|q| *w.get(*q).unwrap())
                .collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(
            again.iter().all(|s| !first.contains(s)),
            "fresh sequence numbers"
        );
        assert!(w.any_posted(|v| *v == 1));
        assert_eq!(w.take_pending_where(|v| *v == 3), vec![3]);
        assert_eq!(w.take_pending(), vec![2]);
    }

    #[test]
    fn sequence_numbers_wrap_within_their_bits() {
        let mut w = SendWindow::new(4);
        w.next_seq = SEQ_MASK;
        w.push('a');
        w.push('b');
        assert_eq!(w.launch(2, |_| usize::MAX), vec![SEQ_MASK, 0]);
    }

    #[test]
    fn completing_a_slice_completes_the_ones_posted_before_it() {
        let mut w = SendWindow::new(8);
        for i in 0..6 {
            w.push(i);
        }
        let seqs = w.launch(10, |_| usize::MAX);
        assert_eq!(w.complete_through(seqs[2]), vec![0, 1, 2]);
        assert!(w.complete_through(seqs[1]).is_empty(), "already completed");
        assert_eq!(w.complete_through(seqs[5]), vec![3, 4, 5]);
        assert_eq!(w.posted_len(), 0);
    }

    #[test]
    fn completing_through_works_across_the_sequence_wrap() {
        let mut w = SendWindow::new(8);
        w.next_seq = SEQ_MASK - 1;
        for i in 0..4 {
            w.push(i);
        }
        let seqs = w.launch(10, |_| usize::MAX);
        assert_eq!(seqs, vec![SEQ_MASK - 1, SEQ_MASK, 0, 1]);
        assert_eq!(w.complete_through(0), vec![0, 1, 2]);
        assert_eq!(w.complete_through(1), vec![3]);
    }
}
