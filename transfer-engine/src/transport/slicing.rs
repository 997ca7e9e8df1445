//! Cutting requests into parts and joining the parts' outcomes back into one request status.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::batch::CompletionSink;
use crate::TransferStatus;

/// Cuts `len` bytes into consecutive `(offset, len)` parts of at most `max` bytes.
pub fn split(len: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    let max = max.max(1);
    (0..len.div_ceil(max)).map(move |i| {
        let off = i * max;
        (off, max.min(len - off))
    })
}

/// How one part of a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartOutcome {
    /// The part's bytes moved.
    Done,
    /// The part failed.
    Failed(String),
    /// The part was not done by its deadline.
    TimedOut,
}

/// Joins the parts of one request: the request finishes when its last part does, as
/// `Completed(len)` if every part was done, else with the first failure reported.
#[derive(Debug)]
pub struct RequestJoin {
    sink: CompletionSink,
    index: usize,
    len: u64,
    remaining: AtomicUsize,
    failure: Mutex<Option<TransferStatus>>,
}

impl RequestJoin {
    /// A join for request `index` of `len` bytes cut into `parts` parts.
    pub fn new(sink: CompletionSink, index: usize, len: u64, parts: usize) -> Self {
        RequestJoin {
            sink,
            index,
            len,
            remaining: AtomicUsize::new(parts),
            failure: Mutex::new(None),
        }
    }

    /// Records one part's outcome; finishes the request on the last part.
    pub fn part_done(&self, outcome: PartOutcome) {
        match outcome {
            PartOutcome::Done => {}
            PartOutcome::Failed(reason) => {
                self.failure
                    .lock()
                    .get_or_insert_with(|| TransferStatus::failed(reason));
            }
            PartOutcome::TimedOut => {
                self.failure
                    .lock()
                    .get_or_insert_with(TransferStatus::timed_out);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let status = self
                .failure
                .lock()
                .take()
                .unwrap_or_else(|| TransferStatus::completed(self.len));
            self.sink.finish(self.index, status);
        }
    }
}

/// Maps a part outcome of a single-part request to the request's status.
pub fn whole_status(outcome: PartOutcome, len: u64) -> TransferStatus {
    match outcome {
        PartOutcome::Done => TransferStatus::completed(len),
        PartOutcome::Failed(r) => TransferStatus::failed(r),
        PartOutcome::TimedOut => TransferStatus::timed_out(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchTable;
    use crate::TransferState;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_covers_exactly(len in 0u64..10_000, max in 1u64..3000) {
            let parts: Vec<_> = split(len, max).collect();
            let mut next = 0;
            for (off, l) in &parts {
                prop_assert_eq!(*off, next);
                prop_assert!(*l > 0 && *l <= max);
                next += l;
            }
            prop_assert_eq!(next, len);
        }
    }

    #[test]
    fn join_reports_once_with_first_failure() {
        let t = BatchTable::default();
        let id = t.allocate(2).unwrap();
        let b = t.get(id).unwrap();
        b.reserve(2).unwrap();
        let ok = RequestJoin::new(CompletionSink::new(b.clone(), 0, 1), 0, 30, 3);
        let bad = RequestJoin::new(CompletionSink::new(b.clone(), 1, 1), 1, 30, 3);
        ok.part_done(PartOutcome::Done);
        ok.part_done(PartOutcome::Done);
        assert_eq!(b.status(0).unwrap().state, TransferState::Waiting);
        ok.part_done(PartOutcome::Done);
        assert_eq!(b.status(0).unwrap(), TransferStatus::completed(30));
        bad.part_done(PartOutcome::Done);
        bad.part_done(PartOutcome::Failed("first".into()));
        bad.part_done(PartOutcome::TimedOut);
        assert_eq!(b.status(1).unwrap(), TransferStatus::failed("first"));
        assert_eq!(b.pending(), 0);
    }
}
