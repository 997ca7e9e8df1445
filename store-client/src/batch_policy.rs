//! When the auto-batcher sends the calls it has collected: the pure decision, clock injected.
//!
//! Single-key calls queue up; the policy looks at how many are waiting, how long the oldest has
//! waited, how many batches are already running and how fast calls have been arriving, and
//! says: send `n` now, wait until a given instant, or hold (wait for an arrival or for a
//! running batch to finish). It adapts to load: while recent batches held one call each
//! (idle, or one caller at a time), a call is sent at once and pays no wait; once calls pile
//! up (batches grow past one), a batch waits at most the linger time, or only as long as
//! filling it is expected to take at the observed arrival rate.

use std::time::{Duration, Instant};

/// Tuning of the auto-batcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicyConfig {
    /// Longest a call waits for company (50-200 µs is typical).
    pub max_linger: Duration,
    /// Most calls in one batch.
    pub max_batch: usize,
    /// Most batches running at once; further calls queue meanwhile.
    pub max_in_flight: usize,
}

impl Default for BatchPolicyConfig {
    fn default() -> Self {
        Self {
            max_linger: Duration::from_micros(100),
            max_batch: 256,
            max_in_flight: 4,
        }
    }
}

/// What the driver should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the oldest `n` queued calls as one batch.
    Flush(usize),
    /// Nothing to send before this instant (unless more calls arrive).
    WaitUntil(Instant),
    /// Nothing to send until a call arrives or a running batch finishes.
    Hold,
}

/// Adaptive batching policy (pure: all time comes in as arguments).
#[derive(Clone, Debug)]
pub struct BatchPolicy {
    config: BatchPolicyConfig,
    last_arrival: Option<Instant>,
    /// Exponentially weighted mean time between arrivals, in nanoseconds.
    mean_gap_ns: f64,
    /// Exponentially weighted mean of the gaps shorter than the linger time (the spacing of
    /// calls inside a burst), in nanoseconds.
    burst_gap_ns: f64,
    /// Exponentially weighted mean size of the batches sent.
    mean_batch: f64,
}

/// A burst is over once no call came for this many intra-burst gaps.
const QUIET_GAPS: f64 = 4.0;
/// Shortest quiet period that ends a burst (timer and scheduling noise are below it).
const MIN_QUIET_NS: f64 = 20_000.0;

/// Below this mean batch size the load counts as idle: calls are sent without waiting.
const IDLE_MEAN_BATCH: f64 = 1.5;

/// A burst that finds no batch running is sent as two halves once each half holds at least
/// this many calls: two batches in flight overlap one's master lookup with the other's data
/// transfer, and the callers of the first come back while the second runs.
const MIN_SPLIT_BATCH: usize = 16;

/// Weight of the newest gap in the running mean.
const GAP_WEIGHT: f64 = 0.125;

impl BatchPolicy {
    /// A policy that starts out assuming an idle system.
    pub fn new(config: BatchPolicyConfig) -> Self {
        let config = BatchPolicyConfig {
            max_batch: config.max_batch.max(1),
            max_in_flight: config.max_in_flight.max(1),
            ..config
        };
        Self {
            config,
            last_arrival: None,
            mean_gap_ns: f64::INFINITY,
            burst_gap_ns: f64::INFINITY,
            mean_batch: 1.0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> BatchPolicyConfig {
        self.config
    }

    /// Records that a call arrived at `now`.
    pub fn on_arrival(&mut self, now: Instant) {
        if let Some(last) = self.last_arrival {
            let gap = now.saturating_duration_since(last).as_nanos() as f64;
            self.mean_gap_ns = ewma(self.mean_gap_ns, gap);
            if gap < self.config.max_linger.as_nanos() as f64 {
                self.burst_gap_ns = ewma(self.burst_gap_ns, gap);
            }
        }
        self.last_arrival = Some(now);
    }

    /// Records that a batch of `n` calls was sent.
    pub fn on_flush(&mut self, n: usize) {
        self.mean_batch += GAP_WEIGHT * (n as f64 - self.mean_batch);
    }

    /// Whether the policy currently sends calls without waiting.
    pub fn is_idle(&self) -> bool {
        self.mean_batch < IDLE_MEAN_BATCH
    }

    /// Expected time between arrivals (infinite before two calls were seen).
    pub fn mean_gap(&self) -> Option<Duration> {
        self.mean_gap_ns
            .is_finite()
            .then(|| Duration::from_nanos(self.mean_gap_ns as u64))
    }

    /// Decides, at `now`, with `queued` calls waiting (the oldest since `oldest`) and
    /// `in_flight` batches running.
    pub fn decide(
        &self,
        now: Instant,
        queued: usize,
        oldest: Instant,
        in_flight: usize,
    ) -> Decision {
        let c = &self.config;
        if queued == 0 || in_flight >= c.max_in_flight {
            return Decision::Hold;
        }
        if queued >= c.max_batch {
            return Decision::Flush(c.max_batch);
        }
        // Idle: no company is expected, so waiting buys nothing.
        if self.is_idle() {
            return Decision::Flush(queued);
        }
        // Busy: wait as long as filling the batch should take, at most the linger time, and
        // no longer than the burst of calls lasts (when all concurrent callers are in, more
        // waiting only adds latency).
        let linger_ns = c.max_linger.as_nanos() as f64;
        let fill_ns = self.mean_gap_ns * (c.max_batch - queued) as f64;
        let mut deadline = oldest + Duration::from_nanos(fill_ns.min(linger_ns) as u64);
        if let (Some(last), true) = (self.last_arrival, self.burst_gap_ns.is_finite()) {
            let quiet =
                (QUIET_GAPS * self.burst_gap_ns).clamp(MIN_QUIET_NS, linger_ns.max(MIN_QUIET_NS));
            deadline = deadline.min(last + Duration::from_nanos(quiet as u64));
        }
        if now >= deadline {
            self.flush_now(queued, in_flight)
        } else {
            Decision::WaitUntil(deadline)
        }
    }

    /// Sends what is queued now (the burst is over): at most a full batch, and only half of
    /// it when nothing is running (the rest goes as the next batch, see [`MIN_SPLIT_BATCH`]).
    pub fn flush_now(&self, queued: usize, in_flight: usize) -> Decision {
        let n = queued.min(self.config.max_batch);
        if in_flight == 0 && self.config.max_in_flight >= 2 && n >= 2 * MIN_SPLIT_BATCH {
            Decision::Flush(n.div_ceil(2))
        } else {
            Decision::Flush(n)
        }
    }
}

/// One step of an exponentially weighted mean (the first sample seeds it).
fn ewma(mean: f64, sample: f64) -> f64 {
    if mean.is_finite() {
        mean + GAP_WEIGHT * (sample - mean)
    } else {
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch: usize) -> BatchPolicyConfig {
        BatchPolicyConfig {
            max_linger: Duration::from_micros(100),
            max_batch: batch,
            max_in_flight: 2,
        }
    }

    #[test]
    fn idle_call_is_sent_at_once() {
        let p = BatchPolicy::new(cfg(64));
        let t = Instant::now();
        assert_eq!(p.decide(t, 1, t, 0), Decision::Flush(1));
    }

    #[test]
    fn one_caller_at_a_time_does_not_wait() {
        let mut p = BatchPolicy::new(cfg(64));
        let t = Instant::now();
        for i in 0..10 {
            p.on_arrival(t + Duration::from_micros(i * 5));
            p.on_flush(1);
        }
        let now = t + Duration::from_micros(45);
        assert!(p.is_idle());
        assert_eq!(p.decide(now, 1, now, 0), Decision::Flush(1));
    }

    /// Bursty load: calls pile up, so batches grow and the policy starts lingering; when the
    /// load goes back to one call at a time it stops lingering again.
    #[test]
    fn growing_batches_switch_to_lingering_and_back() {
        let mut p = BatchPolicy::new(cfg(64));
        let t = Instant::now();
        for i in 0..20 {
            p.on_arrival(t + Duration::from_micros(i));
        }
        p.on_flush(20);
        assert!(!p.is_idle());
        let now = t + Duration::from_micros(20);
        assert!(matches!(p.decide(now, 1, now, 0), Decision::WaitUntil(_)));
        for _ in 0..40 {
            p.on_flush(1);
        }
        assert!(p.is_idle());
    }

    /// Calls 2 µs apart: the batch waits for the burst to end (a short quiet period), not
    /// for the whole 100 µs linger time.
    #[test]
    fn busy_batch_waits_until_the_burst_ends() {
        let mut p = BatchPolicy::new(cfg(64));
        let t = Instant::now();
        for i in 0..20 {
            p.on_arrival(t + Duration::from_micros(i * 2));
        }
        p.on_flush(20);
        let last = t + Duration::from_micros(38);
        match p.decide(last, 3, last, 0) {
            Decision::WaitUntil(d) => {
                assert!(
                    d > last && d - last <= Duration::from_micros(20),
                    "{:?}",
                    d - last
                )
            }
            other => panic!("expected a short wait, got {other:?}"),
        }
        let quiet = last + Duration::from_micros(20);
        assert_eq!(p.decide(quiet, 3, last, 0), Decision::Flush(3));
    }

    /// A burst that keeps going is cut at the linger time.
    #[test]
    fn a_long_burst_is_cut_at_the_linger_time() {
        let mut p = BatchPolicy::new(cfg(1000));
        let t = Instant::now();
        p.on_flush(50);
        let mut now = t;
        for i in 0..200u64 {
            now = t + Duration::from_micros(i);
            p.on_arrival(now);
            if now >= t + Duration::from_micros(100) {
                // Everything goes: half now (nothing is running), the rest right behind it.
                let n = i as usize + 1;
                assert_eq!(p.decide(now, n, t, 0), Decision::Flush(n.div_ceil(2)));
                assert_eq!(p.decide(now, n / 2, t, 1), Decision::Flush(n / 2));
                return;
            }
            assert!(matches!(
                p.decide(now, i as usize + 1, t, 0),
                Decision::WaitUntil(_)
            ));
        }
        panic!("never flushed by {now:?}");
    }

    #[test]
    fn full_batch_flushes_and_in_flight_limit_holds() {
        let p = BatchPolicy::new(cfg(8));
        let t = Instant::now();
        assert_eq!(p.decide(t, 20, t, 0), Decision::Flush(8));
        assert_eq!(p.decide(t, 20, t, 2), Decision::Hold);
        assert_eq!(p.decide(t, 0, t, 0), Decision::Hold);
    }

    #[test]
    fn a_large_burst_with_nothing_running_goes_as_two_batches() {
        let mut p = BatchPolicy::new(cfg(256));
        let t = Instant::now();
        for i in 0..64 {
            p.on_arrival(t + Duration::from_nanos(i * 100));
        }
        p.on_flush(64);
        let later = t + Duration::from_millis(1);
        assert!(!p.is_idle());
        // Nothing running: half now, then the rest while the first half runs.
        assert_eq!(p.decide(later, 64, t, 0), Decision::Flush(32));
        assert_eq!(p.decide(later, 32, t, 1), Decision::Flush(32));
        // Small bursts are not split.
        assert_eq!(p.decide(later, 20, t, 0), Decision::Flush(20));
    }
}
