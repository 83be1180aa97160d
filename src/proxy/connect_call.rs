//! A Connect unary call: the bare message is translated to a gRPC frame, forwarded like any call, and the
//! collected gRPC answer is translated back (see [`super::connect`]).

use std::{sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Version, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tonic::Code;

use crate::{
    grpc::{decode_message, encode_timeout, status_of, status_of_response},
    proxy::{
        Balancer, Proxy,
        body::ResponseBody,
        connect::{self, Codec},
        error::ProxyError,
        reflection::schema::{RETRY_AFTER, Unlearned},
        request_body::RequestBody,
        web,
    },
};

impl Proxy {
    pub(super) async fn connect(&self, req: Request<Incoming>, codec: Codec) -> Response<ResponseBody> {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut res = self.connect_inner(req, codec).await;
        web::add_cors(res.headers_mut(), origin.as_ref());
        res
    }

    async fn connect_inner(&self, req: Request<Incoming>, codec: Codec) -> Response<ResponseBody> {
        let start = Instant::now();
        let path = req.uri().path().to_owned();
        if req.method() == http::Method::GET {
            let msg = "Connect GET requests are not translated: send the call as a POST (unary Connect)";
            return self.refused(&path, start, Code::Unimplemented, msg);
        }
        if let Some((code, msg)) = unsupported(req.headers()) {
            return self.refused(&path, start, code, &msg);
        }
        let timeout = match req.headers().get("connect-timeout-ms").map(|v| v.to_str().ok().and_then(parse_ms)) {
            None => None,
            Some(Some(t)) => Some(t),
            Some(None) => {
                let e = ProxyError::MalformedConnectTimeout;
                return self.refused(&path, start, e.code(), &e.to_string());
            }
        };
        // The call's deadline bounds everything, learning the schema from the backends' reflection included.
        let deadline = start + timeout.unwrap_or(self.config.default_timeout);
        let held = connect::method(&path).or_else(|| self.schemas.as_ref().and_then(|s| s.held(&path)));
        // Set when the schema was learned from this target's backends: refreshed if a message does not map.
        let mut learned_from = None;
        let mut method = match held {
            Some(m) => Some(m),
            None if codec == Codec::Json => match tokio::time::timeout_at(deadline, self.learn_schema(&path)).await {
                Ok(Ok((m, balancer))) => {
                    learned_from = Some(balancer);
                    Some(m)
                }
                Ok(Err((code, msg))) => return self.refused(&path, start, code, &msg),
                Err(_) => {
                    let e = ProxyError::DeadlineExceeded(deadline - start);
                    let msg = format!("{e}, waiting for {path}'s schema from the backends' reflection");
                    return self.refused(&path, start, e.code(), &msg);
                }
            },
            None => None,
        };
        if method.as_ref().is_some_and(connect::is_streaming) {
            let e = ProxyError::ConnectStreaming(connect::streaming(&path));
            return self.refused(&path, start, e.code(), &e.to_string());
        }
        let (mut parts, body) = req.into_parts();
        let limit = usize::try_from(self.config.max_message_bytes).unwrap_or(usize::MAX);
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let e = if e.is::<http_body_util::LengthLimitError>() {
                    ProxyError::RequestTooLarge(limit)
                } else {
                    ProxyError::RequestBody(e.to_string())
                };
                return self.refused(&path, start, e.code(), &e.to_string());
            }
        };
        let frame = match connect::request_frame(method.as_ref(), codec, &bytes) {
            Ok(f) => f,
            Err(msg) => {
                // Well-formed JSON that does not map may use what a newer build added: learn again, map again.
                // Malformed JSON is the caller's alone.
                let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
                let fresh = if well_formed {
                    let relearn = self.relearn(learned_from.as_deref(), &path, Duration::ZERO);
                    tokio::time::timeout_at(deadline, relearn).await.ok().flatten()
                } else {
                    None
                };
                match fresh.and_then(|m| connect::request_frame(Some(&m), codec, &bytes).ok().map(|f| (m, f))) {
                    Some((m, f)) => {
                        method = Some(m);
                        f
                    }
                    None => {
                        let e = ProxyError::MalformedRequest(msg);
                        return self.refused(&path, start, e.code(), &e.to_string());
                    }
                }
            }
        };
        if let Err(e) = super::authority::authority_from_host(&mut parts) {
            return super::web_call::bad_request(e);
        }
        let h = &mut parts.headers;
        super::authority::remove_http1_headers(h);
        h.remove(header::ACCEPT_ENCODING);
        h.remove("connect-protocol-version");
        h.remove("connect-timeout-ms");
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        // The caller's deadline, as the time left (learning the schema may have taken some); without one, the
        // sidecar's default or the method's service config applies as to any call.
        if timeout.is_some() {
            h.insert("grpc-timeout", encode_timeout(deadline.saturating_duration_since(Instant::now())));
        }
        parts.version = Version::HTTP_2;
        let res = self.grpc(Request::from_parts(parts, RequestBody::Full(Full::new(frame)))).await;

        let (parts, mut body) = res.into_parts();
        // An HTTP status other than 200 settles the call at the headers, as gRPC clients read it (connect-go
        // too): a proxy's 503 or an error page is UNAVAILABLE or UNIMPLEMENTED, whatever body follows, and that
        // body is not waited for (a page that never ends would hold the caller to its deadline).
        let settled = (parts.status != http::StatusCode::OK).then(|| status_of_response(parts.status, &parts.headers));
        if let ResponseBody::Upstream(upstream) = &mut body {
            if settled.is_some() {
                upstream.settle();
            }
            // The reply is collected whole to be translated: at most one message of the limit, in its gRPC frame.
            upstream.limit_reply(self.config.max_message_bytes.saturating_add(5));
        }
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(e) => return refuse(ProxyError::UpstreamBody(e.to_string()), &parts.headers),
        };
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let data = collected.to_bytes();
        let code = settled
            .flatten()
            .or_else(|| status_of(&trailers))
            .or_else(|| status_of(&parts.headers))
            .unwrap_or(Code::Internal);
        let mut meta = metadata(&parts.headers);
        for (name, value) in &trailers {
            if !name.as_str().starts_with("grpc-")
                && let Ok(n) = HeaderName::from_bytes(format!("trailer-{name}").as_bytes())
            {
                meta.append(n, value.clone());
            }
        }
        if code != Code::Ok {
            let raw = trailers.get("grpc-message").or_else(|| parts.headers.get("grpc-message"));
            let message = match raw {
                Some(v) => decode_message(v.as_bytes()),
                // connect-go's wording for a status without grpc-status.
                None if parts.status != http::StatusCode::OK => format!("HTTP status {}", parts.status),
                None => String::new(),
            };
            let details =
                trailers.get("grpc-status-details-bin").or_else(|| parts.headers.get("grpc-status-details-bin"));
            let details = details.map(|v| connect::error_details(v.as_bytes())).unwrap_or_default();
            return error_with(code, &message, details, &meta);
        }
        if connect::several_messages(&data) {
            return refuse(ProxyError::ConnectStreaming(connect::streaming(&path)), &meta);
        }
        if codec == Codec::Json
            && let Some(m) = &method
            && learned_from.is_some()
            && connect::reply_has_unknown_fields(m, &data)
        {
            // The backends' build has fields the learned schema lacks: JSON would drop them. Learned again at
            // most every RETRY_AFTER (a build whose reflection lags its replies would otherwise cost a lookup per
            // call).
            let relearn = self.relearn(learned_from.as_deref(), &path, RETRY_AFTER);
            if let Some(fresh) = tokio::time::timeout_at(deadline, relearn).await.ok().flatten() {
                method = Some(fresh);
            }
        }
        match connect::reply_body(method.as_ref(), codec, &data) {
            Ok(reply) => {
                let mut res = Response::new(ResponseBody::bytes(reply));
                *res.headers_mut() = meta;
                res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(codec.content_type()));
                res
            }
            Err(msg) => refuse(ProxyError::MalformedReply(msg), &meta),
        }
    }

    /// The Connect error for a call the sidecar answers itself before any endpoint is tried, counted in the
    /// metrics and written to the access log as every call is (a call that is forwarded is counted by `forward`).
    fn refused(&self, path: &str, start: Instant, code: Code, message: &str) -> Response<ResponseBody> {
        let method = self.method_label(path);
        self.metrics.record_call(&method, code, start.elapsed());
        super::call_log::CallLog::new(&self.metrics).finish(&self.metrics, &method, code, start);
        error(code, message, &HeaderMap::new())
    }

    /// The method again from the backends' current build (when a message did not map with the schema learned
    /// from `learned_from`), unless it was learned less than `min_age` ago.
    async fn relearn(
        &self,
        learned_from: Option<&Balancer>,
        path: &str,
        min_age: Duration,
    ) -> Option<prost_reflect::MethodDescriptor> {
        self.schemas.as_ref()?.relearn(learned_from?, path, min_age).await
    }

    /// The method's schema from the route's backends (server reflection, cached per target), with the target's
    /// balancer; or the Connect error message: no route, or why no schema is to be had.
    /// UNAVAILABLE when the backends could not be asked (as a gRPC call to them would get), else UNIMPLEMENTED.
    async fn learn_schema(
        &self,
        path: &str,
    ) -> Result<(prost_reflect::MethodDescriptor, Arc<Balancer>), (Code, String)> {
        let Some(balancer) = self.routes.get(path).cloned() else {
            let e = ProxyError::Unimplemented(path.to_owned());
            return Err((e.code(), e.to_string()));
        };
        let Some(schemas) = &self.schemas else {
            return Err((Code::Unimplemented, format!("{path}: {}", connect::NO_SCHEMA)));
        };
        match schemas.learned(&balancer, path).await {
            Ok(m) => Ok((m, balancer)),
            Err(Unlearned { why, unknown_method: true, .. }) => Err((Code::Unimplemented, format!("{path}: {why}"))),
            Err(Unlearned { code: Code::Unimplemented, why, .. }) => {
                Err((Code::Unimplemented, format!("{path}: {} ({why})", connect::NO_SCHEMA)))
            }
            Err(Unlearned { code, why, .. }) => Err((code, format!("{path}: {why}"))),
        }
    }
}

/// What the Connect protocol says a server must refuse before reading the body: a `Content-Encoding` it does not
/// support (`unimplemented`; the sidecar takes identity only) and a `Connect-Protocol-Version` other than `1`
/// (`invalid_argument`, as connect-go answers).
fn unsupported(headers: &HeaderMap) -> Option<(Code, String)> {
    let text = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    if let Some(encoding) =
        headers.get(header::CONTENT_ENCODING).filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        let msg = format!("content-encoding {:?} is not supported: send the request uncompressed", text(encoding));
        return Some((Code::Unimplemented, msg));
    }
    match headers.get("connect-protocol-version") {
        Some(v) if v.as_bytes() != b"1" => {
            Some((Code::InvalidArgument, format!("connect-protocol-version must be \"1\", not {:?}", text(v))))
        }
        _ => None,
    }
}

/// Response headers worth passing to a Connect client: the backend's metadata, not gRPC's framing.
fn metadata(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if !n.starts_with("grpc-") && name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// A Connect error response for what the sidecar answers itself (its status from [`ProxyError::code`]).
fn refuse(e: ProxyError, meta: &HeaderMap) -> Response<ResponseBody> {
    error_with(e.code(), &e.to_string(), Vec::new(), meta)
}

/// A Connect error response.
fn error(code: Code, message: &str, meta: &HeaderMap) -> Response<ResponseBody> {
    error_with(code, message, Vec::new(), meta)
}

/// A Connect error response with `details`.
fn error_with(code: Code, message: &str, details: Vec<serde_json::Value>, meta: &HeaderMap) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::bytes(connect::error_body(code, message, details)));
    *res.status_mut() = connect::http_status(code);
    *res.headers_mut() = meta.clone();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// `connect-timeout-ms`: at most 10 digits of milliseconds.
fn parse_ms(v: &str) -> Option<Duration> {
    (!v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse().ok().map(Duration::from_millis))
        .flatten()
}
