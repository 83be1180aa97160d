//! The retry decision table of a method's `retryPolicy` (gRFC A6): which statuses, how many attempts, how long
//! to wait, and what the server's pushback does.

use std::time::Duration;

use http::HeaderValue;
use tonic::Code;

use super::PolicyRetry;
use crate::service_config::{RetryPolicy, ServiceConfig};

const MS: Duration = Duration::from_millis(1);

/// A policy retrying `UNAVAILABLE` and `RESOURCE_EXHAUSTED`, backoff 100 ms × 2 up to 300 ms.
fn policy(max_attempts: u32) -> RetryPolicy {
    let json = format!(
        r#"{{"methodConfig": [{{"name": [{{"service": "s.S"}}], "retryPolicy": {{"maxAttempts": {max_attempts},
        "initialBackoff": "0.1s", "maxBackoff": "0.3s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}}}}]}}"#
    );
    let config = ServiceConfig::parse(&json).expect("valid service config");
    config.lookup("/s.S/M").and_then(|p| p.retry.clone()).expect("a retry policy")
}

#[test]
fn without_a_policy_nothing_is_retried() {
    let mut r = PolicyRetry::new(None);
    assert_eq!(r.next(Code::Unavailable, None), None);
}

#[test]
fn a_status_outside_the_retryable_codes_is_not_retried_and_costs_no_attempt() {
    let p = policy(2);
    let mut r = PolicyRetry::new(Some(&p));
    for code in [Code::Internal, Code::DeadlineExceeded, Code::Ok, Code::Cancelled] {
        assert_eq!(r.next(code, None), None, "{code:?}");
    }
    assert!(r.next(Code::Unavailable, None).is_some(), "the one retry of maxAttempts 2 is still there");
    assert_eq!(r.attempts, 2);
}

#[test]
fn attempts_stop_at_max_attempts_counting_the_first() {
    let p = policy(3);
    let mut r = PolicyRetry::new(Some(&p));
    assert!(r.next(Code::Unavailable, None).is_some());
    assert!(r.next(Code::ResourceExhausted, None).is_some());
    assert_eq!(r.next(Code::Unavailable, None), None, "3 attempts made");
}

#[test]
fn the_wait_is_uniform_up_to_the_current_backoff() {
    let p = policy(2);
    let waits: Vec<Duration> =
        (0..200).filter_map(|_| PolicyRetry::new(Some(&p)).next(Code::Unavailable, None)).collect();
    assert_eq!(waits.len(), 200);
    assert!(waits.iter().all(|w| *w <= 100 * MS), "{waits:?}");
    assert!(waits.iter().any(|w| *w > 50 * MS), "jitter spans the whole range: {waits:?}");
    assert!(waits.iter().any(|w| *w < 50 * MS), "jitter spans the whole range: {waits:?}");
}

#[test]
fn the_backoff_multiplies_up_to_its_maximum() {
    let p = policy(5);
    let mut r = PolicyRetry::new(Some(&p));
    assert_eq!(r.backoff, 100 * MS);
    let mut seen = Vec::new();
    while r.next(Code::Unavailable, None).is_some() {
        seen.push(r.backoff);
    }
    assert_eq!(seen, [200 * MS, 300 * MS, 300 * MS, 300 * MS]);
}

#[test]
fn the_servers_pushback_replaces_the_backoff() {
    let p = policy(3);
    let mut r = PolicyRetry::new(Some(&p));
    assert_eq!(r.next(Code::Unavailable, Some(&HeaderValue::from_static("250"))), Some(250 * MS));
    assert_eq!(r.next(Code::Unavailable, Some(&HeaderValue::from_static(" 0 "))), Some(Duration::ZERO));
}

#[test]
fn a_malformed_or_negative_pushback_forbids_the_retry() {
    let p = policy(5);
    for bad in ["-1", "abc", "1.5", ""] {
        let mut r = PolicyRetry::new(Some(&p));
        assert_eq!(r.next(Code::Unavailable, Some(&HeaderValue::from_static(bad))), None, "{bad:?}");
        assert_eq!(r.attempts, 1, "{bad:?}: no attempt counted");
    }
}

#[test]
fn a_pushback_retry_counts_as_an_attempt() {
    let p = policy(2);
    let mut r = PolicyRetry::new(Some(&p));
    assert!(r.next(Code::Unavailable, Some(&HeaderValue::from_static("10"))).is_some());
    assert_eq!(r.next(Code::Unavailable, Some(&HeaderValue::from_static("10"))), None);
}
