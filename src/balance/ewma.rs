//! Peak-EWMA load: a latency estimate that jumps up at once on a slow response and decays slowly, multiplied by
//! the calls in flight (Finagle's and tower's `PeakEwma`).
//!
//! Written here rather than wrapping tower's `PeakEwma` service: that one needs `&mut` access per call, which in a
//! shared balancer means a `Buffer` task hop on every call; here the estimate is a small mutex-protected pair and
//! the in-flight count an atomic, readable from any task.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// Smallest RTT used in the cost, so a fresh endpoint (no estimate yet) is cheap but not free.
const FLOOR_NS: f64 = 1_000.0;

/// The load of one endpoint.
pub struct PeakEwma {
    decay_ns: f64,
    estimate: Mutex<Estimate>,
    pending: AtomicU32,
}

struct Estimate {
    rtt_ns: f64,
    at: Instant,
}

impl PeakEwma {
    /// A new estimate that decays over `decay` (tower and linkerd use 10 s).
    pub fn new(decay: Duration) -> Self {
        Self {
            decay_ns: decay.as_nanos().max(1) as f64,
            estimate: Mutex::new(Estimate { rtt_ns: 0.0, at: Instant::now() }),
            pending: AtomicU32::new(0),
        }
    }

    /// The cost of sending one more call here: decayed RTT estimate × (calls in flight + 1).
    pub fn cost(&self) -> f64 {
        let (rtt, pending) = self.load();
        rtt * (f64::from(pending) + 1.0)
    }

    /// The decayed RTT estimate (at least the floor), in nanoseconds, and the calls in flight.
    pub fn load(&self) -> (f64, u32) {
        let now = Instant::now();
        let mut e = self.lock();
        let elapsed = now.saturating_duration_since(e.at).as_nanos() as f64;
        e.rtt_ns *= (-elapsed / self.decay_ns).exp();
        e.at = now;
        (e.rtt_ns.max(FLOOR_NS), self.pending.load(Relaxed))
    }

    /// Marks a call started; pair with [`PeakEwma::finish`].
    pub fn start(&self) {
        self.pending.fetch_add(1, Relaxed);
    }

    /// Marks a call finished.
    pub fn finish(&self) {
        self.pending.fetch_sub(1, Relaxed);
    }

    /// Folds in one observed round-trip time: a higher value replaces the estimate (the peak), a lower one is
    /// averaged in, weighted by how long ago the estimate was updated.
    pub fn observe(&self, rtt: Duration) {
        let rtt_ns = rtt.as_nanos() as f64;
        let now = Instant::now();
        let mut e = self.lock();
        if rtt_ns > e.rtt_ns {
            e.rtt_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(e.at).as_nanos() as f64;
            let decay = (-elapsed / self.decay_ns).exp();
            e.rtt_ns = e.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        e.at = now;
    }

    /// Calls in flight.
    pub fn pending(&self) -> u32 {
        self.pending.load(Relaxed)
    }

    /// The current estimate without decaying it, in seconds.
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(self.lock().rtt_ns as u64)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Estimate> {
        self.estimate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_response_raises_the_cost_at_once() {
        let fast = PeakEwma::new(Duration::from_secs(10));
        let slow = PeakEwma::new(Duration::from_secs(10));
        fast.observe(Duration::from_micros(300));
        slow.observe(Duration::from_millis(20));
        assert!(slow.cost() > 10.0 * fast.cost());
        // A fast answer after the peak only pulls the estimate down slowly.
        slow.observe(Duration::from_micros(300));
        assert!(slow.estimate() > Duration::from_millis(15));
    }

    #[test]
    fn calls_in_flight_multiply_the_cost() {
        let e = PeakEwma::new(Duration::from_secs(10));
        e.observe(Duration::from_millis(1));
        let idle = e.cost();
        e.start();
        e.start();
        assert_eq!(e.pending(), 2);
        assert!(e.cost() > 2.5 * idle);
        e.finish();
        assert_eq!(e.pending(), 1);
    }
}
