//! Forwarding one call: deadline, endpoint choice, safe retries, and the hand-off of the response stream.
//!
//! Retry rule (DESIGN §4): only when the request never reached a backend's application — the attempt failed before
//! any response header (connect error, reset, `REFUSED_STREAM`, GOAWAY) or the backend answered `UNAVAILABLE`
//! with no body — and only while the request body is still kept (≤ 64 KiB), the budget allows, and the deadline
//! has not passed. Never after the first response byte has gone to the client.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use http::{HeaderValue, Request, Response, Uri, Version, uri::Scheme};
use http_body::Body;
use tonic::Code;

use crate::{
    balance::Picked,
    grpc::{encode_timeout, parse_timeout, status_of},
    proxy::{
        Proxy,
        body::{ResponseBody, UpstreamBody},
        call::{Attempt, CallRecord, Unrecorded},
        error::ProxyError,
        replay::ReplayBody,
        request_body::RequestBody,
    },
};

/// Request bytes kept for a retry; a larger body is streamed without retries.
const RETRY_BUFFER: usize = 64 * 1024;
/// Tries of one call at most (the first one included).
const MAX_ATTEMPTS: usize = 3;

impl Proxy {
    /// Forwards a HelloService call and answers every failure with the right status.
    pub(super) async fn forward(&self, req: Request<RequestBody>) -> Response<ResponseBody> {
        let start = Instant::now();
        let method = self.method_label(req.uri().path());
        // Records CANCELLED if the caller goes away before an outcome is recorded (this future is dropped).
        let unrecorded = Unrecorded::new(self.metrics.clone(), method.clone(), start);
        let outcome = self.try_forward(req, method.clone(), start).await;
        unrecorded.disarm();
        match outcome {
            Ok(res) => res,
            Err(e) => {
                self.metrics.record_call(&method, e.code(), start.elapsed());
                tracing::debug!(%method, error = %e, "call failed at the sidecar");
                e.into_response()
            }
        }
    }

    async fn try_forward(
        &self,
        req: Request<RequestBody>,
        method: Arc<str>,
        start: Instant,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let timeout = match req.headers().get("grpc-timeout") {
            Some(v) => parse_timeout(v.as_bytes())
                .ok_or_else(|| ProxyError::MalformedTimeout(String::from_utf8_lossy(v.as_bytes()).into_owned()))?,
            None => self.config.default_timeout,
        };
        let deadline = start + timeout;
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            self.metrics.overloaded.fetch_add(1, Relaxed);
            ProxyError::Overloaded(self.config.max_concurrent_calls)
        })?;
        self.budget.deposit();

        let (parts, body) = req.into_parts();
        let origin = ReplayBody::new(body, RETRY_BUFFER, self.config.max_message_bytes);
        let wait_until = deadline.min(start + self.config.failfast_timeout);
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let Picked { endpoint, sender } = self.balancer.pick(&tried, wait_until).await?;
            let lease = endpoint.conn.lease(sender);
            let mut sender = lease.sender.clone();
            let Some(view) = origin.replay() else {
                return Err(ProxyError::RequestBody("the request body could not be replayed".into()));
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(ProxyError::DeadlineExceeded(timeout));
            }
            let mut upstream = Request::new(view);
            *upstream.method_mut() = parts.method.clone();
            *upstream.uri_mut() = absolute_uri(&parts.uri, endpoint.addr);
            *upstream.version_mut() = Version::HTTP_2;
            *upstream.headers_mut() = parts.headers.clone();
            if let Ok(v) = HeaderValue::from_str(&encode_timeout(deadline - now)) {
                upstream.headers_mut().insert("grpc-timeout", v);
            }

            let mut attempt = Attempt::begin(endpoint.clone(), lease);
            let sent = tokio::time::timeout_at(deadline.into(), sender.send_request(upstream)).await;
            let res = match sent {
                Err(_) => {
                    attempt.finish(Code::DeadlineExceeded);
                    return Err(ProxyError::DeadlineExceeded(timeout));
                }
                Ok(Err(e)) => {
                    if let Some((size, limit)) = origin.too_large() {
                        attempt.finish(Code::ResourceExhausted);
                        return Err(ProxyError::TooLarge { size, limit });
                    }
                    attempt.finish(Code::Unavailable);
                    if self.may_retry(&origin, &mut tried, endpoint.addr, deadline) {
                        self.metrics.retries_connect.fetch_add(1, Relaxed);
                        tracing::debug!(endpoint = %endpoint.addr, error = %crate::error_chain(&e), "retrying on another endpoint");
                        continue;
                    }
                    return Err(ProxyError::Upstream { addr: endpoint.addr, error: crate::error_chain(&e) });
                }
                Ok(Ok(res)) => res,
            };
            attempt.answered();
            let header_code = status_of(res.headers());
            let trailers_only = res.body().is_end_stream();
            if trailers_only && header_code == Some(Code::Unavailable) {
                attempt.finish(Code::Unavailable);
                if self.may_retry(&origin, &mut tried, endpoint.addr, deadline) {
                    self.metrics.retries_unavailable.fetch_add(1, Relaxed);
                    continue;
                }
                let code = Code::Unavailable;
                self.metrics.record_call(&method, code, start.elapsed());
                return Ok(res.map(|_| ResponseBody::empty()));
            }
            if trailers_only {
                let code = header_code.unwrap_or(Code::Unknown);
                attempt.finish(code);
                self.metrics.record_call(&method, code, start.elapsed());
                return Ok(res.map(|_| ResponseBody::empty()));
            }
            let record = CallRecord::new(attempt, method, start, self.metrics.clone(), permit);
            let sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
            return Ok(res.map(|body| {
                ResponseBody::Upstream(Box::new(UpstreamBody::new(body, sleep, timeout, header_code, record, origin)))
            }));
        }
    }

    /// Whether the call may be tried again, elsewhere; records the failed endpoint when it may.
    fn may_retry(
        &self,
        origin: &ReplayBody,
        tried: &mut Vec<SocketAddr>,
        failed: SocketAddr,
        deadline: Instant,
    ) -> bool {
        if tried.len() + 1 >= MAX_ATTEMPTS || Instant::now() >= deadline || origin.replay().is_none() {
            return false;
        }
        if !self.budget.withdraw() {
            self.metrics.retries_refused_by_budget.fetch_add(1, Relaxed);
            return false;
        }
        tried.push(failed);
        true
    }
}

/// The request URI with a scheme and authority, which an HTTP/2 client needs for its pseudo-headers.
fn absolute_uri(uri: &Uri, addr: SocketAddr) -> Uri {
    if uri.scheme().is_some() && uri.authority().is_some() {
        return uri.clone();
    }
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = addr.to_string().parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}
