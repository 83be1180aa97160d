//! The pure part of the hedging policy (gRFC A6 "Hedging Policy", "Pushback"): when the next hedge is due, and
//! what an attempt's status means for the call. No I/O, on tokio's clock, so it is tested on a paused one.

use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;
use tonic::Code;

use crate::service_config::{CodeSet, HedgingPolicy};

/// When the next hedge is due: the pure part of the policy, on tokio's clock so it is tested on a paused one.
#[derive(Debug)]
pub(in crate::proxy) struct Schedule {
    max_attempts: u32,
    delay: Duration,
    /// Attempts sent that count against `maxAttempts`.
    sent: u32,
    /// When the next attempt goes; `None`: no more (all sent, or hedging stopped).
    next: Option<Instant>,
    /// The due hedge found no usable endpoint: it waits for the endpoint set to change (and, with a non-zero
    /// `hedgingDelay`, at most that delay), not for a timer that is already due.
    parked: bool,
}

impl Schedule {
    /// The first attempt is due now.
    pub fn new(policy: &HedgingPolicy) -> Self {
        Self {
            max_attempts: policy.max_attempts,
            delay: policy.delay,
            sent: 0,
            next: Some(Instant::now()),
            parked: false,
        }
    }

    /// When the next attempt is due, if one is left.
    pub fn next(&self) -> Option<Instant> {
        self.next
    }

    /// When a timer should wake the call for the next attempt: `None` when none is left, or while a postponed
    /// hedge with no `hedgingDelay` waits only for the endpoint set to change.
    pub fn timer(&self) -> Option<Instant> {
        self.next.filter(|_| !self.waits_for_change_only())
    }

    /// Whether an attempt is due now.
    pub fn due(&self) -> bool {
        !self.waits_for_change_only() && self.next.is_some_and(|t| t <= Instant::now())
    }

    /// Whether a postponed hedge waits for the endpoint set to change.
    pub fn parked(&self) -> bool {
        self.parked && self.next.is_some()
    }

    /// The endpoint set changed (an endpoint came, connected or was readmitted): a postponed hedge is due now.
    pub fn endpoints_changed(&mut self) {
        if self.parked() {
            self.parked = false;
            self.next = Some(Instant::now());
        }
    }

    fn waits_for_change_only(&self) -> bool {
        self.parked && self.delay.is_zero()
    }

    /// Attempts sent so far (the value of the next attempt's `grpc-previous-rpc-attempts`).
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// An attempt went out: the next one is due a `hedgingDelay` later, if any is left.
    pub fn on_sent(&mut self) {
        self.sent += 1;
        self.parked = false;
        self.next = (self.sent < self.max_attempts).then(|| Instant::now() + self.delay);
    }

    /// No endpoint could take the due hedge now: it is tried again when the endpoint set changes, or a non-zero
    /// `hedgingDelay` later, whichever comes first. With a zero delay only a change makes it due (else the call
    /// would pick, fail and pick again without waiting).
    pub fn postpone(&mut self) {
        if self.next.is_some() {
            self.next = Some(Instant::now() + self.delay);
            self.parked = true;
        }
    }

    /// An attempt failed with a non-fatal status: the next hedge goes at once, or after the server's pushback; a
    /// pushback that is negative or not a number stops hedging (gRFC A6 "Pushback").
    pub fn on_non_fatal(&mut self, pushback: Option<&HeaderValue>) {
        if self.next.is_none() {
            return;
        }
        let wait = match pushback {
            None => Duration::ZERO,
            Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<i32>().ok()) {
                Some(ms) if ms >= 0 => Duration::from_millis(ms.unsigned_abs().into()),
                _ => return self.stop(),
            },
        };
        self.parked = false;
        self.next = Some(Instant::now() + wait);
    }

    /// An attempt the endpoint never processed: sent again at once, not counted against `maxAttempts`.
    pub fn resend(&mut self) {
        self.sent = self.sent.saturating_sub(1);
        self.parked = false;
        self.next = Some(Instant::now());
    }

    /// No more attempts (throttled, pushback said no, the body is no longer kept).
    pub fn stop(&mut self) {
        self.next = None;
    }
}

/// What one attempt's outcome means for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::proxy) enum Verdict {
    /// Response headers with a body: the call is this attempt's.
    Commit,
    /// The call ends with this status; the other attempts are cancelled.
    Fatal,
    /// The other attempts go on, and the next hedge goes at once.
    NonFatal,
}

/// Judges an attempt that ended with `code` (`None`: response headers came with a body to follow).
pub(in crate::proxy) fn verdict(code: Option<Code>, non_fatal: CodeSet) -> Verdict {
    match code {
        None => Verdict::Commit,
        Some(code) if non_fatal.contains(code) => Verdict::NonFatal,
        Some(_) => Verdict::Fatal,
    }
}
