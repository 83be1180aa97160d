//! The response body the client gets: either the backend's frames passed through, or a small local body.
//!
//! The passed-through body enforces the call's deadline to the last byte (a stalled stream ends with
//! `DEADLINE_EXCEEDED` trailers, and dropping the upstream body resets the backend's stream; while the app is not
//! reading, a watchdog keeps the deadline, see [`super::stalled`]) and turns an upstream
//! connection failure mid-response into `UNAVAILABLE` trailers rather than a bare reset. A stream the backend
//! resets mid-response ends with the status a gRPC client reports for that `RST_STREAM` code
//! ([`crate::grpc::code_of_reset`]) and never counts against the endpoint. A response whose trailers lack
//! `grpc-status` is recorded as `UNKNOWN` (what grpcio and grpc-go report for it); one that ends with no trailers
//! at all gets `INTERNAL` trailers, as grpc-go reports it.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use parking_lot::Mutex;
use tokio::time::Sleep;
use tonic::Code;

use crate::{
    BoxError,
    grpc::{status_of, stream_reset},
    pool::RecvBody,
    proxy::{
        call::CallRecord,
        error::ProxyError,
        replay::ReplayBody,
        stalled::{self, Held, Watchdog},
        web::GrpcWebBody,
    },
    telemetry::metrics::Metrics,
};

/// What the inbound server sends back.
pub enum ResponseBody {
    /// The backend's body, passed through.
    Upstream(Box<UpstreamBody>),
    /// A body made here (local services, errors).
    Local(UnsyncBoxBody<Bytes, BoxError>),
    /// A gRPC response re-framed for grpc-web.
    Web(Box<GrpcWebBody<ResponseBody>>),
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl ResponseBody {
    /// No body (Trailers-Only responses).
    pub fn empty() -> Self {
        Self::Local(http_body_util::Empty::new().map_err(|e: Infallible| match e {}).boxed_unsync())
    }

    /// A plain-text body.
    pub fn text(s: String) -> Self {
        Self::bytes(Bytes::from(s))
    }

    /// A whole body made here.
    pub fn bytes(b: Bytes) -> Self {
        Self::Local(Full::new(b).map_err(|e: Infallible| match e {}).boxed_unsync())
    }

    /// Any other body (tonic's local services).
    pub fn local<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::Local(body.map_err(Into::into).boxed_unsync())
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(b.as_mut()).poll_frame(cx),
            ResponseBody::Local(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Web(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Local(b) => b.is_end_stream(),
            ResponseBody::Web(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Local(b) => b.size_hint(),
            ResponseBody::Web(_) => SizeHint::default(),
        }
    }
}

/// The message of a response that ended without `grpc-status` (grpc-go's wording).
const NO_STATUS: &str = "server closed the stream without sending trailers";

/// The backend's response body with the call's deadline and accounting attached.
pub struct UpstreamBody {
    /// The backend's body and the call's record, shared with the watchdog that keeps the deadline while the app
    /// is not reading ([`super::stalled`]).
    held: Arc<Mutex<Held>>,
    _watchdog: Watchdog,
    timeout: Duration,
    header_code: Option<Code>,
    request: ReplayBody,
    /// `--max-header-bytes`, checked against the trailers, and the metrics that count a refusal.
    limits: (u32, Arc<Metrics>),
    /// A cap on the reply's data bytes ([`UpstreamBody::limit_reply`]) and the bytes received so far.
    reply_limit: Option<(u64, u64)>,
    done: bool,
}

impl UpstreamBody {
    /// Wraps `inner`; `header_code` is the status the response headers already settle
    /// ([`crate::grpc::status_of_response`]: their `grpc-status`, or an HTTP status other than 200): a body that
    /// then ends without trailers ends so, as gRPC clients read it, with no `INTERNAL` trailers added.
    pub fn new(
        inner: RecvBody,
        deadline: Pin<Box<Sleep>>,
        timeout: Duration,
        header_code: Option<Code>,
        record: CallRecord,
        request: ReplayBody,
        limits: (u32, Arc<Metrics>),
    ) -> Self {
        let held = Arc::new(Mutex::new(Held { inner: Some(inner), record, waker: None }));
        let watchdog = stalled::watch(&held, deadline, timeout);
        Self { held, _watchdog: watchdog, timeout, header_code, request, limits, reply_limit: None, done: false }
    }

    /// Caps the reply's data at `bytes` of gRPC frames, for a reply the sidecar collects whole (to translate it for
    /// a Connect caller) rather than streams: past it the backend's stream is reset and the body ends with
    /// `RESOURCE_EXHAUSTED` ([`ProxyError::ReplyTooLarge`]), as a gRPC client refuses a message over its receive
    /// limit, instead of growing until the deadline.
    pub fn limit_reply(&mut self, bytes: u64) {
        self.reply_limit = Some((bytes, 0));
    }

    /// Ends the body now, with the status the response headers settled (an HTTP status other than 200, see
    /// [`UpstreamBody::new`]), for a caller that reads the status at the headers, as gRPC and Connect clients do,
    /// and not the page after them: the backend's stream is reset. Nothing when the headers settled nothing.
    pub fn settle(&mut self) {
        if let Some(code) = self.header_code
            && !self.done
        {
            let mut held = self.held.lock();
            held.inner = None;
            self.done = true;
            held.record.finish(code);
        }
    }

    /// Records the call now with the status the response headers settled, while the body (an error page) still
    /// goes to the caller: its gRPC client reports that status at the headers and resets the stream rather than
    /// read on. Later endings record nothing more.
    pub fn record_settled(&mut self) {
        if let Some(code) = self.header_code {
            self.held.lock().record.finish(code);
        }
    }
}

/// Ends the call with `code`, and its response with trailers that say so.
fn end_with(
    held: &mut Held,
    done: &mut bool,
    code: Code,
    message: &str,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    held.record.finish(code);
    trailers(held, done, code, message)
}

/// Ends with the status for a stream the backend reset, judged as a reset ([`CallRecord::finish_reset`]).
fn end_reset(
    held: &mut Held,
    done: &mut bool,
    code: Code,
    message: &str,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    held.record.finish_reset(code);
    trailers(held, done, code, message)
}

fn trailers(
    held: &mut Held,
    done: &mut bool,
    code: Code,
    message: &str,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    held.inner = None;
    *done = true;
    let mut t = HeaderMap::with_capacity(2);
    crate::grpc::add_status(&mut t, code, message);
    Poll::Ready(Some(Ok(Frame::trailers(t))))
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut guard = this.held.lock();
        let (held, done) = (&mut *guard, &mut this.done);
        // The watchdog took the backend's body: the deadline passed.
        if held.expired() {
            let msg = format!("deadline exceeded after {:?} while streaming the response", this.timeout);
            return end_with(held, done, Code::DeadlineExceeded, &msg);
        }
        let Some(inner) = held.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => {
                held.park(cx.waker());
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    held.record.sent(data.len());
                    if let Some((limit, received)) = this.reply_limit.as_mut() {
                        *received += data.len() as u64;
                        if *received > *limit {
                            let e = ProxyError::ReplyTooLarge(*limit);
                            return end_with(held, done, e.code(), &e.to_string());
                        }
                    }
                }
                if let Some(trailers) = frame.trailers_ref() {
                    let (limit, size) = (this.limits.0, crate::grpc::header_list_size(trailers));
                    if size > limit {
                        this.limits.1.headers_too_large.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let msg = format!(
                            "response trailers from the backend are {size} bytes, over the sidecar's limit of {limit} \
                             bytes (--max-header-bytes)"
                        );
                        tracing::warn!(endpoint = %held.record.endpoint_addr(), "{msg}");
                        return end_with(held, done, Code::ResourceExhausted, &msg);
                    }
                    // Trailers without grpc-status, passed through as they are: grpcio and grpc-go report UNKNOWN,
                    // so the metric records that.
                    let code = status_of(trailers).unwrap_or(Code::Unknown);
                    *done = true;
                    held.inner = None;
                    held.record.finish(code);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some((size, limit)) = this.request.too_large() {
                    let msg = format!("grpc: received message larger than max ({size} vs. {limit})");
                    return end_with(held, done, Code::ResourceExhausted, &msg);
                }
                let addr = held.record.endpoint_addr();
                if let Some(reason) = stream_reset(&e) {
                    // One stream reset by the backend: the connection is fine, and a reset says nothing about the
                    // endpoint's health (REFUSED_STREAM after the answer began, too).
                    let msg = format!("upstream {addr} reset the stream: RST_STREAM with error code {reason:?}");
                    return end_reset(held, done, crate::grpc::code_of_reset(reason), &msg);
                }
                let msg = format!("upstream {addr} failed mid-response: {}", crate::error_chain(&e));
                end_with(held, done, Code::Unavailable, &msg)
            }
            Poll::Ready(None) => match this.header_code {
                Some(code) => {
                    *done = true;
                    held.inner = None;
                    held.record.finish(code);
                    Poll::Ready(None)
                }
                // The stream ended (END_STREAM on DATA, or RST_STREAM(NO_ERROR), which `RecvBody` reads as an end)
                // with no trailers at all: grpc-go reports INTERNAL; send that explicitly.
                None => end_with(held, done, Code::Internal, NO_STATUS),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
