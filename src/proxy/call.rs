//! The accounting of one forwarded call.
//!
//! The balancer's [`Attempt`] is one try on one endpoint (it judges the outcome for the endpoint, see
//! [`crate::balance::attempt`]). Once response headers arrive, the attempt becomes a [`CallRecord`], which lives in
//! the response body and also holds the concurrency permit and the metrics, so it ends when the last byte (or a
//! reset) does. [`Unrecorded`] records a call the caller abandoned before any outcome was recorded.

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tonic::Code;

use super::Attempt;
use crate::telemetry::metrics::Metrics;

/// A call whose outcome is not recorded yet. Dropped armed — the caller reset the stream or went away before the
/// sidecar answered — it records the call as `CANCELLED`, so abandoned calls show in the request metrics.
pub struct Unrecorded {
    metrics: Arc<Metrics>,
    method: Arc<str>,
    start: Instant,
    armed: bool,
}

impl Unrecorded {
    /// Arms the record of a call that arrived at `start`.
    pub fn new(metrics: Arc<Metrics>, method: Arc<str>, start: Instant) -> Self {
        Self { metrics, method, start, armed: true }
    }

    /// The outcome was recorded elsewhere.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unrecorded {
    fn drop(&mut self) {
        if self.armed {
            self.metrics.record_call(&self.method, Code::Cancelled, self.start.elapsed());
        }
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
        let mut attempt = attempt;
        attempt.answered();
        Self { attempt, method, start, metrics, _permit: permit }
    }

    /// The address of the endpoint serving the call.
    pub fn endpoint_addr(&self) -> SocketAddr {
        self.attempt.addr()
    }

    /// Ends the call with `code`.
    pub fn finish(&mut self, code: Code) {
        if self.attempt.is_finished() {
            return;
        }
        self.attempt.finish(code);
        self.metrics.record_call(&self.method, code, self.start.elapsed());
    }

    /// Ends the call with `code` from a stream the backend reset (`RST_STREAM`) after answering: a reset concerns
    /// one stream and says nothing about the endpoint's health, so even `REFUSED_STREAM` (`UNAVAILABLE`) does not
    /// count against it.
    pub fn finish_reset(&mut self, code: Code) {
        if self.attempt.is_finished() {
            return;
        }
        self.attempt.finish_reset(code);
        self.metrics.record_call(&self.method, code, self.start.elapsed());
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}
