//! Batches: per-request status bookkeeping and completion signalling.
//!
//! A batch holds one [`TransferStatus`] per submitted request. Transports finish requests
//! through a [`CompletionSink`]; when the last pending request of a batch finishes, blocked
//! `wait` callers are woken through a condition variable and `completion` futures through their
//! wakers. Nothing here polls or sleeps.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

use crate::{BatchId, TransferError, TransferStatus};

#[derive(Debug)]
struct State {
    statuses: Vec<TransferStatus>,
    pending: usize,
    wakers: Vec<Waker>,
}

/// One batch's statuses.
#[derive(Debug)]
pub struct Batch {
    id: u64,
    capacity: usize,
    state: Mutex<State>,
    done: Condvar,
}

impl Batch {
    fn new(id: u64, capacity: usize) -> Self {
        Batch {
            id,
            capacity,
            state: Mutex::new(State {
                statuses: Vec::with_capacity(capacity),
                pending: 0,
                wakers: Vec::new(),
            }),
            done: Condvar::new(),
        }
    }

    /// Appends `n` waiting requests; returns the index of the first.
    pub fn reserve(&self, n: usize) -> Result<usize, TransferError> {
        let mut st = self.state.lock();
        let used = st.statuses.len();
        if used + n > self.capacity {
            return Err(TransferError::BatchFull {
                batch: self.id,
                capacity: self.capacity,
                used,
                asked: n,
            });
        }
        st.statuses.resize(used + n, TransferStatus::WAITING);
        st.pending += n;
        Ok(used)
    }

    /// Finishes request `index` unless it already finished (late reports are dropped).
    pub fn finish(&self, index: usize, status: TransferStatus) {
        self.finish_many(std::iter::once((index, status)));
    }

    /// Finishes several requests under one lock.
    pub fn finish_many(&self, items: impl IntoIterator<Item = (usize, TransferStatus)>) {
        let wakers = {
            let mut st = self.state.lock();
            for (index, status) in items {
                debug_assert!(status.is_done());
                let Some(slot) = st.statuses.get_mut(index) else {
                    tracing::error!(batch = self.id, index, "completion for unknown request");
                    continue;
                };
                if slot.is_done() {
                    continue;
                }
                *slot = status;
                st.pending -= 1;
            }
            if st.pending > 0 {
                return;
            }
            std::mem::take(&mut st.wakers)
        };
        self.done.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Fails the requests of `range` that are still waiting; returns how many there were.
    fn fail_waiting(&self, range: std::ops::Range<usize>) -> usize {
        let mut lost = Vec::new();
        {
            let st = self.state.lock();
            let end = range.end.min(st.statuses.len());
            for i in range.start.min(end)..end {
                if !st.statuses[i].is_done() {
                    lost.push(i);
                }
            }
        }
        let n = lost.len();
        if n > 0 {
            let why = TransferStatus::failed("the transport dropped the request without a result");
            self.finish_many(lost.into_iter().map(|i| (i, why.clone())));
        }
        n
    }

    /// Status of request `index`.
    pub fn status(&self, index: usize) -> Result<TransferStatus, TransferError> {
        let st = self.state.lock();
        st.statuses.get(index).cloned().ok_or_else(|| {
            TransferError::InvalidArgument(format!(
                "batch {} has {} requests, no index {index}",
                self.id,
                st.statuses.len()
            ))
        })
    }

    /// All statuses.
    pub fn statuses(&self) -> Vec<TransferStatus> {
        self.state.lock().statuses.clone()
    }

    /// Requests not finished yet.
    pub fn pending(&self) -> usize {
        self.state.lock().pending
    }

    /// Blocks until no request is pending; returns all statuses.
    pub fn wait(&self) -> Vec<TransferStatus> {
        let mut st = self.state.lock();
        while st.pending > 0 {
            self.done.wait(&mut st);
        }
        st.statuses.clone()
    }

    fn poll_done(&self, cx: &mut Context<'_>) -> Poll<Vec<TransferStatus>> {
        let mut st = self.state.lock();
        if st.pending == 0 {
            return Poll::Ready(st.statuses.clone());
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Where a transport reports finished requests of one submission.
///
/// Clones share one guard over the submission's range of the batch: when the last clone is
/// dropped, any request of that range still waiting fails. A transport that loses a request
/// (a bug, a panic on one of its threads) then makes it fail instead of leaving `wait` and
/// `completion` blocked forever.
#[derive(Clone, Debug)]
pub struct CompletionSink {
    submission: Arc<Submission>,
}

#[derive(Debug)]
struct Submission {
    batch: Arc<Batch>,
    first: usize,
    len: usize,
}

impl Drop for Submission {
    fn drop(&mut self) {
        let lost = self.batch.fail_waiting(self.first..self.first + self.len);
        if lost > 0 {
            tracing::error!(
                batch = self.batch.id,
                lost,
                "requests dropped without a result; they fail"
            );
        }
    }
}

impl CompletionSink {
    /// A sink for requests `first..first + len` of `batch` (as [`Batch::reserve`] gave them).
    pub fn new(batch: Arc<Batch>, first: usize, len: usize) -> Self {
        CompletionSink {
            submission: Arc::new(Submission { batch, first, len }),
        }
    }

    /// Finishes request `index` (its index in the batch).
    pub fn finish(&self, index: usize, status: TransferStatus) {
        self.submission.batch.finish(index, status);
    }

    /// Finishes several requests under one lock.
    pub fn finish_many(&self, items: impl IntoIterator<Item = (usize, TransferStatus)>) {
        self.submission.batch.finish_many(items);
    }

    /// Whether two sinks are clones of one (report for the same submission).
    pub fn same_submission(&self, other: &CompletionSink) -> bool {
        Arc::ptr_eq(&self.submission, &other.submission)
    }
}

/// Future returned by [`crate::Engine::completion`].
pub struct BatchCompletion {
    batch: Result<Arc<Batch>, u64>,
}

impl Future for BatchCompletion {
    type Output = Result<Vec<TransferStatus>, TransferError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &self.batch {
            Ok(b) => b.poll_done(cx).map(Ok),
            Err(id) => Poll::Ready(Err(TransferError::BatchNotFound(*id))),
        }
    }
}

/// All live batches of an engine.
#[derive(Debug, Default)]
pub struct BatchTable {
    next: AtomicU64,
    batches: Mutex<HashMap<u64, Arc<Batch>>>,
}

impl BatchTable {
    /// Creates an empty batch with room for `capacity` requests.
    pub fn allocate(&self, capacity: usize) -> Result<BatchId, TransferError> {
        if capacity == 0 {
            return Err(TransferError::InvalidArgument(
                "batch capacity must be > 0".into(),
            ));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.batches
            .lock()
            .insert(id, Arc::new(Batch::new(id, capacity)));
        Ok(BatchId(id))
    }

    /// The batch with this id.
    pub fn get(&self, id: BatchId) -> Result<Arc<Batch>, TransferError> {
        self.batches
            .lock()
            .get(&id.0)
            .cloned()
            .ok_or(TransferError::BatchNotFound(id.0))
    }

    /// A future resolving when the batch has no pending request.
    pub fn completion(&self, id: BatchId) -> BatchCompletion {
        BatchCompletion {
            batch: self.get(id).map_err(|_| id.0),
        }
    }

    /// Frees a batch; refused while requests are pending.
    pub fn free(&self, id: BatchId) -> Result<(), TransferError> {
        let mut map = self.batches.lock();
        let batch = map.get(&id.0).ok_or(TransferError::BatchNotFound(id.0))?;
        if batch.pending() > 0 {
            return Err(TransferError::Busy(id.0));
        }
        map.remove(&id.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransferState;

    #[test]
    fn capacity_and_busy() {
        let t = BatchTable::default();
        let id = t.allocate(3).unwrap();
        let b = t.get(id).unwrap();
        assert_eq!(b.reserve(2).unwrap(), 0);
        assert!(matches!(b.reserve(2), Err(TransferError::BatchFull { .. })));
        assert_eq!(b.reserve(1).unwrap(), 2);
        assert!(matches!(t.free(id), Err(TransferError::Busy(_))));
        b.finish(0, TransferStatus::completed(5));
        b.finish(0, TransferStatus::failed("late"));
        assert_eq!(b.status(0).unwrap(), TransferStatus::completed(5));
        b.finish_many([
            (1, TransferStatus::timed_out()),
            (2, TransferStatus::failed("x")),
        ]);
        let all = b.wait();
        assert_eq!(all[1].state, TransferState::TimedOut);
        assert_eq!(all[2].state, TransferState::Failed("x".into()));
        t.free(id).unwrap();
        assert!(matches!(t.get(id), Err(TransferError::BatchNotFound(_))));
        assert!(matches!(t.free(id), Err(TransferError::BatchNotFound(_))));
        assert!(t.allocate(0).is_err());
    }

    #[test]
    fn future_wakes_on_last_completion() {
        let t = Arc::new(BatchTable::default());
        let id = t.allocate(2).unwrap();
        let b = t.get(id).unwrap();
        b.reserve(2).unwrap();
        let sink = CompletionSink::new(b.clone(), 0, 2);
        let h = std::thread::spawn(move || {
            sink.finish(0, TransferStatus::completed(1));
            sink.finish(1, TransferStatus::completed(2));
        });
        let res = futures::executor::block_on(t.completion(id)).unwrap();
        h.join().unwrap();
        assert_eq!(
            res,
            vec![TransferStatus::completed(1), TransferStatus::completed(2)]
        );
        let missing = futures::executor::block_on(t.completion(BatchId(999)));
        assert!(matches!(missing, Err(TransferError::BatchNotFound(999))));
    }

    #[test]
    fn dropping_the_last_clone_fails_only_its_waiting_requests() {
        let t = Arc::new(BatchTable::default());
        let id = t.allocate(5).unwrap();
        let b = t.get(id).unwrap();
        let first = CompletionSink::new(b.clone(), b.reserve(3).unwrap(), 3);
        let second = CompletionSink::new(b.clone(), b.reserve(2).unwrap(), 2);
        first.finish(1, TransferStatus::completed(7));
        let clone = first.clone();
        drop(first);
        assert_eq!(b.pending(), 4, "a live clone keeps the submission open");
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.wait())
        };
        drop(clone);
        assert_eq!(b.pending(), 2);
        let lost = b.status(0).unwrap();
        assert!(
            matches!(&lost.state, TransferState::Failed(r) if r.contains("dropped")),
            "{lost:?}"
        );
        assert_eq!(b.status(1).unwrap(), TransferStatus::completed(7));
        assert_eq!(b.status(3).unwrap().state, TransferState::Waiting);
        second.finish_many([
            (3, TransferStatus::completed(1)),
            (4, TransferStatus::timed_out()),
        ]);
        drop(second);
        let all = waiter.join().unwrap();
        assert_eq!(all[3], TransferStatus::completed(1));
        assert_eq!(all[4].state, TransferState::TimedOut);
        assert!(matches!(&all[2].state, TransferState::Failed(_)));
        assert_eq!(b.pending(), 0);
    }
}
