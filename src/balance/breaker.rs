//! Failure accrual: an endpoint that fails N times in a row is ejected for a while, then put on probation
//! (Envoy's outlier detection, linkerd's consecutive-failures breaker).
//!
//! - **Closed**: calls flow; N consecutive failures eject the endpoint, and so does one hang
//!   ([`Breaker::record_hang`]).
//! - **Ejected** for a backoff: 5 s, doubling with every ejection in a row, capped at 60 s.
//! - **Probation** once the backoff has passed: exactly ONE call (the probe) is admitted, its slot taken in the
//!   same step as the choice ([`Breaker::admit`]). If it succeeds (answers, see `proxy::call`) the endpoint is
//!   re-admitted and the backoff starts over; if it fails the endpoint is ejected again for twice as
//!   long; if it ends without a verdict (the caller cancelled early) the next call may probe. This is linkerd's
//!   breaker ("probation"): an ejection never ends on a timer alone, so a pod that is still hung costs one call per
//!   backoff step, not every call in flight.
//!
//! The balancer never lets ejection empty the set: when every usable endpoint is ejected it picks among the
//! ejected ones ("panic mode"), since a possibly-bad endpoint beats a certain `UNAVAILABLE`.
//!
//! What counts as a failure is decided by the caller of [`Breaker::record_failure`]; for calls that end without an
//! answer the rule is [`silence_is_failure`].

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::telemetry::metrics::Metrics;

const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(60);

/// A call that got no answer counts against its endpoint only after this much silence, however fast the endpoint
/// usually is.
pub const SILENCE_FLOOR: Duration = Duration::from_millis(250);
/// … and only after this many times the endpoint's own latency estimate.
pub const SILENCE_FACTOR: u32 = 5;

/// Whether a call that ended without an answer (its deadline passed, or its caller cancelled) says the endpoint is
/// unhealthy: only when the endpoint has been silent — no answer to any call — for much longer than its own
/// latency estimate: at least [`SILENCE_FACTOR`] × `estimate` and at least [`SILENCE_FLOOR`]. `estimate` is how long
/// the endpoint takes to *answer* ([`super::ewma::PeakEwma::answer_estimate`]): unanswered calls are left out of it,
/// or each timeout would raise the bar for the next one.
///
/// A deadline the caller chose too short says nothing about the pod (issue 16.7: 1 ms deadlines on 3 ms handlers
/// must not eject healthy pods), while a hung pod is silent for the whole deadline (issue 10.1). The shape follows
/// linkerd's response classification (failure accrual judges responses, and a call the client gave up on is not a
/// response) and Envoy's outlier detection, which keeps locally originated timeouts apart from what the upstream
/// answered and ejects on consecutive *gateway* failures only.
pub fn silence_is_failure(silence: Duration, estimate: Duration) -> bool {
    silence >= SILENCE_FLOOR.max(estimate.saturating_mul(SILENCE_FACTOR))
}

/// Consecutive-failure breaker of one endpoint.
pub struct Breaker {
    label: String,
    threshold: u32,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Ejected { until: Instant },
    Probation { probe_out: bool },
}

struct State {
    phase: Phase,
    consecutive: u32,
    /// The next ejection periods: 5 s doubling to 60 s, started over on re-admission.
    periods: crate::backoff::ExponentialBackoff,
}

/// Ejection periods of an endpoint re-admitted (or never ejected): [`BASE_EJECTION`] doubling to [`MAX_EJECTION`].
fn ejection_periods() -> crate::backoff::ExponentialBackoff {
    crate::backoff::doubling(BASE_EJECTION, MAX_EJECTION)
}

/// What the breaker says of an endpoint now, for metrics and `/debug/endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Taking calls.
    Ok,
    /// Ejected until its backoff passes.
    Ejected,
    /// Backoff over: one probe call decides.
    Probation,
}

impl Health {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Ejected => "ejected",
            Health::Probation => "probation",
        }
    }
}

impl Breaker {
    /// A breaker that ejects after `threshold` consecutive failures; `label` names the endpoint in logs.
    pub fn new(label: String, threshold: u32, metrics: Arc<Metrics>) -> Self {
        let state = State { phase: Phase::Closed, consecutive: 0, periods: ejection_periods() };
        Self { label, threshold: threshold.max(1), state: Mutex::new(state), metrics }
    }

    /// A call or connect succeeded. Only a probe (see [`Breaker::probe_done`]) ends an ejection.
    pub fn record_success(&self) {
        let mut s = self.lock();
        if s.phase == Phase::Closed {
            s.consecutive = 0;
        }
    }

    /// A call or connect failed; ejects the endpoint when the threshold is reached, or again (for twice as long)
    /// when it is on probation.
    pub fn record_failure(&self) {
        let mut s = self.lock();
        match s.phase {
            Phase::Closed => {
                s.consecutive += 1;
                if s.consecutive >= self.threshold {
                    self.eject(&mut s, "endpoint ejected after consecutive failures");
                }
            }
            Phase::Probation { .. } => self.eject(&mut s, "endpoint failed on probation; ejected again"),
            Phase::Ejected { .. } => {}
        }
    }

    /// A call got no answer while the endpoint, which has answered before, was silent far past its usual answer
    /// time ([`silence_is_failure`]): it is hung, and waiting for `threshold` such calls would cost one deadline
    /// each (at low concurrency the next one comes only once its estimate has decayed, seconds later). Ejects at
    /// once, or again for twice as long on probation.
    pub fn record_hang(&self) {
        let mut s = self.lock();
        if !matches!(s.phase, Phase::Ejected { .. }) {
            self.eject(&mut s, "endpoint ejected: silent far longer than it takes to answer");
        }
    }

    /// Admits a call now, atomically: [`Admission::Closed`], [`Admission::Probe`] (this call takes the one probe
    /// slot of an endpoint on probation), or [`Admission::Refused`] (ejected, or a probe is already out).
    pub fn admit(self: &Arc<Self>, now: Instant) -> Admission {
        let mut s = self.lock();
        Self::advance(&mut s, now);
        match s.phase {
            Phase::Closed => Admission::Closed,
            Phase::Probation { probe_out: false } => {
                s.phase = Phase::Probation { probe_out: true };
                Admission::Probe(ProbeSlot { breaker: self.clone(), done: false })
            }
            Phase::Probation { probe_out: true } | Phase::Ejected { .. } => Admission::Refused,
        }
    }

    /// Whether the balancer may send a call here now: closed, or on probation with no probe out.
    pub fn admits(&self, now: Instant) -> bool {
        let mut s = self.lock();
        Self::advance(&mut s, now);
        match s.phase {
            Phase::Closed => true,
            Phase::Ejected { .. } => false,
            Phase::Probation { probe_out } => !probe_out,
        }
    }

    /// Takes the probe slot if the endpoint is on probation and no probe is out: the call starting now is the
    /// probe, and must end with [`Breaker::probe_done`].
    pub fn try_probe(&self, now: Instant) -> bool {
        let mut s = self.lock();
        Self::advance(&mut s, now);
        if s.phase == (Phase::Probation { probe_out: false }) {
            s.phase = Phase::Probation { probe_out: true };
            return true;
        }
        false
    }

    /// The probe ended: `Some(true)` re-admits the endpoint (returns `true`), `Some(false)` ejects it again for
    /// twice as long, `None` (no verdict: cancelled early, refused) frees the slot for another probe.
    pub fn probe_done(&self, verdict: Option<bool>) -> bool {
        let mut s = self.lock();
        if !matches!(s.phase, Phase::Probation { .. }) {
            return false;
        }
        match verdict {
            Some(true) => {
                *s = State { phase: Phase::Closed, consecutive: 0, periods: ejection_periods() };
                info!(endpoint = %self.label, "endpoint re-admitted after a successful probe");
                true
            }
            Some(false) => {
                self.eject(&mut s, "probe failed; endpoint ejected again");
                false
            }
            None => {
                s.phase = Phase::Probation { probe_out: false };
                false
            }
        }
    }

    /// Whether the endpoint is out of normal rotation (ejected or on probation).
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health(now) != Health::Ok
    }

    /// The breaker's view now.
    pub fn health(&self, now: Instant) -> Health {
        let mut s = self.lock();
        Self::advance(&mut s, now);
        match s.phase {
            Phase::Closed => Health::Ok,
            Phase::Ejected { .. } => Health::Ejected,
            Phase::Probation { .. } => Health::Probation,
        }
    }

    fn advance(s: &mut State, now: Instant) {
        if let Phase::Ejected { until } = s.phase
            && until <= now
        {
            s.phase = Phase::Probation { probe_out: false };
        }
    }

    fn eject(&self, s: &mut State, why: &'static str) {
        let period = s.periods.next().unwrap_or(MAX_EJECTION);
        s.consecutive = 0;
        s.phase = Phase::Ejected { until: Instant::now() + period };
        self.metrics.ejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(endpoint = %self.label, ejected_for = ?period, "{why}");
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }
}

/// The pool's connect outcomes count like calls': N failed connects in a row eject the endpoint, a connect that
/// works resets the count (the breaker is the one judge of what the pool reports).
impl crate::pool::ConnectOutcomes for Breaker {
    fn connected(&self) {
        self.record_success();
    }

    fn connect_failed(&self) {
        self.record_failure();
    }
}

/// What [`Breaker::admit`] lets a call do.
pub enum Admission {
    /// The endpoint takes calls.
    Closed,
    /// The call is the endpoint's one probe.
    Probe(ProbeSlot),
    /// Ejected, or its probe is already out.
    Refused,
}

/// The probe slot of an endpoint on probation, held by the one call that probes it. [`ProbeSlot::done`] gives the
/// verdict; dropped without one (the call never started), it frees the slot for the next call.
pub struct ProbeSlot {
    breaker: Arc<Breaker>,
    done: bool,
}

impl ProbeSlot {
    /// The probe's verdict, as [`Breaker::probe_done`]: returns whether the endpoint was re-admitted.
    pub fn done(mut self, verdict: Option<bool>) -> bool {
        self.done = true;
        self.breaker.probe_done(verdict)
    }
}

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.probe_done(None);
        }
    }
}

#[cfg(test)]
mod tests;
