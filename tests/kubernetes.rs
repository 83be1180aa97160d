//! The local Kubernetes tier: the real sidecar watching EndpointSlices on the API stand-in, real pods on
//! loopback addresses. DESIGN §8's scenarios.

mod common;

use std::time::Duration;

use common::{cluster::*, scenarios, *};
use hello_sidecar::kube_standin::controller::Phase;

async fn cluster_with(pods: usize) -> KubeCluster {
    let mut c = KubeCluster::new().await;
    for _ in 0..pods {
        c.add_pod(Phase::Ready);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_all_ready_pods() {
    let mut c = LocalCluster::start(3).await;
    let starting = c.kube.add_pod(Phase::Starting);
    wait_for("the first sync", Duration::from_secs(20), || http_get(c.sidecar.admin, "/ready"));
    scenarios::spread(&mut c).await;
    let debug = http_get(c.sidecar.admin, "/debug/endpoints").expect("debug endpoints");
    for name in c.kube.ready_names() {
        assert!(debug.contains(&name), "{debug}");
    }
    assert!(!debug.contains(&starting), "a pod that is not ready is no endpoint: {debug}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_is_not_ready_before_the_first_sync() {
    let c = cluster_with(1).await;
    c.api.stall(true);
    let sidecar = c.sidecar(&[]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(http_get(sidecar.admin, "/ready").is_none(), "ready before any EndpointSlice was seen");
    c.api.stall(false);
    wait_for("ready after the sync", Duration::from_secs(20), || http_get(sidecar.admin, "/ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_new_pods_get_calls_within_two_seconds() {
    let mut c = LocalCluster::start(3).await;
    c.wait_sidecar_endpoints(3);
    scenarios::scale_up(&mut c, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_through_terminating_fails_no_call() {
    let mut c = LocalCluster::start(5).await;
    c.wait_sidecar_endpoints(5);
    scenarios::scale_down(&mut c, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_call() {
    let mut c = LocalCluster::start(3).await;
    c.wait_sidecar_endpoints(3);
    scenarios::rolling_restart(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_fails_no_call_and_its_replacement_serves() {
    let mut c = LocalCluster::start(3).await;
    c.wait_sidecar_endpoints(3);
    scenarios::pod_delete(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_turns_not_ready_stops_getting_new_calls() {
    let mut c = cluster_with(3).await;
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(3);
    let sick = c.ready_names()[0].clone();
    c.set_phase(&sick, Phase::NotReady);
    sidecar.wait_ready_endpoints(2);
    let pods = by_pod(&calls(&sidecar.client(), 60, 2, None).await);
    assert!(!pods.contains_key(&sick), "{sick} still got calls: {pods:?}");
    c.set_phase(&sick, Phase::Ready);
    sidecar.wait_ready_endpoints(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_the_last_known_endpoints() {
    let c = cluster_with(3).await;
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(3);
    let connects = metric(&sidecar.metrics(), "hello_sidecar_connects_total{result=\"ok\"}");
    let load = Load::start(&sidecar.client(), 2);

    c.api.down();
    c.api.drop_watches();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        metric(&sidecar.metrics(), "hello_sidecar_endpoints{state=\"ready\"}"),
        3,
        "API down: no endpoint dropped"
    );
    c.api.up().await.expect("the API comes back");

    c.api.stall(true);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        metric(&sidecar.metrics(), "hello_sidecar_endpoints{state=\"ready\"}"),
        3,
        "API stalled: no endpoint dropped"
    );
    c.api.stall(false);

    let outcomes = load.stop().await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert!(by_pod(&outcomes).len() == 3);
    assert_eq!(metric(&sidecar.metrics(), "hello_sidecar_connects_total{result=\"ok\"}"), connects, "no reconnects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_relist_causes_no_endpoint_churn() {
    let mut c = cluster_with(3).await;
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(3);
    let before = sidecar.metrics();
    let lists = c.api.lists();
    // While the watch is cut, the slices are rewritten (same pods, new resourceVersions) and history is
    // compacted past the sidecar's last resourceVersion: its re-watch gets the in-stream 410 and it re-lists.
    c.api.down();
    c.publish();
    c.api.compact();
    c.api.up().await.expect("the API comes back");
    wait_for("a relist after 410", Duration::from_secs(30), || (c.api.lists() > lists).then_some(()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sidecar.metrics();
    for sample in ["hello_sidecar_connects_total{result=\"ok\"}", "hello_sidecar_discovery_updates_total"] {
        assert_eq!(metric(&after, sample), metric(&before, sample), "{sample} changed across the relist");
    }
    assert_eq!(metric(&after, "hello_sidecar_endpoints{state=\"ready\"}"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_pods_over_three_slices_are_250_endpoints() {
    let mut c = KubeCluster::new().await;
    let base = fresh_ip().octets();
    for i in 0..250u32 {
        c.add_phantom(std::net::Ipv4Addr::new(127, base[1], 200 + (i / 250) as u8, (i % 250) as u8 + 1).into());
    }
    c.publish();
    // Overlap: the first 20 pods are also listed in an extra slice, as during a move between slices.
    let mut dup = c.api_slice_copy();
    dup.metadata.name = Some("hello-dup".into());
    if let Some(eps) = dup.endpoints.as_mut() {
        eps.truncate(20);
    }
    c.api.put_slice(&dup);
    let sidecar = c.sidecar(&["--connect-timeout", "100ms"]);
    let total = wait_for("250 endpoints", Duration::from_secs(20), || {
        let m = sidecar.metrics();
        let n: u64 = ["ready", "connecting", "backoff", "ejected", "draining"]
            .iter()
            .map(|s| metric(&m, &format!("hello_sidecar_endpoints{{state=\"{s}\"}}")))
            .sum();
        (n == 250).then_some(n)
    });
    assert_eq!(total, 250);
}
