//! Every way the sidecar itself answers a call, and the one place that turns them into responses.
//!
//! gRPC failures become Trailers-Only responses (HTTP 200, `grpc-status`, `grpc-message`), which every gRPC client
//! reads as a status. Requests that are not gRPC at all get a plain HTTP status with a one-line text body.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use tonic::Code;

use crate::{
    balance::NoEndpoint,
    grpc::{add_status, code_of_reset},
    pool::SendFailure,
    proxy::body::ResponseBody,
};

/// What the sidecar answers instead of the backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing usable to send the call to.
    #[error(transparent)]
    NoEndpoint(#[from] NoEndpoint),
    /// A `waitForReady` call's deadline passed while it still waited for an endpoint. The wait is bounded by the
    /// deadline (grpc/doc/wait-for-ready.md), so it ends as any call past its deadline does, `DEADLINE_EXCEEDED`,
    /// as grpc-go ("context deadline exceeded while waiting for connections to become ready") and grpc-java do.
    #[error("deadline exceeded while waiting for an endpoint to become ready (waitForReady): {0}")]
    NotReadyByDeadline(NoEndpoint),
    /// The call's deadline passed before the backend answered.
    #[error("deadline exceeded after {0:?} (grpc-timeout or the sidecar's default)")]
    DeadlineExceeded(Duration),
    /// The attempt failed before the backend answered, and it could not (or may not) be sent again.
    #[error("upstream {addr}: {error}")]
    Upstream {
        /// The endpoint.
        addr: std::net::SocketAddr,
        /// What kind of failure, which decides the status.
        failure: SendFailure,
        /// What failed, with its causes.
        error: String,
    },
    /// A header or trailer block over `--max-header-bytes` (RFC 7541 §4.1 sizes).
    #[error("{what} is {size} bytes, over the sidecar's limit of {limit} bytes (--max-header-bytes)")]
    HeadersTooLarge {
        /// Which block: request metadata, response headers or trailers.
        what: &'static str,
        /// Its size.
        size: u32,
        /// The limit.
        limit: u32,
    },
    /// A request message is larger than the limit.
    #[error("grpc: received message larger than max ({size} vs. {limit})")]
    TooLarge {
        /// The message size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Too many calls in flight.
    #[error("too many concurrent calls at the sidecar (limit {0})")]
    Overloaded(u32),
    /// A path the sidecar does not route.
    #[error(
        "no route for {0}: give the sidecar --route SERVICE=TARGET for its service (grpc.health.v1.Health and reflection are answered here)"
    )]
    Unimplemented(String),
    /// A `grpc-timeout` header that does not parse.
    #[error("malformed grpc-timeout {0:?}")]
    MalformedTimeout(String),
    /// The client's request body is malformed (a grpc-web-text body that is not base64).
    #[error("malformed request: {0}")]
    MalformedBody(String),
    /// The client's request body failed (it reset the stream) before the call could be sent.
    #[error("request body: {0}")]
    RequestBody(String),
    /// Not a gRPC content-type.
    #[error(
        "unsupported content-type {0:?}: this port speaks gRPC (application/grpc), grpc-web (application/grpc-web) \
         and Connect (application/json, application/proto)"
    )]
    NotGrpc(String),
    /// gRPC over HTTP/1.1.
    #[error(
        "application/grpc needs HTTP/2 (h2c with prior knowledge); over HTTP/1.1 this port speaks grpc-web \
         (application/grpc-web) and Connect (application/json, application/proto)"
    )]
    Http1,
    /// A Connect request for a streaming method (this port translates Connect unary calls only); the message
    /// says which method.
    #[error("{0}")]
    ConnectStreaming(String),
    /// A Connect `connect-timeout-ms` that is not 1 to 10 digits.
    #[error("malformed connect-timeout-ms")]
    MalformedConnectTimeout,
    /// A Connect request message that does not map to the method's request type (or is not JSON at all).
    #[error("{0}")]
    MalformedRequest(String),
    /// A Connect request body over `--max-message-bytes` (the limit, in bytes).
    #[error("request larger than max ({0} bytes)")]
    RequestTooLarge(usize),
    /// The backend's reply to a Connect call (collected whole to be translated) is larger than the limit: the
    /// limit, in bytes of gRPC frames (`--max-message-bytes` and one frame's 5-byte prefix).
    #[error(
        "the backend's reply is larger than the sidecar's limit of {0} bytes for a reply translated for a Connect \
         caller (--max-message-bytes)"
    )]
    ReplyTooLarge(u64),
    /// The backend's answer to a Connect call failed while it was being collected.
    #[error("upstream: {0}")]
    UpstreamBody(String),
    /// The backend's reply to a Connect call cannot be translated (not one message, or not of the reply type).
    #[error("{0}")]
    MalformedReply(String),
    /// `inbound`: the caller's certificate carries no SPIFFE ID (X509-SVID §2).
    #[error(
        "the client certificate carries no valid SPIFFE ID (exactly one URI SAN, a spiffe:// ID: X509-SVID §2); \
         the inbound proxy knows callers only by that"
    )]
    NoIdentity,
    /// `inbound`: the caller (its SPIFFE ID) is not on `--allow`.
    #[error("caller {0} is not allowed here")]
    NotAllowed(String),
    /// `inbound`: the app behind it did not take the call.
    #[error("inbound proxy: the app at {addr}: {error}")]
    AppUnavailable {
        /// The app's address.
        addr: std::net::SocketAddr,
        /// Why, with its causes.
        error: String,
    },
}

/// The status of an attempt that failed before the backend answered: a stream the peer reset gets the status of
/// its reset ([`code_of_reset`]); a failed connection, or a request never processed, `UNAVAILABLE` (the gRPC
/// status code document: "the service is currently unavailable", safe to retry).
pub fn code_of_send_failure(failure: SendFailure) -> Code {
    match failure {
        SendFailure::Reset(reason) => code_of_reset(reason),
        SendFailure::Unprocessed | SendFailure::Connection => Code::Unavailable,
    }
}

impl ProxyError {
    /// The answer to a call that found no endpoint: `UNAVAILABLE` for a fail-fast call, `DEADLINE_EXCEEDED` for a
    /// `waitForReady` one, whose wait ends only at its deadline (grpc/doc/wait-for-ready.md).
    pub fn no_endpoint(e: NoEndpoint, wait_for_ready: bool) -> Self {
        if wait_for_ready { ProxyError::NotReadyByDeadline(e) } else { ProxyError::NoEndpoint(e) }
    }

    /// The gRPC status code of this answer. HTTP-level rejections (415, 426) count as `INTERNAL` in metrics.
    pub fn code(&self) -> Code {
        match self {
            ProxyError::NoEndpoint(_) => Code::Unavailable,
            ProxyError::Upstream { failure, .. } => code_of_send_failure(*failure),
            ProxyError::HeadersTooLarge { .. } => Code::ResourceExhausted,
            ProxyError::DeadlineExceeded(_) | ProxyError::NotReadyByDeadline(_) => Code::DeadlineExceeded,
            ProxyError::TooLarge { .. } | ProxyError::Overloaded(_) => Code::ResourceExhausted,
            ProxyError::Unimplemented(_) => Code::Unimplemented,
            ProxyError::MalformedTimeout(_)
            | ProxyError::MalformedBody(_)
            | ProxyError::NotGrpc(_)
            | ProxyError::Http1 => Code::Internal,
            ProxyError::RequestBody(_) => Code::Cancelled,
            ProxyError::ConnectStreaming(_) => Code::Unimplemented,
            ProxyError::MalformedConnectTimeout | ProxyError::MalformedRequest(_) => Code::InvalidArgument,
            ProxyError::RequestTooLarge(_) | ProxyError::ReplyTooLarge(_) => Code::ResourceExhausted,
            ProxyError::UpstreamBody(_) => Code::Unavailable,
            ProxyError::MalformedReply(_) => Code::Internal,
            ProxyError::NoIdentity => Code::Unauthenticated,
            ProxyError::NotAllowed(_) => Code::PermissionDenied,
            ProxyError::AppUnavailable { .. } => Code::Unavailable,
        }
    }

    /// The response the client gets.
    pub fn into_response(self) -> Response<ResponseBody> {
        let http_status = match &self {
            ProxyError::NotGrpc(_) => Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ProxyError::Http1 => Some(StatusCode::UPGRADE_REQUIRED),
            _ => None,
        };
        if let Some(status) = http_status {
            let mut res = Response::new(ResponseBody::text(format!("{self}\n")));
            *res.status_mut() = status;
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            if status == StatusCode::UPGRADE_REQUIRED {
                // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to. gRPC needs HTTP/2; in cleartext that
                // is `h2c` (with prior knowledge, as gRPC clients connect).
                res.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("h2c"));
                res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return res;
        }
        status_response(self.code(), &self.to_string())
    }
}

/// A Trailers-Only gRPC response carrying `code` and `message`.
pub fn status_response(code: Code, message: &str) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::empty());
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    add_status(h, code, message);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_before_the_answer_gets_its_resets_status_or_unavailable() {
        assert_eq!(code_of_send_failure(SendFailure::Reset(h2::Reason::CANCEL)), Code::Cancelled);
        assert_eq!(code_of_send_failure(SendFailure::Connection), Code::Unavailable);
        assert_eq!(code_of_send_failure(SendFailure::Unprocessed), Code::Unavailable);
    }
}
