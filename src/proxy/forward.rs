//! Forwarding one call: deadline, endpoint choice, transparent retries, and the hand-off of the response stream.
//!
//! Retry rule (DESIGN §4, gRFC A6 "transparent retry"): an attempt is sent again only when the request cannot
//! have reached the backend's application — it was never written (the connection closed first), the peer refused
//! the stream (`REFUSED_STREAM`), or it was above a GOAWAY's last-stream-id (RFC 9113 §8.7). Such a failure is not
//! the endpoint's fault, and the same endpoint may take the retry on a new stream or connection. Anything that may
//! have reached the application is never re-sent: a reset or a lost connection after the request was written
//! fails the call with its cause (the caller decides), and a status the backend answered — `UNAVAILABLE` too —
//! is passed through unchanged and at once. Every retry also needs the request body still kept (≤ 64 KiB) and
//! time before the deadline; none happens after the first response byte. Transparent retries are bounded per call
//! ([`MAX_ATTEMPTS`]), not by the retry budget, which is for retries of calls that reached a backend.
//!
//! Those are the opt-in: a method whose gRPC service config has a `retryPolicy` is sent again (to another
//! endpoint while one is usable) when it ends with one of its `retryableStatusCodes` before any response header
//! with a body — up to `maxAttempts`, after an exponential backoff with jitter (or the server's
//! `grpc-retry-pushback-ms`), within the retry budget and the deadline (gRFC A6). A method with a `hedgingPolicy`
//! is sent by [`super::hedge`] instead: several attempts in flight, the first answer wins.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use http::{HeaderName, HeaderValue, Request, Response, Version, uri::Authority};
use http_body::Body;
use tokio::time::{Instant, Sleep};
use tonic::Code;

use crate::{
    grpc::{encode_timeout, parse_timeout, status_of_response},
    pool::{self, SendFailure},
    proxy::{
        Proxy,
        body::{ResponseBody, UpstreamBody},
        call::{CallRecord, Unrecorded},
        call_log::CallLog,
        error::ProxyError,
        hedge::HedgedCall,
        replay::ReplayBody,
        request_body::RequestBody,
    },
};

use self::policy::PolicyRetry;

/// Request bytes kept for a retry; a larger body is streamed without retries.
const RETRY_BUFFER: usize = 64 * 1024;
/// Attempts of one call at most (the first one included); only transparent retries add attempts.
const MAX_ATTEMPTS: usize = 5;
/// Header names made once, not parsed from a string per call.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName = HeaderName::from_static("grpc-previous-rpc-attempts");

impl Proxy {
    /// Forwards a call and answers every failure with the right status.
    pub(super) async fn forward(&self, req: Request<RequestBody>) -> Response<ResponseBody> {
        let start = Instant::now();
        let method = self.method_label(req.uri().path());
        // Records CANCELLED if the caller goes away before an outcome is recorded (this future is dropped).
        let mut unrecorded = Unrecorded::new(self.metrics.clone(), method.clone(), start);
        let outcome = self.try_forward(req, method.clone(), start, &mut unrecorded.log).await;
        let mut log = unrecorded.disarm();
        match outcome {
            Ok(res) => {
                // A Trailers-Only answer on a path that did not write its line: its status is in the headers. (A
                // response with a body writes its line when the body ends.)
                if log.on && res.body().is_end_stream() {
                    let code = status_of_response(res.status(), res.headers()).unwrap_or(Code::Unknown);
                    log.finish(&self.metrics, &method, code, start);
                }
                res
            }
            Err(e) => {
                self.metrics.record_call(&method, e.code(), start.elapsed());
                log.finish(&self.metrics, &method, e.code(), start);
                if let ProxyError::HeadersTooLarge { .. } = e {
                    self.metrics.headers_too_large.fetch_add(1, Relaxed);
                    tracing::warn!(%method, error = %e, "call refused at the sidecar");
                } else {
                    tracing::debug!(%method, error = %e, "call failed at the sidecar");
                }
                e.into_response()
            }
        }
    }

    async fn try_forward(
        &self,
        req: Request<RequestBody>,
        method: Arc<str>,
        start: Instant,
        log: &mut CallLog,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let path = req.uri().path();
        let Some(balancer) = self.routes.get(path).cloned() else {
            return Err(ProxyError::Unimplemented(path.to_owned()));
        };
        let policy = if self.service_config.is_empty() { None } else { self.service_config.lookup(path).cloned() };
        let asked = match req.headers().get(GRPC_TIMEOUT) {
            Some(v) => Some(
                parse_timeout(v.as_bytes())
                    .ok_or_else(|| ProxyError::MalformedTimeout(String::from_utf8_lossy(v.as_bytes()).into_owned()))?,
            ),
            None => None,
        };
        // The service config's `timeout` caps the caller's deadline and stands in for a missing one.
        let timeout = match (asked, policy.as_ref().and_then(|p| p.timeout)) {
            (Some(a), Some(p)) => a.min(p),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => self.config.default_timeout,
        };
        let size = crate::grpc::header_list_size(req.headers());
        if size > self.config.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge {
                what: "request metadata",
                size,
                limit: self.config.max_header_bytes,
            });
        }
        let deadline = start + timeout;
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            self.metrics.overloaded.fetch_add(1, Relaxed);
            ProxyError::Overloaded(self.config.max_concurrent_calls)
        })?;
        self.budget.deposit();

        let (mut parts, body) = req.into_parts();
        // gRPC over HTTP/2 requires `te: trailers`; stock servers (grpcio) reset a request without it, so it is
        // sent whatever the caller omitted (curl and some HTTP libraries do).
        if parts.headers.get(http::header::TE).is_none_or(|v| v != "trailers") {
            parts.headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        let origin = ReplayBody::new(body, RETRY_BUFFER, self.config.max_message_bytes);
        if log.on {
            log.request = Some(origin.tally());
        }
        // `waitForReady` calls wait for an endpoint up to their deadline; the others fail fast.
        let wait_for_ready = policy.as_ref().and_then(|p| p.wait_for_ready) == Some(true);
        let wait_until = if wait_for_ready { deadline } else { deadline.min(start + self.config.failfast_timeout) };
        if let Some(hedging) = policy.as_ref().and_then(|p| p.hedging.as_ref()) {
            let call = HedgedCall {
                balancer,
                parts,
                origin,
                method,
                start,
                deadline,
                timeout,
                wait_until,
                wait_for_ready,
                permit,
            };
            return self.hedged(call, hedging, log).await;
        }
        let mut retry = PolicyRetry::new(policy.as_ref().and_then(|p| p.retry.as_ref()));
        // Endpoints that refused this call (or failed it retryably): avoided by the next pick while another one is
        // usable.
        let mut refused_by: Vec<SocketAddr> = Vec::new();
        let mut attempts: u32 = 0;
        // One timer for the whole call: it bounds each attempt's wait for response headers and then travels with
        // the response body (one timer registration per call, not two).
        let mut expiry = Box::pin(tokio::time::sleep_until(deadline));
        loop {
            let picked =
                balancer.pick(&refused_by, wait_until).await.map_err(|e| ProxyError::no_endpoint(e, wait_for_ready))?;
            let addr = picked.addr();
            let Some(view) = origin.replay() else {
                return Err(ProxyError::RequestBody("the request body could not be replayed".into()));
            };
            let Some(upstream) = self.upstream_request(&mut parts, view, picked.authority(), deadline, attempts) else {
                return Err(ProxyError::DeadlineExceeded(timeout));
            };
            attempts += 1;

            let (mut attempt, sender) = picked.begin();
            log.attempt(attempt.endpoint(), attempts - 1);
            let sent = tokio::select! {
                biased;
                sent = sender.try_send_request(upstream) => Ok(sent),
                () = expiry.as_mut() => Err(()),
            };
            let res = match sent {
                Err(()) => {
                    attempt.finish(Code::DeadlineExceeded);
                    return Err(ProxyError::DeadlineExceeded(timeout));
                }
                Ok(Err(e)) => {
                    if let Some((size, limit)) = origin.too_large() {
                        attempt.finish(Code::ResourceExhausted);
                        return Err(ProxyError::TooLarge { size, limit });
                    }
                    if let Some(why) = origin.malformed() {
                        // The caller's body, not the endpoint: no verdict, and not UNAVAILABLE (which invites a
                        // retry that fails the same way).
                        attempt.release();
                        return Err(ProxyError::MalformedBody(why));
                    }
                    let failure = e.failure();
                    let error = crate::error_chain(&e);
                    if failure == SendFailure::Unprocessed {
                        attempt.release();
                        if self.may_resend(&origin, &mut refused_by, addr, deadline) {
                            self.metrics.retries_transparent.fetch_add(1, Relaxed);
                            tracing::debug!(endpoint = %addr, %error, "transparent retry: the request never reached the application");
                            continue;
                        }
                    } else {
                        // A reset is the peer's answer to this request (about the call, not the endpoint's
                        // health); a failed connection is UNAVAILABLE.
                        attempt.finish(super::error::code_of_send_failure(failure));
                    }
                    let err = ProxyError::Upstream { addr, failure, error };
                    if self.policy_retry(&mut retry, err.code(), None, &origin, deadline).await {
                        refused_by.push(addr);
                        continue;
                    }
                    return Err(err);
                }
                Ok(Ok(res)) => res,
            };
            attempt.answered();
            let size = crate::grpc::header_list_size(res.headers());
            if size > self.config.max_header_bytes {
                attempt.finish(Code::ResourceExhausted);
                let limit = self.config.max_header_bytes;
                return Err(ProxyError::HeadersTooLarge { what: "response headers from the backend", size, limit });
            }
            // A status other than 200 without grpc-status means what gRPC's mapping says (a proxy's 503).
            let header_code = status_of_response(res.status(), res.headers());
            // A status other than 200 ends the call at the headers as a gRPC client reads it (grpc-go fails the
            // attempt there, uncommitted, and its retry policy may retry it): the page after it is not forwarded.
            if res.body().is_end_stream() || res.status() != http::StatusCode::OK {
                // Trailers-Only: the status is in the headers, passed through unchanged — or, when the method's
                // retry policy names it, retried (a call is committed only by response headers with a body).
                let code = header_code.unwrap_or(Code::Unknown);
                attempt.finish(code);
                let pushback = res.headers().get("grpc-retry-pushback-ms");
                if self.policy_retry(&mut retry, code, pushback, &origin, deadline).await {
                    refused_by.push(addr);
                    continue;
                }
                self.metrics.record_call(&method, code, start.elapsed());
                log.finish(&self.metrics, &method, code, start);
                return Ok(res.map(|_| ResponseBody::empty()));
            }
            let record =
                CallRecord::new(attempt, method, start, self.metrics.clone(), permit).with_log(std::mem::take(log));
            return Ok(self.pass_through(res, record, origin, header_code, expiry, timeout));
        }
    }

    /// The request for one attempt on the endpoint at `authority`: the caller's method, path and metadata,
    /// `:scheme https` when the backend connections use TLS, the time left as `grpc-timeout`, and after `previous`
    /// attempts `grpc-previous-rpc-attempts` (gRFC A6). `None` when the deadline has passed.
    ///
    /// The attempt's own fields are written into the caller's map (`parts`), which is then cloned: a cloned
    /// `HeaderMap` has no spare room, so inserting into the clone grew and rehashed it on every call.
    pub(super) fn upstream_request(
        &self,
        parts: &mut http::request::Parts,
        view: ReplayBody,
        authority: Option<&Authority>,
        deadline: Instant,
        previous: u32,
    ) -> Option<Request<ReplayBody>> {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let mut timeout = encode_timeout(deadline - now);
        // A new value on nearly every call: HPACK-indexing it would insert it into the connection's dynamic table
        // and evict the fields that do repeat (content-type, te, user-agent), so they would be sent and indexed
        // again on every call. A never-indexed literal (RFC 7541 §6.2.3) keeps the table for those
        // (bench/callgrind.py: ~2,500 fewer instructions per call).
        timeout.set_sensitive(true);
        parts.headers.insert(GRPC_TIMEOUT, timeout);
        if previous > 0 {
            // gRFC A6: a retried or hedged attempt says how many came before it.
            parts.headers.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(previous));
        }
        let mut upstream = Request::new(view);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = crate::grpc::absolute_uri(&parts.uri, authority, self.config.backend_tls);
        *upstream.version_mut() = Version::HTTP_2;
        *upstream.headers_mut() = parts.headers.clone();
        Some(upstream)
    }

    /// The committed attempt's response handed to the caller: its body passed through under the call's deadline
    /// (`expiry`, a timer set to it), with the call's record ending when the body does.
    pub(super) fn pass_through(
        &self,
        res: Response<pool::RecvBody>,
        record: CallRecord,
        origin: ReplayBody,
        header_code: Option<Code>,
        expiry: Pin<Box<Sleep>>,
        timeout: Duration,
    ) -> Response<ResponseBody> {
        let sleep = expiry;
        let limits = (self.config.max_header_bytes, self.metrics.clone());
        // A status other than 200 settles the call at these headers, as the caller's gRPC client reads it: recorded
        // now, not as the CANCELLED of the reset the client sends instead of reading the page that follows.
        let settled = res.status() != http::StatusCode::OK;
        res.map(|body| {
            let mut body = UpstreamBody::new(body, sleep, timeout, header_code, record, origin, limits);
            if settled {
                body.record_settled();
            }
            ResponseBody::Upstream(Box::new(body))
        })
    }

    /// Whether a call that never reached the application may be sent again; notes the endpoint that refused it
    /// when it may. Not charged to the retry budget: the budget guards backends against retry storms, and a
    /// stream they refused or never saw costs them nothing (grpc-go's transparent retries are not throttled
    /// either); [`MAX_ATTEMPTS`] bounds them per call.
    fn may_resend(
        &self,
        origin: &ReplayBody,
        refused_by: &mut Vec<SocketAddr>,
        refused: SocketAddr,
        deadline: Instant,
    ) -> bool {
        if refused_by.len() + 1 >= MAX_ATTEMPTS || Instant::now() >= deadline || origin.replay().is_none() {
            return false;
        }
        refused_by.push(refused);
        true
    }
}

mod policy;
