//! One try of a call on one endpoint, and how its outcome is judged: the balancer's side of a call.
//!
//! [`super::Balancer::pick`] returns a [`super::Picked`]; [`super::Picked::begin`] turns it into an [`Attempt`],
//! which counts the call in flight on the endpoint and on the leased connection, feeds the endpoint's latency
//! estimate and reports the outcome to the endpoint's breaker. Nothing outside the balancer touches an endpoint's
//! accounting.
//!
//! How an outcome is judged (what counts against the endpoint):
//! - answered (response headers came): `UNAVAILABLE` is a failure, whether the application answered it or the
//!   connection failed mid-response (Envoy's outlier detection counts it as a gateway failure; a gRPC server says
//!   `UNAVAILABLE` when it cannot serve, e.g. overloaded or shutting down), unless the backend reset the stream
//!   (`REFUSED_STREAM`: one stream's fate, not the endpoint's health); a caller's cancel or deadline after the
//!   answer began says nothing about the endpoint; any other status is a success (the endpoint works, whatever
//!   the application said).
//! - not answered: a failed connection or stream (`UNAVAILABLE`) is a failure; a deadline or a cancel is a failure
//!   only when the endpoint was silent much longer than its own answers take
//!   ([`crate::balance::breaker::silence_is_failure`]), and then, if the endpoint has answered before, it is hung
//!   and ejected at once ([`crate::balance::breaker::Breaker::record_hang`]); either way the elapsed time enters
//!   the estimate, as tower's `PeakEwma` does when a call is dropped.
//! - [`Attempt::release`]: no verdict at all (the request was refused before any processing).
//! - a probe (the one call to an endpoint on probation) is judged when its response headers come: the endpoint
//!   answered, so it is re-admitted, and a long stream cannot hold the endpoint on probation; a probe that ends
//!   without headers is judged as above.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::Code;

use super::{
    Endpoint,
    breaker::{ProbeSlot, silence_is_failure},
};
use crate::pool::Lease;

/// Where a re-admitted endpoint's latency estimate starts: linkerd's default RTT for an endpoint it knows nothing
/// of. Pessimistic against pods answering in a millisecond, so a pod back from ejection takes calls gradually.
pub const READMIT_RTT: Duration = Duration::from_millis(30);

/// One try of a call on one endpoint. Dropping it unfinished counts as cancelled by the caller.
pub struct Attempt<B> {
    endpoint: Arc<Endpoint<B>>,
    started: Instant,
    /// How long the endpoint takes to answer, as estimated when the attempt began (the silence rule compares
    /// against it).
    estimate: Duration,
    answered: bool,
    /// The probe slot, while this attempt is the one probe of an endpoint on probation and not judged yet.
    probe: Option<ProbeSlot>,
    finished: bool,
    /// The connection this attempt uses, counted in flight there until the call ends.
    _lease: Lease<B>,
}

impl<B> Attempt<B> {
    /// Counts a call in flight on `endpoint` and on the leased connection; with `probe` (from
    /// [`crate::balance::Picked`]) this attempt is the endpoint's probe.
    pub fn begin(endpoint: Arc<Endpoint<B>>, lease: Lease<B>, probe: Option<ProbeSlot>) -> Self {
        let started = Instant::now();
        let estimate = endpoint.load.answer_estimate();
        endpoint.load.start();
        Self { endpoint, started, estimate, answered: false, probe, finished: false, _lease: lease }
    }

    /// The address of the endpoint tried.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// The endpoint tried (read-only: its accounting changes only through attempts).
    pub fn endpoint(&self) -> &Arc<Endpoint<B>> {
        &self.endpoint
    }

    /// Whether [`Attempt::finish`] (or [`Attempt::finish_reset`]) has ended it.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Response headers arrived: the endpoint answered, and the time to the answer enters its estimate.
    pub fn answered(&mut self) {
        if self.answered || self.finished {
            return;
        }
        self.answered = true;
        self.endpoint.load.answered(self.started.elapsed());
        // A probe's verdict: the endpoint answered.
        if let Some(slot) = self.probe.take()
            && slot.done(Some(true))
        {
            self.endpoint.load.reset_pessimistic(READMIT_RTT);
        }
    }

    /// Ends the attempt with `code`, judged as the module documents.
    pub fn finish(&mut self, code: Code) {
        self.finish_as(code, false);
    }

    /// Ends the attempt with `code` from a stream the backend reset (`RST_STREAM`) after answering: a reset concerns
    /// one stream and says nothing about the endpoint's health, so even `REFUSED_STREAM` (`UNAVAILABLE`) does not
    /// count against it.
    pub fn finish_reset(&mut self, code: Code) {
        self.finish_as(code, true);
    }

    /// [`Attempt::finish`]; `reset`: the backend reset the stream after answering, which is never a failure.
    fn finish_as(&mut self, code: Code, reset: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let load = &self.endpoint.load;
        let mut hung = false;
        let verdict = if self.answered {
            match code {
                Code::Unavailable if reset => None,
                Code::Unavailable => Some(false),
                Code::Cancelled | Code::DeadlineExceeded | Code::ResourceExhausted => None,
                _ => Some(true),
            }
        } else {
            let silence = load.silent_for(self.started);
            match code {
                Code::ResourceExhausted => {
                    load.withdrawn();
                    None
                }
                Code::Unavailable => {
                    load.unanswered(self.started.elapsed());
                    Some(false)
                }
                Code::Cancelled | Code::DeadlineExceeded => {
                    load.unanswered(self.started.elapsed());
                    hung = silence_is_failure(silence, self.estimate) && !self.estimate.is_zero();
                    silence_is_failure(silence, self.estimate).then_some(false)
                }
                _ => {
                    load.answered(self.started.elapsed());
                    Some(true)
                }
            }
        };
        load.finish();
        self.endpoint.stats.record(code, self.started.elapsed());
        self.judge(verdict, hung);
    }

    /// Ends the attempt with no verdict on the endpoint and nothing learnt about its latency: for a request the
    /// endpoint refused before processing it (`REFUSED_STREAM`, a GOAWAY past the stream). A probe released so
    /// leaves the probe slot to the next call.
    pub fn release(mut self) {
        self.finished = true;
        if !self.answered {
            self.endpoint.load.withdrawn();
        }
        self.endpoint.load.finish();
        self.judge(None, false);
    }

    /// Ends an attempt the sidecar cancelled itself (a hedge that lost to another attempt): like
    /// [`Attempt::release`], no verdict and nothing learnt about latency, since the endpoint did nothing wrong and
    /// the time it ran says nothing about how long it takes to answer.
    pub fn abandon(self) {
        self.release();
    }

    /// Reports `verdict` to the breaker: to the probe slot if this attempt still holds it; `hung` (no answer,
    /// silent far past its usual answer time) ejects at once.
    fn judge(&mut self, verdict: Option<bool>, hung: bool) {
        let breaker = &self.endpoint.breaker;
        if let Some(slot) = self.probe.take() {
            if slot.done(verdict) {
                self.endpoint.load.reset_pessimistic(READMIT_RTT);
            }
            return;
        }
        match verdict {
            Some(false) if hung => breaker.record_hang(),
            Some(true) => breaker.record_success(),
            Some(false) => breaker.record_failure(),
            None => {}
        }
    }
}

impl<B> Drop for Attempt<B> {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}
