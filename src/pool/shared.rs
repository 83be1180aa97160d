//! What the connections of one target share: a change signal, a count of those up, and a bound on connection
//! attempts under way.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::Relaxed},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Connection attempts (TCP connect, TLS and HTTP/2 handshakes) under way at once for one target: the rest wait
/// their turn. A target of up to this many endpoints connects to all of them at once; a large one (10,000
/// endpoints, many refusing) no longer has every connector in a connect–fail–retry loop at the same time, which on
/// the sidecar's one thread starved discovery of the CPU it needs to deliver the rest of the set (`cargo bench
/// --bench discovery -- --sync-only --endpoints 10000`). linkerd2-proxy and Envoy likewise bound concurrent
/// connection attempts per cluster rather than per endpoint.
pub const MAX_CONNECTING: usize = 64;

/// What the connections of one target share: the signal that callers waiting for a usable endpoint watch, the
/// number of connections up, and the bound on connection attempts under way ([`MAX_CONNECTING`]).
#[derive(Debug)]
pub struct Shared {
    /// Bumped on every state change of a connection (and by the balancer on every change of the set).
    changed: watch::Sender<u64>,
    /// Connections in the `Ready` state: lets "is any endpoint ready?" skip a scan of every endpoint while none
    /// is, a scan that with 10,000 refusing endpoints ran on every state change.
    ready: AtomicUsize,
    /// Permits for connection attempts.
    connecting: Arc<Semaphore>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            changed: watch::channel(0).0,
            ready: AtomicUsize::new(0),
            connecting: Arc::new(Semaphore::new(MAX_CONNECTING)),
        }
    }
}

impl Shared {
    /// A receiver that sees a new value on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes every receiver.
    pub fn notify(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Whether some connection may be up: `false` means none is (a connection whose peer has just gone may still
    /// count until its connector sees it).
    pub fn maybe_ready(&self) -> bool {
        self.ready.load(Relaxed) > 0
    }

    /// Counts a connection's move into or out of the `Ready` state.
    pub(super) fn ready_changed(&self, was: bool, now: bool) {
        match (was, now) {
            (false, true) => _ = self.ready.fetch_add(1, Relaxed),
            (true, false) => _ = self.ready.fetch_sub(1, Relaxed),
            _ => {}
        }
    }
}

/// A permit for one connection attempt ([`MAX_CONNECTING`]); `None` once the endpoint is retired while waiting.
pub(super) async fn connect_permit(shared: &Shared, stop: &mut watch::Receiver<bool>) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        permit = shared.connecting.clone().acquire_owned() => permit.ok(),
        _ = stop.wait_for(|s| *s) => None,
    }
}
