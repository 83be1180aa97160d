//! The accounting of one forwarded call.
//!
//! An [`Attempt`] is one try on one endpoint: it counts the call in flight there and reports the outcome to the
//! endpoint's breaker. Once response headers arrive, the attempt becomes a [`CallRecord`], which lives in the
//! response body and also holds the concurrency permit and the metrics, so it ends when the last byte (or a
//! reset) does.

use std::{sync::Arc, time::Instant};

use tokio::sync::OwnedSemaphorePermit;
use tonic::Code;

use crate::{balance::Endpoint, pool::Lease, telemetry::metrics::Metrics};

/// One try of a call on one endpoint. Dropping it unfinished counts as cancelled (no breaker verdict).
pub struct Attempt {
    endpoint: Arc<Endpoint>,
    finished: bool,
    /// The connection this attempt uses, counted in flight there until the call ends.
    _lease: Lease,
}

impl Attempt {
    /// Counts a call in flight on `endpoint` and on the leased connection.
    pub fn begin(endpoint: Arc<Endpoint>, lease: Lease) -> Self {
        endpoint.load.start();
        Self { endpoint, finished: false, _lease: lease }
    }

    /// The endpoint tried.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Ends the attempt with `code`: transport-level codes count against the endpoint's breaker.
    pub fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.endpoint.load.finish();
        match code {
            Code::Unavailable | Code::DeadlineExceeded => self.endpoint.breaker.record_failure(),
            Code::Cancelled | Code::ResourceExhausted => {}
            _ => self.endpoint.breaker.record_success(),
        }
    }
}

impl Attempt {
    /// Ends the attempt with no verdict on the endpoint: the request never reached its application (a refused
    /// stream, above a GOAWAY's last-stream-id), which says nothing about the endpoint's health.
    pub fn release(mut self) {
        self.finished = true;
        self.endpoint.load.finish();
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// A call whose response is streaming back. Finishing it records the call once; dropping it unfinished records
/// `CANCELLED` (the client went away).
pub struct CallRecord {
    attempt: Attempt,
    method: Arc<str>,
    start: Instant,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl CallRecord {
    /// Turns the successful attempt into the call's record.
    pub fn new(
        attempt: Attempt,
        method: Arc<str>,
        start: Instant,
        metrics: Arc<Metrics>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self { attempt, method, start, metrics, _permit: permit }
    }

    /// The endpoint serving the call.
    pub fn endpoint(&self) -> &Endpoint {
        self.attempt.endpoint()
    }

    /// Ends the call with `code`.
    pub fn finish(&mut self, code: Code) {
        if self.attempt.finished {
            return;
        }
        self.attempt.finish(code);
        self.metrics.record_call(&self.method, code, self.start.elapsed());
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}
