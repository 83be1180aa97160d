//! Hedging (gRFC A6 `hedgingPolicy`): a method the user marked safe to run more than once is sent again, to
//! another endpoint, each `hedgingDelay` without an answer; the first answer wins and the other attempts are
//! cancelled. It cuts the tail latency a slow pod (a GC pause, a noisy neighbour) adds, at the cost of extra load
//! that the retry budget bounds.
//!
//! The rules, each from gRFC A6 ("Hedging Policy", "Throttling Retry Attempts and Hedged RPCs", "Pushback",
//! "Summary of Retry and Hedging Logic", "When Retries are Valid"):
//! - the first attempt goes at once; one more each `hedgingDelay` while none has answered, up to `maxAttempts`
//!   (capped at 5 when the config is parsed); a delay of zero sends them all at once;
//! - each hedge avoids the endpoints already tried while another one is usable, and carries
//!   `grpc-previous-rpc-attempts` (the attempts sent before it);
//! - response headers commit the call to their attempt (A6: an RPC is committed by Response-Headers), and the
//!   other attempts are cancelled: dropping a pending response future makes hyper reset the stream
//!   (`RST_STREAM CANCEL`), so the backends stop working on them;
//! - a status in `nonFatalStatusCodes` (a Trailers-Only answer or a failed stream) sends the next hedge at once;
//!   its `grpc-retry-pushback-ms` instead delays the next hedge by that much, and a negative or malformed one stops
//!   hedging; any other status ends the call with it, and the other attempts are cancelled;
//! - when every attempt failed non-fatally and none is left to send, the last failure is the call's answer;
//! - every hedge after the first attempt takes a token from the retry budget; an empty budget stops hedging
//!   (throttling), never the attempts already sent;
//! - the call's deadline covers all attempts;
//! - only a request whose body is still kept (≤ 64 KiB, A6 "Memory Management") can be hedged: a larger one gets
//!   only the attempts already sent, and the attempts that fell behind it fail.
//!
//! A hedge cancelled because another attempt won is our decision, not the endpoint's fault: it is released with no
//! verdict for the breaker and nothing learnt for the latency estimate ([`Attempt::abandon`]). A request the
//! endpoint never processed (the connection closed first, `REFUSED_STREAM`, above a GOAWAY) is sent again at once
//! and does not count against `maxAttempts` (A6 "Transparent Retries"), at most [`MAX_TRANSPARENT`] times.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use http::Response;
use http_body::Body;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tonic::Code;

use crate::{
    grpc::status_of_response,
    pool::SendFailure,
    proxy::{
        Attempt, Balancer, Proxy, body::ResponseBody, call::CallRecord, call_log::CallLog, error::ProxyError,
        replay::ReplayBody,
    },
    service_config::HedgingPolicy,
};

/// Requests the endpoints never processed, sent again per call at most.
const MAX_TRANSPARENT: u32 = 4;

mod schedule;
use self::schedule::{Schedule, Verdict, verdict};

/// A call on its way to being hedged: what [`Proxy::hedged`] needs from `try_forward`.
pub(super) struct HedgedCall {
    pub balancer: Arc<Balancer>,
    pub parts: http::request::Parts,
    pub origin: ReplayBody,
    pub method: Arc<str>,
    pub start: Instant,
    pub deadline: Instant,
    pub timeout: Duration,
    /// How long the first pick may wait for a usable endpoint (`waitForReady`, else the fail-fast timeout).
    pub wait_until: Instant,
    /// The method's `waitForReady`: the first pick waits up to the deadline, and ends `DEADLINE_EXCEEDED` there.
    pub wait_for_ready: bool,
    pub permit: OwnedSemaphorePermit,
}

/// The last non-fatal failure, the call's answer if no attempt does better.
enum Failure {
    Answered(Response<ResponseBody>, Code),
    Error(ProxyError),
}

impl Proxy {
    /// Forwards a call under its hedging policy (see the module doc).
    pub(super) async fn hedged(
        &self,
        call: HedgedCall,
        policy: &HedgingPolicy,
        log: &mut CallLog,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let HedgedCall {
            balancer,
            mut parts,
            origin,
            method,
            start,
            deadline,
            timeout,
            wait_until,
            wait_for_ready,
            permit,
        } = call;
        origin.share();
        let mut schedule = Schedule::new(policy);
        let mut tried: Vec<SocketAddr> = Vec::with_capacity(policy.max_attempts as usize);
        // Attempt `i` is `attempts[i]` until it ends; the in-flight futures carry only `i`, so the losers can be
        // released (not dropped, which would judge them as cancelled by the caller).
        let mut attempts: Vec<Option<Attempt>> = Vec::with_capacity(policy.max_attempts as usize);
        let mut in_flight = FuturesUnordered::new();
        let mut last: Option<Failure> = None;
        let mut transparent = 0;
        // The next attempt re-sends one the endpoint never processed: not charged to the budget.
        let mut resend = false;
        // Changes of the endpoint set, for a hedge postponed because no endpoint could take it.
        let mut endpoints = balancer.subscribe();
        let finish = |attempts: &mut Vec<Option<Attempt>>| {
            attempts.iter_mut().filter_map(Option::take).for_each(Attempt::abandon);
        };
        loop {
            if schedule.due() {
                let first = attempts.is_empty();
                let view = origin.replay();
                if view.is_none() {
                    schedule.stop();
                } else if let Some(view) = view {
                    // A hedge takes an endpoint that is usable now; with nothing else in flight the call may wait
                    // as a plain one does.
                    let wait = if in_flight.is_empty() { wait_until } else { Instant::now() };
                    // A change from here on wakes a postponed hedge.
                    endpoints.borrow_and_update();
                    match balancer.pick(&tried, wait).await {
                        // The budget is asked once an endpoint is there to take the hedge, so a postponed hedge
                        // spends no token.
                        Ok(_) if !first && !std::mem::take(&mut resend) && !self.withdraw_hedge() => schedule.stop(),
                        Ok(picked) => {
                            let addr = picked.addr();
                            let authority = picked.authority();
                            let Some(req) =
                                self.upstream_request(&mut parts, view, authority, deadline, schedule.sent())
                            else {
                                finish(&mut attempts);
                                return Err(ProxyError::DeadlineExceeded(timeout));
                            };
                            tried.push(addr);
                            let i = attempts.len();
                            let (attempt, sender) = picked.begin();
                            log.attempt(attempt.endpoint(), schedule.sent());
                            attempts.push(Some(attempt));
                            let sent = sender.try_send_request(req);
                            in_flight.push(async move { (i, sent.await) });
                            schedule.on_sent();
                        }
                        Err(e) if in_flight.is_empty() => {
                            return match last {
                                Some(failure) => self.give_up(failure, &method, start),
                                None => Err(ProxyError::no_endpoint(e, wait_for_ready)),
                            };
                        }
                        Err(_) => schedule.postpone(),
                    }
                }
            }
            if in_flight.is_empty() && schedule.next().is_none() {
                let failure = last.unwrap_or_else(|| {
                    Failure::Error(ProxyError::RequestBody("the request body could not be replayed".into()))
                });
                return self.give_up(failure, &method, start);
            }
            let hedge_at = schedule.timer().unwrap_or(deadline);
            let (i, sent) = tokio::select! {
                biased;
                Some(done) = in_flight.next() => done,
                () = tokio::time::sleep_until(hedge_at), if schedule.timer().is_some() => continue,
                Ok(()) = endpoints.changed(), if schedule.parked() => {
                    schedule.endpoints_changed();
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {
                    drop(in_flight);
                    attempts.iter_mut().filter_map(Option::take).for_each(|mut a| a.finish(Code::DeadlineExceeded));
                    return Err(ProxyError::DeadlineExceeded(timeout));
                }
            };
            let Some(mut attempt) = attempts.get_mut(i).and_then(Option::take) else { continue };
            let addr = attempt.addr();
            let res = match sent {
                Ok(res) => res,
                Err(e) => {
                    if let Some((size, limit)) = origin.too_large() {
                        attempt.finish(Code::ResourceExhausted);
                        drop(in_flight);
                        finish(&mut attempts);
                        return Err(ProxyError::TooLarge { size, limit });
                    }
                    let failure = e.failure();
                    let error = crate::error_chain(&e);
                    if failure == SendFailure::Unprocessed && transparent < MAX_TRANSPARENT {
                        attempt.release();
                        transparent += 1;
                        self.metrics.retries_transparent.fetch_add(1, Relaxed);
                        schedule.resend();
                        resend = true;
                        continue;
                    }
                    if origin.replay().is_none() && !in_flight.is_empty() {
                        // The body outgrew the buffer and this attempt fell behind the one that reads on: ours to
                        // drop, not the endpoint's failure.
                        attempt.abandon();
                        continue;
                    }
                    match failure {
                        SendFailure::Unprocessed => attempt.release(),
                        _ => attempt.finish(super::error::code_of_send_failure(failure)),
                    }
                    let err = ProxyError::Upstream { addr, failure, error };
                    if verdict(Some(err.code()), policy.non_fatal) == Verdict::Fatal {
                        drop(in_flight);
                        finish(&mut attempts);
                        return Err(err);
                    }
                    schedule.on_non_fatal(None);
                    last = Some(Failure::Error(err));
                    continue;
                }
            };
            attempt.answered();
            let size = crate::grpc::header_list_size(res.headers());
            if size > self.config.max_header_bytes {
                attempt.finish(Code::ResourceExhausted);
                drop(in_flight);
                finish(&mut attempts);
                let limit = self.config.max_header_bytes;
                return Err(ProxyError::HeadersTooLarge { what: "response headers from the backend", size, limit });
            }
            let header_code = status_of_response(res.status(), res.headers());
            // A Trailers-Only answer carries its status in the headers, as does a status other than 200 (whatever
            // page follows); headers with a body to follow commit.
            let settled = res.body().is_end_stream() || res.status() != http::StatusCode::OK;
            let code = settled.then(|| header_code.unwrap_or(Code::Unknown));
            match (verdict(code, policy.non_fatal), code) {
                (Verdict::Commit, _) | (_, None) => {
                    // The losers are reset first (their response futures dropped), then released.
                    drop(in_flight);
                    finish(&mut attempts);
                    if log.on {
                        // The winner, not the latest hedge, answered.
                        log.endpoint = Some(attempt.endpoint().clone());
                    }
                    let record = CallRecord::new(attempt, method, start, self.metrics.clone(), permit)
                        .with_log(std::mem::take(log));
                    return Ok(self.pass_through(
                        res,
                        record,
                        origin,
                        header_code,
                        Box::pin(tokio::time::sleep_until(deadline)),
                        timeout,
                    ));
                }
                (Verdict::Fatal, Some(code)) => {
                    attempt.finish(code);
                    drop(in_flight);
                    finish(&mut attempts);
                    self.metrics.record_call(&method, code, start.elapsed());
                    return Ok(res.map(|_| ResponseBody::empty()));
                }
                (Verdict::NonFatal, Some(code)) => {
                    attempt.finish(code);
                    tracing::debug!(endpoint = %addr, ?code, "hedged attempt failed with a non-fatal status");
                    schedule.on_non_fatal(res.headers().get("grpc-retry-pushback-ms"));
                    last = Some(Failure::Answered(res.map(|_| ResponseBody::empty()), code));
                }
            }
        }
    }

    /// Takes a hedge from the retry budget (gRFC A6: throttling applies to hedged RPCs).
    fn withdraw_hedge(&self) -> bool {
        if self.budget.withdraw() {
            // A6 "Retry and Hedging Statistics": hedges are counted as retry attempts.
            self.metrics.retries_policy.fetch_add(1, Relaxed);
            true
        } else {
            self.metrics.retries_refused_by_budget.fetch_add(1, Relaxed);
            false
        }
    }

    /// Every attempt failed non-fatally: the last failure is the call's answer.
    fn give_up(
        &self,
        failure: Failure,
        method: &Arc<str>,
        start: Instant,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        match failure {
            Failure::Answered(res, code) => {
                self.metrics.record_call(method, code, start.elapsed());
                Ok(res)
            }
            Failure::Error(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
