//! The Connect protocol for unary calls, translated to gRPC towards the backends, so plain HTTP clients work:
//!
//! ```sh
//! curl -H 'content-type: application/json' -d '{"name":"world"}' http://127.0.0.1:50051/hello.v1.HelloService/SayHello
//! ```
//!
//! The request is one bare message (`application/proto`, or proto3 JSON with `application/json`, mapped with the
//! descriptors compiled into the binary, from `--descriptor-set`, or learned from the route's backends through
//! server reflection: [`crate::proxy::reflection::schema`]); `connect-timeout-ms` becomes `grpc-timeout`. The answer is
//! the bare reply message in the same codec, or a Connect error: an HTTP status from the gRPC code and
//! `{"code":"invalid_argument","message":"name is required"}`, with the backend's `grpc-status-details-bin` as
//! `details` ([`error_details`]). Backend trailers come back as `trailer-` headers.

use std::sync::OnceLock;

use bytes::Bytes;
use http::StatusCode;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tonic::Code;

/// The message codec of a Connect request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `application/json`: proto3 JSON.
    Json,
    /// `application/proto`: binary protobuf.
    Proto,
}

impl Codec {
    /// The codec of a content-type, if it is a Connect unary one.
    pub fn of(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json" => Some(Codec::Json),
            "application/proto" | "application/protobuf" => Some(Codec::Proto),
            _ => None,
        }
    }

    /// The codec of a Connect GET request (`?connect=v1&encoding=json&message=…`, the Connect protocol's form for
    /// side-effect-free methods), if the query is one.
    pub fn of_get_query(query: Option<&str>) -> Option<Self> {
        let mut connect = false;
        let mut codec = Codec::Json;
        for (key, value) in query?.split('&').filter_map(|p| p.split_once('=')) {
            match (key, value) {
                ("connect", "v1") => connect = true,
                ("encoding", "proto") => codec = Codec::Proto,
                _ => {}
            }
        }
        connect.then_some(codec)
    }

    /// The response content-type.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        }
    }
}

/// The descriptors of every service compiled into the binary.
fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).ok()).as_ref()
}

/// The method a path names (`/hello.v1.HelloService/SayHello`), if the binary knows it.
pub fn method(path: &str) -> Option<MethodDescriptor> {
    let (service, method) = path.strip_prefix('/')?.rsplit_once('/')?;
    pool()?.get_service_by_name(service)?.methods().find(|m| m.name() == method)
}

/// The request message as protobuf bytes in a gRPC frame, or why it is not a valid request. `method` is the
/// compiled schema's, when the sidecar has it: a proto request is then checked against it, and passed as it is
/// without (a routed service the sidecar was not compiled with); JSON needs it.
pub fn request_frame(method: Option<&MethodDescriptor>, codec: Codec, body: &[u8]) -> Result<Bytes, String> {
    let proto = match (codec, method) {
        (Codec::Proto, Some(method)) => {
            DynamicMessage::decode(method.input(), body).map_err(|e| format!("invalid protobuf request: {e}"))?;
            Bytes::copy_from_slice(body)
        }
        (Codec::Proto, None) => Bytes::copy_from_slice(body),
        (Codec::Json, None) => return Err(NO_SCHEMA.into()),
        (Codec::Json, Some(method)) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let msg = DynamicMessage::deserialize(method.input(), &mut de)
                .and_then(|m| de.end().map(|()| m))
                .map_err(|e| format!("invalid JSON request: {e}"))?;
            Bytes::from(msg.encode_to_vec())
        }
    };
    Ok(crate::grpc::frame(0, &proto))
}

/// Why a Connect JSON call to a service the sidecar was not compiled with cannot be translated.
pub const NO_SCHEMA: &str = "Connect JSON needs the method's message types: the sidecar learns them from the \
     route's backends if they serve gRPC server reflection, or from --descriptor-set FILE (a FileDescriptorSet, as \
     protoc -o or buf build -o write); or call with content-type application/proto (or gRPC / gRPC-web), which \
     need none";

/// Why a Connect unary call cannot reach a streaming method (Connect streaming is not translated).
pub fn streaming(path: &str) -> String {
    format!(
        "{path} is a streaming method: Connect unary (application/json, application/proto) calls only unary \
         methods; call it with gRPC or gRPC-web"
    )
}

/// Whether a unary Connect call cannot reach `method`: it streams requests or replies.
pub fn is_streaming(method: &MethodDescriptor) -> bool {
    method.is_client_streaming() || method.is_server_streaming()
}

/// The one message of a unary gRPC response body; an error for more than one (see [`several_messages`]).
fn reply_payload(grpc_body: &[u8]) -> Result<&[u8], String> {
    match grpc_body {
        [0, a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            let payload = rest.get(..len).ok_or("truncated reply frame")?;
            if rest.len() > len {
                return Err("more than one reply message".into());
            }
            Ok(payload)
        }
        [] => Ok(&[][..]),
        _ => Err("compressed or malformed reply frame".into()),
    }
}

/// Whether a gRPC response body holds more than one message: the method streams replies, which a unary Connect
/// reply cannot carry (and the first alone would pass for the whole answer).
pub fn several_messages(grpc_body: &[u8]) -> bool {
    match grpc_body {
        [_, a, b, c, d, rest @ ..] => rest.len() > u32::from_be_bytes([*a, *b, *c, *d]) as usize,
        _ => false,
    }
}

/// Whether the reply in a gRPC response body has fields `method`'s output type lacks, at any depth: the schema
/// is older than the backend's build, and JSON would drop them.
pub fn reply_has_unknown_fields(method: &MethodDescriptor, grpc_body: &[u8]) -> bool {
    fn any_unknown(msg: &DynamicMessage) -> bool {
        fn in_value(v: &prost_reflect::Value) -> bool {
            match v {
                prost_reflect::Value::Message(m) => any_unknown(m),
                prost_reflect::Value::List(items) => items.iter().any(in_value),
                prost_reflect::Value::Map(entries) => entries.values().any(in_value),
                _ => false,
            }
        }
        msg.unknown_fields().next().is_some() || msg.fields().any(|(_, v)| in_value(v))
    }
    reply_payload(grpc_body)
        .ok()
        .and_then(|payload| DynamicMessage::decode(method.output(), payload).ok())
        .is_some_and(|msg| any_unknown(&msg))
}

/// The reply message from a gRPC response body (one frame), in the request's codec.
pub fn reply_body(method: Option<&MethodDescriptor>, codec: Codec, grpc_body: &[u8]) -> Result<Bytes, String> {
    let payload = reply_payload(grpc_body)?;
    match (codec, method) {
        (Codec::Proto, _) => Ok(Bytes::copy_from_slice(payload)),
        (Codec::Json, None) => Err(NO_SCHEMA.into()),
        (Codec::Json, Some(method)) => {
            let msg = DynamicMessage::decode(method.output(), payload).map_err(|e| format!("invalid reply: {e}"))?;
            serde_json::to_vec(&msg).map(Bytes::from).map_err(|e| format!("reply to JSON: {e}"))
        }
    }
}

/// The HTTP status Connect uses for a code.
pub fn http_status(code: Code) -> StatusCode {
    let n = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    };
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A Connect error body: `{"code","message"}`, plus `details` when the backend sent any (see [`error_details`]).
pub fn error_body(code: Code, message: &str, details: Vec<serde_json::Value>) -> Bytes {
    let mut v = serde_json::json!({ "code": crate::grpc::connect_code_name(code), "message": message });
    if !details.is_empty() {
        v["details"] = serde_json::Value::Array(details);
    }
    Bytes::from(v.to_string())
}

/// `google.rpc.Status`, the message in `grpc-status-details-bin` (google/rpc/status.proto).
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// Base64 as gRPC's binary headers carry it: standard alphabet, padding optional (gRPC over HTTP/2 spec).
const HEADER_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The `details` of a Connect error from a `grpc-status-details-bin` header value, as connect-go writes them:
/// one `{"type","value","debug"}` object per `google.protobuf.Any` in the `google.rpc.Status`, where `type` is the
/// message's full name (the type URL without its prefix), `value` the message bytes in unpadded standard base64,
/// and `debug` the message as proto3 JSON when the binary knows its type (Connect protocol, "Error end-stream").
/// A header that does not decode gives no details: the code and message still reach the caller.
pub fn error_details(header: &[u8]) -> Vec<serde_json::Value> {
    let Ok(raw) = base64::Engine::decode(&HEADER_BASE64, header) else {
        return Vec::new();
    };
    let Ok(status) = RpcStatus::decode(raw.as_slice()) else {
        return Vec::new();
    };
    status
        .details
        .iter()
        .map(|any| {
            let name = any.type_url.rsplit_once('/').map_or(any.type_url.as_str(), |(_, n)| n);
            let mut v = serde_json::json!({
                "type": name,
                "value": base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, &any.value),
            });
            let debug = pool()
                .and_then(|p| p.get_message_by_name(name))
                .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
                .and_then(|msg| serde_json::to_value(&msg).ok());
            if let Some(debug) = debug {
                v["debug"] = debug;
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn say_hello() -> MethodDescriptor {
        method("/hello.v1.HelloService/SayHello").expect("compiled in")
    }

    #[test]
    fn json_and_proto_requests_become_the_same_frame() {
        let from_json = request_frame(Some(&say_hello()), Codec::Json, br#"{"name":"world"}"#).expect("valid");
        let proto = crate::pb::HelloRequest { name: "world".into() }.encode_to_vec();
        let from_proto = request_frame(Some(&say_hello()), Codec::Proto, &proto).expect("valid");
        assert_eq!(from_json, from_proto);
        assert_eq!(&from_json[..5], &[0, 0, 0, 0, 7]);
    }

    #[test]
    fn bad_requests_are_named() {
        assert!(request_frame(Some(&say_hello()), Codec::Json, b"{").unwrap_err().contains("invalid JSON"));
        assert!(request_frame(Some(&say_hello()), Codec::Json, br#"{"nope":1}"#).is_err());
        assert!(method("/hello.v1.HelloService/Nope").is_none());
        assert!(method("/other.Service/Call").is_none());
    }

    #[test]
    fn replies_map_to_proto3_json() {
        let reply = crate::pb::HelloResponse { message: "Hello, world!".into(), code: 200 }.encode_to_vec();
        let mut frame = vec![0, 0, 0, 0, reply.len() as u8];
        frame.extend(&reply);
        let json = reply_body(Some(&say_hello()), Codec::Json, &frame).expect("valid");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(v, serde_json::json!({"message": "Hello, world!", "code": 200}));
        assert_eq!(reply_body(Some(&say_hello()), Codec::Proto, &frame).expect("valid"), Bytes::from(reply));
    }

    #[test]
    fn a_streamed_answer_and_fields_the_schema_lacks_are_noticed() {
        let reply = crate::pb::HelloResponse { message: "hi".into(), code: 7 }.encode_to_vec();
        let one = [&[0, 0, 0, 0, reply.len() as u8][..], &reply].concat();
        assert!(!several_messages(&one) && !reply_has_unknown_fields(&say_hello(), &one));
        assert!(several_messages(&[one.clone(), one.clone()].concat()));
        assert!(reply_body(Some(&say_hello()), Codec::Proto, &[one.clone(), one].concat()).is_err());
        // Field 15 (a string) is not in HelloResponse: a newer build's.
        let newer = [&reply[..], &[0x7a, 1, b'x']].concat();
        let framed = [&[0, 0, 0, 0, newer.len() as u8][..], &newer].concat();
        assert!(reply_has_unknown_fields(&say_hello(), &framed));
    }

    #[test]
    fn status_details_become_connect_details() {
        let known = crate::pb::HelloResponse { message: "hi".into(), code: 7 }.encode_to_vec();
        let status = RpcStatus {
            code: 3,
            message: "bad".into(),
            details: vec![
                Any { type_url: "type.googleapis.com/hello.v1.HelloResponse".into(), value: known.clone() },
                Any { type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(), value: vec![10, 1, b'x'] },
            ],
        };
        let header = base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, status.encode_to_vec());
        let details = error_details(header.as_bytes());
        assert_eq!(details.len(), 2);
        assert_eq!(details[0]["type"], "hello.v1.HelloResponse");
        assert_eq!(details[0]["debug"], serde_json::json!({"message": "hi", "code": 7}));
        assert_eq!(details[1], serde_json::json!({"type": "google.rpc.ErrorInfo", "value": "CgF4"}));
        let padded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, status.encode_to_vec());
        assert_eq!(error_details(padded.as_bytes()), details, "padding is optional");
        assert!(error_details(b"not base64!").is_empty());
        let body = error_body(Code::InvalidArgument, "bad", details);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["details"][1]["value"], "CgF4");
    }

    #[test]
    fn codes_map_like_connect() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(Code::DeadlineExceeded), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            &error_body(Code::InvalidArgument, "name is required", Vec::new())[..],
            br#"{"code":"invalid_argument","message":"name is required"}"#
        );
    }
}
