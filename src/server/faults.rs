//! Fault injection for tests and demos, off by default.
//!
//! Process-wide knobs (`--delay`, `--delay-jitter`, `--error-rate`, `--error-code`) and per-call overrides by
//! request metadata, which win over the knobs:
//! - `x-hello-delay: 250ms` — delay this call;
//! - `x-hello-status: UNAVAILABLE` (or `14`) — answer this call with that status.

use std::time::Duration;

use rand::Rng;
use tonic::{Code, Status, metadata::MetadataMap};

use crate::{cli::parse_duration, grpc::parse_code};

/// The configured faults.
#[derive(Debug, Clone)]
pub struct Faults {
    delay: Duration,
    jitter: Duration,
    error_rate: f64,
    error_code: Code,
}

/// What to do with one call.
#[derive(Debug)]
pub struct Plan {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer with this status instead of the greeting.
    pub fail: Option<Status>,
}

impl Faults {
    /// Faults from the server's flags.
    pub fn new(delay: Duration, jitter: Duration, error_rate: f64, error_code: Code) -> Self {
        Self { delay, jitter, error_rate, error_code }
    }

    /// Decides the delay and failure of one call.
    pub fn plan(&self, md: &MetadataMap) -> Plan {
        let mut rng = rand::rng();
        let delay = match md.get("x-hello-delay").and_then(|v| v.to_str().ok()).and_then(|v| parse_duration(v).ok()) {
            Some(d) => d,
            None if self.jitter.is_zero() => self.delay,
            None => self.delay + self.jitter.mul_f64(rng.random::<f64>()),
        };
        let fail = match md.get("x-hello-status").and_then(|v| v.to_str().ok()).and_then(parse_code) {
            Some(Code::Ok) => None,
            Some(code) => Some(Status::new(code, "injected by x-hello-status")),
            None if self.error_rate > 0.0 && rng.random::<f64>() < self.error_rate => {
                Some(Status::new(self.error_code, "injected by --error-rate"))
            }
            None => None,
        };
        Plan { delay, fail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_overridden_per_call() {
        let none = Faults::new(Duration::ZERO, Duration::ZERO, 0.0, Code::Unavailable);
        let plan = none.plan(&MetadataMap::new());
        assert!(plan.delay.is_zero() && plan.fail.is_none());

        let mut md = MetadataMap::new();
        md.insert("x-hello-delay", "20ms".parse().unwrap_or_else(|_| unreachable!()));
        md.insert("x-hello-status", "INTERNAL".parse().unwrap_or_else(|_| unreachable!()));
        let plan = none.plan(&md);
        assert_eq!(plan.delay, Duration::from_millis(20));
        assert_eq!(plan.fail.map(|s| s.code()), Some(Code::Internal));
    }

    #[test]
    fn error_rate_one_always_fails_with_the_chosen_code() {
        let f = Faults::new(Duration::from_millis(5), Duration::ZERO, 1.0, Code::ResourceExhausted);
        for _ in 0..20 {
            let plan = f.plan(&MetadataMap::new());
            assert_eq!(plan.delay, Duration::from_millis(5));
            assert_eq!(plan.fail.map(|s| s.code()), Some(Code::ResourceExhausted));
        }
    }
}
