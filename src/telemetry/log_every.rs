//! A limit on how often one kind of log line is written: a flood of bad peers (failed handshakes, shed
//! connections, GOAWAYs for broken protocol rules) must not flood the log. The metrics count every event
//! regardless; each line that does go out says how many were suppressed before it.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;

/// At most one log line per `every` for one kind of event; meant to be a `static` beside the code that logs.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogEvery {
    /// A limiter allowing one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self { every, last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines suppressed since the last one)` when a line is due now, else `None` (and one more suppressed).
    pub fn due(&self) -> Option<u64> {
        let mut last = self.last.lock();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn log_lines_are_limited_to_one_per_period_and_count_the_rest() {
        let l = LogEvery::new(Duration::from_secs(10));
        assert_eq!(l.due(), Some(0));
        assert_eq!(l.due(), None);
        assert_eq!(l.due(), None);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(l.due(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.due(), Some(3));
        assert_eq!(l.due(), None);
    }
}
