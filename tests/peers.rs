//! Stock and scripted HTTP/2 peers (issue 16): the sidecar never makes a call fail, stall or change status where
//! calling the backend directly would not, and its abuse defences still hold against floods.

mod common;

use std::{
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use common::{h2peer::*, rawh2::*};

/// A sidecar in front of one scripted backend, with its endpoint connected.
async fn scripted() -> (H2Backend, Sidecar) {
    let b = H2Backend::start().await;
    let s = Sidecar::start(&format!("static:///{}", b.addr), &[]);
    s.wait_ready_endpoints(1);
    (b, s)
}

fn goaways(s: &Sidecar, side: &str) -> u64 {
    let m = s.metrics();
    ["enhance_your_calm", "other"]
        .iter()
        .map(|c| metric(&m, &format!("hello_sidecar_http2_goaways_sent_total{{side=\"{side}\",code=\"{c}\"}}")))
        .sum()
}

// 16.1: streams whose reader stopped reading hold their own stream window, never the connection's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_streams_do_not_stall_another_callers_call() {
    let (b, s) = scripted().await;
    let pid = s.proc.child.id();
    let rss_before = rss_kib(pid);

    // Caller A: 16 server streams of large messages that it never reads.
    let mut a = h2_client(s.addr).await;
    let mut held = Vec::new();
    for _ in 0..16 {
        a = a.ready().await.expect("ready");
        let (res, mut body) = a.send_request(grpc_request(s.addr, "Download", "endless"), false).expect("send");
        body.send_data(Bytes::from(grpc_frame(&hello_request("a"))), true).expect("body");
        held.push((res.await.expect("headers"), body));
    }
    // Wait until the backend can send no more: every buffer on the way is full.
    let mut last = 0;
    wait_for("the unread streams to stall", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = b.streamed.load(std::sync::atomic::Ordering::Relaxed);
        let stalled = now > 0 && now == last;
        last = now;
        stalled.then_some(())
    });

    // Caller B, another connection: its unary call to the same pod is answered at once.
    let mut c = h2_client(s.addr).await;
    let start = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(2), unary(&mut c, s.addr, "hello"))
        .await
        .unwrap_or_else(|_| panic!("call stalled behind unread streams ({last} bytes streamed)"));
    assert_eq!(reply.grpc_status, Some(0), "{reply:?} after {:?}", start.elapsed());

    // Memory stays bounded: each stalled stream holds about one stream window in the sidecar.
    let grown = rss_kib(pid).saturating_sub(rss_before);
    eprintln!("16 stalled streams: sidecar RSS grew by {grown} KiB");
    // (16 × 512 KiB = 8 MiB of data; about 10.5 MiB of growth seen in a debug build.)
    assert!(grown < 16 * 1024, "sidecar RSS grew by {grown} KiB with 16 stalled streams");
    drop(held);
}

// 16.1, the inbound direction: request streams the backend does not read cannot starve the caller's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_request_streams_do_not_stall_the_callers_other_calls() {
    let (_b, s) = scripted().await;
    let mut a = h2_client(s.addr).await;
    let mut held = Vec::new();
    for _ in 0..16 {
        a = a.ready().await.expect("ready");
        let (res, mut body) = a.send_request(grpc_request(s.addr, "Upload", "stall"), false).expect("send");
        // Queue 2 MiB per stream: far more than any window lets through.
        for _ in 0..32 {
            body.send_data(Bytes::from(vec![0u8; 64 * 1024]), false).expect("queue");
        }
        held.push((res, body));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = tokio::time::timeout(Duration::from_secs(2), unary(&mut a, s.addr, "hello"))
        .await
        .unwrap_or_else(|_| panic!("a call on the same connection stalled behind unread request streams"));
    assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
    drop(held);
}

// 16.2: a client stream of 20,000 ten-byte messages, each in its own DATA frame, to a backend that reads late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_of_tiny_messages_is_not_a_flood() {
    let (_b, s) = scripted().await;
    let mut a = h2_client(s.addr).await;
    a = a.ready().await.expect("ready");
    let (res, mut body) = a.send_request(grpc_request(s.addr, "Collect", "slow-collect"), false).expect("send");
    let msg = Bytes::from(grpc_frame(b"0123456789"));
    for i in 0..20_000 {
        body.send_data(msg.clone(), i == 19_999).expect("queue");
    }
    let reply = tokio::time::timeout(Duration::from_secs(20), read_reply(res))
        .await
        .expect("answered")
        .unwrap_or_else(|e| panic!("the stream was refused as a flood: {e}"));
    assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
    assert_eq!(reply.headers.get("x-received-bytes").map(|v| v.as_bytes()), Some(&b"300000"[..]));
    assert_eq!(goaways(&s, "inbound"), 0);
}

// 16.2, upstream: a backend streams tiny messages to a reader that pauses; the shared connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_messages_to_a_pausing_reader_are_not_a_flood() {
    let (_b, s) = scripted().await;
    let mut a = h2_client(s.addr).await;
    a = a.ready().await.expect("ready");
    let (res, mut body) = a.send_request(grpc_request(s.addr, "Tiny", "tiny:50000"), false).expect("send");
    body.send_data(Bytes::from(grpc_frame(&hello_request("a"))), true).expect("body");
    let res = res.await.expect("headers");
    // Pause: the backend keeps sending into the sidecar's buffers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut body = res.into_body();
    let mut n = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("stream failed after {n} bytes: {e}"));
        let _ = body.flow_control().release_capacity(chunk.len());
        n += chunk.len();
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    assert_eq!(n, 50_000 * 15);
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]), "{trailers:?}");
    assert_eq!(goaways(&s, "upstream"), 0);
    let m = s.metrics();
    assert_eq!(metric(&m, "hello_sidecar_connects_total{result=\"ok\"}"), 1, "the upstream connection was dropped");
}

// 16.2: a header block split over 20 CONTINUATION frames is legal and accepted; a CONTINUATION flood is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_frames_within_reason_are_accepted_and_a_flood_is_refused() {
    let b = RawBackend::start(HeaderShape::Split(20), usize::MAX);
    let s = Sidecar::start(&format!("static:///{}", b.addr), &[]);
    s.wait_ready_endpoints(1);
    let mut c = h2_client(s.addr).await;
    for _ in 0..3 {
        let reply = unary(&mut c, s.addr, "hello").await;
        assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
        assert_eq!(reply.headers.get("x-meta-19").map(|v| v.as_bytes()), Some(&b"value-19"[..]));
    }
    assert_eq!(metric(&s.metrics(), "hello_sidecar_connects_total{result=\"ok\"}"), 1);

    // A flood of empty CONTINUATION frames ends the connection with ENHANCE_YOUR_CALM, counted; the next
    // connection serves calls again.
    let f = RawBackend::start(HeaderShape::Flood(100_000), 1);
    let s = Sidecar::start(&format!("static:///{}", f.addr), &[]);
    s.wait_ready_endpoints(1);
    let mut c = h2_client(s.addr).await;
    let flooded = unary(&mut c, s.addr, "hello").await;
    assert_eq!(flooded.grpc_status, Some(14), "{flooded:?}");
    wait_for("the GOAWAY to be counted", Duration::from_secs(10), || {
        let m = s.metrics();
        (metric(&m, "hello_sidecar_http2_goaways_sent_total{side=\"upstream\",code=\"enhance_your_calm\"}") == 1)
            .then_some(())
    });
    s.wait_ready_endpoints(1);
    let reply = unary(&mut c, s.addr, "hello").await;
    assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
}

// 16.4: a reset after the response headers gets the status gRPC clients report for its code; none of these
// says the endpoint is unhealthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_mid_response_keep_their_meaning_and_do_not_eject() {
    let (_b, s) = scripted().await;
    let mut c = h2_client(s.addr).await;
    // (RST_STREAM code, gRPC status): CANCEL, INTERNAL_ERROR, ENHANCE_YOUR_CALM, NO_ERROR, PROTOCOL_ERROR.
    let cases = [(0x8, 1), (0x2, 13), (0xb, 8), (0x0, 13), (0x1, 13)];
    for round in 0..2 {
        for (code, want) in cases {
            let reply = unary(&mut c, s.addr, &format!("reset:{code}")).await;
            assert_eq!(reply.grpc_status, Some(want), "round {round}, RST_STREAM {code:#x}: {reply:?}");
        }
        let reply = unary(&mut c, s.addr, "no-status").await;
        assert_eq!(reply.grpc_status, Some(13), "a response without grpc-status: {reply:?}");
        assert!(reply.grpc_message.contains("without sending trailers"), "{reply:?}");
    }
    let m = s.metrics();
    assert_eq!(metric(&m, "hello_sidecar_ejections_total"), 0, "a healthy pod was ejected:\n{m}");
    assert_eq!(unary(&mut c, s.addr, "hello").await.grpc_status, Some(0));
}

// Review of 16.4: REFUSED_STREAM after the response headers is one stream's fate, not the endpoint's health: the
// caller gets UNAVAILABLE and the pod is never ejected however often it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_after_the_answer_does_not_eject() {
    let (_b, s) = scripted().await;
    let mut c = h2_client(s.addr).await;
    for i in 0..12 {
        let reply = unary(&mut c, s.addr, "reset:7").await;
        assert_eq!(reply.grpc_status, Some(14), "call {i}, RST_STREAM(REFUSED_STREAM) after headers: {reply:?}");
    }
    let m = s.metrics();
    assert_eq!(metric(&m, "hello_sidecar_ejections_total"), 0, "a healthy pod was ejected:\n{m}");
    assert_eq!(unary(&mut c, s.addr, "hello").await.grpc_status, Some(0));
}

// Review of 16.4: a reset the sidecar's own HTTP/2 stack sent (the backend overran its stream window, RFC 9113
// §6.9.1) is the backend's protocol failure, not a reset the backend chose: the caller
// gets UNAVAILABLE naming it, not the INTERNAL of a remote RST_STREAM(FLOW_CONTROL_ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_sent_by_our_own_http2_stack_is_not_the_backends_reset() {
    let b = RawBackend::start(HeaderShape::Overflow, usize::MAX);
    let s = Sidecar::start(&format!("static:///{}", b.addr), &[]);
    s.wait_ready_endpoints(1);
    let mut c = h2_client(s.addr).await;
    let reply = unary(&mut c, s.addr, "hello").await;
    assert_eq!(reply.grpc_status, Some(14), "{reply:?}");
    assert!(reply.grpc_message.contains("failed mid-response"), "{reply:?}");
}

// Review of 16.4: trailers without grpc-status reach the caller as they are (grpcio and grpc-go report UNKNOWN);
// the call metric records UNKNOWN too, not INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_without_a_status_are_recorded_as_unknown() {
    let (_b, s) = scripted().await;
    let mut c = h2_client(s.addr).await;
    let reply = unary(&mut c, s.addr, "bare-trailers").await;
    assert_eq!(reply.grpc_status, None, "trailers passed through as they are: {reply:?}");
    let calls = |code: &str| {
        let method = "method=\"/hello.v1.HelloService/SayHello\"";
        let name = format!("hello_sidecar_requests_total{{{method},grpc_status=\"{code}\"}}");
        wait_for("the call to be recorded", Duration::from_secs(10), || {
            let m = s.metrics();
            m.contains("grpc_status=").then(|| metric(&m, &name))
        })
    };
    assert_eq!((calls("UNKNOWN"), calls("INTERNAL")), (1, 0), "the metric must match what the caller sees");
}

// 16.3/16.4: a reset before any response header answers the request, not the endpoint's health: the caller
// gets the reset's status and the pod stays in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_before_headers_keep_their_meaning_and_do_not_eject() {
    let (_b, s) = scripted().await;
    let mut c = h2_client(s.addr).await;
    for _ in 0..8 {
        let reply = unary(&mut c, s.addr, "reset-early:1").await;
        assert_eq!(reply.grpc_status, Some(13), "RST_STREAM(PROTOCOL_ERROR) before headers: {reply:?}");
    }
    assert_eq!(metric(&s.metrics(), "hello_sidecar_ejections_total"), 0);
    assert_eq!(unary(&mut c, s.addr, "hello").await.grpc_status, Some(0));
}

// 16.5: a Connect error carries the backend's google.rpc.Status details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_carry_status_details() {
    use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
    use prost::Message;
    let (_b, s) = scripted().await;
    // google.rpc.Status { code: 3, message, details: [Any { type_url, value: HelloResponse }] }, encoded by hand.
    let detail = hello_sidecar::pb::HelloResponse { message: "field name".into(), code: 400 }.encode_to_vec();
    let type_url = b"type.googleapis.com/hello.v1.HelloResponse";
    let mut any = vec![0x0a, type_url.len() as u8];
    any.extend_from_slice(type_url);
    any.extend([0x12, detail.len() as u8]);
    any.extend(&detail);
    let mut status = vec![0x08, 3, 0x12, 16];
    status.extend_from_slice(b"name is required");
    status.extend([0x1a, any.len() as u8]);
    status.extend(&any);
    let bin = STANDARD_NO_PAD.encode(&status);

    let scenario = format!("details:{bin}");
    let headers = [("content-type", "application/json"), ("x-peer-scenario", scenario.as_str())];
    let path = "/hello.v1.HelloService/SayHello";
    let res = raw_request(s.addr, false, path, &headers, br#"{"name":""}"#.to_vec()).await;
    assert_eq!(res.status, 400, "{res:?}");
    let v: serde_json::Value = serde_json::from_slice(&res.body).expect("json");
    assert_eq!(v["code"], "invalid_argument");
    assert_eq!(v["message"], "name is required");
    assert_eq!(v["details"][0]["type"], "hello.v1.HelloResponse", "{v}");
    assert_eq!(v["details"][0]["value"], STANDARD_NO_PAD.encode(&detail));
    assert_eq!(v["details"][0]["debug"], serde_json::json!({"message": "field name", "code": 400}));
}

// 16.6: grpc-web and Connect callers over HTTP/1.1 reach the backend with their Host as :authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_callers_keep_their_host() {
    let (_b, s) = scripted().await;
    let path = "/hello.v1.HelloService/SayHello";
    let web = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1"), ("host", "api.example.test")];
    let (_, headers, body) = http1_post(s.addr, path, &web, grpc_frame(&hello_request("web"))).await;
    assert_eq!(headers.get("x-seen-authority").map(|v| v.as_bytes()), Some(&b"api.example.test"[..]), "{body:?}");
    let connect = [("content-type", "application/json"), ("host", "api.example.test:8443")];
    let (status, headers, body) = http1_post(s.addr, path, &connect, br#"{"name":"connect"}"#.to_vec()).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(headers.get("x-seen-authority").map(|v| v.as_bytes()), Some(&b"api.example.test:8443"[..]));
}

// Review item 7: an HTTP/1.1 caller (grpc-web, Connect) may send as much metadata as an HTTP/2 caller: 150
// fields and 20 KB passed, where hyper's defaults (100 fields) answered a bare 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_callers_get_the_same_header_room_as_http2() {
    let (_b, s) = scripted().await;
    let path = "/hello.v1.HelloService/SayHello";
    let names: Vec<String> = (0..150).map(|i| format!("x-meta-{i}")).collect();
    let big = "v".repeat(20_000);
    let mut meta: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "value")).collect();
    meta.push(("x-big", &big));
    let web = [&[("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")][..], &meta].concat();
    let (status, headers, body) = http1_post(s.addr, path, &web, grpc_frame(&hello_request("web"))).await;
    assert_eq!(status, 200, "grpc-web: {body:?}");
    let ok = headers.get("grpc-status").is_some_and(|v| v == "0") || body.windows(14).any(|w| w == b"grpc-status: 0");
    assert!(ok, "grpc-web: {headers:?} {body:?}");
    let connect = [&[("content-type", "application/json")][..], &meta].concat();
    let (status, _, body) = http1_post(s.addr, path, &connect, br#"{"name":"connect"}"#.to_vec()).await;
    assert_eq!(status, 200, "Connect: {body:?}");
}

// Review of 16.6: a Host with userinfo (RFC 9113 §8.3.1 forbids it in :authority) or several Host headers
// (RFC 9112 §3.2) is a bad request, answered 400, and never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_callers_with_a_bad_host_get_400() {
    let (_b, s) = scripted().await;
    let path = "/hello.v1.HelloService/SayHello";
    let web = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")];
    let connect = [("content-type", "application/json")];
    let bad: [&[(&str, &str)]; 2] =
        [&[("host", "user:pw@api.example.test")], &[("host", "a.test"), ("host", "b.test")]];
    for hosts in bad {
        let headers = [&web[..], hosts].concat();
        let (status, _, body) = http1_post(s.addr, path, &headers, grpc_frame(&hello_request("web"))).await;
        assert_eq!(status, 400, "grpc-web with {hosts:?}: {body:?}");
        let headers = [&connect[..], hosts].concat();
        let (status, _, body) = http1_post(s.addr, path, &headers, br#"{"name":"connect"}"#.to_vec()).await;
        assert_eq!(status, 400, "Connect with {hosts:?}: {body:?}");
    }
}

/// A stock grpcio server (Python) answering HelloService/SayHello with raw bytes, on `ip:8080`.
fn grpcio_backend() -> (Proc, std::net::SocketAddr) {
    let python = [concat!(env!("CARGO_MANIFEST_DIR"), "/.test-tools/venv/bin/python"), "python3"]
        .into_iter()
        .find(|p| std::process::Command::new(p).args(["-c", "import grpc"]).output().is_ok_and(|o| o.status.success()))
        .expect("Python with grpcio (scripts/test installs it into .test-tools/venv)");
    let addr = std::net::SocketAddr::from((fresh_ip(), BACKEND_PORT));
    let script = format!(
        r#"
import grpc, time
from concurrent import futures
reply = bytes([10, 12]) + b"Hello, grpc!"
handler = grpc.method_handlers_generic_handler("hello.v1.HelloService", {{
    "SayHello": grpc.unary_unary_rpc_method_handler(lambda req, ctx: reply),
}})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("{addr}")
server.start()
server.wait_for_termination()
"#
    );
    let child = std::process::Command::new(python)
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start grpcio");
    (Proc { child, name: "grpcio".into() }, addr)
}

// 16.3: a caller that omits `te: trailers` still reaches a stock grpcio server, and the pod stays in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_te_trailers_reach_a_stock_grpcio_server() {
    let (_py, addr) = grpcio_backend();
    wait_for("grpcio to listen", Duration::from_secs(20), || std::net::TcpStream::connect(addr).ok());
    let s = Sidecar::start(&format!("static:///{addr}"), &[]);
    s.wait_ready_endpoints(1);
    let path = "/hello.v1.HelloService/SayHello";
    for i in 0..8 {
        // Like curl: content-type only, no te.
        let res =
            raw_request(s.addr, true, path, &[("content-type", "application/grpc")], grpc_frame(&hello_request("x")))
                .await;
        assert_eq!(res.grpc_status(), Some(0), "call {i}: {res:?} {}", res.grpc_message());
    }
    assert_eq!(metric(&s.metrics(), "hello_sidecar_ejections_total"), 0);
}

/// After a flood: the sidecar is up, its memory and CPU bounded, and it serves a normal call.
async fn still_serving(s: &mut Sidecar, rss_before: u64, cpu_before: Duration, flood: &str) {
    assert!(s.proc.is_running(), "{flood}: the sidecar died");
    let pid = s.proc.child.id();
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "{flood}: RSS grew by {grown} KiB");
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    assert!(cpu < Duration::from_secs(10), "{flood}: {cpu:?} of CPU");
    let mut c = h2_client(s.addr).await;
    let reply = tokio::time::timeout(Duration::from_secs(5), unary(&mut c, s.addr, "hello")).await.expect("answered");
    assert_eq!(reply.grpc_status, Some(0), "{flood}: {reply:?}");
}

// Abuse defences (RFC 9113 §10.5; CVE-2023-44487 rapid reset, CVE-2024-27316 CONTINUATION flood): each flood is
// bounded in memory and CPU, and the sidecar keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_bounded_and_the_sidecar_keeps_serving() {
    let (_b, mut s) = scripted().await;
    let pid = s.proc.child.id();
    let (rss, cpu) = (rss_kib(pid), cpu_time(pid));
    let authority = s.addr.to_string();

    // CONTINUATION flood: one header block that never ends.
    let mut c = RawClient::connect(s.addr);
    let mut out = frame(HEADERS, 0, 1, &RawClient::call_headers(&authority));
    for _ in 0..10_000 {
        out.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    c.send(&out);
    assert_eq!(c.goaway(Duration::from_secs(10)), Some(0xb), "CONTINUATION flood: ENHANCE_YOUR_CALM expected");
    wait_for("the GOAWAY to be counted", Duration::from_secs(10), || (goaways(&s, "inbound") >= 1).then_some(()));
    still_serving(&mut s, rss, cpu, "CONTINUATION flood").await;

    // Rapid reset: open and cancel streams as fast as possible.
    let mut c = RawClient::connect(s.addr);
    let block = RawClient::call_headers(&authority);
    let mut id = 1u32;
    'flood: for _ in 0..200 {
        let mut out = Vec::new();
        for _ in 0..500 {
            out.extend(frame(HEADERS, END_HEADERS, id, &block));
            out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            id += 2;
        }
        if !c.send(&out) {
            break 'flood;
        }
    }
    assert_eq!(c.goaway(Duration::from_secs(10)), Some(0xb), "rapid reset: ENHANCE_YOUR_CALM expected");
    wait_for("the GOAWAY to be counted", Duration::from_secs(10), || (goaways(&s, "inbound") >= 2).then_some(()));
    still_serving(&mut s, rss, cpu, "rapid reset").await;

    // PING and SETTINGS floods, each frame asking for an acknowledgement.
    for (kind, payload) in [(PING, vec![0u8; 8]), (SETTINGS, vec![])] {
        let mut c = RawClient::connect(s.addr);
        let one = frame(kind, 0, 0, &payload);
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 10_000).collect();
        for _ in 0..20 {
            if !c.send(&batch) {
                break;
            }
        }
        still_serving(&mut s, rss, cpu, if kind == PING { "PING flood" } else { "SETTINGS flood" }).await;
    }
}

/// What the raw backend of the read-buffer test knows: request streams in arrival order and send windows.
struct Windows {
    streams: Vec<u32>,
    stream: std::collections::HashMap<u32, i64>,
    conn: i64,
    initial: i64,
}

/// Reads a raw HTTP/2 peer's frames, acknowledging SETTINGS and PING; `on` sees every other frame.
fn raw_reader(mut s: std::net::TcpStream, w: Arc<Mutex<std::net::TcpStream>>, mut on: impl FnMut(u8, u32, &[u8])) {
    use std::io::Write;
    while let Ok((kind, flags, stream, payload)) = read_frame(&mut s) {
        let mut out = w.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let _ = out.write_all(&frame(SETTINGS, ACK, 0, &[]));
                drop(out);
                on(kind, stream, &payload);
            }
            PING if flags & ACK == 0 => {
                let _ = out.write_all(&frame(PING, ACK, 0, &payload));
            }
            _ => {
                drop(out);
                on(kind, stream, &payload);
            }
        }
    }
}

// 16.1, memory (review of fbb437c): a stalled stream may hold its own window (`STREAM_WINDOW`), and no more
// memory than that. h2 keeps each DATA payload as a slice of the read buffer it arrived in, so one stalled stream of 1-byte
// DATA frames, interleaved with 4 KiB frames of a stream another caller drains, pins one ~8 KiB read buffer per
// byte it holds: 20,000 bytes held cost ~160 MB here. (The large frames replenish h2's small-DATA-frame budget, so
// no GOAWAY either.)
//
// Not fixed (README, "Known limits"): hyper's `Incoming` releases a stream's flow-control capacity the moment a
// chunk is polled and has no way to defer it, so the sidecar cannot copy data out of h2's read buffers without
// also opening the window (no backpressure); bounding frames held per stream needs h2's own API (`RecvStream`,
// `FlowControl::release_capacity` once the caller takes the bytes) instead of hyper's client and server.
#[test]
#[ignore = "known limit: h2 keeps each DATA payload as a slice of its ~8 KiB read buffer and hyper's Incoming \
            releases window as it is polled, so a stalled stream pins a read buffer per tiny frame (README, Known \
            limits); needs h2's API below hyper"]
fn a_stalled_stream_of_one_byte_frames_costs_its_window_not_a_read_buffer_per_byte() {
    use std::io::Write;
    let addr = std::net::SocketAddr::from((fresh_ip(), BACKEND_PORT));
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    let state = Arc::new((
        Mutex::new(Windows { streams: Vec::new(), stream: Default::default(), conn: 65_535, initial: 65_535 }),
        Condvar::new(),
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = state.clone();
    std::thread::spawn(move || {
        let Ok((mut tcp, _)) = listener.accept() else { return };
        let _ = tcp.set_nodelay(true);
        let mut preface = [0u8; 24];
        let _ = std::io::Read::read_exact(&mut tcp, &mut preface);
        let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[]));
        let writer = Arc::new(Mutex::new(tcp.try_clone().expect("clone")));
        let _ = tx.send(writer.clone());
        raw_reader(tcp, writer, |kind, stream, payload| {
            let (lock, cv) = &*shared;
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            match kind {
                SETTINGS => {
                    for s in payload.chunks_exact(6) {
                        if u16::from_be_bytes([s[0], s[1]]) == 4 {
                            st.initial = i64::from(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
                        }
                    }
                }
                HEADERS => {
                    st.streams.push(stream);
                    let initial = st.initial;
                    st.stream.insert(stream, initial);
                }
                WINDOW_UPDATE => {
                    let n = i64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]));
                    if stream == 0 {
                        st.conn += n;
                    } else if let Some(w) = st.stream.get_mut(&stream) {
                        *w += n;
                    }
                }
                _ => {}
            }
            cv.notify_all();
        });
    });
    let s = Sidecar::start(&format!("static:///{addr}"), &[]);
    s.wait_ready_endpoints(1);
    let backend = rx.recv_timeout(Duration::from_secs(10)).expect("the sidecar connected");
    let pid = s.proc.child.id();

    let mut block = RawClient::call_headers(&s.addr.to_string());
    block.extend(hpack(&[("grpc-timeout", "60S")]));
    let request = [frame(HEADERS, END_HEADERS, 1, &block), frame(DATA, END_STREAM, 1, &grpc_frame(b""))].concat();
    let wait_streams = |n: usize| {
        let (lock, cv) = &*state;
        let st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (st, _) = cv.wait_timeout_while(st, Duration::from_secs(10), |st| st.streams.len() < n).expect("lock");
        assert_eq!(st.streams.len(), n, "the backend saw {} streams", st.streams.len());
    };
    // Caller A grants no window (SETTINGS_INITIAL_WINDOW_SIZE 0): its stream stalls in the sidecar.
    let mut a = std::net::TcpStream::connect(s.addr).expect("connect");
    a.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]), &request].concat()).expect("a");
    let aw = Arc::new(Mutex::new(a.try_clone().expect("clone")));
    std::thread::spawn(move || raw_reader(a, aw, |_, _, _| {}));
    wait_streams(1);
    // Caller B drains its stream, returning every byte of window at once.
    let mut b = std::net::TcpStream::connect(s.addr).expect("connect");
    let _ = b.set_nodelay(true);
    let big = (1u32 << 30).to_be_bytes();
    let hello = [PREFACE, &frame(SETTINGS, 0, 0, &[0, 4, 0x40, 0, 0, 0]), &frame(WINDOW_UPDATE, 0, 0, &big)].concat();
    b.write_all(&[hello, request].concat()).expect("b");
    let bw = Arc::new(Mutex::new(b.try_clone().expect("clone")));
    let bw2 = bw.clone();
    std::thread::spawn(move || {
        raw_reader(b, bw2.clone(), |kind, stream, payload| {
            if kind == DATA && !payload.is_empty() {
                let n = (payload.len() as u32).to_be_bytes();
                let wu = [frame(WINDOW_UPDATE, 0, 0, &n), frame(WINDOW_UPDATE, 0, stream, &n)].concat();
                let _ = bw2.lock().unwrap_or_else(|e| e.into_inner()).write_all(&wu);
            }
        })
    });
    drop(bw);
    wait_streams(2);

    let rss_before = rss_kib(pid);
    let (stalled, drained) = {
        let st = state.0.lock().unwrap_or_else(|e| e.into_inner());
        (st.streams[0], st.streams[1])
    };
    let headers = hpack(&[(":status", "200"), ("content-type", "application/grpc")]);
    {
        let mut w = backend.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(
            &[frame(HEADERS, END_HEADERS, stalled, &headers), frame(HEADERS, END_HEADERS, drained, &headers)].concat(),
        )
        .expect("headers");
    }
    let chunk = vec![0u8; 4096];
    let round = [frame(DATA, 0, stalled, &[0]), frame(DATA, 0, drained, &chunk)].concat();
    let mut held = 0;
    for _ in 0..20_000 {
        let (lock, cv) = &*state;
        let st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let ready = |st: &mut Windows| st.stream[&stalled] >= 1 && st.stream[&drained] >= 4096 && st.conn >= 4097;
        let (mut st, _) = cv.wait_timeout_while(st, Duration::from_secs(10), |st| !ready(st)).expect("lock");
        if !ready(&mut st) {
            break;
        }
        *st.stream.get_mut(&stalled).expect("stalled") -= 1;
        *st.stream.get_mut(&drained).expect("drained") -= 4096;
        st.conn -= 4097;
        drop(st);
        backend.lock().unwrap_or_else(|e| e.into_inner()).write_all(&round).expect("data");
        held += 1;
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib(pid).saturating_sub(rss_before);
    eprintln!("{held} one-byte frames held for caller A; sidecar RSS grew by {grown} KiB");
    assert!(held > 10_000, "the backend could send only {held} frames");
    // One stream window (512 KiB) and what a debug build allocates on the way: 32 MiB is generous.
    assert!(grown < 32 * 1024, "sidecar RSS grew by {grown} KiB for {held} bytes held by one stalled stream");
}
