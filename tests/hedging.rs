//! `hedgingPolicy` (gRFC A6) through real sockets: the real binary as sidecar and as backend pods.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hello_sidecar::pb::HelloRequest;
use tonic::Code;

fn config(method: &str, delay: &str) -> String {
    format!(
        r#"{{"methodConfig": [{{"name": [{{"service": "hello.v1.HelloService", "method": "{method}"}}],
            "hedgingPolicy": {{"maxAttempts": 2, "hedgingDelay": "{delay}", "nonFatalStatusCodes": ["UNAVAILABLE"]}}}}]}}"#
    )
}

fn hello(metadata: &[(&'static str, &'static str)]) -> tonic::Request<HelloRequest> {
    let mut req = tonic::Request::new(HelloRequest { name: "hedge".into() });
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().expect("ascii"));
    }
    req
}

fn pod(res: &tonic::Response<hello_sidecar::pb::HelloResponse>) -> String {
    res.metadata().get("x-hello-pod").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn server_metric(b: &Backend, name: &str) -> u64 {
    metric(&http_get(b.admin, "/metrics").unwrap_or_default(), name)
}

/// A slow pod and a fast one: every hedged call is answered by the fast pod long before the slow pod's delay, and
/// each attempt the slow pod started is cancelled (the backend sees the reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_call_is_answered_by_the_fast_pod_and_the_slow_attempt_is_cancelled() {
    let slow = Backend::start("hedge-slow", &["--delay", "20s"]);
    let fast = Backend::start("hedge-fast", &[]);
    let config = config("SayHello", "0.2s");
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&slow, &fast]), &["--service-config", &config]);
    sidecar.wait_ready_endpoints(2);
    let mut client = sidecar.client();
    for i in 0..10 {
        let start = Instant::now();
        let res = client.say_hello(hello(&[])).await.unwrap_or_else(|e| panic!("call {i}: {e}"));
        let took = start.elapsed();
        assert_eq!(pod(&res), fast.id, "call {i}");
        // The slow pod answers after 20 s; the hedge goes after 0.2 s.
        assert!(took < Duration::from_secs(10), "call {i} took {took:?}");
    }
    let started_on_slow = server_metric(&slow, "hello_server_calls_total");
    assert!(started_on_slow >= 1, "some calls went to the slow pod first, and were hedged");
    wait_for("the slow pod to see its attempts cancelled", Duration::from_secs(10), || {
        (server_metric(&slow, "hello_server_calls_cancelled_total") == started_on_slow).then_some(())
    });
    // The hedges were counted as retry attempts (gRFC A6), and a cancelled hedge did not eject the slow pod.
    let m = sidecar.metrics();
    assert!(metric(&m, "hello_sidecar_retries_total{reason=\"policy\"}") >= started_on_slow, "{m}");
    let text = http_get(sidecar.admin, "/debug/endpoints").unwrap_or_default();
    let endpoints: serde_json::Value = serde_json::from_str(&text).expect("json");
    let slow_addr = slow.addr.to_string();
    let slow_state = endpoints["endpoints"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e["address"] == slow_addr.as_str()))
        .unwrap_or_else(|| panic!("the slow pod in {text}"));
    // A cancelled hedge is our decision, not the pod's failure: no ejection, no breaker verdict, and its 20 s are
    // not learnt as a latency.
    assert_eq!((&slow_state["ejected"], &slow_state["breaker"]), (&false.into(), &"ok".into()), "{text}");
    assert_eq!(slow_state["in_flight"], 0, "{text}");
    assert!(slow_state["ewma_latency_ms"].as_f64().is_some_and(|ms| ms < 1000.0), "{text}");
}

/// A non-fatal status sends the next hedge at once (not after the hedging delay); a fatal one ends the call with
/// it after one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_fatal_codes_hedge_at_once_and_fatal_codes_end_the_call() {
    let bad = Backend::start("hedge-bad", &["--error-rate", "1", "--error-code", "UNAVAILABLE"]);
    let good = Backend::start("hedge-good", &[]);
    let config = config("SayHello", "30s");
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&bad, &good]), &["--service-config", &config]);
    sidecar.wait_ready_endpoints(2);
    let mut client = sidecar.client();
    for i in 0..10 {
        let start = Instant::now();
        let res = client.say_hello(hello(&[])).await.unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(pod(&res), good.id, "call {i}");
        assert!(start.elapsed() < Duration::from_secs(15), "the 30 s hedging delay was cut short");
    }
    assert!(server_metric(&bad, "hello_server_calls_total") >= 1, "some calls failed on the bad pod first");

    let before = server_metric(&bad, "hello_server_calls_total") + server_metric(&good, "hello_server_calls_total");
    for _ in 0..4 {
        let e = client.say_hello(hello(&[("x-hello-status", "INVALID_ARGUMENT")])).await.expect_err("fatal");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let after = server_metric(&bad, "hello_server_calls_total") + server_metric(&good, "hello_server_calls_total");
    assert_eq!(after - before, 4, "a fatal status ends the call after one attempt");
}

/// A method the hedging policy does not name gets exactly one attempt, even with a zero hedging delay elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_without_the_policy_is_sent_once() {
    let (a, b) = (Backend::start("hedge-one-a", &[]), Backend::start("hedge-one-b", &[]));
    let config = config("Other", "0s");
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b]), &["--service-config", &config]);
    sidecar.wait_ready_endpoints(2);
    let mut client = sidecar.client();
    for i in 0..6 {
        let e = client.say_hello(hello(&[("x-hello-status", "UNAVAILABLE")])).await.expect_err("unavailable");
        assert_eq!(e.code(), Code::Unavailable);
        let total = server_metric(&a, "hello_server_calls_total") + server_metric(&b, "hello_server_calls_total");
        assert_eq!(total, i + 1, "one attempt per call");
    }
    assert_eq!(metric(&sidecar.metrics(), "hello_sidecar_retries_total{reason=\"policy\"}"), 0);
}

/// Only a request whose body is still kept (≤ 64 KiB) is hedged: a larger one gets the first attempt only, while
/// a small one to the same slow pods gets its hedge (and the loser is cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_replay_buffer_is_not_hedged() {
    let (a, b) = (Backend::start("hedge-big-a", &["--delay", "3s"]), Backend::start("hedge-big-b", &["--delay", "3s"]));
    let config = config("SayHello", "0.1s");
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b]), &["--service-config", &config]);
    sidecar.wait_ready_endpoints(2);
    let mut client = sidecar.client();
    let total = || server_metric(&a, "hello_server_calls_total") + server_metric(&b, "hello_server_calls_total");

    let big = HelloRequest { name: "x".repeat(100 * 1024) };
    client.say_hello(big).await.expect("answered by the one attempt");
    assert_eq!(total(), 1, "a body past the replay buffer cannot be sent twice");

    client.say_hello(hello(&[])).await.expect("answered");
    assert_eq!(total(), 3, "the small call was hedged after 0.1 s");
    let cancelled = || {
        server_metric(&a, "hello_server_calls_cancelled_total")
            + server_metric(&b, "hello_server_calls_cancelled_total")
    };
    wait_for("the losing attempt to be cancelled", Duration::from_secs(10), || (cancelled() == 1).then_some(()));
}
