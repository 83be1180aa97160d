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
use crate::{proxy::call_log::CallLog, telemetry::metrics::Metrics};

/// A call whose outcome is not recorded yet. Dropped armed — the caller reset the stream or went away before the
/// sidecar answered — it records the call as `CANCELLED`, so abandoned calls show in the request metrics.
pub struct Unrecorded {
    metrics: Arc<Metrics>,
    method: Arc<str>,
    start: Instant,
    armed: bool,
    /// The call's access log details, filled as the call goes.
    pub log: CallLog,
}

impl Unrecorded {
    /// Arms the record of a call that arrived at `start`.
    pub fn new(metrics: Arc<Metrics>, method: Arc<str>, start: Instant) -> Self {
        let log = CallLog::new(&metrics);
        Self { metrics, method, start, armed: true, log }
    }

    /// The outcome is recorded elsewhere; what is left of the access log details (nothing, once a
    /// [`CallRecord`] took them).
    pub fn disarm(mut self) -> CallLog {
        self.armed = false;
        std::mem::take(&mut self.log)
    }
}

impl Drop for Unrecorded {
    fn drop(&mut self) {
        if self.armed {
            self.metrics.record_call(&self.method, Code::Cancelled, self.start.elapsed());
            self.log.finish(&self.metrics, &self.method, Code::Cancelled, self.start);
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
    /// The call's `--max-concurrent-calls` slot, given back when the call ends (not when its response body is
    /// dropped, which an app that stops reading can put off indefinitely).
    permit: Option<OwnedSemaphorePermit>,
    log: CallLog,
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
        let log = CallLog::new(&metrics);
        Self { attempt, method, start, metrics, permit: Some(permit), log }
    }

    /// Attaches the call's access log details, written when the call ends (without them, the line has the
    /// answering endpoint and no retries or request bytes).
    pub fn with_log(mut self, log: CallLog) -> Self {
        self.log = log;
        self
    }

    /// Counts response body bytes passed to the caller (for the access log).
    pub fn sent(&mut self, bytes: usize) {
        self.log.response_bytes += bytes as u64;
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
        self.permit = None;
        self.metrics.record_call(&self.method, code, self.start.elapsed());
        self.log.answered_by(self.attempt.endpoint());
        self.log.finish(&self.metrics, &self.method, code, self.start);
    }

    /// Ends the call with `code` from a stream the backend reset (`RST_STREAM`) after answering: a reset concerns
    /// one stream and says nothing about the endpoint's health, so even `REFUSED_STREAM` (`UNAVAILABLE`) does not
    /// count against it.
    pub fn finish_reset(&mut self, code: Code) {
        if self.attempt.is_finished() {
            return;
        }
        self.attempt.finish_reset(code);
        self.permit = None;
        self.metrics.record_call(&self.method, code, self.start.elapsed());
        self.log.answered_by(self.attempt.endpoint());
        self.log.finish(&self.metrics, &self.method, code, self.start);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}
