//! The retry budget: retries may add about `ratio` extra load (20% by default), plus a small floor so a quiet
//! sidecar can still retry (linkerd's and Finagle's retry budget).
//!
//! Without a budget, retries multiply load exactly when backends are failing, which turns a partial outage into
//! a full one.
//!
//! Not tower's `TpsBudget` (`tower::retry::budget`, issue 11.2 asked): its semantics differ in three ways a user of
//! `--retry-budget` would see. (1) Its withdraw cost is `(1 / ratio) as isize`, truncated: `--retry-budget 0.3`
//! would allow 33 %, `0.4` 50 %. (2) Its deposits expire after its `ttl` window (1-60 s), while calls here save up
//! retries until `MAX_TOKENS`: a burst of failures after a quiet minute of successes gets the savings here, none
//! there past the window. (3) Its floor is `min_per_sec × ttl` at once per window, not a continuous refill of
//! `FLOOR_PER_SEC` (here 0.5 s refills 5 retries; there nothing until a window slot expires). The unit tests
//! below pin each of these. Neither is gRFC A6's retry throttling (a bucket that failures drain and successes
//! refill); this is linkerd's and Finagle's shape, ratio-of-calls plus a floor.

use parking_lot::Mutex;
use tokio::time::Instant;

/// Retries allowed per second even with no traffic.
const FLOOR_PER_SEC: f64 = 10.0;
/// Most retries that can be saved up.
const MAX_TOKENS: f64 = 100.0;

/// A token bucket: each call deposits `ratio`, time deposits the floor, each retry withdraws one.
pub struct RetryBudget {
    ratio: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    /// A budget of `ratio` retries per call.
    pub fn new(ratio: f64) -> Self {
        Self { ratio, state: Mutex::new((FLOOR_PER_SEC, Instant::now())) }
    }

    /// Records one call.
    pub fn deposit(&self) {
        let mut s = self.state.lock();
        s.0 = (s.0 + self.ratio).min(MAX_TOKENS);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        let mut s = self.state.lock();
        let now = Instant::now();
        let refill = now.saturating_duration_since(s.1).as_secs_f64() * FLOOR_PER_SEC;
        s.0 = (s.0 + refill).min(MAX_TOKENS);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_ratio_once_the_floor_is_spent() {
        let b = RetryBudget::new(0.2);
        let floor = (0..100).take_while(|_| b.withdraw()).count();
        assert!((10..=11).contains(&floor), "the floor allows about 10 at once, got {floor}");
        for _ in 0..100 {
            b.deposit();
        }
        let more = (0..100).take_while(|_| b.withdraw()).count();
        assert!((20..=21).contains(&more), "100 calls at 20% allow about 20 retries, got {more}");
    }

    /// Withdraws until the budget says no; how many it allowed.
    fn drain(b: &RetryBudget) -> usize {
        (0..1000).take_while(|_| b.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_ten_retries_a_second() {
        let b = RetryBudget::new(0.2);
        assert_eq!(drain(&b), 10, "a new budget holds one second of the floor");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(drain(&b), 10);
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert_eq!(drain(&b), 5, "half a second refills half the floor");
    }

    #[tokio::test(start_paused = true)]
    async fn savings_are_capped_at_a_hundred_retries() {
        let b = RetryBudget::new(0.2);
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        for _ in 0..10_000 {
            b.deposit();
        }
        assert_eq!(drain(&b), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn each_call_deposits_the_ratio() {
        let b = RetryBudget::new(0.5);
        assert_eq!(drain(&b), 10);
        for _ in 0..7 {
            b.deposit();
        }
        assert_eq!(drain(&b), 3, "7 calls at 50% are 3.5 retries: 3 whole ones");
        b.deposit();
        assert_eq!(drain(&b), 1, "the half left over and one more half make one");
    }
}
