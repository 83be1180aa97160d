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
    time::Duration,
};

use hyper::client::conn::http2::SendRequest;
use rand::Rng;
use tokio::{sync::watch, time::Instant};
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

    /// Picks an endpoint for one attempt, skipping `exclude` (endpoints this call already failed on). Waits for
    /// one to become usable until `wait_until`, then gives up with [`NoEndpoint`].
    pub async fn pick(&self, exclude: &[SocketAddr], wait_until: std::time::Instant) -> Result<Picked, NoEndpoint> {
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let set = self.snapshot();
            let now = Instant::now();
            if let Some(p) = choose(&set, exclude, now, false).or_else(|| choose(&set, exclude, now, true)) {
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

/// P2C: sample two usable endpoints, keep the cheaper. `ejected_too` is the panic mode.
fn choose(set: &[Arc<Endpoint>], exclude: &[SocketAddr], now: Instant, ejected_too: bool) -> Option<Picked> {
    let usable = |e: &Endpoint| -> Option<SendRequest<ReplayBody>> {
        if exclude.contains(&e.addr) || (!ejected_too && !e.breaker.admits(now)) {
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
            return Some(cheaper((&set[a], ta), (&set[b], tb)));
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
        [Some((a, ta)), Some((b, tb))] => Some(cheaper((&set[a], ta), (&set[b], tb))),
        [Some((a, ta)), None] => Some(Picked { endpoint: set[a].clone(), sender: ta }),
        _ => None,
    }
}

/// Latencies within this factor of each other count as alike: the difference is noise.
const ALIKE: f64 = 2.0;
/// … and so do latencies less than this far apart (ns): on a shared node a time slice lost to another process
/// costs a few milliseconds, and one such answer must not make an equal pod "slow" (issue 10.5).
const NOISE_NS: f64 = 10e6;

/// One side of a P2C comparison: latency (estimate or silence, ns), calls in flight, and when it was last picked
/// (a balancer-wide sequence number).
#[derive(Debug, Clone, Copy)]
struct Side {
    rtt: f64,
    pending: u32,
    last_pick: u64,
}

impl Side {
    fn cost(self) -> f64 {
        self.rtt * (f64::from(self.pending) + 1.0)
    }
}

/// The second half of P2C: whether `a` wins over `b`.
///
/// The cost is Peak-EWMA × (calls in flight + 1), as tower's and linkerd's balancers compute it, where the latency
/// is at least the endpoint's current silence ([`ewma::PeakEwma::load`]): an endpoint whose calls pile up without
/// answers loses every comparison once its silence passes the noise (10 ms).
///
/// - Latencies that differ by more than [`ALIKE`]× *and* more than [`NOISE_NS`]: the cheaper cost wins, always.
/// - Otherwise the difference is noise, and comparing it would only add variance: the one with fewer calls in
///   flight wins (join the shorter queue), and on a tie the one picked longer ago. Equal pods so share near-evenly
///   even one call at a time, and a stray slow answer does not starve a pod until its estimate decays.
fn prefer_first(a: Side, b: Side) -> bool {
    let (lo, hi) = (a.rtt.min(b.rtt), a.rtt.max(b.rtt));
    if hi > ALIKE * lo && hi - lo > NOISE_NS {
        return a.cost() < b.cost();
    }
    match a.pending.cmp(&b.pending) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => a.last_pick <= b.last_pick,
    }
}

fn cheaper(a: (&Arc<Endpoint>, SendRequest<ReplayBody>), b: (&Arc<Endpoint>, SendRequest<ReplayBody>)) -> Picked {
    static PICKS: AtomicU64 = AtomicU64::new(1);
    let side = |e: &Endpoint| {
        let (rtt, pending) = e.load.load();
        Side { rtt, pending, last_pick: e.last_pick.load(Relaxed) }
    };
    let (e, sender) = if prefer_first(side(a.0), side(b.0)) { a } else { b };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn side(rtt_ms: f64, pending: u32, last_pick: u64) -> Side {
        Side { rtt: rtt_ms * 1e6, pending, last_pick }
    }

    #[test]
    fn a_clearly_slower_endpoint_loses_on_cost() {
        // A hung pod: 40 ms of silence, 3 calls in flight (cost 160 ms), against 1 ms × (2 + 1).
        assert!(!prefer_first(side(40.0, 3, 1), side(1.0, 2, 9)));
        assert!(prefer_first(side(1.0, 2, 9), side(40.0, 3, 1)));
        // 20 ms against 0.5 ms: the slow one wins only once the fast one has 40 calls in flight (20 vs 20.5).
        assert!(!prefer_first(side(20.0, 0, 1), side(0.5, 38, 9)));
        assert!(prefer_first(side(20.0, 0, 1), side(0.5, 40, 9)));
    }

    #[test]
    fn alike_latencies_go_to_the_shorter_queue_then_the_one_picked_longer_ago() {
        assert!(!prefer_first(side(2.0, 1, 1), side(1.5, 0, 9)), "fewer in flight wins within 2×");
        assert!(prefer_first(side(1.0, 0, 3), side(1.0, 0, 7)), "a tie goes to the one picked longer ago");
        assert!(!prefer_first(side(1.0, 0, 7), side(1.0, 0, 3)));
        // One stray 9 ms answer among 0.5 ms ones is noise, not a slow pod.
        assert!(prefer_first(side(9.0, 0, 3), side(0.5, 0, 7)));
        // 10.6 ms against 0.5 ms is no longer noise.
        assert!(!prefer_first(side(10.6, 0, 3), side(0.5, 0, 7)));
        // Slow pods alike each other: 100 ms and 190 ms are within 2×.
        assert!(prefer_first(side(190.0, 0, 3), side(100.0, 1, 7)));
    }

    #[tokio::test(start_paused = true)]
    async fn equal_pods_one_call_at_a_time_share_evenly() {
        use rand::SeedableRng;
        let pods: Vec<ewma::PeakEwma> = (0..3).map(|_| ewma::PeakEwma::new(Duration::from_secs(1))).collect();
        let mut last = [0u64; 3];
        let mut got = [0u32; 3];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for seq in 1..=3000u64 {
            let a = rng.random_range(0..3);
            let b = (a + rng.random_range(1..3)) % 3;
            let s = |i: usize| {
                let (rtt, pending) = pods[i].load();
                Side { rtt, pending, last_pick: last[i] }
            };
            let i = if prefer_first(s(a), s(b)) { a } else { b };
            last[i] = seq;
            got[i] += 1;
            pods[i].start();
            // Latencies of 0.9–1.1 ms: noise, not a difference.
            let rtt = Duration::from_micros(900 + rng.random_range(0..200));
            tokio::time::advance(rtt).await;
            pods[i].answered(rtt);
            pods[i].finish();
        }
        for n in got {
            assert!((950..=1050).contains(&n), "{got:?}");
        }
    }
}
