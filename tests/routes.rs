//! Any gRPC service through the sidecar: routes to several targets, streaming of every shape for a service the
//! sidecar was not compiled with, health per routed service, and per-method policy from the gRPC service config.

mod common;

use std::{
    collections::BTreeMap,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use common::{
    cluster::KubeCluster,
    echo::{
        EchoBackend,
        pb::{EchoRequest, echo_service_client::EchoServiceClient},
    },
    *,
};
use hello_sidecar::kube_standin::controller::Phase;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus, health_client::HealthClient,
};

fn channel(s: &Sidecar) -> Channel {
    Channel::from_shared(format!("http://{}", s.addr)).expect("uri").connect_lazy()
}

fn echo_route(backends: &[&EchoBackend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    format!("echo.v1.EchoService=static:///{}", list.join(","))
}

fn req(message: &str) -> EchoRequest {
    EchoRequest { message: message.into(), count: 0, delay_ms: 0 }
}

async fn health(s: &Sidecar, service: &str) -> Result<i32, Code> {
    let mut h = HealthClient::new(channel(s));
    h.check(HealthCheckRequest { service: service.into() }).await.map(|r| r.into_inner().status).map_err(|e| e.code())
}

/// Polls health until `service` reports `want` (or fails after a generous deadline).
async fn wait_health(s: &Sidecar, service: &str, want: Result<i32, Code>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = health(s, service).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "health of {service:?}: {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_spread_each_services_calls_over_its_own_backends() {
    let mut kube = KubeCluster::new().await;
    for _ in 0..3 {
        kube.add_pod(Phase::Ready);
    }
    let (a, b) = (EchoBackend::start("echo-a").await, EchoBackend::start("echo-b").await);
    // A third route to the Kubernetes target: the same target, so the same watch, balancer and pool.
    let alias = "hello.v1.Alias=kubernetes:///hello.default:grpc";
    // A service from a proto without a package has a one-part name.
    let unpackaged = format!("Unpackaged=static:///{},{}", a.addr, b.addr);
    let sidecar = kube.sidecar(&["--route", &echo_route(&[&a, &b]), "--route", alias, "--route", &unpackaged]);
    sidecar.wait_ready_endpoints(5);

    let pods = by_pod(&calls(&sidecar.client(), 60, 3, None).await);
    assert_eq!(pods.len(), 3, "HelloService spreads over its 3 pods: {pods:?}");
    assert!(pods.keys().all(|p| p.starts_with("hello-")), "{pods:?}");

    let mut echo = EchoServiceClient::new(channel(&sidecar));
    let mut servers = BTreeMap::new();
    for i in 0..40 {
        let r = echo.echo(req(&format!("m{i}"))).await.expect("echo answers").into_inner();
        assert_eq!(r.message, format!("m{i}"));
        *servers.entry(r.server).or_insert(0) += 1;
    }
    assert_eq!(servers.keys().collect::<Vec<_>>(), ["echo-a", "echo-b"], "{servers:?}");
    assert!(servers.values().all(|&n| n >= 10), "both echo backends share the calls: {servers:?}");

    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let r = raw_request(sidecar.addr, true, "/other.v1.Other/Call", &grpc, grpc_frame(b"")).await;
    assert_eq!(r.grpc_status(), Some(Code::Unimplemented as i32), "{r:?}");
    assert!(r.grpc_message().contains("no route for /other.v1.Other/Call"), "{}", r.grpc_message());
    // The package-less service reaches the echo backends, which do not serve it: their UNIMPLEMENTED, not a
    // "no route" of the sidecar.
    let r = raw_request(sidecar.addr, true, "/Unpackaged/Call", &grpc, grpc_frame(b"")).await;
    assert_eq!(r.grpc_status(), Some(Code::Unimplemented as i32), "{r:?}");
    assert!(!r.grpc_message().contains("no route"), "{}", r.grpc_message());

    let debug: serde_json::Value =
        serde_json::from_str(&http_get(sidecar.admin, "/debug/endpoints").expect("debug")).expect("json");
    let targets = debug["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2, "one target per distinct URI, shared by routes: {debug:#}");
    assert_eq!(targets[0]["routes"], serde_json::json!(["hello.v1.HelloService", "hello.v1.Alias"]));
    assert_eq!(targets[1]["routes"], serde_json::json!(["echo.v1.EchoService", "Unpackaged"]));
    let m = sidecar.metrics();
    let kube_ready = "hello_sidecar_target_endpoints{target=\"hello.default:grpc\",state=\"ready\"}";
    assert_eq!(metric(&m, kube_ready), 3, "{m}");
    let echo_target = format!("static:///{},{}", a.addr, b.addr);
    assert_eq!(metric(&m, &format!("hello_sidecar_target_endpoints{{target=\"{echo_target}\",state=\"ready\"}}")), 2);
    assert!(m.contains("method=\"/echo.v1.EchoService/*\""), "a routed service has its own label: {m}");
    assert!(m.contains("method=\"/Unpackaged/*\""), "{m}");

    // Health per routed service; an unrouted one is unknown.
    let serving = ServingStatus::Serving as i32;
    assert_eq!(health(&sidecar, "echo.v1.EchoService").await, Ok(serving));
    assert_eq!(health(&sidecar, "hello.v1.HelloService").await, Ok(serving));
    assert_eq!(health(&sidecar, "").await, Ok(serving));
    assert_eq!(health(&sidecar, "nope.v1.Nope").await, Err(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_endpoints_is_not_serving_and_the_others_are() {
    let hello = Backend::start("routes-hello", &[]);
    let nowhere = format!("echo.v1.EchoService=static:///{}:1", fresh_ip());
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &nowhere]);
    wait_for("every target to sync", Duration::from_secs(20), || http_get(sidecar.admin, "/ready"));
    sidecar.wait_ready_endpoints(1);
    wait_health(&sidecar, "hello.v1.HelloService", Ok(ServingStatus::Serving as i32)).await;
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(health(&sidecar, "echo.v1.EchoService").await, Ok(not_serving));
    assert_eq!(health(&sidecar, "").await, Ok(not_serving), "the whole sidecar serves only when every route can");
    let mut echo = EchoServiceClient::new(channel(&sidecar));
    let e = echo.echo(req("x")).await.expect_err("nothing to call");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("no ready endpoints for static:///"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_streaming_shape_passes_through_untouched() {
    let hello = Backend::start("stream-hello", &[]);
    let backend = EchoBackend::start("stream-echo").await;
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &echo_route(&[&backend])]);
    sidecar.wait_ready_endpoints(2);
    let mut echo = EchoServiceClient::new(channel(&sidecar));

    // Server stream: 5 messages in order.
    let ask = EchoRequest { message: "s".into(), count: 5, delay_ms: 10 };
    let mut stream = echo.server_stream(ask).await.expect("server stream").into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.expect("message") {
        got.push((m.index, m.message));
    }
    assert_eq!(got, (0..5).map(|i| (i, format!("s#{i}"))).collect::<Vec<_>>());

    // Client stream.
    let msgs = tokio_stream::iter((0..4).map(|i| req(&format!("c{i}"))));
    let r = echo.client_stream(msgs).await.expect("client stream").into_inner();
    assert_eq!(r.message, "c0,c1,c2,c3");

    // Bidi: 5 round trips, each answer read before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = echo.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("bidi").into_inner();
    for i in 0..5u32 {
        tx.send(req(&format!("b{i}"))).await.expect("send");
        let a = answers.message().await.expect("answer").expect("one per message");
        assert_eq!((a.index, a.message), (i, format!("b{i}")));
    }
    drop(tx);
    assert!(answers.message().await.expect("end").is_none());

    // A stream past its deadline ends DEADLINE_EXCEEDED, after the messages that made it.
    let mut slow = tonic::Request::new(EchoRequest { message: "d".into(), count: 10, delay_ms: 300 });
    slow.set_timeout(Duration::from_millis(1000));
    let start = Instant::now();
    let mut stream = echo.server_stream(slow).await.expect("started").into_inner();
    let mut n = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => break None,
            Err(e) => break Some(e.code()),
        }
    };
    assert_eq!(end, Some(Code::DeadlineExceeded), "after {n} messages");
    assert!((1..10).contains(&n), "some messages arrived before the deadline: {n}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());

    // A caller that cancels: the backend's stream sees it.
    let before = backend.stats.cancelled.load(Ordering::SeqCst);
    let mut stream = echo
        .server_stream(EchoRequest { message: "x".into(), count: 1000, delay_ms: 20 })
        .await
        .expect("started")
        .into_inner();
    stream.message().await.expect("first").expect("a message");
    drop(stream);
    wait_for("the cancel to reach the backend", Duration::from_secs(10), || {
        (backend.stats.cancelled.load(Ordering::SeqCst) > before).then_some(())
    });
}

const CONFIG: &str = r#"{"methodConfig": [
  {"name": [{"service": "echo.v1.EchoService", "method": "Echo"}],
   "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
                   "retryableStatusCodes": ["UNAVAILABLE"]}},
  {"name": [{"service": "echo.v1.EchoService", "method": "ServerStream"}], "timeout": "0.4s"}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_config_retries_what_it_names_and_caps_deadlines() {
    let hello = Backend::start("config-hello", &[]);
    let (a, b) = (EchoBackend::start("echo-a").await, EchoBackend::start("echo-b").await);
    let route = echo_route(&[&a, &b]);
    let with = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &route, "--service-config", CONFIG]);
    let without = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &route]);
    with.wait_ready_endpoints(3);
    without.wait_ready_endpoints(3);

    // With a retryPolicy on UNAVAILABLE: every call succeeds, on echo-b.
    let mut echo = EchoServiceClient::new(channel(&with));
    for _ in 0..10 {
        let r = echo.echo(req("unavailable-on:echo-a")).await.expect("retried onto echo-b").into_inner();
        assert_eq!(r.server, "echo-b");
    }
    let retried = metric(&with.metrics(), "hello_sidecar_retries_total{reason=\"policy\"}");
    assert!(retried >= 1, "echo-a was tried and the call retried: {retried}");

    // Without one: the backend's UNAVAILABLE comes back unchanged, after one run.
    let mut echo = EchoServiceClient::new(channel(&without));
    let mut failed = 0;
    for _ in 0..10 {
        let ran_on_a = a.stats.calls.load(Ordering::SeqCst);
        if let Err(e) = echo.echo(req("unavailable-on:echo-a")).await {
            assert_eq!((e.code(), e.message()), (Code::Unavailable, "echo-a is unavailable on purpose"));
            assert_eq!(a.stats.calls.load(Ordering::SeqCst), ran_on_a + 1, "it ran once");
            failed += 1;
        }
    }
    assert!(failed >= 1, "some calls went to echo-a and were not retried");
    assert_eq!(metric(&without.metrics(), "hello_sidecar_retries_total{reason=\"policy\"}"), 0);

    // The config's timeout caps a call that carries none.
    let mut echo = EchoServiceClient::new(channel(&with));
    let start = Instant::now();
    let mut stream = echo
        .server_stream(EchoRequest { message: "t".into(), count: 3, delay_ms: 1000 })
        .await
        .expect("started")
        .into_inner();
    let e = stream.message().await.expect_err("past the 0.4 s timeout");
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_ready_waits_for_an_endpoint_up_to_the_deadline() {
    let hello = Backend::start("wfr-hello", &[]);
    let ip = fresh_ip();
    let route = format!("echo.v1.EchoService=static:///{ip}:{BACKEND_PORT}");
    let config = r#"{"methodConfig": [{"name": [{"service": "echo.v1.EchoService"}], "waitForReady": true}]}"#;
    let sidecar = Sidecar::start(
        &Sidecar::static_target(&[&hello]),
        &["--route", &route, "--service-config", config, "--failfast-timeout", "100ms"],
    );
    sidecar.wait_ready_endpoints(1);
    let mut echo = EchoServiceClient::new(channel(&sidecar));
    let mut call = tonic::Request::new(req("late"));
    call.set_timeout(Duration::from_secs(15));
    let waiting = tokio::spawn(async move { echo.echo(call).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!waiting.is_finished(), "a waitForReady call outlives --failfast-timeout");
    // The backend starts on the address the route names; the waiting call reaches it.
    let late = EchoBackend::start_at(ip, "late").await;
    let r = waiting.await.expect("task").expect("answered once the endpoint came up").into_inner();
    assert_eq!(r.server, late.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_and_connect_proto_reach_a_routed_service_without_its_schema() {
    use prost::Message;
    let hello = Backend::start("web-hello", &[]);
    let backend = EchoBackend::start("web-echo").await;
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &echo_route(&[&backend])]);
    sidecar.wait_ready_endpoints(2);
    let path = "/echo.v1.EchoService/Echo";
    let body = req("through the web").encode_to_vec();

    let web = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")];
    let r = raw_request(sidecar.addr, false, path, &web, grpc_frame(&body)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let len = u32::from_be_bytes([r.body[1], r.body[2], r.body[3], r.body[4]]) as usize;
    let reply = common::echo::pb::EchoResponse::decode(&r.body[5..5 + len]).expect("reply frame");
    assert_eq!((reply.message.as_str(), reply.server.as_str()), ("through the web", "web-echo"));

    let proto = [("content-type", "application/proto")];
    let r = raw_request(sidecar.addr, false, path, &proto, body).await;
    assert_eq!(r.status, 200, "{r:?}");
    let reply = common::echo::pb::EchoResponse::decode(&r.body[..]).expect("Connect proto reply");
    assert_eq!(reply.message, "through the web");

    // Connect JSON needs a schema the sidecar does not have for this service: a clear error saying what works.
    let json = [("content-type", "application/json")];
    let r = raw_request(sidecar.addr, false, path, &json, br#"{"message":"x"}"#.to_vec()).await;
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 501, "{r:?}");
    assert!(text.contains("unimplemented") && text.contains("application/proto"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_of_an_unrouted_service_says_service_unknown_and_stays_open() {
    let hello = Backend::start("watch-unknown-hello", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &[]);
    sidecar.wait_ready_endpoints(1);
    let mut h = HealthClient::new(channel(&sidecar));
    // grpc.health.v1 health.proto: "If the requested service is unknown when the call is received, the server
    // will send a message setting the serving status to SERVICE_UNKNOWN but will *not* terminate the call".
    let watch = h.watch(HealthCheckRequest { service: "acme.nope.v1.Nope".into() }).await;
    let mut stream = watch.expect("Watch is accepted, not NOT_FOUND").into_inner();
    let first = stream.message().await.expect("a message").expect("not the end");
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    let more = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(more.is_err(), "the stream stays open: {more:?}");
    assert_eq!(health(&sidecar, "acme.nope.v1.Nope").await, Err(Code::NotFound), "Check still answers NOT_FOUND");
}

/// A backend that dies gives a health Watch one transition, SERVING → NOT_SERVING, not a flap. Its port may stay
/// bound by something that no longer serves: a server that stopped accepting but still holds its listening socket
/// (draining), or, here, a plain listener that never accepts. The kernel completes TCP handshakes on it, and the
/// sidecar took such a bare connect for a working connection: SERVING again until the socket went away. A
/// connection is up only once the server's HTTP/2 preface arrived (as grpc-go waits for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_sees_one_transition_when_the_only_backend_dies() {
    let mut hello = Backend::start("watch-dies-hello", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--connect-timeout", "500ms"]);
    sidecar.wait_ready_endpoints(1);
    let mut h = HealthClient::new(channel(&sidecar));
    let watch = h.watch(HealthCheckRequest { service: "hello.v1.HelloService".into() }).await;
    let mut stream = watch.expect("Watch").into_inner();
    let first = stream.message().await.expect("a message").expect("not the end");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    hello.proc.kill();
    // The port stays bound, and nothing accepts or speaks HTTP/2 on it.
    let holder = std::net::TcpListener::bind(hello.addr).expect("the dead backend's port binds again");
    let mut seen = watched(&mut stream, Duration::from_secs(3)).await;
    drop(holder);
    seen.extend(watched(&mut stream, Duration::from_secs(1)).await);
    assert_eq!(seen, [ServingStatus::NotServing], "one transition, whatever holds the dead backend's port");
    assert_eq!(health(&sidecar, "hello.v1.HelloService").await, Ok(ServingStatus::NotServing as i32));
}

/// The statuses a health Watch sends within `wait`.
async fn watched(stream: &mut tonic::Streaming<HealthCheckResponse>, wait: Duration) -> Vec<ServingStatus> {
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + wait;
    while let Ok(Ok(Some(m))) = tokio::time::timeout_at(until, stream.message()).await {
        seen.push(ServingStatus::try_from(m.status).unwrap_or(ServingStatus::Unknown));
    }
    seen
}
