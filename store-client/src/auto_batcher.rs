//! The auto-batcher: single-key calls from many tasks become one batch call.
//!
//! Each caller hands its request to [`AutoBatcher::call`] and awaits its own response. A
//! dispatcher task collects requests and, as [`BatchPolicy`] decides (no wait when idle, up to
//! the linger time under load, at most `max_batch` per batch, at most `max_in_flight` batches
//! at once), runs them through a [`BatchExecutor`], which returns one response per request in
//! order. While it waits it yields to the other tasks rather than sleeping (the linger time is
//! below tokio's timer resolution), and sends the batch as soon as a full round of the other
//! tasks brought no new call: the burst of concurrent callers is in. Generic over the
//! executor, so the batching is testable without a store.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::batch_policy::{BatchPolicy, BatchPolicyConfig, Decision};

/// Runs a batch of requests and returns one response per request, in the same order.
pub trait BatchExecutor: Send + Sync + 'static {
    /// One caller's request.
    type Request: Send + 'static;
    /// One caller's response.
    type Response: Send + 'static;
    /// Executes `requests` as one batch.
    fn execute(
        &self,
        requests: Vec<Self::Request>,
    ) -> impl Future<Output = Vec<Self::Response>> + Send;
}

/// Why an auto-batched call got no response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatcherError {
    /// The batcher's dispatcher is gone (runtime shut down or batcher dropped).
    #[error("auto-batcher is shut down; call the batch API directly")]
    Closed,
    /// The executor returned fewer responses than requests.
    #[error("auto-batcher executor returned no response for this call")]
    NoResponse,
}

struct Job<Req, Resp> {
    request: Req,
    reply: oneshot::Sender<Resp>,
    arrived: Instant,
}

/// Collects single calls into batches; cheap to share behind an `Arc`.
pub struct AutoBatcher<E: BatchExecutor> {
    tx: mpsc::UnboundedSender<Job<E::Request, E::Response>>,
}

impl<E: BatchExecutor> AutoBatcher<E> {
    /// Starts the dispatcher on the current tokio runtime.
    pub fn new(executor: Arc<E>, config: BatchPolicyConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(executor, rx, BatchPolicy::new(config)));
        Self { tx }
    }

    /// Submits one request and waits for its own response.
    pub async fn call(&self, request: E::Request) -> Result<E::Response, BatcherError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request,
            reply,
            arrived: Instant::now(),
        };
        self.tx.send(job).map_err(|_| BatcherError::Closed)?;
        rx.await.map_err(|_| BatcherError::NoResponse)
    }
}

async fn dispatch<E: BatchExecutor>(
    executor: Arc<E>,
    mut rx: mpsc::UnboundedReceiver<Job<E::Request, E::Response>>,
    mut policy: BatchPolicy,
) {
    let mut queue: VecDeque<Job<E::Request, E::Response>> = VecDeque::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Notify::new());
    let mut open = true;
    // Set when a yield to the other tasks brought no new call.
    let mut idle_round = false;
    loop {
        while let Ok(job) = rx.try_recv() {
            policy.on_arrival(job.arrived);
            queue.push_back(job);
        }
        let now = Instant::now();
        let oldest = queue.front().map_or(now, |j| j.arrived);
        let mut decision =
            policy.decide(now, queue.len(), oldest, in_flight.load(Ordering::Acquire));
        if std::mem::take(&mut idle_round) {
            if let Decision::WaitUntil(_) = decision {
                decision = policy.flush_now(queue.len(), in_flight.load(Ordering::Acquire));
            }
        }
        match decision {
            Decision::Flush(n) => {
                policy.on_flush(n);
                let jobs: Vec<_> = queue.drain(..n.min(queue.len())).collect();
                in_flight.fetch_add(1, Ordering::AcqRel);
                let (exec, in_flight, finished) =
                    (executor.clone(), in_flight.clone(), finished.clone());
                tokio::spawn(async move {
                    let (requests, replies): (Vec<_>, Vec<_>) =
                        jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
                    let responses = exec.execute(requests).await;
                    // A reply whose caller went away is simply dropped.
                    for (reply, response) in replies.into_iter().zip(responses) {
                        let _ = reply.send(response);
                    }
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    finished.notify_one();
                });
            }
            // The wait is at most the linger time (tens of µs), below tokio's timer
            // resolution, so yield to the other tasks instead of sleeping. If a whole round
            // of them brought no new call, the burst is over: send what is queued now.
            Decision::WaitUntil(_) => {
                let before = queue.len();
                tokio::task::yield_now().await;
                while let Ok(job) = rx.try_recv() {
                    policy.on_arrival(job.arrived);
                    queue.push_back(job);
                }
                if queue.len() == before {
                    idle_round = true;
                }
                continue;
            }
            Decision::Hold => {
                if !open && queue.is_empty() {
                    return;
                }
                tokio::select! {
                    job = rx.recv(), if open => match job {
                        Some(job) => {
                            policy.on_arrival(job.arrived);
                            queue.push_back(job);
                        }
                        None => open = false,
                    },
                    _ = finished.notified() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// Doubles each request and records the batch sizes it saw.
    struct Doubler {
        sizes: Mutex<Vec<usize>>,
    }

    impl BatchExecutor for Doubler {
        type Request = u64;
        type Response = u64;
        async fn execute(&self, requests: Vec<u64>) -> Vec<u64> {
            self.sizes.lock().push(requests.len());
            tokio::task::yield_now().await;
            requests.into_iter().map(|r| r * 2).collect()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_response_under_concurrency() {
        let exec = Arc::new(Doubler {
            sizes: Mutex::new(Vec::new()),
        });
        let cfg = BatchPolicyConfig {
            max_batch: 16,
            ..Default::default()
        };
        let batcher = Arc::new(AutoBatcher::new(exec.clone(), cfg));
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let b = batcher.clone();
                tokio::spawn(async move {
                    for i in 0..50u64 {
                        let req = t * 1000 + i;
                        assert_eq!(b.call(req).await, Ok(req * 2));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let sizes = exec.sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 64 * 50);
        assert!(sizes.iter().all(|&s| (1..=16).contains(&s)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn calls_queued_together_run_as_one_batch() {
        let exec = Arc::new(Doubler {
            sizes: Mutex::new(Vec::new()),
        });
        let batcher = Arc::new(AutoBatcher::new(exec.clone(), BatchPolicyConfig::default()));
        let calls: Vec<_> = (0..10u64)
            .map(|i| {
                tokio::spawn({
                    let b = batcher.clone();
                    async move { b.call(i).await }
                })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), Ok(i as u64 * 2));
        }
        // All ten were queued before the dispatcher first ran on this single thread.
        assert_eq!(exec.sizes.lock().clone(), vec![10]);
    }

    /// Returns one response too few.
    struct Short;
    impl BatchExecutor for Short {
        type Request = u8;
        type Response = u8;
        async fn execute(&self, mut requests: Vec<u8>) -> Vec<u8> {
            requests.pop();
            requests
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_missing_response_is_an_error_not_a_hang() {
        let batcher = AutoBatcher::new(Arc::new(Short), BatchPolicyConfig::default());
        assert_eq!(batcher.call(7).await, Err(BatcherError::NoResponse));
    }
}
