//! Peak-EWMA load: a latency estimate that jumps up at once on a slow response and otherwise follows a
//! time-weighted moving average, multiplied by the calls in flight (Finagle's and tower's `PeakEwma`).
//!
//! Written here rather than wrapping tower's `PeakEwma` service: that one needs `&mut` access per call, which in a
//! shared balancer means a `Buffer` task hop on every call; here the estimate is a small mutex-protected record
//! and the in-flight count an atomic, readable from any task.
//!
//! Two rules beyond tower's:
//! - Reading the estimate does not store a decayed value. tower's read resets the clock of the average, so in a
//!   balancer that reads on every pick an answer below the peak got almost no weight and the estimate became a
//!   decaying *maximum*: noisy, and a stale peak kept an equal pod "slow" (issue 10.5). Here an answer is weighted
//!   by the time since the previous answer (`1 - e^(-Δt/decay)`), so equal pods converge on the same mean; only
//!   while no answer arrives does the estimate decay towards zero, so a pod that lost every comparison is tried
//!   again.
//! - **Silence**: while calls wait for response headers, the time since the endpoint last answered anything counts
//!   as a lower bound on its latency ([`PeakEwma::cost`]). A hung pod answers nothing, so its cost grows by the
//!   millisecond and it loses every comparison long before any of its calls times out (issue 10.2).
//!
//! Time is `tokio::time::Instant`, so the rules are tested on a paused clock.

use std::{
    sync::atomic::{AtomicU32, Ordering::Relaxed},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;

/// Smallest RTT used in the cost, so a fresh endpoint (no estimate yet) is cheap but not free.
const FLOOR_NS: f64 = 1_000.0;

/// The load of one endpoint.
pub struct PeakEwma {
    decay_ns: f64,
    state: Mutex<State>,
    pending: AtomicU32,
}

struct State {
    /// The estimate as of `at`, in nanoseconds.
    rtt_ns: f64,
    /// When the estimate last took an answer (or was reset).
    at: Instant,
    /// Calls waiting for response headers.
    waiting: u32,
    /// When the endpoint last answered anything, or when `waiting` went from 0 to 1, whichever is later.
    heard: Instant,
    /// How long answers take: a time-weighted mean over answers only (unanswered calls left out), in nanoseconds,
    /// as of `answer_at`, when the last answer came (`None`: never answered). Not decayed while idle: a pod that
    /// answered in 400 ms still takes 400 ms after a quiet minute (the silence rule judges against it).
    answer_ns: f64,
    answer_at: Option<Instant>,
    /// How far answers stray from their mean: a time-weighted mean of |answer − `answer_ns`| (TCP's RTTVAR), ns,
    /// as of `answer_at`; it decays like the estimate, so an old spread does not widen today's noise margin.
    dev_ns: f64,
}

impl State {
    fn decayed(&self, now: Instant, decay_ns: f64) -> f64 {
        let idle = now.saturating_duration_since(self.at).as_nanos() as f64;
        self.rtt_ns * (-idle / decay_ns).exp()
    }
}

impl PeakEwma {
    /// A new estimate (zero: a new endpoint is tried at once) that decays over `decay` (e-folding time).
    pub fn new(decay: Duration) -> Self {
        let now = Instant::now();
        Self {
            decay_ns: decay.as_nanos().max(1) as f64,
            state: Mutex::new(State {
                rtt_ns: 0.0,
                at: now,
                waiting: 0,
                heard: now,
                answer_ns: 0.0,
                answer_at: None,
                dev_ns: 0.0,
            }),
            pending: AtomicU32::new(0),
        }
    }

    /// The cost of sending one more call here, in nanoseconds: latency × (calls in flight + 1), where latency is
    /// the larger of the estimate and the current silence (at least the floor).
    pub fn cost(&self) -> f64 {
        let (rtt, pending) = self.load();
        rtt * (f64::from(pending) + 1.0)
    }

    /// The latency used in the cost (estimate or silence, at least the floor), in nanoseconds, and the calls in
    /// flight.
    pub fn load(&self) -> (f64, u32) {
        let now = Instant::now();
        let s = self.lock();
        let silence = if s.waiting > 0 { now.saturating_duration_since(s.heard).as_nanos() as f64 } else { 0.0 };
        (s.decayed(now, self.decay_ns).max(silence).max(FLOOR_NS), self.pending.load(Relaxed))
    }

    /// [`PeakEwma::load`] as of `now`, and how far answers stray from the estimate (ns, decayed like it), for the
    /// P2C comparison. A deviation that cannot exceed `negligible_dev` ns even undecayed is given as 0 (the caller
    /// would not tell it from 0): one `exp` less per sample, the common case on a quiet node. One lock, one clock
    /// read: this runs twice per call.
    pub fn sample(&self, now: Instant, negligible_dev: f64) -> (f64, u32, f64) {
        let s = self.lock();
        let silence = if s.waiting > 0 { now.saturating_duration_since(s.heard).as_nanos() as f64 } else { 0.0 };
        let rtt = s.decayed(now, self.decay_ns).max(silence).max(FLOOR_NS);
        let dev = match s.answer_at {
            _ if s.dev_ns <= negligible_dev => 0.0,
            Some(t) => s.dev_ns * (-(now.saturating_duration_since(t).as_nanos() as f64) / self.decay_ns).exp(),
            None => s.dev_ns,
        };
        (rtt, self.pending.load(Relaxed), dev)
    }

    /// Marks a call started (in flight, waiting for headers); pair with [`PeakEwma::answered`] (or
    /// [`PeakEwma::unanswered`]) and [`PeakEwma::finish`].
    pub fn start(&self) {
        self.pending.fetch_add(1, Relaxed);
        let mut s = self.lock();
        if s.waiting == 0 {
            s.heard = Instant::now();
        }
        s.waiting += 1;
    }

    /// A call's response headers arrived after `rtt`: the endpoint is heard from, and `rtt` is folded in. When
    /// the endpoint answered within the last decay period, a peak is limited to [`step_cap`] of the estimate as of
    /// that answer (one late answer is often a lost time slice); the first answer, or the first after a quiet
    /// decay period, is taken whole, since there is no recent estimate to doubt it against.
    pub fn answered(&self, rtt: Duration) {
        let now = Instant::now();
        let mut s = self.lock();
        s.waiting = s.waiting.saturating_sub(1);
        s.heard = now;
        let rtt_ns = rtt.as_nanos() as f64;
        let since = s.answer_at.map(|t| now.saturating_duration_since(t).as_nanos() as f64);
        let recent = since.is_some_and(|t| t < self.decay_ns);
        // Time weight of this answer against the previous ones.
        let keep = since.map_or(0.0, |t| (-t / self.decay_ns).exp());
        if since.is_some() {
            // How far this answer strays from the mean of answers (TCP's RTTVAR against SRTT), not from the
            // estimate decayed while the endpoint was avoided: a pod that always answers in 1 s is steady. The
            // first answer has nothing to stray from.
            s.dev_ns = s.dev_ns * keep + (rtt_ns - s.answer_ns).abs() * (1.0 - keep);
        }
        s.answer_ns = s.answer_ns * keep + rtt_ns * (1.0 - keep);
        s.answer_at = Some(now);
        let cap = recent.then_some(step_cap(s.rtt_ns));
        (s.rtt_ns, s.at) = peak_ewma(s.rtt_ns, s.at, now, rtt, self.decay_ns, cap);
    }

    /// A call ended after `elapsed` without any answer (cancelled, timed out, failed): the elapsed time is folded
    /// in as tower's `PeakEwma` does when its handle is dropped, but the endpoint was not heard from.
    pub fn unanswered(&self, elapsed: Duration) {
        let now = Instant::now();
        let mut s = self.lock();
        s.waiting = s.waiting.saturating_sub(1);
        self.fold(&mut s, now, elapsed);
    }

    /// A call ended without an answer and without saying anything about latency (refused before it was
    /// processed): it only stops waiting.
    pub fn withdrawn(&self) {
        let mut s = self.lock();
        s.waiting = s.waiting.saturating_sub(1);
    }

    /// Marks a call finished (no longer in flight).
    pub fn finish(&self) {
        let _ = self.pending.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Folds in one observed round-trip time without touching the in-flight accounting.
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let mut s = self.lock();
        self.fold(&mut s, now, rtt);
    }

    /// Sets the estimate to at least `rtt` from now on, as if just observed as a peak: a re-admitted endpoint
    /// starts pessimistic rather than from a past that decayed while it was ejected.
    pub fn reset_pessimistic(&self, rtt: Duration) {
        let now = Instant::now();
        let mut s = self.lock();
        let current = s.decayed(now, self.decay_ns);
        s.rtt_ns = current.max(rtt.as_nanos() as f64);
        s.at = now;
    }

    /// How long the endpoint has been silent for a call that started at `since`: the time since the later of
    /// `since` and the endpoint's last answer.
    pub fn silent_for(&self, since: Instant) -> Duration {
        let now = Instant::now();
        let s = self.lock();
        now.saturating_duration_since(since.max(s.heard))
    }

    /// How long this endpoint takes to answer when it does: the time-weighted mean over answered calls only, not
    /// decayed while idle (zero before the first answer). The silence rule compares against this, since an
    /// estimate raised by timeouts would excuse the next ones, and one decayed by idleness would condemn a slow
    /// pod that was merely not called for a while.
    pub fn answer_estimate(&self) -> Duration {
        Duration::from_nanos(self.lock().answer_ns as u64)
    }

    /// Calls in flight.
    pub fn pending(&self) -> u32 {
        self.pending.load(Relaxed)
    }

    /// The current (decayed) estimate, without the silence.
    pub fn estimate(&self) -> Duration {
        let s = self.lock();
        Duration::from_nanos(s.decayed(Instant::now(), self.decay_ns) as u64)
    }

    /// A higher value replaces the estimate (the peak); a lower one is averaged in, weighted by the time since the
    /// previous answer.
    fn fold(&self, s: &mut State, now: Instant, rtt: Duration) {
        (s.rtt_ns, s.at) = peak_ewma(s.rtt_ns, s.at, now, rtt, self.decay_ns, None);
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }
}

/// The highest one answer may raise an estimate of `current` ns (as of the endpoint's last answer) to: twice it,
/// or 5 ms more, whichever is higher.
///
/// An answer slower than the estimate is the peak (Peak-EWMA), but on a shared node one late answer is as often a
/// time slice lost by the pod or the sidecar as a slower pod; a pod that has become slow answers late again and
/// reaches its real latency within a few answers (1 → 6 → 12 → 24 ms), while a lost time slice no longer makes an
/// equal pod look slow for seconds (issue 10.5). The cap is taken from the estimate as of the last answer, not
/// its decayed value, so the decay between slow answers cannot shrink the estimate faster than the cap lets it
/// grow; and it applies only to an endpoint that answered within the last decay period ([`PeakEwma::answered`]).
/// A pod that answers nothing is seen through its silence instead, and an unanswered call's elapsed time is not
/// capped.
pub fn step_cap(current: f64) -> f64 {
    (2.0 * current).max(current + 5e6)
}

/// One Peak-EWMA step: `value` as of `at`, folded with `rtt` observed at `now`; a peak limited to `cap` ns.
fn peak_ewma(value: f64, at: Instant, now: Instant, rtt: Duration, decay_ns: f64, cap: Option<f64>) -> (f64, Instant) {
    let rtt_ns = rtt.as_nanos() as f64;
    let elapsed = now.saturating_duration_since(at).as_nanos() as f64;
    let decay = (-elapsed / decay_ns).exp();
    let current = value * decay;
    let next = if rtt_ns > current {
        cap.map_or(rtt_ns, |cap| rtt_ns.min(cap.max(current)))
    } else {
        current + rtt_ns * (1.0 - decay)
    };
    (next, now)
}

#[cfg(test)]
mod tests;
