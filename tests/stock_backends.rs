//! Backends that manage their streams their own way: refused streams, GOAWAY, handlers that fail or die, large
//! metadata. The sidecar must never be the reason a call fails or runs twice.

mod common;

use std::time::{Duration, Instant};

use common::{raw_h2::Action, raw_h2::RawBackend, *};
use tonic::Code;

const GRPC: [(&str, &str); 3] = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "5S")];

async fn say_hello(sidecar: &Sidecar, extra: &[(&str, &str)]) -> RawResponse {
    let mut headers = GRPC.to_vec();
    headers.extend_from_slice(extra);
    let body = grpc_frame(&hello_request("world"));
    raw_request(sidecar.addr, true, "/hello.v1.HelloService/SayHello", &headers, body).await
}

fn calls_answered(b: &Backend) -> u64 {
    metric(&http_get(b.admin, "/metrics").unwrap_or_default(), "hello_server_calls_total")
}

const OK: Action = Action::Answer { status: 0, trailer_padding: 0 };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_transparently_on_the_only_endpoint() {
    // Every other request is refused (REFUSED_STREAM: not processed, RFC 9113 §8.7).
    let backend = RawBackend::start(|_, n| if n % 2 == 0 { Action::Refuse } else { OK }).await;
    let sidecar = Sidecar::start(&format!("static:///{}", backend.addr), &["--eject-after", "2"]);
    sidecar.wait_ready_endpoints(1);
    for _ in 0..10 {
        let r = say_hello(&sidecar, &[]).await;
        assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    }
    assert_eq!(backend.requests.load(std::sync::atomic::Ordering::SeqCst), 20, "each call refused once, then served");
    let m = sidecar.metrics();
    assert_eq!(metric(&m, "hello_sidecar_retries_total{reason=\"transparent\"}"), 10, "{m}");
    assert_eq!(metric(&m, "hello_sidecar_ejections_total"), 0, "a refused stream is not the endpoint's failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_do_not_spend_the_retry_budget() {
    // A peer that refuses more streams than the budget's 20% (nginx's GOAWAY every `keepalive_requests` under
    // concurrency, a server at its stream limit): none of them reached the application, so the retry budget,
    // which guards backends against retry storms, has nothing to guard, and no call may fail for it.
    let backend = RawBackend::start(|_, n| if n % 2 == 0 { Action::Refuse } else { OK }).await;
    let sidecar = Sidecar::start(&format!("static:///{}", backend.addr), &[]);
    sidecar.wait_ready_endpoints(1);
    let mut failed = Vec::new();
    for _ in 0..100 {
        let r = say_hello(&sidecar, &[]).await;
        if r.grpc_status() != Some(0) {
            failed.push(r.grpc_message());
        }
    }
    let m = sidecar.metrics();
    assert!(
        failed.is_empty(),
        "{} of 100 calls failed, e.g. {:?}; budget refusals: {}",
        failed.len(),
        failed.first(),
        metric(&m, "hello_sidecar_retries_refused_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_below_the_stream_is_retried_on_a_new_connection() {
    // The first connection answers its first request with GOAWAY(last-stream-id 0) and closes; later ones serve.
    let backend = RawBackend::start(|conn, _| if conn == 0 { Action::GoAwayBelow } else { OK }).await;
    let sidecar = Sidecar::start(&format!("static:///{}", backend.addr), &[]);
    sidecar.wait_ready_endpoints(1);
    let r = say_hello(&sidecar, &[]).await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert!(backend.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let m = sidecar.metrics();
    assert_eq!(metric(&m, "hello_sidecar_retries_total{reason=\"transparent\"}"), 1, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_always_refuses_fails_at_once_with_the_cause() {
    let backend = RawBackend::start(|_, _| Action::Refuse).await;
    let sidecar = Sidecar::start(&format!("static:///{}", backend.addr), &["--failfast-timeout", "20s"]);
    sidecar.wait_ready_endpoints(1);
    let start = Instant::now();
    let r = say_hello(&sidecar, &[]).await;
    assert_eq!(r.grpc_status(), Some(Code::Unavailable as i32), "{r:?}");
    assert!(r.grpc_message().contains("refused"), "names the cause: {}", r.grpc_message());
    assert!(!r.grpc_message().contains("no ready endpoints"), "{}", r.grpc_message());
    assert!(start.elapsed() < Duration::from_secs(10), "did not wait out the failfast: {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_from_the_handler_runs_once_and_passes_through() {
    let (a, b) = (Backend::start("unavail-a", &[]), Backend::start("unavail-b", &[]));
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a, &b]), &[]);
    sidecar.wait_ready_endpoints(2);
    for extra in [vec![], vec![("x-hello-delay", "300ms")]] {
        let before = calls_answered(&a) + calls_answered(&b);
        let mut headers = vec![("x-hello-status", "UNAVAILABLE")];
        headers.extend(extra);
        let r = say_hello(&sidecar, &headers).await;
        assert_eq!(r.grpc_status(), Some(Code::Unavailable as i32), "{r:?}");
        assert_eq!(r.grpc_message(), "injected by x-hello-status", "the backend's own status, unchanged");
        assert!(r.headers.contains_key("x-hello-pod"), "the backend's headers too: {r:?}");
        assert_eq!(calls_answered(&a) + calls_answered(&b) - before, 1, "the handler ran once");
    }
    let m = sidecar.metrics();
    assert_eq!(metric(&m, "hello_sidecar_retries_total{reason=\"transparent\"}"), 0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_inside_a_killed_backend_is_not_run_again() {
    let mut pods = [Backend::start("killed-a", &[]), Backend::start("killed-b", &[])];
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&pods[0], &pods[1]]), &[]);
    sidecar.wait_ready_endpoints(2);
    let addr = sidecar.addr;
    let call = tokio::spawn(async move {
        let headers = [GRPC.as_slice(), &[("x-hello-delay", "3s")]].concat();
        raw_request(addr, true, "/hello.v1.HelloService/SayHello", &headers, grpc_frame(&hello_request("x"))).await
    });
    let inside = wait_for("the call inside a handler", Duration::from_secs(10), || {
        (0..2).find(|&i| calls_answered(&pods[i]) == 1)
    });
    pods[inside].proc.kill();
    let r = call.await.expect("call task");
    assert_eq!(r.grpc_status(), Some(Code::Unavailable as i32), "the caller learns it failed: {r:?}");
    assert_eq!(calls_answered(&pods[1 - inside]), 0, "and it never ran on the other pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_trailers_pass_through_and_oversized_ones_get_an_explicit_status() {
    for status in [0u8, 3] {
        let backend = match status {
            0 => RawBackend::start(|_, _| Action::Answer { status: 0, trailer_padding: 20_000 }).await,
            _ => RawBackend::start(|_, _| Action::Answer { status: 3, trailer_padding: 20_000 }).await,
        };
        let sidecar = Sidecar::start(&format!("static:///{}", backend.addr), &[]);
        sidecar.wait_ready_endpoints(1);
        let r = say_hello(&sidecar, &[]).await;
        assert_eq!(r.grpc_status(), Some(i32::from(status)), "{r:?}");
        let padding = r.trailers.as_ref().and_then(|t| t.get("x-raw-padding")).map(|v| v.len());
        assert_eq!(padding, Some(20_000), "the 20 KB trailer arrives whole");
    }
    let backend = RawBackend::start(|_, _| Action::Answer { status: 0, trailer_padding: 100_000 }).await;
    let sidecar = Sidecar::start(&format!("static:///{}", backend.addr), &[]);
    sidecar.wait_ready_endpoints(1);
    let r = say_hello(&sidecar, &[]).await;
    assert_eq!(r.grpc_status(), Some(Code::ResourceExhausted as i32), "{r:?}");
    let msg = r.grpc_message();
    assert!(msg.contains("trailers") && msg.contains("100") && msg.contains("--max-header-bytes"), "{msg}");
    assert_eq!(metric(&sidecar.metrics(), "hello_sidecar_headers_too_large_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_metadata_passes_and_oversized_gets_an_explicit_status() {
    let a = Backend::start("big-metadata", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &[]);
    sidecar.wait_ready_endpoints(1);
    let big = "m".repeat(20_000);
    let r = say_hello(&sidecar, &[("x-big", &big)]).await;
    assert_eq!((r.status, r.grpc_status()), (200, Some(0)), "20 KB of metadata reaches the backend: {r:?}");

    let huge = "m".repeat(100_000);
    let r = say_hello(&sidecar, &[("x-big", &huge)]).await;
    assert_eq!(r.status, 200, "never a bare 431: {r:?}");
    assert_eq!(r.grpc_status(), Some(Code::ResourceExhausted as i32), "{r:?}");
    let msg = r.grpc_message();
    assert!(msg.contains("request metadata is 100") && msg.contains("65536"), "names the size and limit: {msg}");
    assert_eq!(calls_answered(&a), 1, "the oversized call never reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metadata_past_h2s_own_limit_still_gets_an_explicit_status() {
    // h2's SETTINGS_MAX_HEADER_LIST_SIZE sits at 1 MiB: past it h2 answers a bare 431 (inbound) or resets the
    // stream (outbound) before the sidecar's code sees the block. Stock grpc-go accepts 16 MiB directly.
    let a = Backend::start("huge-metadata", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&a]), &[]);
    sidecar.wait_ready_endpoints(1);
    let huge = "m".repeat(1_100_000);
    let r = say_hello(&sidecar, &[("x-big", &huge)]).await;
    assert_eq!((r.status, r.grpc_status()), (200, Some(Code::ResourceExhausted as i32)), "never a bare 431: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_past_h2s_own_limit_still_get_an_explicit_status() {
    let backend = RawBackend::start(|_, _| Action::Answer { status: 0, trailer_padding: 1_100_000 }).await;
    let sidecar = Sidecar::start(&format!("static:///{}", backend.addr), &[]);
    sidecar.wait_ready_endpoints(1);
    let r = say_hello(&sidecar, &[]).await;
    let padding = r.trailers.as_ref().and_then(|t| t.get("x-raw-padding")).map(|v| v.len());
    // Either the trailer block arrives whole, or the call says why it did not; never dropped in silence.
    assert!(
        padding == Some(1_100_000) || r.grpc_status() == Some(Code::ResourceExhausted as i32),
        "status {:?} {:?}, x-raw-padding {padding:?}",
        r.grpc_status(),
        r.grpc_message()
    );
}
