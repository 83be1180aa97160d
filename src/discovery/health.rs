//! What discovery is going through, for the operator: the current problem (for `/ready`'s body and the
//! `UNAVAILABLE` message of calls that find no endpoint), errors counted by cause (HTTP status of the API's answer,
//! or `connect` / `dns` when there was none), and one log line per change of state.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;

use tokio::sync::watch;
use tracing::{info, warn};

/// Discovery's state, shared with the admin port and the balancer.
pub struct Health {
    problem: watch::Sender<Option<String>>,
    /// Per port of the watched Service (`grpc`, `8080`), why that port has no endpoints when the API answers but
    /// the Service is not what the target says (no port of that name): a problem of one target, not of the watch.
    port_notes: watch::Sender<BTreeMap<String, String>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Lists begun (the first one and every re-list after an expired or broken watch).
    lists: AtomicU64,
    /// When discovery last delivered or confirmed the endpoint set, in milliseconds since the Unix epoch (0: never).
    last_sync_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            problem: watch::channel(None).0,
            port_notes: watch::channel(BTreeMap::new()).0,
            errors: Mutex::default(),
            lists: AtomicU64::new(0),
            last_sync_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// The current problem, e.g. `EndpointSlice list refused by the API server: 403 Forbidden: …`; `None` while
    /// discovery works.
    pub fn problem(&self) -> Option<String> {
        self.problem.borrow().clone()
    }

    /// A receiver that sees every change of [`Health::problem`].
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.problem.subscribe()
    }

    /// A (re-)list begins: a watch starts or restarts from a full list.
    pub fn listing(&self) {
        self.lists.fetch_add(1, Relaxed);
    }

    /// Watch restarts so far: lists after the first.
    pub fn restarts(&self) -> u64 {
        self.lists.load(Relaxed).saturating_sub(1)
    }

    /// Discovery delivered or confirmed the endpoint set now.
    pub fn synced(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        self.last_sync_ms.store(u64::try_from(now).unwrap_or(u64::MAX), Relaxed);
    }

    /// When discovery last delivered or confirmed the set, in seconds since the Unix epoch; `None` before that.
    pub fn last_sync(&self) -> Option<f64> {
        let ms = self.last_sync_ms.load(Relaxed);
        (ms > 0).then(|| ms as f64 / 1000.0)
    }

    /// Errors so far, by cause (`"403"`, `"429"`, `"410"`, `"connect"`, …).
    pub fn errors(&self) -> Vec<(String, u64)> {
        self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Counts one error with `cause` that is routine (an expired resourceVersion) and no problem.
    pub fn count(&self, cause: &str) {
        *self.lock().entry(cause.to_owned()).or_default() += 1;
    }

    /// Counts one error with `cause` and makes `message` the current problem; logs only when the problem changes.
    pub fn failed(&self, cause: &str, message: String) {
        *self.lock().entry(cause.to_owned()).or_default() += 1;
        let changed = self.problem.send_if_modified(|p| {
            if p.as_deref() == Some(message.as_str()) {
                return false;
            }
            *p = Some(message.clone());
            true
        });
        if changed {
            warn!(problem = %message, "discovery failing; keeping the last known endpoints");
        }
    }

    /// Sets the note on `port` (see [`Health::subscribe_port_notes`]), or clears it with `None`; logs when it
    /// appears or changes.
    pub fn set_port_note(&self, port: &str, note: Option<String>) {
        self.port_notes.send_if_modified(|notes| match note {
            Some(note) if notes.get(port) != Some(&note) => {
                warn!(port, problem = %note, "no endpoints for this port");
                notes.insert(port.to_owned(), note);
                true
            }
            Some(_) => false,
            None => notes.remove(port).is_some(),
        });
    }

    /// A receiver of the notes by port, e.g. `grcp` → `the Service's EndpointSlices have no port named "grcp"
    /// (they have: grpc)`.
    pub fn subscribe_port_notes(&self) -> watch::Receiver<BTreeMap<String, String>> {
        self.port_notes.subscribe()
    }

    /// The problem of the target on `port`: the watch's own (see [`Health::problem`]), else the port's note.
    pub fn problem_for(&self, port: &str) -> Option<String> {
        self.problem().or_else(|| self.port_notes.borrow().get(port).cloned())
    }

    /// Discovery works (again); logs once when it had a problem.
    pub fn recovered(&self) {
        if let Some(was) = self.problem.send_replace(None) {
            info!(was = %was, "discovery recovered");
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, u64>> {
        self.errors.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_error_and_reports_the_current_problem() {
        let h = Health::default();
        let mut rx = h.subscribe();
        h.failed("403", "forbidden".into());
        h.failed("403", "forbidden".into());
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        h.failed("403", "forbidden".into());
        assert!(!rx.has_changed().unwrap_or(true), "the same problem again is no change");
        h.failed("429", "throttled".into());
        assert_eq!(h.problem().as_deref(), Some("throttled"));
        assert_eq!(h.errors(), [("403".to_owned(), 3), ("429".to_owned(), 1)]);
        h.recovered();
        assert_eq!(h.problem(), None);
    }
}
