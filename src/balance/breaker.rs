//! Failure accrual: an endpoint that fails N times in a row is ejected for a while (Envoy's outlier detection,
//! linkerd's consecutive-failures breaker).
//!
//! The ejection grows with each ejection in a row (5 s, 10 s, 20 s … capped at 60 s) and resets after a success.
//! The balancer never lets ejection empty the set: when every usable endpoint is ejected it picks among the
//! ejected ones ("panic mode"), since a possibly-bad endpoint beats a certain `UNAVAILABLE`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tracing::warn;

use crate::telemetry::metrics::Metrics;

const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(60);

/// Consecutive-failure breaker of one endpoint.
pub struct Breaker {
    label: String,
    threshold: u32,
    consecutive: AtomicU32,
    ejected: Mutex<Ejection>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Ejection {
    until: Option<Instant>,
    in_a_row: u32,
}

impl Breaker {
    /// A breaker that ejects after `threshold` consecutive failures; `label` names the endpoint in logs.
    pub fn new(label: String, threshold: u32, metrics: Arc<Metrics>) -> Self {
        Self { label, threshold: threshold.max(1), consecutive: AtomicU32::new(0), ejected: Mutex::default(), metrics }
    }

    /// A call or connect succeeded.
    pub fn record_success(&self) {
        if self.consecutive.swap(0, Relaxed) != 0 || self.lock().in_a_row != 0 {
            let mut e = self.lock();
            if e.until.is_none_or(|u| u <= Instant::now()) {
                e.in_a_row = 0;
                e.until = None;
            }
        }
    }

    /// A call or connect failed; ejects the endpoint when the threshold is reached.
    pub fn record_failure(&self) {
        let n = self.consecutive.fetch_add(1, Relaxed) + 1;
        if n < self.threshold {
            return;
        }
        self.consecutive.store(0, Relaxed);
        let mut e = self.lock();
        let now = Instant::now();
        if e.until.is_some_and(|u| u > now) {
            return;
        }
        let period = BASE_EJECTION.saturating_mul(1 << e.in_a_row.min(8)).min(MAX_EJECTION);
        e.in_a_row = e.in_a_row.saturating_add(1);
        e.until = Some(now + period);
        self.metrics.ejections.fetch_add(1, Relaxed);
        warn!(endpoint = %self.label, failures = n, ejected_for = ?period, "endpoint ejected after consecutive failures");
    }

    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.lock().until.is_some_and(|u| u > now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ejection> {
        self.ejected.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_threshold_consecutive_failures_only() {
        let b = Breaker::new("a".into(), 3, Arc::default());
        let now = Instant::now();
        b.record_failure();
        b.record_failure();
        b.record_success();
        b.record_failure();
        b.record_failure();
        assert!(!b.is_ejected(now), "a success in between resets the count");
        b.record_failure();
        assert!(b.is_ejected(Instant::now()));
        assert!(!b.is_ejected(Instant::now() + BASE_EJECTION + Duration::from_millis(1)));
        assert_eq!(b.metrics.ejections.load(Relaxed), 1);
    }
}
