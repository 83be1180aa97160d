//! The endpoint set and the choice of an endpoint for each call.
//!
//! Discovery hands the balancer whole endpoint sets; [`Balancer::update`] diffs each against what it has, starts a
//! connection for every new endpoint and drains every removed one. [`Balancer::pick`] chooses by the power of two
//! choices: two random endpoints whose connection is up, the one with the lower Peak-EWMA cost wins. That keeps
//! the cost O(1) per call and avoids the herd behaviour of "least loaded of all".

pub mod breaker;
pub mod ewma;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use hyper::client::conn::http2::SendRequest;
use rand::Rng;
use tokio::sync::watch;
use tracing::info;

use crate::{
    discovery::Discovered,
    pool::{self, Connection},
    proxy::replay::ReplayBody,
    telemetry::metrics::Metrics,
};

use self::{breaker::Breaker, ewma::PeakEwma};

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
}

impl Balancer {
    /// An empty balancer for `target` (the name used in error messages).
    pub fn new(target: String, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let (changed, _) = watch::channel(0);
        Self { target, settings, metrics, endpoints: RwLock::default(), changed: Arc::new(changed) }
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
        let (mut added, mut kept) = (0, 0);
        for d in set {
            if let Some(ep) = by_addr.remove(&d.addr) {
                *ep.meta.write().unwrap_or_else(|e| e.into_inner()) = d;
                next.push(ep.clone());
                kept += 1;
            } else if !next.iter().any(|e: &Arc<Endpoint>| e.addr == d.addr) {
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
    pub async fn pick(&self, avoid: &[SocketAddr], wait_until: Instant) -> Result<Picked, NoEndpoint> {
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
                return Err(NoEndpoint { target: self.target.clone(), detail: describe(&set) });
            }
        }
    }
}

/// P2C: sample two usable endpoints, keep the cheaper. `ejected_too` is the panic mode.
fn choose(set: &[Arc<Endpoint>], exclude: &[SocketAddr], now: Instant, ejected_too: bool) -> Option<Picked> {
    let usable = |e: &Endpoint| -> Option<SendRequest<ReplayBody>> {
        if exclude.contains(&e.addr) || (!ejected_too && e.breaker.is_ejected(now)) {
            return None;
        }
        e.conn.sender()
    };
    let mut rng = rand::rng();
    let n = set.len();
    // Fast path: two random distinct probes, which succeed at once when the set is healthy.
    if n >= 2 {
        let a = rng.random_range(0..n);
        let b = (a + rng.random_range(1..n)) % n;
        if let (Some(ta), Some(tb)) = (usable(&set[a]), usable(&set[b])) {
            return Some(cheaper(&mut rng, (&set[a], ta), (&set[b], tb)));
        }
    }
    // Slow path: reservoir-sample two among the usable ones in one pass.
    let mut picks: [Option<(usize, SendRequest<ReplayBody>)>; 2] = [None, None];
    let mut seen = 0usize;
    for (i, e) in set.iter().enumerate() {
        let Some(tx) = usable(e) else { continue };
        let slot = if seen < 2 { seen } else { rng.random_range(0..=seen) };
        if slot < 2 {
            picks[slot] = Some((i, tx));
        }
        seen += 1;
    }
    match picks {
        [Some((a, ta)), Some((b, tb))] => Some(cheaper(&mut rng, (&set[a], ta), (&set[b], tb))),
        [Some((a, ta)), None] => Some(Picked { endpoint: set[a].clone(), sender: ta }),
        _ => None,
    }
}

/// Latency estimates within this factor of each other count as the same: the difference is noise.
const SAME_LATENCY: f64 = 2.0;

/// The second half of P2C: choose between the two sampled endpoints.
///
/// When their Peak-EWMA latency estimates differ by more than [`SAME_LATENCY`], the cheaper one (estimate × calls
/// in flight) is preferred in proportion to how much cheaper it is: an endpoint 10× slower gets ~9% of the picks it
/// is sampled for. Proportional rather than strict, because strict "lower cost wins" starves a healthy pod for as
/// long as one slow answer keeps its estimate up.
///
/// When the estimates are alike, the difference is noise, and comparing it would only add variance: the one with
/// fewer calls in flight wins (join the shorter queue), and on a tie the one picked longer ago. That spreads equal
/// pods near-evenly even one call at a time, while a hung pod (its calls piling up in flight) loses every time.
fn cheaper(
    rng: &mut impl Rng,
    a: (&Arc<Endpoint>, SendRequest<ReplayBody>),
    b: (&Arc<Endpoint>, SendRequest<ReplayBody>),
) -> Picked {
    static PICKS: AtomicU64 = AtomicU64::new(1);
    let ((ra, pa), (rb, pb)) = (a.0.load.load(), b.0.load.load());
    let pick_a = if ra.max(rb) <= SAME_LATENCY * ra.min(rb) {
        match pa.cmp(&pb) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => a.0.last_pick.load(Relaxed) <= b.0.last_pick.load(Relaxed),
        }
    } else {
        let (ca, cb) = (ra * (f64::from(pa) + 1.0), rb * (f64::from(pb) + 1.0));
        rng.random::<f64>() < cb / (ca + cb)
    };
    let (e, sender) = if pick_a { a } else { b };
    e.last_pick.store(PICKS.fetch_add(1, Relaxed), Relaxed);
    Picked { endpoint: e.clone(), sender }
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
