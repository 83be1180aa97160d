//! `/metrics` as a Prometheus user sees it: scraped from the real sidecar watching the Kubernetes API stand-in and
//! parsed by the Prometheus project's own Python parser (`prometheus_client.parser`, installed by scripts/test
//! from tests/requirements.txt), never by pattern matching.

mod common;

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{cluster::*, *};
use hello_sidecar::kube_standin::controller::Phase;
use serde::Deserialize;

/// One sample as the parser returns it.
#[derive(Debug, Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One family as the parser returns it.
#[derive(Debug, Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    samples: Vec<Sample>,
}

/// The parser's reading of an exposition; panics when it refuses the text.
struct Scrape(Vec<Family>);

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = [{"name": f.name, "type": f.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
       for f in text_string_to_metric_families(sys.stdin.read())]
json.dump(out, sys.stdout)
"#;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("HELLO_TEST_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-tools/venv/bin/python");
    assert!(venv.exists(), "{} is missing: scripts/test installs the Python test tools", venv.display());
    venv
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut child = Command::new(python())
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python runs");
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write the exposition");
        let out = child.wait_with_output().expect("python ends");
        assert!(
            out.status.success(),
            "the parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(serde_json::from_slice(&out.stdout).expect("the parser's JSON"))
    }

    /// The family with `name` (counters' family names have no `_total`), and its type.
    fn family(&self, name: &str, kind: &str) -> &Family {
        let f = self.0.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no family {name}"));
        assert_eq!(f.kind, kind, "{name}");
        f
    }

    /// Samples named `sample` whose labels include every one of `labels`.
    fn samples<'a>(&'a self, sample: &'a str, labels: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> {
        self.0.iter().flat_map(|f| &f.samples).filter(move |s| {
            s.name == sample && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn sum(&self, sample: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(sample, labels).map(|s| s.value).sum()
    }

    fn one(&self, sample: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.samples(sample, labels).collect();
        assert_eq!(found.len(), 1, "{sample}{labels:?}: {found:?}");
        found[0].value
    }
}

/// The `target` label of [`TARGET`]: the target as discovery names it.
const TARGET_LABEL: &str = "hello.default:grpc";

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_add_up_per_target_and_per_pod() {
    let mut c = KubeCluster::new().await;
    let pods: Vec<String> = (0..3).map(|_| c.add_pod(Phase::Ready)).collect();
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(3);
    let outcomes = calls(&sidecar.client(), 30, 3, None).await;
    assert!(outcomes.iter().all(|o| o.code == tonic::Code::Ok), "{outcomes:?}");

    let m = Scrape::parse(&sidecar.metrics());
    let ok = [("grpc_status", "OK")];
    assert_eq!(m.sum("hello_sidecar_requests_total", &ok), 30.0);
    m.family("hello_sidecar_endpoint_requests", "counter");
    // Per pod: one series per pod, named by the EndpointSlice's targetRef, adding up to the calls.
    let per_pod: BTreeMap<String, f64> = m
        .samples("hello_sidecar_endpoint_requests_total", &ok)
        .map(|s| (s.labels["endpoint"].clone(), s.value))
        .collect();
    assert_eq!(per_pod.keys().cloned().collect::<Vec<_>>(), pods, "{per_pod:?}");
    assert_eq!(per_pod.values().sum::<f64>(), 30.0);
    assert_eq!(m.sum("hello_sidecar_target_requests_total", &[("target", TARGET_LABEL), ("grpc_status", "OK")]), 30.0);
    m.family("hello_sidecar_endpoint_request_duration_seconds", "histogram");
    assert_eq!(m.sum("hello_sidecar_endpoint_request_duration_seconds_count", &[("target", TARGET_LABEL)]), 30.0);
    assert_eq!(m.one("hello_sidecar_target_request_duration_seconds_count", &[("target", TARGET_LABEL)]), 30.0);
    for pod in &pods {
        let le_inf = [("endpoint", pod.as_str()), ("le", "+Inf")];
        assert_eq!(m.one("hello_sidecar_endpoint_request_duration_seconds_bucket", &le_inf), per_pod[pod]);
        assert_eq!(m.one("hello_sidecar_endpoint_requests_in_flight", &[("endpoint", pod.as_str())]), 0.0);
        assert_eq!(m.one("hello_sidecar_endpoint_state", &[("endpoint", pod), ("state", "ready")]), 1.0);
    }
    assert_eq!(m.one("hello_sidecar_calls_in_flight", &[("target", TARGET_LABEL)]), 0.0);
    assert_eq!(m.one("hello_sidecar_target_endpoints", &[("target", TARGET_LABEL), ("state", "ready")]), 3.0);

    // Build and process.
    let build = m.family("hello_sidecar_build_info", "gauge");
    assert_eq!(build.samples.len(), 1);
    assert_eq!(build.samples[0].value, 1.0);
    assert_eq!(build.samples[0].labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build.samples[0].labels["git_sha"].is_empty());
    assert!(m.one("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.one("process_open_fds", &[]) >= 3.0);
    assert!(m.one("process_cpu_seconds_total", &[]) > 0.0);
    let started = m.one("process_start_time_seconds", &[]);
    assert!(started <= now() + 1.0 && started > now() - 600.0, "started at {started}");

    // Discovery.
    let synced = m.one("hello_sidecar_discovery_last_sync_timestamp_seconds", &[("target", TARGET_LABEL)]);
    assert!(synced <= now() + 1.0 && synced > now() - 600.0, "synced at {synced}");
    assert_eq!(m.one("hello_sidecar_discovery_watch_restarts_total", &[("target", TARGET_LABEL)]), 0.0);
    let failing = m.family("hello_sidecar_discovery_failing", "gauge");
    // One series per target, none unlabelled: `sum()` over the family counts failing targets.
    assert!(failing.samples.iter().all(|s| s.labels.contains_key("target")), "{:?}", failing.samples);
    assert_eq!(m.one("hello_sidecar_discovery_failing", &[("target", TARGET_LABEL)]), 0.0);

    // A pod that leaves: its series go; the target's counts stay.
    c.delete_pod(&pods[0]);
    sidecar.wait_ready_endpoints(2);
    wait_for("the deleted pod's series to go", Duration::from_secs(20), || {
        let m = Scrape::parse(&sidecar.metrics());
        m.samples("hello_sidecar_endpoint_state", &[("endpoint", pods[0].as_str())]).next().is_none().then_some(())
    });
    let m = Scrape::parse(&sidecar.metrics());
    for f in m.0.iter().filter(|f| f.name.starts_with("hello_sidecar_endpoint_")) {
        assert!(f.samples.iter().all(|s| s.labels.get("endpoint") != Some(&pods[0])), "{f:?}");
    }
    assert_eq!(m.samples("hello_sidecar_endpoint_state", &[]).count(), 2);
    assert_eq!(m.sum("hello_sidecar_target_requests_total", &[("grpc_status", "OK")]), 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_restart_is_counted() {
    let mut c = KubeCluster::new().await;
    c.add_pod(Phase::Ready);
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(1);
    let lists = c.api.lists();
    // History compacted past the sidecar's resourceVersion while the watch is cut: the re-watch gets a 410 and
    // the watcher starts over from a list.
    c.api.down();
    c.publish();
    c.api.compact();
    c.api.up().await.expect("the API comes back");
    wait_for("a relist", Duration::from_secs(30), || (c.api.lists() > lists).then_some(()));
    wait_for("the restart counted", Duration::from_secs(10), || {
        let m = Scrape::parse(&sidecar.metrics());
        (m.one("hello_sidecar_discovery_watch_restarts_total", &[("target", TARGET_LABEL)]) >= 1.0).then_some(())
    });
}
