//! grpc-web and Connect on the app's port, translated to gRPC towards real backends.

mod common;

use base64::{Engine, engine::general_purpose::STANDARD};
use common::*;
use prost::Message;
use serde_json::Value;

const PATH: &str = "/hello.v1.HelloService/SayHello";

fn cluster() -> (Backend, Sidecar) {
    let b = Backend::start("web-pod", &[]);
    let s = Sidecar::start(&Sidecar::static_target(&[&b]), &[]);
    s.wait_ready_endpoints(1);
    (b, s)
}

/// Splits a grpc-web body into its data payloads and its trailer block.
fn web_frames(body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut data, mut trailers, mut rest) = (Vec::new(), String::new(), body);
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = rest[5..5 + len].to_vec();
        if rest[0] & 0x80 != 0 {
            trailers = String::from_utf8(payload).expect("ascii trailers");
        } else {
            data.push(payload);
        }
        rest = &rest[5 + len..];
    }
    (data, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_binary_over_http1_and_http2() {
    let (_b, s) = cluster();
    for http2 in [false, true] {
        let headers =
            [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1"), ("origin", "http://app.test")];
        let r = raw_request(s.addr, http2, PATH, &headers, grpc_frame(&hello_request("web"))).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.headers["content-type"], "application/grpc-web+proto");
        assert_eq!(r.headers["access-control-allow-origin"], "http://app.test");
        // A browser that sends cookies needs credentials allowed, for the echoed origin only.
        assert_eq!(r.headers["access-control-allow-credentials"], "true");
        // Never `*` with credentials, and `Origin: null` (a sandboxed page) names no one.
        for origin in [None, Some("null")] {
            let mut h = vec![("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")];
            h.extend(origin.map(|o| ("origin", o)));
            let r = raw_request(s.addr, http2, PATH, &h, grpc_frame(&hello_request("web"))).await;
            assert_eq!(r.headers["access-control-allow-origin"], "*", "{origin:?}");
            assert!(!r.headers.contains_key("access-control-allow-credentials"), "{origin:?}: {r:?}");
        }
        let (data, trailers) = web_frames(&r.body);
        let reply = hello_sidecar::pb::HelloResponse::decode(&data[0][..]).expect("reply");
        assert_eq!(reply.message, "Hello, web!");
        assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_text_round_trips_base64() {
    let (_b, s) = cluster();
    let body = STANDARD.encode(grpc_frame(&hello_request("text"))).into_bytes();
    let r = raw_request(s.addr, false, PATH, &[("content-type", "application/grpc-web-text")], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/grpc-web-text+proto");
    // Each chunk is base64 on its own; decode chunk by chunk as grpc-web clients do.
    let text = String::from_utf8(r.body.to_vec()).expect("ascii");
    let mut decoded = Vec::new();
    for unit in text.split_inclusive('=').filter(|u| !u.trim_matches('=').is_empty()) {
        decoded.extend(STANDARD.decode(unit).unwrap_or_else(|_| STANDARD.decode(format!("{unit}=")).expect("b64")));
    }
    let (data, trailers) = web_frames(&decoded);
    assert_eq!(hello_sidecar::pb::HelloResponse::decode(&data[0][..]).expect("reply").message, "Hello, text!");
    assert!(trailers.contains("grpc-status: 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_errors_carry_the_backend_status() {
    let (_b, s) = cluster();
    let r =
        raw_request(s.addr, false, PATH, &[("content-type", "application/grpc-web")], grpc_frame(&hello_request("")))
            .await;
    assert_eq!(r.grpc_status(), Some(3), "{r:?}");
    assert_eq!(r.grpc_message(), "name is required");
}

async fn connect_call(s: &Sidecar, ct: &str, body: Vec<u8>, extra: &[(&str, &str)]) -> RawResponse {
    let mut headers = vec![("content-type", ct), ("connect-protocol-version", "1")];
    headers.extend_from_slice(extra);
    raw_request(s.addr, false, PATH, &headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_json_and_proto_unary() {
    let (_b, s) = cluster();
    let r = connect_call(&s, "application/json", br#"{"name":"world"}"#.to_vec(), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["x-hello-pod"], "web-pod");
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v, serde_json::json!({"message": "Hello, world!", "code": 200}));

    let r = connect_call(&s, "application/proto", hello_request("proto"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/proto");
    let reply = hello_sidecar::pb::HelloResponse::decode(&r.body[..]).expect("reply");
    assert_eq!((reply.message.as_str(), reply.code), ("Hello, proto!", 200));

    // HTTP/2 works as well.
    let h2 =
        raw_request(s.addr, true, PATH, &[("content-type", "application/json")], br#"{"name":"h2"}"#.to_vec()).await;
    assert_eq!(h2.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_use_connects_json_and_http_statuses() {
    let (_b, s) = cluster();
    let r = connect_call(&s, "application/json", br#"{"name":""}"#.to_vec(), &[]).await;
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v, serde_json::json!({"code": "invalid_argument", "message": "name is required"}));

    let bad = connect_call(&s, "application/json", b"{not json".to_vec(), &[]).await;
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("invalid JSON"));

    let unknown = raw_request(
        s.addr,
        false,
        "/hello.v1.HelloService/Nope",
        &[("content-type", "application/json")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(unknown.status, 501);
    assert!(String::from_utf8_lossy(&unknown.body).contains("unimplemented"));

    // The Connect protocol: an unsupported Content-Encoding is `unimplemented` (not a body read as JSON), and a
    // Connect-Protocol-Version other than 1 is `invalid_argument`; identity and version 1 pass.
    let body = br#"{"name":"x"}"#.to_vec();
    let gzip = connect_call(&s, "application/json", body.clone(), &[("content-encoding", "gzip")]).await;
    assert_eq!(gzip.status, 501, "{gzip:?}");
    let v: Value = serde_json::from_slice(&gzip.body).expect("json");
    assert_eq!(v["code"], "unimplemented", "{v}");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("gzip")), "{v}");
    let identity = connect_call(&s, "application/json", body.clone(), &[("content-encoding", "identity")]).await;
    assert_eq!(identity.status, 200, "{identity:?}");
    let v2 = [("content-type", "application/json"), ("connect-protocol-version", "2")];
    let version = raw_request(s.addr, false, PATH, &v2, body).await;
    assert_eq!(version.status, 400, "{version:?}");
    let v: Value = serde_json::from_slice(&version.body).expect("json");
    assert_eq!(v["code"], "invalid_argument", "{v}");

    // A Connect GET (the protocol's form for side-effect-free methods) is not translated: Connect's answer, not 415.
    let get = raw_get(s.addr, &format!("{PATH}?connect=v1&encoding=json&message=%7B%7D")).await;
    assert_eq!(get.status, 501, "{get:?}");
    let v: Value = serde_json::from_slice(&get.body).expect("json");
    assert_eq!(v["code"], "unimplemented", "{v}");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("POST")), "{v}");
}

/// A bare HTTP/1.1 GET of `path_and_query`.
async fn raw_get(addr: std::net::SocketAddr, path_and_query: &str) -> RawResponse {
    use http_body_util::{BodyExt, Empty};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path_and_query).header("host", "localhost").body(Empty::<bytes::Bytes>::new());
    let res = send.send_request(req.expect("request")).await.expect("response");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    RawResponse { status, headers, body, trailers: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeouts_become_deadlines() {
    let hung = Backend::start("hung-web", &["--delay", "1h"]);
    let s = Sidecar::start(&Sidecar::static_target(&[&hung]), &[]);
    s.wait_ready_endpoints(1);
    let start = std::time::Instant::now();
    let r = connect_call(&s, "application/json", br#"{"name":"x"}"#.to_vec(), &[("connect-timeout-ms", "500")]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("deadline_exceeded"));
    assert!(start.elapsed() < std::time::Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_cors_preflights_answered() {
    let (_b, s) = cluster();
    let tcp = tokio::net::TcpStream::connect(s.addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("h1");
    tokio::spawn(conn);
    let req = http::Request::options(format!("http://{}{PATH}", s.addr))
        .header("origin", "http://app.test")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("req");
    let res = tx.send_request(req).await.expect("response");
    assert_eq!(res.status(), 204);
    assert_eq!(res.headers()["access-control-allow-origin"], "http://app.test");
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    assert!(res.headers()["access-control-allow-methods"].to_str().unwrap_or("").contains("POST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_web_text_is_the_callers_error_not_the_endpoints() {
    let (a, b) = (Backend::start("text-a", &[]), Backend::start("text-b", &[]));
    let s = Sidecar::start(&Sidecar::static_target(&[&a, &b]), &[]);
    s.wait_ready_endpoints(2);
    // More than `--eject-after` (5) per endpoint: a browser's bad body must not eject the pods it lands on.
    for _ in 0..12 {
        let body = b"AAAAAAIIBQ==!!!!".to_vec();
        let r = raw_request(s.addr, false, PATH, &[("content-type", "application/grpc-web-text")], body).await;
        assert_eq!(r.grpc_status(), Some(13), "INTERNAL, as for any malformed request: {r:?}");
        assert!(r.grpc_message().contains("base64"), "{r:?}");
    }
    let debug: Value = serde_json::from_str(&http_get(s.admin, "/debug/endpoints").expect("debug")).expect("json");
    let endpoints = debug["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 2, "{debug}");
    for e in endpoints {
        assert_eq!(e["ejected"], false, "{e}");
    }
    let mut client = s.client();
    let reply = client.say_hello(hello_sidecar::pb::HelloRequest { name: "after".into() }).await.expect("call");
    assert_eq!(reply.into_inner().message, "Hello, after!");
}

/// The README's table: gRPC-web and Connect are "translated: the same answers", and `grpc.health.v1.Health` is
/// answered by the sidecar itself. A translated call to it used to be forwarded and get `UNIMPLEMENTED` "no route
/// for /grpc.health.v1.Health/Check … (grpc.health.v1.Health and reflection are answered here)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_and_connect_health_checks_are_answered_by_the_sidecar() {
    let (_b, s) = cluster();
    let r = raw_request(
        s.addr,
        false,
        "/grpc.health.v1.Health/Check",
        &[("content-type", "application/grpc-web+proto")],
        grpc_frame(&[]),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.grpc_status(), Some(tonic::Code::Unimplemented as i32), "{}", r.grpc_message());
    let (payloads, trailers) = web_frames(&r.body);
    assert!(trailers.contains("grpc-status: 0"), "{trailers:?} {r:?}");
    // HealthCheckResponse { status: SERVING }
    assert_eq!(payloads, vec![vec![0x08, 0x01]], "{r:?}");

    // Connect JSON (a probe written with curl): the health schema is compiled in.
    let r = raw_request(
        s.addr,
        false,
        "/grpc.health.v1.Health/Check",
        &[("content-type", "application/json")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let reply: serde_json::Value = serde_json::from_slice(&r.body).expect("a JSON reply");
    assert_eq!(reply, serde_json::json!({"status": "SERVING"}), "{r:?}");
}
