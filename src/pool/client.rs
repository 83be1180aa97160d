//! Sending one request on a backend connection, with h2's client directly (no hyper dispatch task in between).
//!
//! hyper's HTTP/2 client hands each request through a channel to its connection task, which spawns one task for
//! the response future and, unless the body's last chunk can be sent at once (it cannot: a new stream has no send
//! capacity until the connection task opens it), one more to pipe the body (issue 14: ~3k instructions and two
//! task wake-ups per call, `bench/callgrind.py`). Here the caller's task opens the stream itself
//! ([`SendRequest::try_send_request`]): a body that is complete when sent (a unary call) goes out with its
//! headers, with no task at all; only a body still streaming gets a task of its own, as hyper's would.
//!
//! Flow control is hyper's (`PipeToSendStream`, hyper 1.x): a chunk waits for stream capacity before it is handed
//! to h2, so a backend that stops reading holds at most one chunk per stream here. The one exception is a body's
//! last chunk, sent at once: it is bounded by the chunk, and is what lets a unary call go out in one step.

use std::{
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::{SendBody, SendFailure, classify, driver::Gone};

/// The request handle of one backend connection (cheap to clone; one clone per call).
pub struct SendRequest<B> {
    h2: h2::client::SendRequest<Bytes>,
    /// Whether the connection takes no new streams (ended, or a GOAWAY came).
    gone: Arc<Gone>,
    /// Streams open on the connection (its keepalive PINGs only while there are some).
    open: Arc<AtomicU32>,
    _body: PhantomData<fn(B)>,
}

impl<B> Clone for SendRequest<B> {
    fn clone(&self) -> Self {
        Self { h2: self.h2.clone(), gone: self.gone.clone(), open: self.open.clone(), _body: PhantomData }
    }
}

impl<B> std::fmt::Debug for SendRequest<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRequest").field("closed", &self.is_closed()).finish()
    }
}

/// A request that got no response headers: why, and whether it can have reached the backend's application.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendError {
    failure: SendFailure,
    #[source]
    error: h2::Error,
}

impl SendError {
    /// What the failure says about the request ([`SendFailure`]).
    pub fn failure(&self) -> SendFailure {
        self.failure
    }
}

impl<B> SendRequest<B> {
    pub(super) fn new(h2: h2::client::SendRequest<Bytes>, gone: Arc<Gone>, open: Arc<AtomicU32>) -> Self {
        Self { h2, gone, open, _body: PhantomData }
    }

    /// Whether the connection takes no new requests: it ended, or the peer's GOAWAY stopped new streams.
    pub fn is_closed(&self) -> bool {
        self.gone.is_set()
    }
}

impl<B: SendBody> SendRequest<B> {
    /// Sends `req` (an absolute URI: `:scheme` and `:authority` come from it) and waits for the response headers.
    ///
    /// Errors: a connection that failed or got a GOAWAY before the stream opened, or a GOAWAY or `REFUSED_STREAM`
    /// that left the stream unprocessed, is [`SendFailure::Unprocessed`] (RFC 9113 §8.7); a reset by the peer is
    /// [`SendFailure::Reset`]; anything else is [`SendFailure::Connection`] (h2 refusing a malformed request too,
    /// which every caller's header handling rules out). A request body that fails resets the stream, and the call
    /// sees that reset (its cause is the body's, which the caller knows). A connection that takes no new stream,
    /// or whose GOAWAY failed this one, is marked gone: the pool replaces it.
    pub async fn try_send_request(self, req: Request<B>) -> Result<Response<RecvBody>, SendError> {
        let SendRequest { h2, gone, open, .. } = self;
        // `ready` fails only for the connection (an error, a GOAWAY, its stream IDs used up): no stream was opened.
        let mut h2 = h2.ready().await.map_err(|error| {
            gone.set();
            SendError { failure: SendFailure::Unprocessed, error }
        })?;
        let (parts, body) = req.into_parts();
        let eos = body.is_end_stream();
        let (response, tx) = h2.send_request(Request::from_parts(parts, ()), eos).map_err(|error| {
            if error.is_go_away() || error.is_io() {
                gone.set();
                return SendError { failure: SendFailure::Unprocessed, error };
            }
            SendError { failure: SendFailure::Connection, error }
        })?;
        let stream = OpenStream::new(open);
        // The body: sent here if it is complete, else piped by a task of its own that ends when the response is
        // dropped (the `cancel` sender travels with it).
        let cancel = if eos {
            None
        } else {
            // Polled once in place (a `Pipe` is small and `Unpin`), boxed only if it has to become a task.
            let mut pipe = Pipe { body, tx, chunk: None, cancel: None };
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx))).await {
                Poll::Ready(()) => None,
                Poll::Pending => {
                    let (cancel, cancelled) = oneshot::channel();
                    pipe.cancel = Some(cancelled);
                    tokio::spawn(Box::pin(pipe));
                    Some(cancel)
                }
            }
        };
        let res = response.await.map_err(|error| {
            if error.is_go_away() && error.is_remote() {
                gone.set();
            }
            SendError { failure: classify(&error), error }
        })?;
        Ok(res.map(|recv| RecvBody { stream: recv, data_done: false, _cancel: cancel, _open: stream }))
    }
}

/// One stream counted open on its connection until dropped.
struct OpenStream(Arc<AtomicU32>);

impl OpenStream {
    fn new(open: Arc<AtomicU32>) -> Self {
        open.fetch_add(1, Relaxed);
        Self(open)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A backend's response body: h2's stream as an [`http_body::Body`]. Each chunk read gives its bytes back to the
/// stream's flow-control window; dropping it resets an unfinished stream (`CANCEL`) and stops its request body.
pub struct RecvBody {
    stream: h2::RecvStream,
    data_done: bool,
    /// Dropped with the body: tells a request-body task still running to reset the stream and stop.
    _cancel: Option<oneshot::Sender<()>>,
    _open: OpenStream,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM(NO_ERROR) after a response is an early end, not a failure (RFC 9113 §8.1).
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(h2::Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A request body piped into its stream under the stream's flow control (see the module doc).
struct Pipe<B> {
    body: B,
    tx: h2::SendStream<Bytes>,
    /// A chunk waiting for send capacity.
    chunk: Option<Bytes>,
    /// Resolves (with an error) once the response side is dropped; only set when the pipe runs as its own task.
    cancel: Option<oneshot::Receiver<()>>,
}

impl<B: SendBody> Future for Pipe<B> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(cancel) = this.cancel.as_mut()
            && Pin::new(cancel).poll(cx).is_ready()
        {
            this.tx.send_reset(h2::Reason::CANCEL);
            return Poll::Ready(());
        }
        match this.pump(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(reason)) => {
                this.tx.send_reset(reason);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<B: SendBody> Pipe<B> {
    /// Moves the body into the stream until it ends (`Ok`), fails or the peer resets the stream (`Err`: the
    /// code to reset with), or waits.
    fn pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Reason>> {
        loop {
            if self.tx.poll_reset(cx).is_ready() {
                // The peer reset it: nothing more to send (the response side sees the reset).
                return Poll::Ready(Ok(()));
            }
            if let Some(chunk) = self.chunk.take() {
                if self.tx.capacity() == 0 {
                    match self.tx.poll_capacity(cx) {
                        Poll::Pending => {
                            self.chunk = Some(chunk);
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(h2::Reason::CANCEL)),
                    }
                    if self.tx.capacity() == 0 {
                        self.chunk = Some(chunk);
                        continue;
                    }
                }
                if self.tx.send_data(chunk, false).is_err() {
                    return Poll::Ready(Err(h2::Reason::CANCEL));
                }
                continue;
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                // The caller's body failed (reset, over a limit, malformed): the backend must not take it as whole.
                // The caller's own reset code when it reset its stream, else INTERNAL_ERROR (as hyper did).
                Some(Err(e)) => {
                    let e: crate::BoxError = e.into();
                    let reason = crate::grpc::h2_error(&*e).and_then(h2::Error::reason);
                    return Poll::Ready(Err(reason.unwrap_or(h2::Reason::INTERNAL_ERROR)));
                }
                None => return Poll::Ready(self.tx.send_data(Bytes::new(), true).map_err(|_| h2::Reason::CANCEL)),
            };
            match frame.into_data() {
                Ok(data) => {
                    let eos = self.body.is_end_stream();
                    if eos || data.is_empty() {
                        // The last chunk goes at once (bounded by itself); an empty one needs no capacity.
                        if self.tx.send_data(data, eos).is_err() {
                            return Poll::Ready(Err(h2::Reason::CANCEL));
                        }
                        if eos {
                            return Poll::Ready(Ok(()));
                        }
                    } else {
                        // A minimal claim on the window: the chunk waits in `self.chunk` for capacity (hyper #4003).
                        self.tx.reserve_capacity(1);
                        self.chunk = Some(data);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.tx.reserve_capacity(0);
                        return Poll::Ready(self.tx.send_trailers(trailers).map_err(|_| h2::Reason::CANCEL));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::Empty;
    use tokio::{io::DuplexStream, task::JoinHandle};

    use super::*;
    use crate::pool::driver::Driver;

    /// An h2 server on `io` that answers every request after `delay` with headers only.
    fn backend(io: DuplexStream, delay: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(io).await.expect("server handshake");
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = respond.send_response(Response::new(()), true);
                });
            }
        })
    }

    async fn client(delay: Duration) -> (SendRequest<Empty<Bytes>>, Pin<Box<Driver<DuplexStream>>>, Arc<Gone>) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        backend(theirs, delay);
        let (h2, conn) = h2::client::handshake(ours).await.expect("handshake");
        let gone = Arc::new(Gone::default());
        let driver = Driver::new(conn, gone.clone(), None, Arc::default(), Arc::default());
        (SendRequest::new(h2, gone.clone(), Arc::default()), Box::pin(driver), gone)
    }

    fn request() -> Request<Empty<Bytes>> {
        Request::post("http://backend.test/pkg.Svc/M").body(Empty::new()).expect("request")
    }

    #[tokio::test]
    async fn a_gone_connection_driven_to_its_end_keeps_its_calls_in_flight() {
        let (tx, driver, gone) = client(Duration::from_millis(300)).await;
        // As a replaced or retired connection is driven.
        let _old = tokio::spawn(driver.finish());
        let call = tokio::spawn(tx.clone().try_send_request(request()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        gone.set(); // what a request failing on the peer's GOAWAY does
        let res = call.await.expect("join");
        assert!(res.is_ok(), "the call in flight was killed: {:?}", res.err());
        assert!(tx.is_closed());
    }

    #[tokio::test]
    async fn a_request_h2_refuses_is_not_retried_and_keeps_the_connection() {
        let (tx, driver, _gone) = client(Duration::ZERO).await;
        let _driver = tokio::spawn(driver.finish());
        let mut req = request();
        req.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        let Err(e) = tx.clone().try_send_request(req).await else { panic!("h2 refuses a connection header") };
        assert_ne!(e.failure(), SendFailure::Unprocessed, "{e}");
        assert!(!tx.is_closed(), "one malformed request marked the connection gone");
        assert!(tx.try_send_request(request()).await.is_ok(), "the connection still serves");
    }
}
