//! One reflection request sent to a target's backends, in whichever protocol version they speak.
//!
//! # Why a path rewrite is a full translation
//!
//! `grpc.reflection.v1alpha` and `grpc.reflection.v1` (grpc-proto `reflection/v1alpha/reflection.proto` and
//! `reflection/v1/reflection.proto`) declare the same messages with the same field numbers and types
//! (`ServerReflectionRequest` 1 host, 3–7 the request oneof; `ServerReflectionResponse` 1, 2, 4–7; the nested
//! responses alike) and differ only in the package and so in the method path
//! `/grpc.reflection.<version>.ServerReflection/ServerReflectionInfo`; tonic-reflection's generated types for both
//! differ in nothing but doc comments. A message of one version is therefore byte for byte a message of the other,
//! and speaking the other version to a backend is only a different `:path`.
//!
//! # Why one stream per request, pinned to one endpoint
//!
//! Each forwarded request is its own upstream stream (one request message, one response), which keeps each answer
//! independent: a backend that fails affects that answer, not the caller's whole stream. The reflection protocol
//! is a stream so that "all related requests go to a single server" (reflection.proto): a caller resolving a file
//! and then its dependencies must not get them from two builds during a rollout. So the first request of a caller's
//! stream to a target picks an endpoint through the target's balancer like any call, and later requests of that
//! stream go to the same endpoint while its connection is up ([`Pinned`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

use crate::{
    balance::Endpoint,
    grpc::{decode_message, encode_timeout, status_of},
    proxy::{Balancer, replay::ReplayBody, request_body::RequestBody},
};

/// A reflection protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `grpc.reflection.v1`.
    V1,
    /// `grpc.reflection.v1alpha`, which many deployed servers still speak alone.
    V1Alpha,
}

impl Version {
    /// The method path of this version.
    pub fn path(self) -> &'static str {
        match self {
            Version::V1 => "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            Version::V1Alpha => "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        }
    }

    /// The version a path names (`v1` unless it is the `v1alpha` one).
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/grpc.reflection.v1alpha.") { Version::V1Alpha } else { Version::V1 }
    }

    /// The other version.
    pub fn other(self) -> Self {
        match self {
            Version::V1 => Version::V1Alpha,
            Version::V1Alpha => Version::V1,
        }
    }
}

/// How long one forwarded reflection request may take, the endpoint wait included.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for a usable endpoint (`--failfast-timeout`'s default): a target with none fails its answer
/// fast, and the caller's stream moves on to its next request.
const ENDPOINT_WAIT: Duration = Duration::from_secs(1);
/// The largest reflection answer taken from a backend (file descriptors of a large schema fit many times over).
const MAX_REPLY: usize = 16 << 20;

/// The endpoint a caller's stream uses for one target (see the module docs).
#[derive(Default)]
pub struct Pinned(Option<Arc<Endpoint<ReplayBody>>>);

/// Sends `req` to one of `balancer`'s endpoints as `version` and returns its one answer. A gRPC status is the
/// backend's (UNIMPLEMENTED when it does not speak `version`) or the sidecar's (UNAVAILABLE: no endpoint, the
/// connection failed; DEADLINE_EXCEEDED after [`TIMEOUT`]). Reflection requests only read, so one that failed on
/// the way is sent once more, to another endpoint when there is one. The request passes no verdict on the
/// endpoint (a breaker's probe slot taken by the pick is freed unused): reflection says little about the app's calls.
pub async fn call(
    balancer: &Balancer,
    pinned: &mut Pinned,
    version: Version,
    req: &ServerReflectionRequest,
) -> Result<ServerReflectionResponse, Status> {
    let deadline = Instant::now() + TIMEOUT;
    let mut avoid: Vec<SocketAddr> = Vec::new();
    loop {
        let pin = pinned.0.as_ref().and_then(|e| e.lease_unjudged().map(|lease| (e.clone(), lease)));
        let (endpoint, lease) = match pin {
            Some(p) => p,
            None => {
                let wait_until = deadline.min(Instant::now() + ENDPOINT_WAIT);
                let picked = balancer.pick(&avoid, wait_until).await.map_err(|e| Status::unavailable(e.to_string()))?;
                picked.into_unjudged()
            }
        };
        let addr = endpoint.addr();
        match send(lease.sender.clone(), addr, version, req, deadline).await {
            Err(Failed::Transport(error)) if avoid.is_empty() => {
                tracing::debug!(endpoint = %addr, %error, "reflection request failed; trying once more");
                avoid.push(addr);
                pinned.0 = None;
            }
            Err(Failed::Transport(error)) => return Err(Status::unavailable(error)),
            Err(Failed::Status(s)) => return Err(s),
            Ok(res) => {
                pinned.0 = Some(endpoint);
                return Ok(res);
            }
        }
    }
}

enum Failed {
    /// The request may not have been answered (connection, reset, malformed answer).
    Transport(String),
    /// The backend answered with a status.
    Status(Status),
}

async fn send(
    sender: crate::pool::SendRequest<ReplayBody>,
    addr: SocketAddr,
    version: Version,
    req: &ServerReflectionRequest,
    deadline: Instant,
) -> Result<ServerReflectionResponse, Failed> {
    let msg = req.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    let body = ReplayBody::new(RequestBody::Full(Full::new(frame.freeze())), 0, u64::MAX);
    let mut upstream = Request::post(format!("http://{addr}{}", version.path()))
        .version(http::Version::HTTP_2)
        .body(body)
        .map_err(|e| Failed::Transport(e.to_string()))?;
    let h = upstream.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert("grpc-timeout", encode_timeout(deadline.saturating_duration_since(Instant::now())));
    let answer = async {
        let res = sender.try_send_request(upstream).await.map_err(|e| Failed::Transport(crate::error_chain(&e)))?;
        let (parts, body) = res.into_parts();
        let collected = Limited::new(body, MAX_REPLY)
            .collect()
            .await
            .map_err(|e| Failed::Transport(format!("reflection answer from {addr}: {e}")))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let code = status_of(&trailers).or_else(|| status_of(&parts.headers));
        match code {
            Some(Code::Ok) | None if parts.status.is_success() => {}
            _ => {
                let raw = trailers.get("grpc-message").or_else(|| parts.headers.get("grpc-message"));
                let message = raw.map(|v| decode_message(v.as_bytes())).unwrap_or_default();
                let code = code.unwrap_or(Code::Unknown);
                return Err(Failed::Status(Status::new(code, format!("{message} (from {addr})"))));
            }
        }
        decode_reply(&collected.to_bytes())
            .map_err(|e| Failed::Transport(format!("reflection answer from {addr}: {e}")))
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(r) => r,
        Err(_) => Err(Failed::Status(Status::deadline_exceeded(format!("reflection request to {addr} timed out")))),
    }
}

/// The one response message of a gRPC response body.
fn decode_reply(body: &Bytes) -> Result<ServerReflectionResponse, String> {
    match &body[..] {
        [0, a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            let msg = rest.get(..len).ok_or("truncated frame")?;
            ServerReflectionResponse::decode(msg).map_err(|e| e.to_string())
        }
        [] => Err("no response message".into()),
        _ => Err("compressed or malformed frame".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_reflection::pb::{v1, v1alpha};

    #[test]
    fn both_versions_are_the_same_bytes() {
        let a = v1alpha::ServerReflectionRequest {
            host: "h".into(),
            message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingExtension(
                v1alpha::ExtensionRequest { containing_type: "a.B".into(), extension_number: 7 },
            )),
        };
        let b = v1::ServerReflectionRequest::decode(&a.encode_to_vec()[..]).expect("decodes as v1");
        assert_eq!(b.encode_to_vec(), a.encode_to_vec());
        let list = v1alpha::ServerReflectionResponse {
            valid_host: "h".into(),
            original_request: Some(a),
            message_response: Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(
                v1alpha::ListServiceResponse { service: vec![v1alpha::ServiceResponse { name: "x.Y".into() }] },
            )),
        };
        let v1 = v1::ServerReflectionResponse::decode(&list.encode_to_vec()[..]).expect("decodes as v1");
        assert_eq!(v1.encode_to_vec(), list.encode_to_vec());
        assert_eq!(Version::of_path(Version::V1Alpha.path()), Version::V1Alpha);
        assert_eq!(Version::of_path(Version::V1.path()).other(), Version::V1Alpha);
    }
}
