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
    let load = Load::start(&sidecar.addr.to_string(), 2);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_is_one_endpoint_per_pod() {
    let c = cluster_with(3).await;
    // The IPv6 slice of a dual-stack Service: the same pods (same targetRefs), other addresses. These IPv6
    // addresses go nowhere: a sidecar that counted addresses would have 6 endpoints, 3 of them never connecting.
    let mut v6 = c.api_slice_copy();
    v6.metadata.name = Some("hello-v6".into());
    v6.address_type = "IPv6".into();
    for (i, ep) in v6.endpoints.iter_mut().flatten().enumerate() {
        ep.addresses = vec![format!("fd00::{}", i + 1)];
    }
    c.api.put_slice(&v6);
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(3);
    let debug: serde_json::Value =
        serde_json::from_str(&http_get(sidecar.admin, "/debug/endpoints").expect("debug")).expect("json");
    let rows = debug["endpoints"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "one row per pod: {debug:#}");
    for row in rows {
        let addrs: Vec<&str> =
            row["addresses"].as_array().expect("addresses").iter().filter_map(|a| a.as_str()).collect();
        assert_eq!(addrs.len(), 2, "{row}");
        assert!(addrs[0].starts_with("127.") && addrs[1].starts_with("[fd00::"), "IPv4 first (auto): {row}");
    }
    let pods = by_pod(&calls(&sidecar.client(), 60, 3, None).await);
    assert_eq!(pods.len(), 3, "{pods:?}");
    // --ip-family ipv6 calls only IPv6 addresses: here none answers, so nothing is ready.
    let v6_only = c.sidecar(&["--ip-family", "ipv6"]);
    wait_for("the IPv6-only sidecar's sync", Duration::from_secs(20), || {
        let m = v6_only.metrics();
        (metric(&m, "hello_sidecar_discovery_updates_total") > 0).then_some(())
    });
    let debug = http_get(v6_only.admin, "/debug/endpoints").expect("debug");
    assert_eq!(debug.matches("\"address\": \"[fd00::").count(), 3, "{debug}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_api_is_named_in_ready_in_calls_and_in_metrics() {
    use hello_sidecar::kube_standin::Refusal;
    let c = cluster_with(1).await;
    c.api.refuse(Some(Refusal::Forbidden));
    let sidecar = c.sidecar(&[]);
    let ready = wait_for("a /ready body that names the 403", Duration::from_secs(20), || {
        let (code, body) = http_get_any(sidecar.admin, "/ready")?;
        (code == 503 && body.contains("403")).then_some(body)
    });
    assert!(ready.contains("forbidden"), "{ready}");
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(2))).await;
    assert_eq!(o.code, tonic::Code::Unavailable, "{o:?}");
    assert!(o.message.contains("403") && o.message.contains("forbidden"), "{}", o.message);
    // A refused LIST backs off like any other failure (it was retried about once a second): within 6 s, the
    // retries of 0.8–1.6 s, 1.6–3.2 s, 3.2–6.4 s.
    let lists = c.api.lists();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let retried = c.api.lists() - lists;
    assert!(retried <= 3, "{retried} LISTs in 6 s");
    let m = sidecar.metrics();
    assert!(metric_sum(&m, "hello_sidecar_discovery_errors_total", "status=\"403\"") >= 2, "{m}");
    assert_eq!(metric_max(&m, "hello_sidecar_discovery_failing"), 1);
    // RBAC fixed: discovery recovers on its own and says so.
    c.api.refuse(None);
    wait_for("ready once the API allows the list", Duration::from_secs(40), || http_get(sidecar.admin, "/ready"));
    assert_eq!(metric_max(&sidecar.metrics(), "hello_sidecar_discovery_failing"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_honours_retry_after_and_discovery_resumes_promptly() {
    use hello_sidecar::kube_standin::Refusal;
    let mut c = cluster_with(2).await;
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(2);
    c.api.refuse(Some(Refusal::Throttled { retry_after: 1 }));
    c.api.drop_watches();
    // 12 s of throttling: kube's backoff would have grown to 6–13 s by its end.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let m = sidecar.metrics();
    let throttled = metric_sum(&m, "hello_sidecar_discovery_errors_total", "status=\"429\"");
    assert!((6..=14).contains(&throttled), "one retry per Retry-After second, not a backoff: {throttled}\n{m}");
    let new = c.add_pod(Phase::Ready);
    c.api.refuse(None);
    let lifted = std::time::Instant::now();
    sidecar.wait_ready_endpoints(3);
    assert!(lifted.elapsed() < Duration::from_secs(4), "resumed {:?} after the throttling ended", lifted.elapsed());
    let pods = by_pod(&calls(&sidecar.client(), 60, 3, None).await);
    assert!(pods.contains_key(&new), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_a_410_relists_at_once() {
    let mut c = cluster_with(2).await;
    // Listed from the start, so that the watch has nothing to deliver when it resumes after the outage.
    let new = c.add_pod(Phase::Starting);
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(2);
    // A 14 s outage builds the backoff up (0.8 + 1.6 + 3.2 + 6.4 s …).
    c.api.down();
    c.api.drop_watches();
    tokio::time::sleep(Duration::from_secs(14)).await;
    let watches = c.api.watches();
    c.api.up().await.expect("the API comes back");
    wait_for("the watch to resume after the outage", Duration::from_secs(60), || {
        (c.api.watches() > watches).then_some(())
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A few seconds later the watch is cut, and while it is, the pod turns ready and history is compacted: the
    // re-watch gets an in-stream 410 and must re-list. The API has been answering: no outage backoff applies.
    let lists = c.api.lists();
    c.api.drop_watches();
    c.set_phase(&new, Phase::Ready);
    c.api.compact();
    let cut = std::time::Instant::now();
    sidecar.wait_ready_endpoints(3);
    assert!(c.api.lists() > lists, "it re-listed");
    assert!(cut.elapsed() < Duration::from_secs(5), "the pod was seen {:?} after the cut", cut.elapsed());
    let pods = by_pod(&calls(&sidecar.client(), 60, 3, None).await);
    assert!(pods.contains_key(&new), "{pods:?}");
}

/// Issue 16.8 ("one log line per change of state, no false recovery") and the `/ready` body: after an API outage
/// during the watch, the watch resumes from its resourceVersion (no re-list, no event when nothing changed), and
/// discovery must then say it works again. Before, it never did until some slice changed:
/// `hello_sidecar_discovery_failing` stayed 1 and `/ready` kept naming the outage (review of issue 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_watch_outage_discovery_recovers_without_a_slice_change() {
    let mut c = KubeCluster::new().await;
    for _ in 0..2 {
        c.add_pod(Phase::Ready);
    }
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(2);
    c.api.down();
    c.api.drop_watches();
    wait_for("discovery to report the outage", Duration::from_secs(20), || {
        (metric_max(&sidecar.metrics(), "hello_sidecar_discovery_failing") == 1).then_some(())
    });
    let watches = c.api.watches();
    c.api.up().await.expect("the API comes back");
    wait_for("the watch to resume", Duration::from_secs(40), || (c.api.watches() > watches).then_some(()));
    let recovered = wait_for_opt(Duration::from_secs(15), || {
        (metric_max(&sidecar.metrics(), "hello_sidecar_discovery_failing") == 0).then_some(())
    });
    let (_, body) = http_get_any(sidecar.admin, "/ready").expect("/ready");
    assert!(recovered.is_some(), "the watch resumed 15 s ago, yet discovery still reports a problem; /ready: {body}");
}

fn wait_for_opt<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Without a usable Kubernetes client configuration (a `--kubeconfig` that does not exist, or none at all outside a
/// cluster) the sidecar retries, as the config may be mounted later; `/ready` and the calls say why, not only
/// "has not synced" and "no ready endpoints".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kubeconfig_is_named_in_ready_and_in_calls() {
    let sidecar = Sidecar::start_env(cluster::TARGET, &["--kubeconfig", "/nonexistent/kubeconfig"], &[]);
    let ready = wait_for("a /ready body that names the kubeconfig", Duration::from_secs(20), || {
        let (code, body) = http_get_any(sidecar.admin, "/ready")?;
        (code == 503 && body.contains("/nonexistent/kubeconfig")).then_some(body)
    });
    assert!(ready.contains("Kubernetes client configuration"), "{ready}");
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(2))).await;
    assert_eq!(o.code, tonic::Code::Unavailable, "{o:?}");
    assert!(o.message.contains("/nonexistent/kubeconfig"), "{}", o.message);
}

/// The config mounted after the sidecar started (the case the retry exists for): the `config` problem clears from
/// `/ready` and calls flow, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_that_appears_later_is_picked_up() {
    let mut c = cluster::KubeCluster::new().await;
    c.add_pod(hello_sidecar::kube_standin::controller::Phase::Ready);
    let path = std::env::temp_dir().join(format!("hello-sidecar-late-kc-{}-{}", std::process::id(), c.api.addr()));
    let _ = std::fs::remove_file(&path);
    let flag = path.to_string_lossy().into_owned();
    let sidecar = Sidecar::start_env(cluster::TARGET, &["--kubeconfig", &flag], &[]);
    wait_for("a /ready body that names the kubeconfig", Duration::from_secs(20), || {
        let (code, body) = http_get_any(sidecar.admin, "/ready")?;
        (code == 503 && body.contains("Kubernetes client configuration")).then_some(())
    });
    std::fs::write(&path, c.api.kubeconfig(cluster::NAMESPACE)).expect("write kubeconfig");
    sidecar.wait_ready_endpoints(1);
    let (code, body) = http_get_any(sidecar.admin, "/ready").expect("/ready");
    assert_eq!(code, 200, "{body}");
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(5))).await;
    assert_eq!(o.code, tonic::Code::Ok, "{o:?}");
    let _ = std::fs::remove_file(&path);
}

/// A kubeconfig that does not parse: the YAML parser's error quotes the lines around the fault, and those lines can
/// hold a bearer token or a client key. `/ready`, the log and every failed call's message must name the file and the
/// fault on one line, never the file's content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_that_does_not_parse_is_named_without_its_content() {
    let path = std::env::temp_dir().join(format!("hello-sidecar-bad-kc-{}", std::process::id()));
    let secret = "sekret-token-4242";
    std::fs::write(&path, format!("apiVersion: v1\nusers:\n- name: u\n  user:\n    token: {secret}\n    x: [\u{1b}\n"))
        .expect("write kubeconfig");
    let flag = path.to_string_lossy().into_owned();
    let sidecar = Sidecar::start_env(cluster::TARGET, &["--kubeconfig", &flag], &[]);
    let ready = wait_for("a /ready body that names the kubeconfig", Duration::from_secs(20), || {
        let (code, body) = http_get_any(sidecar.admin, "/ready")?;
        (code == 503 && body.contains(&flag)).then_some(body)
    });
    assert!(!ready.contains(secret), "the file's content leaked: {ready}");
    assert_eq!(ready.trim_end().lines().count(), 1, "{ready}");
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(2))).await;
    assert!(o.message.contains(&flag) && !o.message.contains(secret), "{}", o.message);
    let _ = std::fs::remove_file(&path);
}
