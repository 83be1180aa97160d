//! DESIGN §8's scenarios, written once against [`Cluster`]: `tests/kubernetes.rs` runs them on the local tier,
//! `tests/kind.rs` on a kind cluster (`e2e/run.sh`).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use hello_sidecar::client::Outcome;

use super::{
    by_pod, calls,
    cluster::{Cluster, Load, failures},
};

/// Calls spread over every ready pod, and only those.
pub async fn spread(c: &mut impl Cluster) {
    let ready = c.ready_pods();
    c.wait_sidecar_endpoints(ready.len());
    let outcomes = calls(&c.client(), 30 * ready.len(), 3, None).await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let pods = by_pod(&outcomes);
    assert_eq!(pods.keys().cloned().collect::<Vec<_>>(), sorted(ready), "{pods:?}");
}

/// Scale up: every new pod gets calls within 2 s of being ready; no call fails.
pub async fn scale_up(c: &mut impl Cluster, to: usize) {
    let before = c.ready_pods();
    let load = Load::start(&c.grpc_addr(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.scale(to);
    let ready_at = Instant::now();
    let new: Vec<String> = c.ready_pods().into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), to - before.len(), "the scale-up made new pods");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = by_pod(&load.since(ready_at));
    let outcomes = load.stop().await;
    for n in &new {
        assert!(window.get(n).copied().unwrap_or(0) > 0, "{n} got no call within 2 s of being ready: {window:?}");
    }
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
}

/// Scale down through the terminating phase: no call fails, and the removed pods stop getting calls.
pub async fn scale_down(c: &mut impl Cluster, to: usize) {
    let (outcomes, tail) = under_load(c, |c| c.scale(to)).await;
    assert!(outcomes.len() > 100, "the load ran: {}", outcomes.len());
    assert_eq!(tail.keys().cloned().collect::<Vec<_>>(), sorted(c.ready_pods()), "{tail:?}");
}

/// Runs `change` under steady load; asserts no call failed; returns every outcome and the calls per pod once the
/// change has settled.
async fn under_load<C: Cluster>(c: &mut C, change: impl FnOnce(&mut C)) -> (Vec<Outcome>, BTreeMap<String, usize>) {
    let load = Load::start(&c.grpc_addr(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    change(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let tail = by_pod(&load.since(after));
    let outcomes = load.stop().await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    (outcomes, tail)
}

/// A rolling restart of every pod: no call fails, and the new pods serve.
pub async fn rolling_restart(c: &mut impl Cluster) {
    let load = Load::start(&c.grpc_addr(), 4);
    c.rolling_restart();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.stop().await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let pods = by_pod(&outcomes);
    for n in c.ready_pods() {
        assert!(pods.contains_key(&n), "new pod {n} served: {pods:?}");
    }
}

/// A deleted pod: no call fails, it gets no more calls, and its replacement does.
pub async fn pod_delete(c: &mut impl Cluster) {
    let victim = c.ready_pods()[0].clone();
    let (_, tail) = under_load(c, |c| c.delete_pod(&victim)).await;
    assert!(!tail.contains_key(&victim), "{victim} still got calls: {tail:?}");
    assert_eq!(tail.keys().cloned().collect::<Vec<_>>(), sorted(c.ready_pods()), "{tail:?}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
