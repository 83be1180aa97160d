//! Reflection and Connect JSON for routed services (issue 12.4, 12.5): a reflection client lists and resolves a
//! service the sidecar was not compiled with, whichever reflection version the caller and the backend speak; curl
//! calls that service with JSON through the backend's reflection or a `--descriptor-set`.

mod common;

use std::path::PathBuf;

use common::{
    echo::{EchoBackend, Reflection},
    *,
};
use prost::Message;
use prost_reflect::prost_types::FileDescriptorProto;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_reflection::pb::{
    v1::{
        ExtensionRequest, ServerReflectionRequest, ServerReflectionResponse, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    },
    v1alpha,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    V1,
    V1Alpha,
}

/// Sends `requests` on one reflection stream in the caller's version and returns the answers in order. The two
/// versions' messages are the same bytes, so v1alpha's are made from and read back into v1's.
async fn reflect(s: &Sidecar, caller: Caller, requests: &[MessageRequest]) -> Vec<ServerReflectionResponse> {
    let channel = Channel::from_shared(format!("http://{}", s.addr)).expect("uri").connect_lazy();
    let reqs: Vec<ServerReflectionRequest> = requests
        .iter()
        .map(|r| ServerReflectionRequest { host: "h".into(), message_request: Some(r.clone()) })
        .collect();
    let answers: Vec<Vec<u8>> = match caller {
        Caller::V1 => {
            let mut client = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
            let stream = client.server_reflection_info(tokio_stream::iter(reqs)).await.expect("v1 stream");
            let all: Vec<_> = stream.into_inner().collect().await;
            all.into_iter().map(|r| r.expect("answer").encode_to_vec()).collect()
        }
        Caller::V1Alpha => {
            let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
            let reqs =
                reqs.iter().map(|r| v1alpha::ServerReflectionRequest::decode(&r.encode_to_vec()[..]).expect("same"));
            let reqs: Vec<_> = reqs.collect();
            let stream = client.server_reflection_info(tokio_stream::iter(reqs)).await.expect("v1alpha stream");
            let all: Vec<_> = stream.into_inner().collect().await;
            all.into_iter().map(|r| r.expect("answer").encode_to_vec()).collect()
        }
    };
    answers.iter().map(|b| ServerReflectionResponse::decode(&b[..]).expect("same bytes")).collect()
}

fn services(r: &ServerReflectionResponse) -> Vec<String> {
    match &r.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => l.service.iter().map(|s| s.name.clone()).collect(),
        other => panic!("not a service list: {other:?}"),
    }
}

/// The first file of a file answer (the one asked for).
fn first_file(r: &ServerReflectionResponse) -> FileDescriptorProto {
    match &r.message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => {
            FileDescriptorProto::decode(&f.file_descriptor_proto[0][..]).expect("a file descriptor")
        }
        other => panic!("not a file answer: {other:?}"),
    }
}

fn error_of(r: &ServerReflectionResponse) -> (i32, String) {
    match &r.message_response {
        Some(MessageResponse::ErrorResponse(e)) => (e.error_code, e.error_message.clone()),
        other => panic!("not an error answer: {other:?}"),
    }
}

fn echo_route(b: &EchoBackend) -> String {
    format!("echo.v1.EchoService=static:///{}", b.addr)
}

/// The requests a client such as grpcurl sends on one stream, checked answer by answer.
async fn lists_and_resolves(sidecar: &Sidecar, caller: Caller) {
    let symbol = |s: &str| MessageRequest::FileContainingSymbol(s.into());
    let requests = [
        MessageRequest::ListServices(String::new()),
        symbol("echo.v1.EchoService"),
        MessageRequest::FileByFilename("echo/v1/echo.proto".into()),
        symbol("echo.v1.EchoRequest"),
        symbol("echo.v1.EchoService.Bidi"),
        symbol("hello.v1.HelloService"),
        symbol("nope.v1.Nope"),
        symbol("echo.v1.EchoService"),
        MessageRequest::AllExtensionNumbersOfType("echo.v1.EchoRequest".into()),
        MessageRequest::FileContainingExtension(ExtensionRequest {
            containing_type: "echo.v1.EchoRequest".into(),
            extension_number: 100,
        }),
    ];
    let answers = reflect(sidecar, caller, &requests).await;
    assert_eq!(answers.len(), requests.len(), "one answer per request ({caller:?})");
    for (a, r) in answers.iter().zip(&requests) {
        assert_eq!(a.original_request.as_ref().and_then(|o| o.message_request.as_ref()), Some(r), "in order");
    }
    let listed = services(&answers[0]);
    for s in ["hello.v1.HelloService", "echo.v1.EchoService", "grpc.health.v1.Health"] {
        assert!(listed.iter().any(|l| l == s), "{caller:?}: {s} missing from {listed:?}");
    }
    for i in [1, 2, 3, 4, 7] {
        let file = first_file(&answers[i]);
        assert_eq!(file.name(), "echo/v1/echo.proto", "{caller:?} answer {i}");
        assert_eq!(file.service[0].name(), "EchoService");
    }
    assert_eq!(first_file(&answers[5]).name(), "hello/v1/hello.proto", "answered by the sidecar itself");
    let (code, message) = error_of(&answers[6]);
    assert_eq!(code, tonic::Code::NotFound as i32, "{message}");
    // Extension requests for a type only the backend knows reach the backend (tonic's server knows no extensions).
    assert!(
        matches!(&answers[8].message_response, Some(MessageResponse::AllExtensionNumbersResponse(e)) if e.extension_number.is_empty()),
        "{:?}",
        answers[8]
    );
    let (code, message) = error_of(&answers[9]);
    assert_eq!(
        (code, message.contains("extensions are not supported")),
        (tonic::Code::NotFound as i32, true),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_resolves_a_routed_service_whatever_version_each_side_speaks() {
    let hello = Backend::start("reflect-hello", &[]);
    for backend_version in [Reflection::V1, Reflection::V1Alpha] {
        let echo = EchoBackend::start_with(fresh_ip(), "reflect-echo", backend_version).await;
        let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &echo_route(&echo)]);
        sidecar.wait_ready_endpoints(2);
        // Each caller version twice: after the first miss, every stream uses the version the sidecar remembered.
        let callers = match backend_version {
            Reflection::V1Alpha => [Caller::V1, Caller::V1Alpha, Caller::V1Alpha, Caller::V1],
            _ => [Caller::V1Alpha, Caller::V1, Caller::V1, Caller::V1Alpha],
        };
        for caller in callers {
            lists_and_resolves(&sidecar, caller).await;
        }
        let (spoken, other) = match backend_version {
            Reflection::V1Alpha => (V1ALPHA_PATH, V1_PATH),
            _ => (V1_PATH, V1ALPHA_PATH),
        };
        assert_eq!(echo.stats.path_count(other), 1, "one miss, then the remembered version");
        assert!(echo.stats.path_count(spoken) >= 4, "{:?}", echo.stats.paths.lock().expect("paths"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_route_lists_what_its_backends_serve() {
    let hello = Backend::start("reflect-default-hello", &[]);
    let echo = EchoBackend::start_with(fresh_ip(), "reflect-default-echo", Reflection::V1Alpha).await;
    let default = format!("*=static:///{}", echo.addr);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &default]);
    sidecar.wait_ready_endpoints(2);
    let answers = reflect(
        &sidecar,
        Caller::V1,
        &[
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("echo.v1.EchoResponse".into()),
        ],
    )
    .await;
    let listed = services(&answers[0]);
    assert!(listed.iter().any(|s| s == "echo.v1.EchoService"), "from the * target's backends: {listed:?}");
    assert!(listed.iter().any(|s| s == "hello.v1.HelloService"), "{listed:?}");
    assert_eq!(first_file(&answers[1]).name(), "echo/v1/echo.proto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_reflection_gets_an_in_stream_error_and_the_stream_goes_on() {
    let hello = Backend::start("reflect-none-hello", &[]);
    let echo = EchoBackend::start_with(fresh_ip(), "reflect-none-echo", Reflection::None).await;
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &echo_route(&echo)]);
    sidecar.wait_ready_endpoints(2);
    let answers = reflect(
        &sidecar,
        Caller::V1,
        &[
            MessageRequest::FileContainingSymbol("echo.v1.EchoService".into()),
            MessageRequest::FileContainingSymbol("hello.v1.HelloService".into()),
        ],
    )
    .await;
    let (code, message) = error_of(&answers[0]);
    assert_eq!(code, tonic::Code::Unimplemented as i32, "{message}");
    assert!(message.contains("serve no gRPC server reflection"), "{message}");
    assert_eq!(first_file(&answers[1]).name(), "hello/v1/hello.proto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_route_without_endpoints_leaves_the_rest_of_the_list_and_fails_only_its_own_answers() {
    let hello = Backend::start("reflect-down-hello", &[]);
    let echo = EchoBackend::start_with(fresh_ip(), "reflect-down-echo", Reflection::V1).await;
    let nowhere = format!("*=static:///{}:1", fresh_ip());
    let sidecar =
        Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &echo_route(&echo), "--route", &nowhere]);
    sidecar.wait_ready_endpoints(2);
    let answers = reflect(
        &sidecar,
        Caller::V1,
        &[
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("other.v1.Other".into()),
            MessageRequest::FileContainingSymbol("echo.v1.EchoService".into()),
        ],
    )
    .await;
    let listed = services(&answers[0]);
    for s in ["hello.v1.HelloService", "echo.v1.EchoService"] {
        assert!(listed.iter().any(|l| l == s), "{s} missing from {listed:?}");
    }
    let (code, message) = error_of(&answers[1]);
    assert_eq!(code, tonic::Code::Unavailable as i32, "{message}");
    assert!(message.contains("no ready endpoints for static:///"), "{message}");
    assert_eq!(first_file(&answers[2]).name(), "echo/v1/echo.proto", "the stream goes on");
}

/// A stock reflection client: grpcio-reflection's descriptor database (Python; it speaks v1alpha), resolving a
/// service through a protobuf descriptor pool as a dynamic client does.
const PYTHON_CLIENT: &str = r#"
import json, sys, grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(sys.argv[1]))
pool = DescriptorPool(db)
service = pool.FindServiceByName("echo.v1.EchoService")
request = pool.FindMessageTypeByName("echo.v1.EchoRequest")
print(json.dumps({
    "services": sorted(db.get_services()),
    "methods": [m.name for m in service.methods],
    "fields": [f.name for f in request.fields],
    "file": service.file.name,
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_v1alpha_client_resolves_a_routed_service_whose_backend_speaks_v1() {
    let python = [concat!(env!("CARGO_MANIFEST_DIR"), "/.test-tools/venv/bin/python"), "python3"]
        .into_iter()
        .find(|p| {
            let check = std::process::Command::new(p).args(["-c", "import grpc_reflection"]).output();
            check.is_ok_and(|o| o.status.success())
        })
        .expect("Python with grpcio-reflection (scripts/test installs it into .test-tools/venv)");
    let hello = Backend::start("stock-reflect-hello", &[]);
    let echo = EchoBackend::start_with(fresh_ip(), "stock-reflect-echo", Reflection::V1).await;
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &echo_route(&echo)]);
    sidecar.wait_ready_endpoints(2);
    let out = tokio::process::Command::new(python)
        .args(["-c", PYTHON_CLIENT, &sidecar.addr.to_string()])
        .output()
        .await
        .expect("run the Python client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let services = v["services"].as_array().expect("services");
    for s in ["echo.v1.EchoService", "hello.v1.HelloService"] {
        assert!(services.iter().any(|x| x == s), "{s} not in {v}");
    }
    assert_eq!(v["methods"], serde_json::json!(["Echo", "ServerStream", "ClientStream", "Bidi"]));
    assert_eq!(v["fields"], serde_json::json!(["message", "count", "delay_ms"]));
    assert_eq!(v["file"], "echo/v1/echo.proto");
    assert!(echo.stats.path_count(V1_PATH) >= 1, "the v1alpha client's requests reached the backend as v1");
}

/// One Connect call with a real curl: (HTTP status, body).
async fn curl_json(s: &Sidecar, path: &str, body: &str) -> (u16, serde_json::Value) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-H", "content-type: application/json", "-d", body])
        .arg(format!("http://{}{path}", s.addr))
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl: {text} {:?}", out.stderr));
    let status = status.trim().parse().unwrap_or_else(|_| panic!("status in {text:?}"));
    (status, serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}")))
}

const V1_PATH: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA_PATH: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
const ECHO: &str = "/echo.v1.EchoService/Echo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_json_learns_the_types_from_the_backends_reflection() {
    let hello = Backend::start("json-hello", &[]);
    for version in [Reflection::V1Alpha, Reflection::V1] {
        let echo = EchoBackend::start_with(fresh_ip(), "json-echo", version).await;
        let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &echo_route(&echo)]);
        sidecar.wait_ready_endpoints(2);
        for i in 0..3 {
            let (status, v) = curl_json(&sidecar, ECHO, &format!(r#"{{"message":"json {i}"}}"#)).await;
            assert_eq!(status, 200, "{version:?}: {v}");
            assert_eq!(v, serde_json::json!({"message": format!("json {i}"), "server": "json-echo"}));
        }
        let spoken = if version == Reflection::V1Alpha { V1ALPHA_PATH } else { V1_PATH };
        let lookups = || echo.stats.path_count(V1_PATH) + echo.stats.path_count(V1ALPHA_PATH);
        assert_eq!(echo.stats.path_count(spoken), 1, "learned once for the target, then cached");
        // A field the schema lacks is the caller's mistake, named; the schema is refreshed in case it was stale.
        let before = lookups();
        let (status, v) = curl_json(&sidecar, ECHO, r#"{"nope":1}"#).await;
        assert_eq!((status, v["code"].as_str()), (400, Some("invalid_argument")), "{v}");
        let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"again","count":2}"#).await;
        assert_eq!((status, v["message"].as_str()), (200, Some("again")), "{v}");
        assert_eq!(lookups(), before + 1, "learned again once, in the version remembered for the target");
        // A method the service does not have: UNIMPLEMENTED, said as a gRPC server says it, with no advice
        // about schemas (the backends' schema is there; the method is not in it).
        let (status, v) = curl_json(&sidecar, "/echo.v1.EchoService/Ech0", "{}").await;
        assert_eq!((status, v["code"].as_str()), (501, Some("unimplemented")), "{v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains("unknown method Ech0 for service echo.v1.EchoService"), "{message}");
        assert!(!message.contains("descriptor-set"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_json_to_a_service_the_backends_lack_leaves_the_target_s_other_services_alone() {
    let hello = Backend::start("lack-hello", &[]);
    let echo = EchoBackend::start_with(fresh_ip(), "lack-echo", Reflection::V1).await;
    // Two services routed to one target (one watch, one schema cache); its backends serve only the first.
    let other = format!("other.v1.Other=static:///{}", echo.addr);
    let sidecar =
        Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &echo_route(&echo), "--route", &other]);
    sidecar.wait_ready_endpoints(2);
    let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"before"}"#).await;
    assert_eq!((status, v["message"].as_str()), (200, Some("before")), "{v}");
    // A caller's typo of a service name, say: the backends answer reflection with NOT_FOUND for it.
    let (status, v) = curl_json(&sidecar, "/other.v1.Other/Call", "{}").await;
    assert_eq!((status, v["code"].as_str()), (501, Some("unimplemented")), "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("other.v1.Other"), "{message}");
    // The service the backends do serve still takes JSON, at once (not after a remembered failure expires), and
    // no message about it names the other service.
    let (status, v) = curl_json(&sidecar, ECHO, r#"{"message":"after"}"#).await;
    assert_eq!((status, v["message"].as_str()), (200, Some("after")), "{v}");
}

/// A `.proto` without a `package`: its service is `/Orders/Method`, its messages are top-level names.
fn unpackaged_set() -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("hello-sidecar-unpackaged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let proto = "syntax = \"proto3\";\nmessage OrderRequest { string id = 1; }\nmessage OrderReply { string id = 1; }\n\
                 service Orders { rpc Get(OrderRequest) returns (OrderReply); }\n";
    std::fs::write(dir.join("orders.proto"), proto).expect("write orders.proto");
    let set = protox::compile(["orders.proto"], [&dir]).expect("compile orders.proto");
    let _ = std::fs::remove_dir_all(&dir);
    set.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_resolves_the_messages_of_a_routed_service_without_a_package() {
    // As `echo.v1.EchoRequest` is asked of echo.v1.EchoService's route, `OrderRequest` (a top-level message of
    // the same package-less file) is asked of Orders' route, on a fresh stream (`grpcurl describe OrderRequest`).
    let hello = Backend::start("unpackaged-hello", &[]);
    let set: &'static [u8] = Box::leak(unpackaged_set().into_boxed_slice());
    let orders = EchoBackend::start_with_schema(fresh_ip(), "unpackaged", Reflection::V1, set).await;
    let route = format!("Orders=static:///{}", orders.addr);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &route]);
    sidecar.wait_ready_endpoints(2);
    let service = reflect(&sidecar, Caller::V1, &[MessageRequest::FileContainingSymbol("Orders".into())]).await;
    assert_eq!(first_file(&service[0]).name(), "orders.proto", "{:?}", service[0]);
    let message = reflect(&sidecar, Caller::V1, &[MessageRequest::FileContainingSymbol("OrderRequest".into())]).await;
    assert!(
        matches!(&message[0].message_response, Some(MessageResponse::FileDescriptorResponse(_))),
        "{:?}",
        message[0]
    );
    assert_eq!(first_file(&message[0]).name(), "orders.proto");
    let file = reflect(&sidecar, Caller::V1, &[MessageRequest::FileByFilename("orders.proto".into())]).await;
    assert!(matches!(&file[0].message_response, Some(MessageResponse::FileDescriptorResponse(_))), "{:?}", file[0]);
}

/// `echo.proto` compiled with protox into a FileDescriptorSet file, as `protoc -o` writes it.
fn echo_descriptor_set() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let set = protox::compile(["echo/v1/echo.proto"], [&root]).expect("compile echo.proto");
    let path = std::env::temp_dir().join(format!("hello-sidecar-echo-{}.pb", std::process::id()));
    std::fs::write(&path, set.encode_to_vec()).expect("write the set");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_json_uses_a_descriptor_set_and_without_any_schema_says_how_to_give_one() {
    let hello = Backend::start("set-hello", &[]);
    let echo = EchoBackend::start_with(fresh_ip(), "set-echo", Reflection::None).await;
    let set = echo_descriptor_set();
    let route = echo_route(&echo);
    let with = Sidecar::start(
        &Sidecar::static_target(&[&hello]),
        &["--route", &route, "--descriptor-set", set.to_str().expect("utf-8")],
    );
    let without = Sidecar::start(&Sidecar::static_target(&[&hello]), &["--route", &route]);
    with.wait_ready_endpoints(2);
    without.wait_ready_endpoints(2);

    let (status, v) = curl_json(&with, ECHO, r#"{"message":"from the set"}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, serde_json::json!({"message": "from the set", "server": "set-echo"}));
    // Reflection answers from the set too, though the backend serves none.
    let answers =
        reflect(&with, Caller::V1Alpha, &[MessageRequest::FileContainingSymbol("echo.v1.EchoService".into())]).await;
    assert_eq!(first_file(&answers[0]).name(), "echo/v1/echo.proto");

    let (status, v) = curl_json(&without, ECHO, r#"{"message":"x"}"#).await;
    assert_eq!((status, v["code"].as_str()), (501, Some("unimplemented")), "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    for words in ["--descriptor-set", "server reflection", "application/proto"] {
        assert!(message.contains(words), "the error says how to provide a schema ({words}): {message}");
    }
    let _ = std::fs::remove_file(set);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_reflection_request_is_resource_exhausted() {
    let hello = Backend::start("big-reflect-hello", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&hello]), &[]);
    sidecar.wait_ready_endpoints(1);
    let huge = ServerReflectionRequest {
        host: "h".repeat(5 << 20),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    for path in [V1_PATH, V1ALPHA_PATH] {
        let headers = [("content-type", "application/grpc"), ("te", "trailers")];
        let r = raw_request(sidecar.addr, true, path, &headers, grpc_frame(&huge.encode_to_vec())).await;
        // gRPC status codes doc: RESOURCE_EXHAUSTED for a message larger than the receiver's limit.
        assert_eq!(r.grpc_status(), Some(8), "{path}: {}", r.grpc_message());
    }
}
