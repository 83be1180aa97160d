//! The data path through the real binary: spreading, pooling, pass-through and routing.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_evenly_over_three_backends() {
    // Equal pods, each answering in 5 ms: with sub-millisecond answers a pod descheduled for a few ms on a busy
    // machine really is the slowest for a while, and Peak-EWMA rightly sends it less. 5 ms of work each keeps such
    // noise small next to the latency, so what is measured is the spread of equal pods.
    let delay = ["--delay", "5ms"];
    let (a, b, c) = (Backend::start("pod-a", &delay), Backend::start("pod-b", &delay), Backend::start("pod-c", &delay));
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b, &c]), &[]);
    sidecar.wait_ready_endpoints(3);
    let outcomes = calls(&sidecar.client(), 300, 4, None).await;
    assert!(outcomes.iter().all(|o| o.code == Code::Ok), "all calls succeed: {outcomes:?}");
    let pods = by_pod(&outcomes);
    assert_eq!(pods.len(), 3, "every backend answered: {pods:?}");
    for (pod, n) in &pods {
        assert!((80..=120).contains(n), "{pod} got {n} of 300, outside 100 ± 20%: {pods:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_clearly_fewer_calls() {
    let (a, b) = (Backend::start("fast-a", &[]), Backend::start("fast-b", &[]));
    let slow = Backend::start("slow", &["--delay", "20ms"]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b, &slow]), &[]);
    sidecar.wait_ready_endpoints(3);
    let pods = by_pod(&calls(&sidecar.client(), 300, 4, None).await);
    let slow_n = pods.get("slow").copied().unwrap_or(0);
    let fast_min = pods.get("fast-a").copied().unwrap_or(0).min(pods.get("fast-b").copied().unwrap_or(0));
    assert!(slow_n * 2 < fast_min, "the 20 ms backend got {slow_n}, each fast one at least {fast_min}: {pods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_backend_carries_every_call() {
    let (a, b, c) = (Backend::start("one-a", &[]), Backend::start("one-b", &[]), Backend::start("one-c", &[]));
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b, &c]), &[]);
    sidecar.wait_ready_endpoints(3);
    let client = sidecar.client();
    // Several client connections into the sidecar, many calls in flight: still one connection per backend.
    let mut outcomes = calls(&client, 200, 16, None).await;
    outcomes.extend(calls(&Sidecar::client(&sidecar), 100, 8, None).await);
    assert!(outcomes.iter().all(|o| o.code == Code::Ok));
    for backend in [&a, &b, &c] {
        assert_eq!(backend.connections(), 1, "{} accepted more than one connection", backend.id);
    }
    let m = sidecar.metrics();
    assert_eq!(metric(&m, "hello_sidecar_connects_total{result=\"ok\"}"), 3, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_calls_in_flight_all_succeed() {
    // Hundreds of calls in flight over one client connection. (The h2load run of the bench smoke in
    // scripts/test is what catches h2's small-DATA-frame flood guard closing upstream connections.)
    let (a, b) = (Backend::start("many-a", &[]), Backend::start("many-b", &[]));
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b]), &[]);
    sidecar.wait_ready_endpoints(2);
    let outcomes = calls(&sidecar.client(), 3000, 300, None).await;
    let failed: Vec<_> = outcomes.iter().filter(|o| o.code != Code::Ok).collect();
    assert!(failed.is_empty(), "{} of 3000 failed, e.g. {:?}", failed.len(), failed.first());
    assert_eq!(a.connections() + b.connections(), 2, "still one connection per backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_opens_only_when_the_peer_stream_limit_is_reached() {
    let limited = Backend::start("limited", &["--max-concurrent-streams", "2", "--delay", "300ms"]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&limited]), &[]);
    sidecar.wait_ready_endpoints(1);
    // Two at a time fit the peer's limit: still one connection.
    let two = calls(&sidecar.client(), 4, 2, None).await;
    assert!(two.iter().all(|o| o.code == Code::Ok), "{two:?}");
    assert_eq!(limited.connections(), 1);
    // Eight at once do not: extra connections are opened, and every call still succeeds.
    let eight = calls(&sidecar.client(), 16, 8, None).await;
    assert!(eight.iter().all(|o| o.code == Code::Ok), "{eight:?}");
    assert!(limited.connections() >= 2, "accepted {}", limited.connections());
    assert!(limited.connections() <= 5, "at most 4 extra: {}", limited.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_status_passes_through_unchanged() {
    let a = Backend::start("status-pod", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &[]);
    sidecar.wait_ready_endpoints(1);

    let mut client = sidecar.client();
    let err = client
        .say_hello(hello_sidecar::pb::HelloRequest { name: String::new() })
        .await
        .expect_err("an empty name is rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "name is required");
    assert_eq!(err.metadata().get("x-hello-pod").and_then(|v| v.to_str().ok()), Some("status-pod"));

    // Byte for byte: the same status, message and metadata as calling the backend directly.
    let body = grpc_frame(&hello_request(""));
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let via = raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &grpc, body.clone()).await;
    let direct = raw_request(a.addr, true, "/hello.v1.HelloService/SayHello", &grpc, body).await;
    assert_eq!(via.grpc_status(), Some(3));
    assert_eq!(via.grpc_status(), direct.grpc_status());
    assert_eq!(via.grpc_message(), direct.grpc_message());
    assert_eq!(via.headers.get("x-hello-pod"), direct.headers.get("x-hello-pod"));

    // A success carries the backend's body and trailers through.
    let ok =
        raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &grpc, grpc_frame(&hello_request("Ada")))
            .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.grpc_status(), Some(0));
    assert!(ok.trailers.is_some(), "trailers pass through");
    let reply: hello_sidecar::pb::HelloResponse = prost::Message::decode(&ok.body[5..]).expect("a HelloResponse");
    assert_eq!((reply.message.as_str(), reply.code), ("Hello, Ada!", 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_routes_and_refuses_by_the_contract() {
    let a = Backend::start("route-pod", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &[]);
    sidecar.wait_ready_endpoints(1);
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let body = grpc_frame(&hello_request("x"));

    let unknown = raw_request(sidecar.addr, true, "/other.v1.Other/Call", &grpc, body.clone()).await;
    assert_eq!(unknown.grpc_status(), Some(Code::Unimplemented as i32), "{unknown:?}");

    let text = [("content-type", "text/plain")];
    let not_grpc = raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &text, b"hi".to_vec()).await;
    assert_eq!(not_grpc.status, 415);
    assert!(String::from_utf8_lossy(&not_grpc.body).contains("application/grpc"));

    let h1 = raw_request(sidecar.addr, false, "/hello.v1.HelloService/SayHello", &grpc, body.clone()).await;
    assert_eq!(h1.status, 426, "{h1:?}");
    assert_eq!(h1.headers.get("upgrade").map(|v| v.as_bytes()), Some(&b"h2c"[..]), "RFC 9110 §15.5.22: {h1:?}");
    assert!(String::from_utf8_lossy(&h1.body).contains("HTTP/2"));

    let bad_timeout = [("content-type", "application/grpc"), ("grpc-timeout", "soon")];
    let r = raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &bad_timeout, body).await;
    assert_eq!(r.grpc_status(), Some(Code::Internal as i32));

    // 5 MiB in one message: over the 4 MiB limit.
    let big = grpc_frame(&hello_request(&"x".repeat(5 << 20)));
    let r = raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &grpc, big).await;
    assert_eq!(r.grpc_status(), Some(Code::ResourceExhausted as i32), "{r:?}");
    assert!(r.grpc_message().contains("larger than max"), "{}", r.grpc_message());

    // Health and reflection are answered by the sidecar itself.
    let health = tonic_health::pb::health_client::HealthClient::new(channel(sidecar.addr));
    let status = health
        .clone()
        .check(tonic_health::pb::HealthCheckRequest { service: "hello.v1.HelloService".into() })
        .await
        .expect("health answers");
    assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // The sidecar is still fine after all that.
    let ok = calls(&sidecar.client(), 10, 2, None).await;
    assert!(ok.iter().all(|o| o.code == Code::Ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_concurrency_limit_are_refused_fast() {
    let a = Backend::start("limit-pod", &["--delay", "500ms"]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &["--max-concurrent-calls", "4"]);
    sidecar.wait_ready_endpoints(1);
    let outcomes = calls(&sidecar.client(), 12, 12, None).await;
    let exhausted = outcomes.iter().filter(|o| o.code == Code::ResourceExhausted).count();
    let ok = outcomes.iter().filter(|o| o.code == Code::Ok).count();
    assert_eq!(ok, 4, "{outcomes:?}");
    assert_eq!(exhausted, 8, "{outcomes:?}");
    let refused = outcomes.iter().find(|o| o.code == Code::ResourceExhausted).expect("one refused");
    assert!(refused.latency < Duration::from_millis(400), "refused at once, not queued: {refused:?}");
}

fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy()
}
