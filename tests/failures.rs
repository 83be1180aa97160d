//! What a caller sees when things go wrong: dead pods, hung pods, nothing reachable, bad peers.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use hello_sidecar::client;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_run_costs_at_most_the_calls_in_flight() {
    let (a, b) = (Backend::start("kill-a", &[]), Backend::start("kill-b", &[]));
    let mut victim = Backend::start("kill-victim", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b, &victim]), &[]);
    sidecar.wait_ready_endpoints(3);

    const CONCURRENCY: usize = 4;
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut c = sidecar.client();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..150 {
                out.push(client::call_once(&mut c, "world", Some(Duration::from_secs(5))).await);
                done.fetch_add(1, Ordering::Relaxed);
            }
            out
        }));
    }
    wait_for("200 calls before the kill", Duration::from_secs(30), || {
        (done.load(Ordering::Relaxed) >= 200).then_some(())
    });
    victim.proc.kill();
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("worker"));
    }
    let failed: Vec<_> = outcomes.iter().filter(|o| o.code != Code::Ok).collect();
    assert!(failed.len() <= CONCURRENCY, "only calls in flight on the killed pod may fail: {failed:?}");
    // After the kill, the survivors answer everything.
    let tail = by_pod(&outcomes[outcomes.len() - 100..]);
    assert!(!tail.contains_key("kill-victim") || tail["kill-victim"] <= CONCURRENCY, "{tail:?}");
    let after = calls(&sidecar.client(), 60, 4, None).await;
    assert!(after.iter().all(|o| o.code == Code::Ok), "{after:?}");
    let pods = by_pod(&after);
    assert_eq!(pods.keys().map(String::as_str).collect::<Vec<_>>(), ["kill-a", "kill-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_cannot_hold_a_call_past_its_deadline() {
    let hung = Backend::start("hung", &["--delay", "1h"]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hung]), &[]);
    sidecar.wait_ready_endpoints(1);
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let body = grpc_frame(&hello_request("x"));

    // No grpc-timeout: the sidecar's default (5 s) applies.
    let start = Instant::now();
    let r = raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &grpc, body.clone()).await;
    let took = start.elapsed();
    assert_eq!(r.grpc_status(), Some(Code::DeadlineExceeded as i32), "{r:?}");
    assert!(took >= Duration::from_millis(4900) && took < Duration::from_secs(15), "took {took:?}");

    // A 1 s deadline holds at about 1 s.
    let with_deadline = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "1S")];
    let start = Instant::now();
    let r = raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &with_deadline, body).await;
    let took = start.elapsed();
    assert_eq!(r.grpc_status(), Some(Code::DeadlineExceeded as i32), "{r:?}");
    assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(6), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reachable_is_unavailable_naming_the_target_never_a_hang() {
    let nowhere = format!("static:///{}:1", fresh_ip());
    let sidecar = Sidecar::start(&nowhere, &[]);
    let mut c = sidecar.client();
    let start = Instant::now();
    let o = client::call_once(&mut c, "world", None).await;
    assert_eq!(o.code, Code::Unavailable, "{o:?}");
    assert!(o.message.contains("no ready endpoints for") && o.message.contains(&nowhere), "{}", o.message);
    assert!(start.elapsed() < Duration::from_secs(4), "answered in {:?}", start.elapsed());
    // Health says so too, and /ready is true (discovery synced) while health is NOT_SERVING.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", sidecar.addr)).expect("uri").connect_lazy(),
    );
    let s = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(s.status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_from_a_backend_is_passed_through_never_retried_by_default() {
    // gRFC A6: a status the application answered is retried only by an explicit policy, never transparently.
    let bad = Backend::start("always-unavailable", &["--error-rate", "1", "--error-code", "UNAVAILABLE"]);
    let good = Backend::start("good", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&bad, &good]), &[]);
    sidecar.wait_ready_endpoints(2);
    let outcomes = calls(&sidecar.client(), 20, 1, None).await;
    let unavailable: Vec<_> = outcomes.iter().filter(|o| o.code == Code::Unavailable).collect();
    assert!(!unavailable.is_empty(), "{outcomes:?}");
    assert!(unavailable.iter().all(|o| o.message == "injected by --error-rate"), "{unavailable:?}");
    let handled = |b: &Backend| metric(&http_get(b.admin, "/metrics").unwrap_or_default(), "hello_server_calls_total");
    assert_eq!(handled(&bad) + handled(&good), 20, "every call ran exactly once");
    let m = sidecar.metrics();
    assert_eq!(metric(&m, "hello_sidecar_retries_total{reason=\"transparent\"}"), 0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_statuses_are_never_retried() {
    let failing = Backend::start("internal", &["--error-rate", "1", "--error-code", "INTERNAL"]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&failing]), &[]);
    sidecar.wait_ready_endpoints(1);
    let outcomes = calls(&sidecar.client(), 5, 1, None).await;
    assert!(outcomes.iter().all(|o| o.code == Code::Internal), "{outcomes:?}");
    let m = sidecar.metrics();
    assert_eq!(metric(&m, "hello_sidecar_retries_total{reason=\"transparent\"}"), 0);
    assert_eq!(failing.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_never_takes_the_sidecar_down() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("garbage-pod", &[]);
    let mut sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &[]);
    sidecar.wait_ready_endpoints(1);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut inputs: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03 garbage \xff\xfe".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        [preface.clone(), vec![0xff; 64]].concat(),
        // A HEADERS frame with a broken HPACK block.
        [preface.clone(), vec![0, 0, 0, 4, 0, 0, 0, 0], vec![0, 0, 4, 1, 5, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]]
            .concat(),
        // A DATA frame on a stream that was never opened.
        [preface, vec![0, 0, 0, 4, 0, 0, 0, 0], vec![0, 0, 3, 0, 1, 0, 0, 0, 7, 1, 2, 3]].concat(),
    ];
    // A gRPC message whose length prefix lies (says 100 bytes, carries 3).
    let lying = [0u8, 0, 0, 0, 100, 1, 2, 3].to_vec();
    inputs.push(lying.clone());
    for input in inputs {
        if let Ok(mut s) = tokio::net::TcpStream::connect(sidecar.addr).await {
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
    }
    let grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "2S")];
    let r = raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &grpc, lying).await;
    assert!(r.grpc_status().is_some_and(|s| s != 0), "a truncated message is an error: {r:?}");
    assert!(sidecar.proc.is_running(), "the sidecar survived");
    let ok = calls(&sidecar.client(), 10, 2, None).await;
    assert!(ok.iter().all(|o| o.code == Code::Ok), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_finishes_the_calls_it_has() {
    let mut a = Backend::start("draining", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &[]);
    sidecar.wait_ready_endpoints(1);
    let grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("x-hello-delay", "1s")];
    let addr = sidecar.addr;
    let call = tokio::spawn(async move {
        raw_request(addr, true, "/hello.v1.HelloService/SayHello", &grpc, grpc_frame(&hello_request("slow"))).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.proc.terminate();
    let r = call.await.expect("call task");
    assert_eq!(r.grpc_status(), Some(0), "the call in flight completes during the drain: {r:?}");
    wait_for("the backend to exit after draining", Duration::from_secs(15), || (!a.proc.is_running()).then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_sidecar_drains_its_calls_then_exits() {
    let a = Backend::start("sidecar-drain-pod", &[]);
    let mut sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &[]);
    sidecar.wait_ready_endpoints(1);
    let grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("x-hello-delay", "1s")];
    let addr = sidecar.addr;
    let call = tokio::spawn(async move {
        raw_request(addr, true, "/hello.v1.HelloService/SayHello", &grpc, grpc_frame(&hello_request("drain"))).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.proc.terminate();
    // Not ready while draining, so Kubernetes stops routing to the pod.
    wait_for("/ready to turn false", Duration::from_secs(5), || {
        http_get(sidecar.admin, "/ready").is_none().then_some(())
    });
    let r = call.await.expect("call task");
    assert_eq!(r.grpc_status(), Some(0), "the call in flight completes during the drain: {r:?}");
    wait_for("the sidecar to exit", Duration::from_secs(15), || (!sidecar.proc.is_running()).then_some(()));
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(), "no longer listening");
}
