//! `--service-config` at its extremes, through real sockets: values a user may write that the format allows must
//! never make the proxy panic or turn a backend's answer into another status.

mod common;

use common::*;
use hello_sidecar::pb::HelloRequest;
use tonic::Code;

fn hello(status: Option<&'static str>) -> tonic::Request<HelloRequest> {
    let mut req = tonic::Request::new(HelloRequest { name: "extreme".into() });
    if let Some(s) = status {
        req.metadata_mut().insert("x-hello-status", s.parse().expect("ascii"));
    }
    req
}

fn calls_total(backends: &[&Backend]) -> u64 {
    backends
        .iter()
        .map(|b| metric(&http_get(b.admin, "/metrics").unwrap_or_default(), "hello_server_calls_total"))
        .sum()
}

/// A `backoffMultiplier` the format allows (any number above 0) but whose product overflows a duration: the retry
/// waits at most `maxBackoff`, and the call still ends with the backend's status after `maxAttempts` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_backoff_multiplier_is_capped_by_max_backoff() {
    let (a, b) = (Backend::start("cfg-mult-a", &[]), Backend::start("cfg-mult-b", &[]));
    let config = r#"{"methodConfig": [{"name": [{"service": "hello.v1.HelloService"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                        "backoffMultiplier": 1e300, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b]), &["--service-config", config]);
    sidecar.wait_ready_endpoints(2);
    let mut client = sidecar.client();
    for i in 0..3u64 {
        let e = client.say_hello(hello(Some("UNAVAILABLE"))).await.expect_err("the backend says UNAVAILABLE");
        assert_eq!((e.code(), e.message()), (Code::Unavailable, "injected by x-hello-status"), "call {i}");
        assert_eq!(calls_total(&[&a, &b]), 3 * (i + 1), "maxAttempts runs per call");
    }
    client.say_hello(hello(None)).await.expect("the sidecar still serves");
}

/// A `timeout` far in the future (the protobuf Duration allows up to 315,576,000,000 s; anything larger is not a
/// Duration) is honoured as a very long deadline, and one past that range is a config error naming its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_timeout_is_a_long_deadline_and_a_larger_one_is_refused() {
    let a = Backend::start("cfg-long", &[]);
    let config = r#"{"methodConfig": [{"name": [{}], "timeout": "315576000000s"}]}"#;
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &["--service-config", config]);
    sidecar.wait_ready_endpoints(1);
    let mut client = sidecar.client();
    for _ in 0..3 {
        client.say_hello(hello(None)).await.expect("answered under the longest deadline");
    }

    let too_long = r#"{"methodConfig": [{"name": [{}], "timeout": "18446744073709551615s"}]}"#;
    let ip = fresh_ip().to_string();
    let (listen, admin) = (format!("{ip}:50051"), format!("{ip}:9901"));
    let mut child = std::process::Command::new(BIN)
        .args(["sidecar", "--listen", &listen, "--admin", &admin, "--target", "static:///127.0.0.1:1"])
        .args(["--service-config", too_long])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    // A config the sidecar accepts would keep it running: give it a few seconds to exit on its own.
    let start = std::time::Instant::now();
    while child.try_wait().ok().flatten().is_none() && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--service-config") && stderr.contains("methodConfig[0].timeout"), "{stderr}");
}

/// gRPC's wait-for-ready (grpc/doc/wait-for-ready.md): the call waits for a usable endpoint until its deadline,
/// and one still without an endpoint then fails as any call past its deadline does, `DEADLINE_EXCEEDED` (grpc-go's
/// picker says "context deadline exceeded while waiting for connections to become ready"), not `UNAVAILABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_ready_call_without_an_endpoint_ends_deadline_exceeded() {
    let hello = Backend::start("cfg-wfr-hello", &[]);
    let route = format!("echo.v1.EchoService=static:///{}:{BACKEND_PORT}", fresh_ip());
    let config = r#"{"methodConfig": [{"name": [{"service": "echo.v1.EchoService"}], "waitForReady": true}]}"#;
    let sidecar = Sidecar::start(
        &Sidecar::static_target(&[&hello]),
        &["--route", &route, "--service-config", config, "--failfast-timeout", "100ms"],
    );
    sidecar.wait_ready_endpoints(1);
    let grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "700m")];
    let r = raw_request(sidecar.addr, true, "/echo.v1.EchoService/Echo", &grpc, grpc_frame(b"")).await;
    assert_eq!(r.grpc_status(), Some(Code::DeadlineExceeded as i32), "{}", r.grpc_message());
    assert!(r.grpc_message().contains("no ready endpoints"), "the reason is kept: {}", r.grpc_message());
}
