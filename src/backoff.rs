//! The one backoff shape of the sidecar: exponential, doubling from a first delay up to a cap, never giving up.
//!
//! Built on `backon` (a maintained crate, already in the tree through kube-runtime). Every retrying loop uses it:
//! the pool's reconnects (with full jitter on top, see `pool`), discovery's re-lists and DNS retries (jittered),
//! the Kubernetes client set-up, ejection periods (exact, so an operator can predict them), and failed accepts.
//! Delays come from the iterator and are slept on tokio's clock, so every user is testable on a paused clock.

use std::time::Duration;

pub use backon::ExponentialBackoff;
use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays of `first`, `2 × first`, `4 × first`, … up to `cap`, then `cap` forever.
pub fn exponential(first: Duration, cap: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default().with_min_delay(first).with_max_delay(cap).with_factor(2.0).without_max_times()
}

/// [`exponential`], built without jitter.
pub fn doubling(first: Duration, cap: Duration) -> ExponentialBackoff {
    exponential(first, cap).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_and_stays_there() {
        let s = Duration::from_secs;
        let got: Vec<Duration> = doubling(s(5), s(60)).take(7).collect();
        assert_eq!(got, [s(5), s(10), s(20), s(40), s(60), s(60), s(60)]);
    }

    #[test]
    fn jitter_adds_up_to_one_delay_and_never_ends() {
        let ms = Duration::from_millis;
        let mut b = exponential(ms(800), ms(30_000)).with_jitter().build();
        let first = b.next().expect("never ends");
        assert!(first >= ms(800) && first < ms(1600), "{first:?}");
        assert!(b.nth(1000).is_some_and(|d| d >= ms(30_000) && d < ms(60_000)));
    }
}
