//! Connect JSON to a routed service whose schema the sidecar learned through reflection, when the backend's build
//! changes under it (a rolling update adds a method or a field), when the route has no endpoint, and when the
//! method is a streaming one (issue 12.5). Each backend is the test-only echo service; a "build" is the schema
//! its reflection describes, made with protox from an edited copy of `proto/echo/v1/echo.proto`.

mod common;

use std::time::{Duration, Instant};

use common::{
    echo::{EchoBackend, Reflection},
    *,
};
use prost::Message;

const ECHO: &str = "/echo.v1.EchoService/Echo";

/// The encoded `FileDescriptorSet` of echo.proto after `edit` (an older or newer build of the service).
fn echo_schema(edit: impl Fn(&str) -> String) -> Vec<u8> {
    let original = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/echo/v1/echo.proto"))
        .expect("read echo.proto");
    let edited = edit(&original);
    assert_ne!(edited, original, "the edit changes the schema");
    let root = std::env::temp_dir().join(format!("hello-sidecar-schema-{}-{}", std::process::id(), fresh_ip()));
    std::fs::create_dir_all(root.join("echo/v1")).expect("temp dir");
    std::fs::write(root.join("echo/v1/echo.proto"), edited).expect("write proto");
    let set = protox::compile(["echo/v1/echo.proto"], [&root]).expect("compile the edited echo.proto");
    let _ = std::fs::remove_dir_all(&root);
    set.encode_to_vec()
}

/// One Connect call with a real curl: (HTTP status, body).
async fn curl(s: &Sidecar, content_type: &str, path: &str, body: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-H", &format!("content-type: {content_type}"), "--data-binary", body])
        .arg(format!("http://{}{path}", s.addr))
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl: {text} {:?}", out.stderr));
    (status.trim().parse().unwrap_or_else(|_| panic!("status in {text:?}")), body.to_owned())
}

async fn curl_json(s: &Sidecar, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = curl(s, "application/json", path, body).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// A sidecar routing the echo service to `echo`'s address (HelloService to a fixture backend).
fn sidecar_for(hello: &Backend, echo: &EchoBackend) -> Sidecar {
    let route = format!("echo.v1.EchoService=static:///{}", echo.addr);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[hello]), &["--route", &route]);
    sidecar.wait_ready_endpoints(2);
    sidecar
}

/// Replaces the backend at the same address with one whose reflection serves `set`.
async fn roll(echo: EchoBackend, set: &[u8]) -> EchoBackend {
    let (ip, id) = (echo.addr.ip(), echo.id.clone());
    echo.stop().await;
    let std::net::IpAddr::V4(ip) = ip else { unreachable!("fresh_ip is IPv4") };
    EchoBackend::start_with_schema(ip, &id, Reflection::V1, set).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_added_by_a_new_build_is_learned() {
    let hello = Backend::start("added-hello", &[]);
    // The old build has `Legacy` where the new one has `Echo`.
    let old = echo_schema(|p| p.replace("rpc Echo(", "rpc Legacy("));
    let echo = EchoBackend::start_with_schema(fresh_ip(), "added-echo", Reflection::V1, &old).await;
    let sidecar = sidecar_for(&hello, &echo);
    // The schema is learned (the backend's code answers UNIMPLEMENTED: it has no `Legacy` handler).
    let (status, v) = curl_json(&sidecar, "/echo.v1.EchoService/Legacy", r#"{"message":"old"}"#).await;
    assert_eq!(status, 501, "{v}");
    assert!(!v["message"].as_str().unwrap_or_default().contains("--descriptor-set"), "the backend's answer: {v}");

    let echo = roll(echo, &echo_schema(|p| p.to_owned() + "\n// the new build\n")).await;
    let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"new"}"#).await;
    assert_eq!(status, 200, "the new method is learned from the new build: {v}");
    assert_eq!(v, serde_json::json!({"message": "new", "server": "added-echo"}));
    drop(echo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_field_added_by_a_new_build_works_on_the_first_call() {
    let hello = Backend::start("field-hello", &[]);
    let old = echo_schema(|p| p.replace("  uint32 count = 2;\n", ""));
    let echo = EchoBackend::start_with_schema(fresh_ip(), "field-echo", Reflection::V1, &old).await;
    let sidecar = sidecar_for(&hello, &echo);
    let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"old"}"#).await;
    assert_eq!(status, 200, "{v}");

    let echo = roll(echo, &echo_schema(|p| p.to_owned() + "\n// the new build\n")).await;
    let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"new","count":2}"#).await;
    assert_eq!(status, 200, "the field is learned from the new build, not refused once: {v}");
    // A request that is not JSON at all is the caller's mistake: it does not make the sidecar learn again.
    let lookups = || echo.stats.path_count("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    let before = lookups();
    for _ in 0..3 {
        let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"#).await;
        assert_eq!((status, v["code"].as_str()), (400, Some("invalid_argument")), "{v}");
    }
    assert_eq!(lookups(), before, "malformed JSON is not a reason to ask the backend again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_field_added_by_a_new_build_is_not_dropped_for_good() {
    let hello = Backend::start("reply-hello", &[]);
    // The old build's reflection lacks EchoResponse.server (its code sends it: the schema is simply older).
    let old = echo_schema(|p| p.replace("  string server = 2;\n", ""));
    let echo = EchoBackend::start_with_schema(fresh_ip(), "reply-echo", Reflection::V1, &old).await;
    let sidecar = sidecar_for(&hello, &echo);
    let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"old"}"#).await;
    assert_eq!((status, &v["message"]), (200, &serde_json::json!("old")), "{v}");

    let _echo = roll(echo, &echo_schema(|p| p.to_owned() + "\n// the new build\n")).await;
    // A reply with fields the cached schema lacks makes the sidecar learn it again (at most every few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"new"}"#).await;
        assert_eq!(status, 200, "{v}");
        if v == serde_json::json!({"message": "new", "server": "reply-echo"}) {
            break;
        }
        assert!(Instant::now() < deadline, "the reply's new field never reached the caller: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_json_to_a_route_without_endpoints_is_unavailable_not_unimplemented() {
    let hello = Backend::start("down-hello", &[]);
    let nowhere = format!("echo.v1.EchoService=static:///{}:{BACKEND_PORT}", fresh_ip());
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &nowhere]);
    sidecar.wait_ready_endpoints(1);
    for _ in 0..2 {
        let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"x"}"#).await;
        assert_eq!((status, v["code"].as_str()), (503, Some("unavailable")), "as a gRPC call would get: {v}");
        assert!(v["message"].as_str().unwrap_or_default().contains("no ready endpoints"), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_unary_to_a_streaming_method_is_refused_not_truncated() {
    let hello = Backend::start("stream-hello", &[]);
    let echo = EchoBackend::start_with(fresh_ip(), "stream-echo", Reflection::V1).await;
    let sidecar = sidecar_for(&hello, &echo);
    let path = "/echo.v1.EchoService/ServerStream";
    // With the schema (learned through reflection): refused before the call, saying why.
    let (status, v) = curl_json(&sidecar, path, r#"{"message":"s","count":3}"#).await;
    assert_eq!((status, v["code"].as_str()), (501, Some("unimplemented")), "not the first of 3 messages: {v}");
    assert!(v["message"].as_str().unwrap_or_default().contains("streaming"), "{v}");
    // Without one (Connect proto needs none): three messages cannot be one Connect reply.
    let calls = echo.stats.calls.load(std::sync::atomic::Ordering::SeqCst);
    let request = echo_request("p", 3);
    let (status, text) = curl(&sidecar, "application/proto", path, &request).await;
    assert_ne!(status, 200, "not the first of 3 messages: {text:?}");
    assert!(text.contains("streaming"), "{text}");
    assert!(echo.stats.calls.load(std::sync::atomic::Ordering::SeqCst) <= calls + 1);
}

/// `EchoRequest { message, count }` as binary protobuf (ASCII-only here, so curl can send it as an argument).
fn echo_request(message: &str, count: u8) -> String {
    let mut out = vec![0x0a, message.len() as u8];
    out.extend(message.as_bytes());
    out.extend([0x10, count]);
    String::from_utf8(out).expect("ascii")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_learn_the_schema_once() {
    let hello = Backend::start("herd-hello", &[]);
    let echo = EchoBackend::start_with(fresh_ip(), "herd-echo", Reflection::V1).await;
    let sidecar = sidecar_for(&hello, &echo);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let addr = sidecar.addr;
        calls.spawn(async move {
            let body = format!(r#"{{"message":"herd {i}"}}"#).into_bytes();
            raw_request(addr, false, ECHO, &[("content-type", "application/json")], body).await
        });
    }
    while let Some(r) = calls.join_next().await {
        let r = r.expect("call");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let lookups = echo.stats.path_count("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    assert_eq!(lookups, 1, "a cold cache is filled by one lookup, not one per waiting call");
}
