//! The power of two choices: sample two usable endpoints, keep the cheaper (Mitzenmacher; tower's and linkerd's
//! `p2c` balancers), with the comparison rule of [`prefer_first`].

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use rand::Rng;
use tokio::time::Instant;

use super::{Endpoint, Picked, breaker::Admission};
use crate::pool::SendBody;

/// P2C: sample two usable endpoints, keep the cheaper. `ejected_too` is the panic mode.
pub(super) fn choose<B: SendBody>(
    set: &[Arc<Endpoint<B>>],
    exclude: &[SocketAddr],
    now: Instant,
    ejected_too: bool,
) -> Option<Picked<B>> {
    let usable = |e: &Endpoint<B>| -> bool {
        !exclude.contains(&e.addr) && (ejected_too || e.breaker.admits(now)) && e.conn.is_ready()
    };
    let mut rng = rand::rng();
    let n = set.len();
    // Fast path: two random distinct probes, which succeed at once when the set is healthy.
    if n >= 2 {
        let a = rng.random_range(0..n);
        let b = (a + rng.random_range(1..n)) % n;
        if usable(&set[a])
            && usable(&set[b])
            && let Some(picked) = cheaper(&set[a], &set[b], now, ejected_too)
        {
            return Some(picked);
        }
    }
    // Slow path: reservoir-sample two among the usable ones in one pass.
    let mut picks: [Option<usize>; 2] = [None, None];
    let mut seen = 0usize;
    for (i, e) in set.iter().enumerate() {
        if !usable(e) {
            continue;
        }
        let slot = if seen < 2 { seen } else { rng.random_range(0..=seen) };
        if slot < 2 {
            picks[slot] = Some(i);
        }
        seen += 1;
    }
    match picks {
        [Some(a), Some(b)] => cheaper(&set[a], &set[b], now, ejected_too),
        [Some(a), None] => admit(&set[a], now, ejected_too),
        _ => None,
    }
}

/// Admits a call on `e` as its breaker says, taking the probe slot of an endpoint on probation in the same step
/// ([`super::breaker::Breaker::admit`]), and leases the connection that carries it
/// ([`crate::pool::Connection::lease`]); in panic mode (`ejected_too`) a refusal is overruled. `None` also when
/// the connection went down since it was sampled (the probe slot, if taken, is freed again).
fn admit<B: SendBody>(e: &Arc<Endpoint<B>>, now: Instant, ejected_too: bool) -> Option<Picked<B>> {
    static PICKS: AtomicU64 = AtomicU64::new(1);
    let probe = match e.breaker.admit(now) {
        Admission::Closed => None,
        Admission::Probe(slot) => Some(slot),
        Admission::Refused if ejected_too => None,
        Admission::Refused => return None,
    };
    let lease = e.conn.lease()?;
    e.last_pick.store(PICKS.fetch_add(1, Relaxed), Relaxed);
    Some(Picked { endpoint: e.clone(), lease, probe })
}

/// Latencies within this factor of each other count as alike: the difference is noise.
const ALIKE: f64 = 2.0;
/// … and so do latencies closer than the noise: [`NOISE_DEVS`] × how far the endpoints' answers stray from their
/// mean (TCP's RTTVAR margin, decayed like the estimate), at least [`NOISE_FLOOR_NS`]. On a loaded node answers
/// stray by many milliseconds and a pod that lost the CPU for a while must not look slow for long; on a quiet one
/// the margin is the floor, the most one late answer can add to a recent estimate ([`super::ewma::step_cap`])
/// (issue 10.5). A pod that is steadily slow does not stray, however far its estimate decays between its answers
/// ([`super::ewma::PeakEwma::sample`]), so a 1 s pod is not "alike" a 2 ms one.
const NOISE_DEVS: f64 = 3.0;
/// The smallest noise margin, ns.
const NOISE_FLOOR_NS: f64 = 5e6;

/// One side of a P2C comparison: latency (estimate or silence, ns), calls in flight, when it was last picked (a
/// balancer-wide sequence number), and how far its answers stray (ns).
#[derive(Debug, Clone, Copy)]
struct Side {
    rtt: f64,
    pending: u32,
    last_pick: u64,
    dev: f64,
}

impl Side {
    fn cost(self) -> f64 {
        self.rtt * (f64::from(self.pending) + 1.0)
    }
}

/// The second half of P2C: whether `a` wins over `b`.
///
/// The cost is Peak-EWMA × (calls in flight + 1), as tower's and linkerd's balancers compute it, where the latency
/// is at least the endpoint's current silence ([`super::ewma::PeakEwma::load`]): an endpoint whose calls pile up without
/// answers loses every comparison once its silence passes the noise (5 ms on a quiet node).
///
/// - Latencies that differ by more than [`ALIKE`]× *and* more than the noise: the cheaper cost wins, always.
/// - Otherwise the difference is noise, and comparing it would only add variance: the one with fewer calls in
///   flight wins (join the shorter queue), and on a tie the one picked longer ago. Equal pods so share near-evenly
///   even one call at a time, and a stray slow answer does not starve a pod until its estimate decays.
fn prefer_first(a: Side, b: Side) -> bool {
    let (lo, hi) = (a.rtt.min(b.rtt), a.rtt.max(b.rtt));
    let noise = NOISE_FLOOR_NS.max(NOISE_DEVS * a.dev.max(b.dev));
    if hi > ALIKE * lo && hi - lo > noise {
        return a.cost() < b.cost();
    }
    match a.pending.cmp(&b.pending) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => a.last_pick <= b.last_pick,
    }
}

/// The cheaper of two usable endpoints, admitted by its breaker; if another call took its probe slot meanwhile,
/// the other one.
fn cheaper<B: SendBody>(
    a: &Arc<Endpoint<B>>,
    b: &Arc<Endpoint<B>>,
    now: Instant,
    ejected_too: bool,
) -> Option<Picked<B>> {
    let side = |e: &Endpoint<B>| {
        // A deviation whose noise margin stays under the floor changes nothing in `prefer_first`.
        let (rtt, pending, dev) = e.load.sample(now, NOISE_FLOOR_NS / NOISE_DEVS);
        Side { rtt, pending, last_pick: e.last_pick.load(Relaxed), dev }
    };
    let (first, second) = if prefer_first(side(a), side(b)) { (a, b) } else { (b, a) };
    admit(first, now, ejected_too).or_else(|| admit(second, now, ejected_too))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::ewma::PeakEwma;

    fn side(rtt_ms: f64, pending: u32, last_pick: u64) -> Side {
        Side { rtt: rtt_ms * 1e6, pending, last_pick, dev: 0.0 }
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
        // One late answer (at most +5 ms on a quiet node) is noise, not a slow pod: 5.5 against 0.5 ms.
        assert!(prefer_first(side(5.5, 0, 3), side(0.5, 0, 7)));
        // 5.6 ms against 0.5 ms is no longer noise.
        assert!(!prefer_first(side(5.6, 0, 3), side(0.5, 0, 7)));
        // Slow pods alike each other: 100 ms and 190 ms are within 2×.
        assert!(prefer_first(side(190.0, 0, 3), side(100.0, 1, 7)));
    }

    #[test]
    fn the_noise_margin_follows_how_far_answers_stray() {
        let loaded = |rtt_ms: f64, pending, last_pick| Side { dev: 4e6, ..side(rtt_ms, pending, last_pick) };
        // On a loaded node (answers stray by 4 ms): 9 and 20 ms are within 3 × 4 ms of each other.
        assert!(prefer_first(loaded(20.0, 0, 3), loaded(9.0, 1, 7)));
        // A hung pod's silence passes the margin: 22 ms against 9 ms loses even with fewer calls in flight.
        assert!(!prefer_first(loaded(22.0, 0, 3), loaded(9.0, 1, 7)));
    }

    #[tokio::test(start_paused = true)]
    async fn equal_pods_one_call_at_a_time_share_evenly() {
        use rand::SeedableRng;
        let pods: Vec<PeakEwma> = (0..3).map(|_| PeakEwma::new(Duration::from_secs(1))).collect();
        let mut last = [0u64; 3];
        let mut got = [0u32; 3];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for seq in 1..=3000u64 {
            let a = rng.random_range(0..3);
            let b = (a + rng.random_range(1..3)) % 3;
            let s = |i: usize| {
                let (rtt, pending, dev) = pods[i].sample(Instant::now(), NOISE_FLOOR_NS / NOISE_DEVS);
                Side { rtt, pending, last_pick: last[i], dev }
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

    /// 3000 calls one at a time over pods answering in 2 ms, 2 ms and `slow`; the calls each pod got. A pod
    /// that stays much slower must not keep drawing calls: its own spread must not make the difference "noise",
    /// and the step cap must not hold its estimate below its real latency (review of issue 10).
    async fn one_at_a_time(slow: Duration) -> [u32; 3] {
        use rand::SeedableRng;
        let pods: Vec<PeakEwma> = (0..3).map(|_| PeakEwma::new(Duration::from_secs(1))).collect();
        let latency = [Duration::from_millis(2), Duration::from_millis(2), slow];
        let mut last = [0u64; 3];
        let mut got = [0u32; 3];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for seq in 1..=3000u64 {
            let a = rng.random_range(0..3);
            let b = (a + rng.random_range(1..3)) % 3;
            let s = |i: usize| {
                let (rtt, pending, dev) = pods[i].sample(Instant::now(), NOISE_FLOOR_NS / NOISE_DEVS);
                Side { rtt, pending, last_pick: last[i], dev }
            };
            let i = if prefer_first(s(a), s(b)) { a } else { b };
            last[i] = seq;
            got[i] += 1;
            pods[i].start();
            tokio::time::advance(latency[i]).await;
            pods[i].answered(latency[i]);
            pods[i].finish();
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_answering_in_one_second_is_not_alike_a_2_ms_pod() {
        // Observed: [1017, 989, 994]. The same through real processes: `server --delay 1s` as one of three pods,
        // `call -n 60 -c 1` → {"s1":18,"s2":20,"s3":22}.
        let got = one_at_a_time(Duration::from_secs(1)).await;
        assert!(got[2] <= 30, "the 1 s pod got {} of 3000 calls: {got:?}", got[2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_answering_in_200_ms_gets_almost_no_calls() {
        // Observed: [1474, 1469, 57] (real processes, `call -n 3000 -c 1`: 75 of 3000). tower's PeakEwma with the
        // same decay retries it about once per 3.4 s (200 ms · e^-t < 7 ms): a handful in this run.
        let got = one_at_a_time(Duration::from_millis(200)).await;
        assert!(got[2] <= 30, "the 200 ms pod got {} of 3000 calls: {got:?}", got[2]);
    }

    fn sampled(e: &PeakEwma, last_pick: u64) -> Side {
        let (rtt, pending, dev) = e.sample(Instant::now(), NOISE_FLOOR_NS / NOISE_DEVS);
        Side { rtt, pending, last_pick, dev }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_peak_stops_mattering() {
        let (slow, fast) = (PeakEwma::new(Duration::from_secs(1)), PeakEwma::new(Duration::from_secs(1)));
        slow.observe(Duration::from_millis(200));
        fast.observe(Duration::from_millis(1));
        // Fresh, the 200 ms peak loses even though the slow pod was picked longer ago.
        assert!(!prefer_first(sampled(&slow, 1), sampled(&fast, 9)));
        // 4 s later it has decayed to 200 · e⁻⁴ ≈ 3.7 ms: within the 5 ms noise, so the one picked longer ago wins.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(prefer_first(sampled(&slow, 1), sampled(&fast, 9)));
        assert!(!prefer_first(sampled(&fast, 9), sampled(&slow, 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peak_still_matters_within_its_decay() {
        let (slow, fast) = (PeakEwma::new(Duration::from_secs(1)), PeakEwma::new(Duration::from_secs(1)));
        slow.observe(Duration::from_millis(200));
        fast.observe(Duration::from_millis(1));
        // 2 s later: 200 · e⁻² ≈ 27 ms against 1 · e⁻² ms, far apart.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!prefer_first(sampled(&slow, 1), sampled(&fast, 9)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_endpoint_costs_the_floor_times_calls_in_flight_plus_one() {
        let e = PeakEwma::new(Duration::from_secs(1));
        assert_eq!(e.cost(), 1_000.0, "1 µs: cheap but not free");
        e.start();
        e.start();
        assert_eq!(e.cost(), 3_000.0);
        let s = sampled(&e, 0);
        assert_eq!((s.rtt, s.pending, s.cost()), (1_000.0, 2, 3_000.0));
    }

    #[test]
    fn a_clearly_faster_endpoint_wins_on_cost_until_its_queue_outweighs_it() {
        // 10 ms against 1 ms: the fast one wins until it has 10 calls in flight (cost 11 ms against 10 ms).
        assert!(prefer_first(side(1.0, 8, 9), side(10.0, 0, 1)));
        assert!(!prefer_first(side(1.0, 10, 9), side(10.0, 0, 1)));
    }
}
