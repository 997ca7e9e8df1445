//! Which replica of an object a read tries first, and which next when a read fails.
//!
//! A replica in this client's own segment is read with a memcpy, so it comes first; then those
//! in segments of clients on this host (read through shared memory, no network); then every
//! other complete replica in the order the master listed them. Replicas still being written
//! (`Processing`) are never read. A failed read moves on to the next candidate.

/// What replica choice needs to know about a replica.
pub trait ReplicaView {
    /// Engine segment name of the replica's holder.
    fn segment_name(&self) -> &str;
    /// Whether the replica's bytes are all written (readable).
    fn is_complete(&self) -> bool;
}

/// Indices of the readable replicas, best first: those in `local_segment`, then those in
/// segments `near` says are on this host, then the rest (each group in the master's order).
pub fn replica_order<R: ReplicaView>(
    replicas: &[R],
    local_segment: Option<&str>,
    near: impl Fn(&str) -> bool,
) -> Vec<usize> {
    let rank = |r: &R| {
        if local_segment.is_some_and(|l| r.segment_name() == l) {
            0
        } else if near(r.segment_name()) {
            1
        } else {
            2
        }
    };
    let mut order: Vec<(u8, usize)> = replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_complete())
        .map(|(i, r)| (rank(r), i))
        .collect();
    // Stable: the master's order within a group.
    order.sort_by_key(|&(rank, _)| rank);
    order.into_iter().map(|(_, i)| i).collect()
}

/// Per-key cursor over the candidate replicas of one read, used across retries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaCursor {
    order: Vec<usize>,
    next: usize,
}

impl ReplicaCursor {
    /// A cursor over `replica_order(replicas, local_segment, near)`.
    pub fn new<R: ReplicaView>(
        replicas: &[R],
        local_segment: Option<&str>,
        near: impl Fn(&str) -> bool,
    ) -> Self {
        Self {
            order: replica_order(replicas, local_segment, near),
            next: 0,
        }
    }

    /// The next replica to try, or `None` when all have been tried.
    pub fn next_candidate(&mut self) -> Option<usize> {
        let c = self.order.get(self.next).copied();
        if c.is_some() {
            self.next += 1;
        }
        c
    }

    /// The candidate `next_candidate` would return, without moving on.
    pub fn peek(&self) -> Option<usize> {
        self.order.get(self.next).copied()
    }

    /// The candidate returned by the last `next_candidate`.
    pub fn last(&self) -> Option<usize> {
        self.next
            .checked_sub(1)
            .and_then(|i| self.order.get(i).copied())
    }

    /// Number of readable replicas this cursor started with.
    pub fn readable(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(&'static str, bool);
    impl ReplicaView for R {
        fn segment_name(&self) -> &str {
            self.0
        }
        fn is_complete(&self) -> bool {
            self.1
        }
    }

    fn far(_: &str) -> bool {
        false
    }

    #[test]
    fn local_first_then_complete_in_master_order() {
        let rs = [R("a", true), R("b", false), R("me", true), R("c", true)];
        assert_eq!(replica_order(&rs, Some("me"), far), vec![2, 0, 3]);
        assert_eq!(replica_order(&rs, None, far), vec![0, 2, 3]);
    }

    #[test]
    fn same_host_replicas_come_after_local_and_before_the_rest() {
        let rs = [
            R("a", true),
            R("h1", true),
            R("me", true),
            R("h2", true),
            R("c", true),
        ];
        let near = |s: &str| s.starts_with('h');
        assert_eq!(replica_order(&rs, Some("me"), near), vec![2, 1, 3, 0, 4]);
        assert_eq!(replica_order(&rs, None, near), vec![1, 3, 0, 2, 4]);
    }

    #[test]
    fn processing_replicas_are_never_candidates() {
        let rs = [R("me", false), R("b", false)];
        assert!(replica_order(&rs, Some("me"), far).is_empty());
    }

    #[test]
    fn cursor_walks_candidates_once() {
        let rs = [R("a", true), R("me", true)];
        let mut c = ReplicaCursor::new(&rs, Some("me"), far);
        assert_eq!(c.readable(), 2);
        assert_eq!(c.last(), None);
        assert_eq!(c.peek(), Some(1));
        assert_eq!(c.next_candidate(), Some(1));
        assert_eq!(c.next_candidate(), Some(0));
        assert_eq!(c.last(), Some(0));
        assert_eq!(c.next_candidate(), None);
        assert_eq!(c.next_candidate(), None);
    }
}
