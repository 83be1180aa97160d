//! The endpoint set and the choice of an endpoint for each call.
//!
//! Discovery hands the balancer whole endpoint sets; [`Balancer::update`] diffs each against what it has, starts a
//! connection for every new endpoint and drains every removed one. [`Balancer::pick`] chooses by the power of two
//! choices: two random endpoints whose connection is up, the one with the lower Peak-EWMA cost wins. That keeps
//! the cost O(1) per call and avoids the herd behaviour of "least loaded of all".

pub mod attempt;
pub mod breaker;
pub mod ewma;
mod p2c;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use crate::pool::SendRequest;
use parking_lot::RwLock;
use tokio::{sync::watch, time::Instant};
use tracing::info;

use crate::{
    discovery::Discovered,
    pool::{self, Connection, Lease, SendBody},
    telemetry::metrics::{CallStats, EndpointStats, Metrics},
};

pub use self::attempt::{Attempt, READMIT_RTT};
use self::{
    breaker::{Breaker, Health},
    ewma::PeakEwma,
    p2c::choose,
};

/// One backend endpoint: its connection, its load and its breaker. Its accounting is the balancer's own: other
/// modules read it through the methods below and change it only through an [`Attempt`].
pub struct Endpoint<B> {
    /// Where it is.
    addr: SocketAddr,
    /// `addr` as the `:authority` of requests sent there: made once, not formatted and parsed per call.
    authority: Option<http::uri::Authority>,
    /// What discovery said of it (pod name, terminating).
    meta: RwLock<Discovered>,
    /// Its pooled HTTP/2 connection.
    conn: Arc<Connection<B>>,
    /// Its Peak-EWMA load.
    load: PeakEwma,
    /// Its failure accrual.
    breaker: Arc<Breaker>,
    /// When it was last picked (a balancer-wide sequence number), to break ties evenly.
    last_pick: AtomicU64,
    /// Calls sent to it (and to its target), for the metrics.
    stats: EndpointStats,
}

impl<B: Send + 'static> crate::telemetry::access_log::Peer for Endpoint<B> {
    fn target(&self) -> &str {
        &self.stats.target_name
    }

    fn name(&self) -> String {
        let meta = self.meta.read();
        meta.pod.clone().unwrap_or_else(|| self.addr.to_string())
    }
}

impl<B: SendBody> Endpoint<B> {
    /// A connection to it for a request that passes no verdict on the endpoint (see [`Picked::into_unjudged`]);
    /// `None` while it has no usable connection.
    pub fn lease_unjudged(&self) -> Option<Lease<B>> {
        self.conn.lease()
    }
}

impl<B> Endpoint<B> {
    /// Calls sent to it (and to its target), for the metrics.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Where it is.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What discovery last said of it (pod name, addresses, terminating).
    pub fn meta(&self) -> Discovered {
        self.meta.read().clone()
    }

    /// Its pod's name, if discovery knows it (without cloning the rest of [`Endpoint::meta`]).
    pub fn pod(&self) -> Option<String> {
        self.meta.read().pod.clone()
    }

    /// Its connection's state.
    pub fn connection_state(&self) -> pool::State<B> {
        self.conn.state()
    }

    /// Its connection state's name, without cloning the state (`/metrics` reads it for every endpoint).
    pub fn connection_state_name(&self) -> &'static str {
        self.conn.state_name()
    }

    /// Open HTTP/2 connections to it (primary and extra).
    pub fn open_connections(&self) -> usize {
        self.conn.open_connections()
    }

    /// Calls in flight to it.
    pub fn in_flight(&self) -> u32 {
        self.load.pending()
    }

    /// Its Peak-EWMA latency estimate.
    pub fn latency_estimate(&self) -> Duration {
        self.load.estimate()
    }

    /// Whether its breaker keeps it out of normal rotation (ejected or on probation) at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.breaker.is_ejected(now)
    }

    /// Its breaker's view at `now`.
    pub fn health(&self, now: Instant) -> Health {
        self.breaker.health(now)
    }
}

/// An endpoint chosen for one attempt, with the connection leased for it. [`Picked::begin`] starts the attempt;
/// dropped before that, it gives the lease and the probe slot back untouched.
pub struct Picked<B> {
    endpoint: Arc<Endpoint<B>>,
    lease: Lease<B>,
    /// The endpoint's probe slot when it is on probation and this attempt is its one probe (taken in the same
    /// step as the choice, so two calls never both probe); the attempt that sends the call holds it.
    probe: Option<breaker::ProbeSlot>,
}

impl<B> Picked<B> {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// The endpoint's address as a request `:authority` (`None` only if it could not be one).
    pub fn authority(&self) -> Option<&http::uri::Authority> {
        self.endpoint.authority.as_ref()
    }

    /// Starts the attempt: the call counts in flight on the endpoint and the leased connection from now on, and
    /// the [`Attempt`] records its outcome. Returns the handle to send the request on.
    pub fn begin(self) -> (Attempt<B>, SendRequest<B>) {
        let sender = self.lease.sender.clone();
        (Attempt::begin(self.endpoint, self.lease, self.probe), sender)
    }

    /// Takes the endpoint and its leased connection for a request that passes no verdict on the endpoint and
    /// teaches nothing of its latency (server reflection: it says little about the app's calls). A probe slot the
    /// pick took is freed unused, so the next call probes.
    pub fn into_unjudged(self) -> (Arc<Endpoint<B>>, Lease<B>) {
        (self.endpoint, self.lease)
    }
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

/// The endpoint set of one target, whose connections carry request bodies of type `B`.
pub struct Balancer<B> {
    target: String,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Calls sent to the target's endpoints, those gone included.
    stats: Arc<CallStats>,
    /// The target's name, shared with its endpoints' stats.
    target_name: Arc<str>,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint<B>>>>>,
    /// Shared with the endpoints' connections: the change signal, the count of those up, the connect bound.
    shared: Arc<pool::Shared>,
    /// Discovery's current problem, named in [`NoEndpoint`].
    discovery_problem: RwLock<Option<String>>,
}

impl<B: SendBody> Balancer<B> {
    /// An empty balancer for `target` (the name used in error messages).
    pub fn new(target: String, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let target_name = Arc::from(target.as_str());
        Self {
            target,
            settings,
            metrics,
            stats: Arc::default(),
            target_name,
            endpoints: RwLock::new(Arc::default()),
            shared: Arc::default(),
            discovery_problem: RwLock::default(),
        }
    }

    /// Sets (or clears) discovery's current problem, which calls that find no endpoint are told.
    pub fn set_discovery_problem(&self, problem: Option<String>) {
        *self.discovery_problem.write() = problem;
    }

    /// The target's name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Calls sent to the target's endpoints (one per attempt), for the metrics.
    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// The current endpoints.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Endpoint<B>>>> {
        self.endpoints.read().clone()
    }

    /// A receiver that sees a new value on every change of the set or of a connection.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }

    /// Endpoints a call could be sent to now.
    pub fn ready_count(&self) -> usize {
        self.snapshot().iter().filter(|e| e.conn.is_ready()).count()
    }

    /// Whether a call could be sent to some endpoint now: [`Balancer::ready_count`] `> 0`, without scanning the set
    /// while no connection is up (the health task asks on every connection state change).
    pub fn any_ready(&self) -> bool {
        self.shared.maybe_ready() && self.snapshot().iter().any(|e| e.conn.is_ready())
    }

    /// Replaces the set: endpoints kept keep their connection and load; new ones connect; removed ones drain.
    pub fn update(&self, set: Vec<Discovered>) {
        let old = self.snapshot();
        let mut by_addr: HashMap<SocketAddr, &Arc<Endpoint<B>>> = old.iter().map(|e| (e.addr, e)).collect();
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
                *ep.meta.write() = d;
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
        *self.endpoints.write() = Arc::new(next);
        self.shared.notify();
        if added + removed > 0 {
            info!(target = %self.target, added, removed, kept, "endpoints updated");
        }
    }

    fn endpoint(&self, d: Discovered) -> Endpoint<B> {
        let breaker = Arc::new(Breaker::new(d.addr.to_string(), self.settings.eject_after, self.metrics.clone()));
        let conn = Connection::spawn(
            d.addr,
            self.settings.pool.clone(),
            breaker.clone() as Arc<dyn pool::ConnectOutcomes>,
            self.metrics.clone(),
            self.shared.clone(),
        );
        Endpoint {
            addr: d.addr,
            authority: d.addr.to_string().parse().ok(),
            meta: RwLock::new(d),
            conn,
            load: PeakEwma::new(self.settings.ewma_decay),
            breaker,
            last_pick: AtomicU64::new(0),
            stats: EndpointStats::new(self.stats.clone(), self.target_name.clone()),
        }
    }

    /// Picks an endpoint for one attempt and leases the connection that carries it, avoiding `avoid` (endpoints that refused this call) while another one
    /// is usable: a refused stream never reached the application, so the same endpoint may take the retry when
    /// it is the only one. Waits for one to become usable until `wait_until`, then gives up with [`NoEndpoint`].
    pub async fn pick(&self, avoid: &[SocketAddr], wait_until: Instant) -> Result<Picked<B>, NoEndpoint> {
        let mut changes = self.shared.subscribe();
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
            let waited = tokio::time::timeout_at(wait_until, changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                let mut detail = describe(&set);
                if let Some(problem) = &*self.discovery_problem.read() {
                    detail.push_str(&format!(" (discovery: {problem})"));
                }
                return Err(NoEndpoint { target: self.target.clone(), detail });
            }
        }
    }
}

/// A short account of why nothing was usable, for the `UNAVAILABLE` message.
fn describe<B>(set: &[Arc<Endpoint<B>>]) -> String {
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

#[cfg(test)]
mod tests;
