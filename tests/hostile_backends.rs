//! What a buggy or hostile backend can send the sidecar, beyond stock servers' behaviour (`stock_backends.rs`,
//! `peers.rs`): statuses other than 200 without `grpc-status`, error pages, repeated or malformed `grpc-status`,
//! endless replies, a reflection that hangs, a GOAWAY sent with the preface, malformed fields. The caller gets the
//! status its gRPC client gives that answer when it calls the backend directly (gRPC's "HTTP to gRPC Status Code
//! Mapping"; grpc-go and gRPC-core for what the mapping leaves open), whatever protocol it speaks to the sidecar,
//! by its deadline; the sidecar's metrics, retry policy and breaker see that same status, and it keeps serving.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{h2peer::*, *};
use hello_sidecar::pb::HelloRequest;
use tonic::Code;

const SAY_HELLO: &str = "/hello.v1.HelloService/SayHello";

/// A sidecar (with `extra` flags) in front of one scripted backend, with its endpoint connected.
async fn scripted(extra: &[&str]) -> (H2Backend, Sidecar) {
    let b = H2Backend::start().await;
    let s = Sidecar::start(&format!("static:///{}", b.addr), extra);
    s.wait_ready_endpoints(1);
    (b, s)
}

/// One SayHello through the sidecar with tonic's client (a stock gRPC client); the backend does `scenario`.
async fn grpc_call(s: &Sidecar, scenario: &str) -> tonic::Status {
    let mut req = tonic::Request::new(HelloRequest { name: "hostile".into() });
    req.metadata_mut().insert("x-peer-scenario", scenario.parse().unwrap_or_else(|e| panic!("{e}")));
    req.set_timeout(Duration::from_secs(5));
    match s.client().say_hello(req).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// The same call as Connect JSON over HTTP/1.1: the response's HTTP status and body.
async fn connect_call(s: &Sidecar, scenario: &str) -> (u16, String) {
    let headers = [("content-type", "application/json"), ("x-peer-scenario", scenario)];
    let r = raw_request(s.addr, false, SAY_HELLO, &headers, br#"{"name":"hostile"}"#.to_vec()).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// Calls of SayHello the sidecar recorded with status `code` (a name: `UNAVAILABLE`).
fn recorded(metrics: &str, code: &str) -> u64 {
    metric(metrics, &format!("hello_sidecar_requests_total{{method=\"{SAY_HELLO}\",grpc_status=\"{code}\"}}"))
}

/// Waits until the sidecar has recorded `want` (status name → calls), and returns the metrics.
fn wait_recorded(s: &Sidecar, want: &BTreeMap<&str, u64>) -> String {
    let total: u64 = want.values().sum();
    wait_for("every call to be recorded", Duration::from_secs(10), || {
        let m = s.metrics();
        let seen: u64 = want.keys().map(|c| recorded(&m, c)).sum();
        (seen >= total).then_some(m)
    })
}

// An HTTP status without grpc-status (a proxy in front of a dead app answers 503, a misrouted call 404) means
// what gRPC's mapping says, for a gRPC caller and a Connect caller alike, and in the sidecar's own call metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_statuses_without_grpc_status_keep_the_meaning_grpc_clients_give_them() {
    let (_b, s) = scripted(&[]).await;
    // (HTTP status, the status a gRPC client reports, Connect's name of it)
    let cases = [
        (400, Code::Internal, "INTERNAL", "internal"),
        (401, Code::Unauthenticated, "UNAUTHENTICATED", "unauthenticated"),
        (403, Code::PermissionDenied, "PERMISSION_DENIED", "permission_denied"),
        (404, Code::Unimplemented, "UNIMPLEMENTED", "unimplemented"),
        (429, Code::Unavailable, "UNAVAILABLE", "unavailable"),
        (502, Code::Unavailable, "UNAVAILABLE", "unavailable"),
        (503, Code::Unavailable, "UNAVAILABLE", "unavailable"),
        (504, Code::Unavailable, "UNAVAILABLE", "unavailable"),
        (418, Code::Unknown, "UNKNOWN", "unknown"),
    ];
    let mut want = BTreeMap::new();
    for (http, code, name, connect) in cases {
        let scenario = format!("http:{http}");
        let status = grpc_call(&s, &scenario).await;
        assert_eq!(status.code(), code, "gRPC caller, HTTP {http}: {status:?}");
        let (_, body) = connect_call(&s, &scenario).await;
        assert!(body.contains(&format!("\"code\":\"{connect}\"")), "Connect caller, HTTP {http}: {body}");
        *want.entry(name).or_insert(0) += 2;
    }
    let m = wait_recorded(&s, &want);
    for (name, n) in &want {
        assert_eq!(recorded(&m, name), *n, "calls recorded {name}:\n{m}");
    }
    assert_eq!(grpc_call(&s, "hello").await.code(), Code::Ok, "the sidecar keeps serving");
}

// An error page (HTML, END_STREAM on DATA, no trailers) is its HTTP status, as grpc-go and grpcio read it (they
// fail the call at the headers): passed through with no INTERNAL trailers added, UNAVAILABLE to a Connect caller
// and in the call metric, not the INTERNAL of a gRPC response that lost its trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_page_from_the_backend_is_its_http_status() {
    let (_b, s) = scripted(&[]).await;
    for (http, connect) in [(503, "unavailable"), (404, "unimplemented")] {
        let scenario = format!("http-page:{http}");
        let grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("x-peer-scenario", &scenario)];
        let r = raw_request(s.addr, true, SAY_HELLO, &grpc, grpc_frame(&hello_request("hostile"))).await;
        assert_eq!((r.status, r.grpc_status()), (http, None), "gRPC caller, HTTP {http} page: {r:?}");
        let (_, body) = connect_call(&s, &scenario).await;
        assert!(body.contains(&format!("\"code\":\"{connect}\"")), "Connect caller, HTTP {http} page: {body}");
    }
    let want = BTreeMap::from([("UNAVAILABLE", 2), ("UNIMPLEMENTED", 2)]);
    let m = wait_recorded(&s, &want);
    assert_eq!((recorded(&m, "UNAVAILABLE"), recorded(&m, "INTERNAL")), (2, 0), "{m}");
}

// An HTTP status other than 200 settles a Connect call at the response headers, as connect-go and grpc-go settle
// it: the page that follows is not the reply. Collecting it anyway turned a 503 whose page is larger than
// --max-message-bytes into RESOURCE_EXHAUSTED, and held the caller until its deadline when the page never ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_call_is_settled_by_an_error_status_not_by_the_page_after_it() {
    let (_b, s) = scripted(&["--max-message-bytes", "32"]).await;
    let (_, body) = connect_call(&s, "http-page:503").await;
    assert!(body.contains("\"code\":\"unavailable\""), "a 503 with a page over the limit: {body}");
    let headers = [
        ("content-type", "application/json"),
        ("x-peer-scenario", "http-page-stall:503"),
        ("connect-timeout-ms", "4000"),
    ];
    let start = std::time::Instant::now();
    let r = raw_request(s.addr, false, SAY_HELLO, &headers, br#"{"name":"hostile"}"#.to_vec()).await;
    let took = start.elapsed();
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("\"code\":\"unavailable\""), "a 503 whose page never ends: {body}");
    assert!(took < Duration::from_secs(3), "answered at the headers, not at the 4 s deadline: took {took:?}");
    let m = wait_recorded(&s, &BTreeMap::from([("UNAVAILABLE", 2)]));
    assert_eq!(recorded(&m, "UNAVAILABLE"), 2, "{m}");
}

// A gRPC caller's client (grpc-go, grpcio) settles the call at a 503's headers and resets the stream, whatever page
// follows: the call metric must record the UNAVAILABLE the caller saw, not the CANCELLED of the reset after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_caller_that_leaves_an_error_page_is_recorded_with_its_http_status() {
    let (_b, s) = scripted(&[]).await;
    let mut c = h2_client(s.addr).await;
    c = c.ready().await.expect("ready");
    let (res, mut body) = c.send_request(grpc_request(s.addr, "SayHello", "http-page-stall:503"), false).expect("send");
    body.send_data(bytes::Bytes::from(grpc_frame(&hello_request("a"))), true).expect("body");
    let res = res.await.expect("headers");
    assert_eq!(res.status(), 503);
    // As grpc-go does on a status other than 200: the call is over, the stream reset.
    drop(res);
    drop(body);
    let m = wait_for("the call to be recorded", Duration::from_secs(10), || {
        let m = s.metrics();
        (recorded(&m, "UNAVAILABLE") + recorded(&m, "CANCELLED") >= 1).then_some(m)
    });
    assert_eq!((recorded(&m, "UNAVAILABLE"), recorded(&m, "CANCELLED")), (1, 0), "{m}");
}

// A retry policy that names UNAVAILABLE retries a backend's bare 503, as the caller's own gRPC client would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_policy_on_unavailable_covers_a_bare_503() {
    let config = r#"{"methodConfig": [{"name": [{"service": "hello.v1.HelloService"}],
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let (_b, s) = scripted(&["--service-config", config]).await;
    for _ in 0..3 {
        assert_eq!(grpc_call(&s, "http:503").await.code(), Code::Unavailable);
    }
    let retried = metric(&s.metrics(), "hello_sidecar_retries_total{reason=\"policy\"}");
    assert!(retried >= 1, "a 503 is UNAVAILABLE to the retry policy: {retried} retries");
    // A 503 with an error page after it too: grpc-go fails the attempt at the headers, before any message, so
    // the call is not committed and its retry policy retries it.
    for _ in 0..3 {
        let grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("x-peer-scenario", "http-page:503")];
        let r = raw_request(s.addr, true, SAY_HELLO, &grpc, grpc_frame(&hello_request("hostile"))).await;
        assert_eq!(r.status, 503, "{r:?}");
    }
    let paged = metric(&s.metrics(), "hello_sidecar_retries_total{reason=\"policy\"}") - retried;
    assert!(paged >= 1, "a 503 page is UNAVAILABLE to the retry policy: {paged} retries");
}

// A Connect caller's unary reply is collected before it is translated: a backend that streams without end is cut
// off at --max-message-bytes with RESOURCE_EXHAUSTED (as a gRPC client refuses a message over its receive limit),
// and its stream reset, rather than buffered in the sidecar until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_reply_to_a_connect_caller_is_cut_at_the_message_limit() {
    let (b, mut s) = scripted(&["--max-message-bytes", "1048576"]).await;
    let pid = s.proc.child.id();
    let rss = rss_kib(pid);
    let headers =
        [("content-type", "application/proto"), ("x-peer-scenario", "endless"), ("connect-timeout-ms", "4000")];
    let r = raw_request(s.addr, false, SAY_HELLO, &headers, hello_request("hostile")).await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let streamed = b.streamed.load(std::sync::atomic::Ordering::Relaxed);
    let grown = rss_kib(pid).saturating_sub(rss);
    assert!(body.contains("\"code\":\"resource_exhausted\""), "{} {body}", r.status);
    // Before: 650 MB streamed into the sidecar's memory within the 4 s deadline.
    assert!(streamed < 16 << 20, "the backend's stream was reset soon after the limit: {streamed} bytes streamed");
    assert!(grown < 32 << 10, "the sidecar held the reply: RSS grew {grown} KiB");
    let m = wait_recorded(&s, &BTreeMap::from([("RESOURCE_EXHAUSTED", 1)]));
    assert_eq!(recorded(&m, "RESOURCE_EXHAUSTED"), 1, "{m}");
    assert!(s.proc.is_running());
    assert_eq!(connect_call(&s, "hello").await.0, 200, "a reply within the limit is translated");
    assert_eq!(grpc_call(&s, "hello").await.code(), Code::Ok, "the sidecar keeps serving");
}

// The cap on a Connect caller's reply is one message of --max-message-bytes in its frame: a reply of exactly the
// limit is translated, one byte more is RESOURCE_EXHAUSTED, whether it comes in one DATA frame or in many. gRPC and
// gRPC-web callers' replies are streamed, not collected: the cap is not theirs (their client applies its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_reply_cap_is_exact_and_only_for_connect_callers() {
    const LIMIT: usize = 65536;
    let (_b, s) = scripted(&["--max-message-bytes", &LIMIT.to_string()]).await;
    let connect = |scenario: String| {
        let s = &s;
        async move {
            let headers = [("content-type", "application/proto"), ("x-peer-scenario", scenario.as_str())];
            raw_request(s.addr, false, SAY_HELLO, &headers, hello_request("x")).await
        }
    };
    for frames in [1, 7, 300] {
        let r = connect(format!("sized:{LIMIT}:{frames}")).await;
        assert_eq!((r.status, r.body.len()), (200, LIMIT), "exactly the limit in {frames} frames");
        let r = connect(format!("sized:{}:{frames}", LIMIT + 1)).await;
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("\"code\":\"resource_exhausted\""), "one byte over in {frames} frames: {body}");
    }
    let big = format!("sized:{}:3", 4 * LIMIT);
    let grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("x-peer-scenario", &big)];
    let r = raw_request(s.addr, true, SAY_HELLO, &grpc, grpc_frame(&hello_request("x"))).await;
    assert_eq!((r.grpc_status(), r.body.len()), (Some(0), 4 * LIMIT + 5), "gRPC caller: {:?}", r.grpc_status());
    let web = [("content-type", "application/grpc-web+proto"), ("x-peer-scenario", &big)];
    let r = raw_request(s.addr, false, SAY_HELLO, &web, grpc_frame(&hello_request("x"))).await;
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 4 * LIMIT, "gRPC-web caller got {} bytes", r.body.len());
    assert!(String::from_utf8_lossy(&r.body[4 * LIMIT + 5..]).contains("grpc-status: 0"), "gRPC-web trailers");
}

// A repeated grpc-status is read as grpc-go and gRPC-core read it, the last one wins; one that is not a number is
// INTERNAL, as both report it. The Connect caller and the call metric agree with a grpc-go or grpcio caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_or_malformed_grpc_status_is_read_as_stock_clients_read_it() {
    let (_b, s) = scripted(&[]).await;
    let (status, body) = connect_call(&s, "statuses:5,0").await;
    assert_eq!(status, 200, "grpc-status 5 then 0 is OK: {body}");
    let (_, body) = connect_call(&s, "statuses:0,5").await;
    assert!(body.contains("\"code\":\"not_found\""), "grpc-status 0 then 5 is NOT_FOUND: {body}");
    let (_, body) = connect_call(&s, "statuses:abc").await;
    assert!(body.contains("\"code\":\"internal\""), "grpc-status abc: {body}");
    let want = BTreeMap::from([("OK", 1), ("NOT_FOUND", 1), ("INTERNAL", 1)]);
    let m = wait_recorded(&s, &want);
    for (name, n) in &want {
        assert_eq!(recorded(&m, name), *n, "calls recorded {name}:\n{m}");
    }
}

// A Connect JSON call to a routed service the sidecar has no schema for first asks the backends' reflection, and
// waits for it no longer than the caller's deadline: a backend whose reflection hangs cost the caller the
// reflection's own 5 s timeout whatever its connect-timeout-ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_reflection_holds_a_connect_caller_no_longer_than_its_deadline() {
    let b = H2Backend::start().await;
    let route = format!("echo.v1.EchoService=static:///{}", b.addr);
    let s = Sidecar::start(&format!("static:///{}", b.addr), &["--route", &route]);
    s.wait_ready_endpoints(1);
    let headers = [("content-type", "application/json"), ("connect-timeout-ms", "1000")];
    let start = std::time::Instant::now();
    let r = raw_request(s.addr, false, "/echo.v1.EchoService/Echo", &headers, br#"{"message":"x"}"#.to_vec()).await;
    let took = start.elapsed();
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("\"code\":\"deadline_exceeded\""), "{} {body}", r.status);
    assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(4), "took {took:?}: {body}");

    // Without connect-timeout-ms, the default deadline bounds it (README: "or the default deadline").
    let s = Sidecar::start(&format!("static:///{}", b.addr), &["--route", &route, "--default-timeout", "1s"]);
    s.wait_ready_endpoints(1);
    let headers = [("content-type", "application/json")];
    let start = std::time::Instant::now();
    let r = raw_request(s.addr, false, "/echo.v1.EchoService/Echo", &headers, br#"{"message":"x"}"#.to_vec()).await;
    let took = start.elapsed();
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("\"code\":\"deadline_exceeded\""), "{} {body}", r.status);
    assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(4), "took {took:?}: {body}");
}

// One malformed response (a control character in grpc-message, an upper-case field name) is a stream error (RFC
// 9113 §8.2.1), and grpcio calling the backend directly reports the backend's status. h2 0.4.20 fails the HPACK
// decode of such a field instead, a connection error: the sidecar's h2 sends GOAWAY and every call in flight on
// that connection ends UNAVAILABLE, the one answered (INVALID_ARGUMENT) and the others alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limit: h2's HPACK decoder turns an invalid field value into a connection error (README, Known \
            limits); needs h2 to treat it as a malformed stream"]
async fn a_malformed_response_fails_its_call_not_the_connection() {
    use common::raw_h2::{Action, RawBackend};
    let b = RawBackend::start(|_, n| if n == 0 { Action::Stall } else { Action::ControlCharMessage }).await;
    let s = Sidecar::start(&format!("static:///{}", b.addr), &[]);
    s.wait_ready_endpoints(1);
    const GRPC: [(&str, &str); 3] = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "2S")];
    let stalled = tokio::spawn(raw_request(s.addr, true, SAY_HELLO, &GRPC, grpc_frame(&hello_request("a"))));
    wait_for("the first call to reach the backend", Duration::from_secs(10), || {
        (b.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    });
    let bad = raw_request(s.addr, true, SAY_HELLO, &GRPC, grpc_frame(&hello_request("b"))).await;
    let stalled = stalled.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.grpc_status(), Some(Code::InvalidArgument as i32), "the malformed answer: {bad:?}");
    assert_eq!(stalled.grpc_status(), Some(Code::DeadlineExceeded as i32), "the other call: {stalled:?}");
}

// A server that answers its HTTP/2 preface and a GOAWAY at once (draining, or refusing connections) spoke HTTP/2:
// the caller's UNAVAILABLE says so, not "closed before the server's HTTP/2 preface" (which points at a port that
// is not HTTP/2 at all), and reconnects back off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_at_once_is_not_called_silent() {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from((fresh_ip(), BACKEND_PORT));
    let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut preface = [0u8; 24];
                if tcp.read_exact(&mut preface).is_ok() {
                    let mut out = rawh2::frame(rawh2::SETTINGS, 0, 0, &[]);
                    out.extend(rawh2::frame(rawh2::GOAWAY, 0, 0, &[0; 8]));
                    let _ = tcp.write_all(&out);
                    std::thread::sleep(Duration::from_secs(5));
                }
            });
        }
    });
    let s = Sidecar::start(&format!("static:///{addr}"), &[]);
    let status = grpc_call(&s, "hello").await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("right after its HTTP/2 preface"), "{status:?}");
    assert!(!status.message().contains("before the server's HTTP/2 preface"), "{status:?}");
    std::thread::sleep(Duration::from_secs(2));
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n < 20, "reconnects back off: {n} connections in about 3 s");
}
