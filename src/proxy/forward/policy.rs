//! A method's `retryPolicy` (gRFC A6) for one call: whether and when it is sent again after a status.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use http::HeaderValue;
use tokio::time::Instant;
use tonic::Code;

use crate::{
    proxy::{Proxy, replay::ReplayBody},
    service_config::RetryPolicy,
};

impl Proxy {
    /// Whether the method's retry policy sends the call again after it ended with `code` (gRFC A6): the code is
    /// retryable, attempts remain, the request body was kept, the budget allows it, and the backoff (or the
    /// server's `grpc-retry-pushback-ms`; a malformed or negative one forbids the retry) ends before the deadline.
    /// Waits out the backoff when it does.
    pub(super) async fn policy_retry(
        &self,
        retry: &mut PolicyRetry<'_>,
        code: Code,
        pushback: Option<&HeaderValue>,
        origin: &ReplayBody,
        deadline: Instant,
    ) -> bool {
        let Some(delay) = retry.next(code, pushback) else { return false };
        if origin.replay().is_none() || Instant::now() + delay >= deadline {
            return false;
        }
        if !self.budget.withdraw() {
            self.metrics.retries_refused_by_budget.fetch_add(1, Relaxed);
            return false;
        }
        self.metrics.retries_policy.fetch_add(1, Relaxed);
        tokio::time::sleep(delay).await;
        true
    }
}

/// The state of one call's `retryPolicy`: attempts made and the next backoff.
pub(super) struct PolicyRetry<'a> {
    policy: Option<&'a RetryPolicy>,
    attempts: u32,
    backoff: Duration,
}

impl<'a> PolicyRetry<'a> {
    pub(super) fn new(policy: Option<&'a RetryPolicy>) -> Self {
        Self { policy, attempts: 1, backoff: policy.map_or(Duration::ZERO, |p| p.initial_backoff) }
    }

    /// The wait before the next attempt, if the policy retries after `code`: uniform in `[0, backoff]`, the
    /// backoff then multiplied up to its maximum; or the server's pushback.
    pub(super) fn next(&mut self, code: Code, pushback: Option<&HeaderValue>) -> Option<Duration> {
        let policy = self.policy?;
        if !policy.retryable.contains(code) || self.attempts >= policy.max_attempts {
            return None;
        }
        let delay = match pushback {
            Some(v) => Duration::from_millis(v.to_str().ok()?.trim().parse::<u64>().ok()?),
            None => self.backoff.mul_f64(rand::random::<f64>()),
        };
        self.attempts += 1;
        // Saturating: any multiplier above 0 is valid, and a product past `Duration`'s range is `maxBackoff`.
        self.backoff = Duration::try_from_secs_f64(self.backoff.as_secs_f64() * policy.backoff_multiplier)
            .map_or(policy.max_backoff, |b| b.min(policy.max_backoff));
        Some(delay)
    }
}

#[cfg(test)]
mod retry_tests;
