//! The endpoint set and the choice of an endpoint for each call.
//!
//! Discovery hands the balancer whole endpoint sets; [`Balancer::update`] diffs each against what it has, starts a
//! connection for every new endpoint and drains every removed one. [`Balancer::pick`] chooses by the power of two
//! choices: two random endpoints whose connection is up, the one with the lower Peak-EWMA cost wins. That keeps
//! the cost O(1) per call and avoids the herd behaviour of "least loaded of all".

pub mod breaker;
pub mod ewma;
mod p2c;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, RwLock, atomic::AtomicU64},
    time::Duration,
};

use hyper::client::conn::http2::SendRequest;
use tokio::{sync::watch, time::Instant};
use tracing::info;

use crate::{
    discovery::Discovered,
    pool::{self, Connection},
    proxy::replay::ReplayBody,
    telemetry::metrics::Metrics,
};

use self::{breaker::Breaker, ewma::PeakEwma, p2c::choose};

/// One backend endpoint: its connection, its load and its breaker.
pub struct Endpoint {
    /// Where it is.
    pub addr: SocketAddr,
    /// What discovery said of it (pod name, terminating).
    pub meta: RwLock<Discovered>,
    /// Its pooled HTTP/2 connection.
    pub conn: Arc<Connection>,
    /// Its Peak-EWMA load.
    pub load: PeakEwma,
    /// Its failure accrual.
    pub breaker: Arc<Breaker>,
    /// When it was last picked (a balancer-wide sequence number), to break ties evenly.
    last_pick: AtomicU64,
}

/// An endpoint chosen for one attempt, with the connection handle to send on.
pub struct Picked {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Its connection's request handle.
    pub sender: SendRequest<ReplayBody>,
    /// The endpoint's probe slot when it is on probation and this attempt is its one probe (taken in the same
    /// step as the choice, so two calls never both probe); the attempt that sends the call holds it.
    pub probe: Option<breaker::ProbeSlot>,
}

/// No endpoint could take the call before the wait ended.
#[derive(Debug, thiserror::Error)]
#[error("no ready endpoints for {target}{detail}")]
pub struct NoEndpoint {
    /// The target, as the user wrote it.
    pub target: String,
    /// What the endpoints were doing, e.g. ` (2 known: 2 backoff: connect refused)`.
    pub detail: String,
}

/// Tunables of the balancer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connection settings of every endpoint.
    pub pool: pool::Settings,
    /// Consecutive failures before ejection.
    pub eject_after: u32,
    /// Decay of the Peak-EWMA estimate.
    pub ewma_decay: Duration,
}

/// The endpoint set of one target.
pub struct Balancer {
    target: String,
    settings: Settings,
    metrics: Arc<Metrics>,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    changed: Arc<watch::Sender<u64>>,
    /// Discovery's current problem, named in [`NoEndpoint`].
    discovery_problem: RwLock<Option<String>>,
}

impl Balancer {
    /// An empty balancer for `target` (the name used in error messages).
    pub fn new(target: String, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            target,
            settings,
            metrics,
            endpoints: RwLock::default(),
            changed: Arc::new(changed),
            discovery_problem: RwLock::default(),
        }
    }

    /// Sets (or clears) discovery's current problem, which calls that find no endpoint are told.
    pub fn set_discovery_problem(&self, problem: Option<String>) {
        *self.discovery_problem.write().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// The target's name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The current endpoints.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A receiver that sees a new value on every change of the set or of a connection.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Endpoints a call could be sent to now.
    pub fn ready_count(&self) -> usize {
        self.snapshot().iter().filter(|e| e.conn.is_ready()).count()
    }

    /// Replaces the set: endpoints kept keep their connection and load; new ones connect; removed ones drain.
    pub fn update(&self, set: Vec<Discovered>) {
        let old = self.snapshot();
        let mut by_addr: HashMap<SocketAddr, &Arc<Endpoint>> = old.iter().map(|e| (e.addr, e)).collect();
        let mut next = Vec::with_capacity(set.len());
        // A duplicate address in `set` is skipped in O(1), not by scanning `next` (which made a 10,000-endpoint
        // update quadratic).
        let mut seen: HashSet<SocketAddr> = HashSet::with_capacity(set.len());
        let (mut added, mut kept) = (0, 0);
        for d in set {
            if !seen.insert(d.addr) {
                continue;
            }
            if let Some(ep) = by_addr.remove(&d.addr) {
                *ep.meta.write().unwrap_or_else(|e| e.into_inner()) = d;
                next.push(ep.clone());
                kept += 1;
            } else {
                next.push(Arc::new(self.endpoint(d)));
                added += 1;
            }
        }
        let removed = by_addr.len();
        for ep in by_addr.values() {
            ep.conn.retire();
        }
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
        if added + removed > 0 {
            info!(target = %self.target, added, removed, kept, "endpoints updated");
        }
    }

    fn endpoint(&self, d: Discovered) -> Endpoint {
        let breaker = Arc::new(Breaker::new(d.addr.to_string(), self.settings.eject_after, self.metrics.clone()));
        let conn = Connection::spawn(
            d.addr,
            self.settings.pool.clone(),
            breaker.clone(),
            self.metrics.clone(),
            self.changed.clone(),
        );
        Endpoint {
            addr: d.addr,
            meta: RwLock::new(d),
            conn,
            load: PeakEwma::new(self.settings.ewma_decay),
            breaker,
            last_pick: AtomicU64::new(0),
        }
    }

    /// Picks an endpoint for one attempt, avoiding `avoid` (endpoints that refused this call) while another one
    /// is usable: a refused stream never reached the application, so the same endpoint may take the retry when
    /// it is the only one. Waits for one to become usable until `wait_until`, then gives up with [`NoEndpoint`].
    pub async fn pick(&self, avoid: &[SocketAddr], wait_until: std::time::Instant) -> Result<Picked, NoEndpoint> {
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let set = self.snapshot();
            let now = Instant::now();
            let picked = choose(&set, avoid, now, false)
                .or_else(|| choose(&set, avoid, now, true))
                .or_else(|| choose(&set, &[], now, false))
                .or_else(|| choose(&set, &[], now, true));
            if let Some(p) = picked {
                return Ok(p);
            }
            let waited = tokio::time::timeout_at(wait_until.into(), changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                let mut detail = describe(&set);
                if let Some(problem) = &*self.discovery_problem.read().unwrap_or_else(|e| e.into_inner()) {
                    detail.push_str(&format!(" (discovery: {problem})"));
                }
                return Err(NoEndpoint { target: self.target.clone(), detail });
            }
        }
    }
}

/// A short account of why nothing was usable, for the `UNAVAILABLE` message.
fn describe(set: &[Arc<Endpoint>]) -> String {
    if set.is_empty() {
        return String::new();
    }
    let mut states: Vec<String> = Vec::new();
    let mut last_error = None;
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    for e in set {
        let state = e.conn.state();
        if let pool::State::Backoff { error } = &state {
            last_error = Some(error.clone());
        }
        *counts.entry(state.name()).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    for (name, n) in counts {
        states.push(format!("{n} {name}"));
    }
    let mut detail = format!(" ({} known: {}", set.len(), states.join(", "));
    if let Some(err) = last_error {
        detail.push_str(&format!("; last error: {err}"));
    }
    detail.push(')');
    detail
}
