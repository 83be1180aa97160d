//! Routes whose target URIs name one Kubernetes Service in different spellings: the pod's own namespace left out
//! or written, the port by name or by number.

mod common;

use std::collections::BTreeMap;

use common::{cluster::KubeCluster, *};
use hello_sidecar::kube_standin::controller::Phase;

/// The Service the cluster publishes (`hello` in `default`, the kubeconfig's namespace) through three spellings.
const ALIASES: [&str; 4] = [
    "--route",
    "hello.v1.Alias=kubernetes:///hello:grpc",
    "--route",
    "hello.v1.Alias2=kubernetes:///hello.default:8080",
];

/// Every target gets its own metric series: a target without a namespace must not be labelled as if it named
/// `default` (the pod's namespace may be another one), or its series collide with the one that does, and a
/// scrape holds the same series twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_targets_share_a_metric_series() {
    let mut kube = KubeCluster::new().await;
    kube.add_pod(Phase::Ready);
    let sidecar = kube.sidecar(&ALIASES);
    wait_for("every target synced", std::time::Duration::from_secs(20), || {
        http_get(sidecar.admin, "/ready").map(|_| ())
    });
    let text = sidecar.metrics();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        *seen.entry(series).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
    assert!(twice.is_empty(), "series exposed more than once: {twice:#?}");
}

/// DESIGN §10 and issue 12: one EndpointSlice watch per Kubernetes Service, never per route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_naming_one_service_differently_share_its_watch() {
    let mut kube = KubeCluster::new().await;
    kube.add_pod(Phase::Ready);
    let sidecar = kube.sidecar(&ALIASES);
    wait_for("every target synced", std::time::Duration::from_secs(20), || {
        http_get(sidecar.admin, "/ready").map(|_| ())
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!((kube.api.lists(), kube.api.watches()), (1, 1), "one watch of Service hello for its three spellings");
}

/// Routes that name the same URI share its target: the API stand-in serves one LIST and one WATCH for them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_naming_one_uri_share_one_watch() {
    let mut kube = KubeCluster::new().await;
    kube.add_pod(Phase::Ready);
    let same =
        ["--route", "a.v1.A=kubernetes:///hello.default:grpc", "--route", "b.v1.B=kubernetes:///hello.default:grpc"];
    let sidecar = kube.sidecar(&same);
    wait_for("every target synced", std::time::Duration::from_secs(20), || {
        http_get(sidecar.admin, "/ready").map(|_| ())
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!((kube.api.lists(), kube.api.watches()), (1, 1), "--target and two routes, one URI: one watch");
}

/// A target whose port name matches no port of the Service (a typo: `grcp` for `grpc`) is named as such, in
/// `/ready` and in the calls that find no endpoint, with the names the Service does have: "no ready endpoints
/// (0 known)" sent the user looking at pods that were all ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_name_the_service_lacks_is_named_with_the_ones_it_has() {
    let mut kube = KubeCluster::new().await;
    kube.add_pod(Phase::Ready);
    let sidecar = kube.sidecar_for("kubernetes:///hello.default:grcp", &[]);
    let ready = wait_for("a /ready body that names the port", std::time::Duration::from_secs(20), || {
        let (_, body) = http_get_any(sidecar.admin, "/ready")?;
        (!body.contains("has not synced")).then_some(body)
    });
    assert!(ready.contains("no port named \"grcp\""), "{ready}");
    assert!(ready.contains("grpc"), "the port names the Service has: {ready}");
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(std::time::Duration::from_secs(2))).await;
    assert_eq!(o.code, tonic::Code::Unavailable, "{o:?}");
    assert!(o.message.contains("no port named \"grcp\"") && o.message.contains("grpc"), "{}", o.message);
}

/// A target naming a Service that does not exist (a typo: `hellp`) says so: the EndpointSlice controller writes a
/// slice even for a Service without pods, so no slice at all means no such Service (or one without a selector).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_any_endpointslice_is_named_as_such() {
    let mut kube = KubeCluster::new().await;
    kube.add_pod(Phase::Ready);
    let sidecar = kube.sidecar_for("kubernetes:///hellp.default:grpc", &[]);
    let ready = wait_for("a synced /ready", std::time::Duration::from_secs(20), || {
        let (_, body) = http_get_any(sidecar.admin, "/ready")?;
        (!body.contains("has not synced")).then_some(body)
    });
    assert!(ready.contains("no EndpointSlices"), "{ready}");
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(std::time::Duration::from_secs(2))).await;
    assert_eq!(o.code, tonic::Code::Unavailable, "{o:?}");
    assert!(o.message.contains("no EndpointSlices") && o.message.contains("hellp"), "{}", o.message);
}
