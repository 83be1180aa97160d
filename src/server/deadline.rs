//! The fixture's deadline: a call whose `grpc-timeout` passes ends `DEADLINE_EXCEEDED`, as gRPC servers answer it
//! (gRPC status codes doc; grpc-go and gRPC-core). tonic's built-in `grpc-timeout` timer answers `CANCELLED`
//! "Timeout expired" instead, and since the sidecar forwards the time left, that answer raced the sidecar's own
//! deadline: its callers got `CANCELLED` for a deadline. This layer sits inside tonic's timer (a
//! `Server::builder().layer`) and ends the call first: its deadline is taken before tonic's, and it is checked
//! against the clock whenever tonic polls it, so it holds even when both timers fire in the same tick.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::time::{Instant, Sleep};

use crate::grpc::parse_timeout;

/// Wraps a gRPC service in [`Deadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// Ends a call with `DEADLINE_EXCEEDED` when its `grpc-timeout` passes before the response headers; a malformed
/// or missing `grpc-timeout` sets no deadline (tonic's own timer ignores it too).
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Deadline<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_timeout(v.as_bytes()))
            .and_then(|t| Instant::now().checked_add(t));
        let inner = self.inner.call(req);
        match deadline {
            Some(deadline) => Box::pin(Expiring { inner, sleep: tokio::time::sleep_until(deadline), deadline }),
            None => Box::pin(inner),
        }
    }
}

pin_project_lite::pin_project! {
    struct Expiring<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        deadline: Instant,
    }
}

impl<F, ResBody, E> Future for Expiring<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let ready @ Poll::Ready(_) = this.inner.poll(cx) {
            return ready;
        }
        if this.sleep.poll(cx).is_ready() || Instant::now() >= *this.deadline {
            let status = tonic::Status::deadline_exceeded("deadline exceeded (grpc-timeout)");
            return Poll::Ready(Ok(status.into_http()));
        }
        Poll::Pending
    }
}
