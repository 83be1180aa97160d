//! The request body, streamed to the backend and kept (up to a cap) so a call can be retried elsewhere.
//!
//! Frames pass through as they arrive: nothing waits for the whole body, so client-streaming and bidi calls work.
//! While the body stays under the cap (64 KiB) each frame is also kept, and a retry gets a fresh view that replays
//! the kept frames and then continues from the client. Past the cap the kept frames are dropped and retries are
//! off for that call (like linkerd's `ReplayBody`).
//!
//! The body also enforces the per-message size limit by reading the 5-byte gRPC message prefixes as frames go by:
//! an oversized message stops the call with `RESOURCE_EXHAUSTED` before it is sent on.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use parking_lot::Mutex;

use crate::{BoxError, grpc::MessageScanner, proxy::request_body::RequestBody};

/// Why the request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A message is larger than the limit.
    #[error("grpc: received message larger than max ({size} vs. {limit})")]
    TooLarge {
        /// The announced message length.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A retry needed frames that were not kept.
    #[error("request body was not kept, so it cannot be replayed")]
    NotReplayable,
}

struct Shared<B> {
    inner: Option<B>,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    cap: usize,
    /// Data frames read from the client so far.
    read: usize,
    /// Data bytes read from the client so far.
    read_bytes: u64,
    overflowed: bool,
    trailers: Option<HeaderMap>,
    done: bool,
    scanner: MessageScanner,
    limit: u64,
    too_large: Option<u64>,
    failed: bool,
    /// Why the body was malformed, when that is why it failed (see [`ReplayBody::malformed`]).
    malformed: Option<String>,
    /// Several views read at once (a hedged call): each waiting view parks its waker here, since the client's
    /// body wakes only the last view that polled it. Empty, and never allocated, on a call that is not hedged.
    parked: Option<Vec<Waker>>,
}

impl<B> Shared<B> {
    /// Wakes every parked view, so the next one to poll takes over reading the client's body.
    fn wake_parked(&mut self) {
        if let Some(parked) = &mut self.parked {
            parked.drain(..).for_each(Waker::wake);
        }
    }
}

/// One view of the request body. [`ReplayBody::replay`] makes a fresh view for a retry.
pub struct ReplayBody<B = RequestBody> {
    shared: Arc<Mutex<Shared<B>>>,
    pos: usize,
    trailers_sent: bool,
    /// Made after [`ReplayBody::share`]: dropping it wakes the parked views (no lock taken on a plain call).
    shared_view: bool,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps the client's body, keeping up to `cap` bytes for retries and refusing messages over `limit`.
    pub fn new(inner: B, cap: usize, limit: u64) -> Self {
        let done = inner.is_end_stream();
        let shared = Shared {
            inner: (!done).then_some(inner),
            kept: Vec::new(),
            kept_bytes: 0,
            cap,
            read: 0,
            read_bytes: 0,
            overflowed: false,
            trailers: None,
            done,
            scanner: MessageScanner::default(),
            limit,
            too_large: None,
            failed: false,
            parked: None,
            malformed: None,
        };
        Self { shared: Arc::new(Mutex::new(shared)), pos: 0, trailers_sent: false, shared_view: false }
    }

    /// A fresh view from the start, if everything read so far was kept; `None` when a retry is impossible.
    pub fn replay(&self) -> Option<Self> {
        let s = self.lock();
        (!s.overflowed && !s.failed && s.too_large.is_none()).then(|| Self {
            shared: self.shared.clone(),
            pos: 0,
            trailers_sent: false,
            shared_view: s.parked.is_some(),
        })
    }

    /// Lets several views read at once (gRFC A6 hedging: each attempt replays the body and the leading one reads
    /// on from the client); a view that finds nothing new waits for the others' progress.
    pub fn share(&self) {
        let mut s = self.lock();
        if s.parked.is_none() {
            s.parked = Some(Vec::new());
        }
    }

    /// A handle that reads how many request bytes came from the client, for the access log.
    pub fn tally(&self) -> Tally<B> {
        Tally(self.shared.clone())
    }

    /// The size of the oversized message that stopped the call, if any.
    pub fn too_large(&self) -> Option<(u64, u64)> {
        let s = self.lock();
        s.too_large.map(|size| (size, s.limit))
    }

    /// Why the caller's body is malformed (a grpc-web-text body that is not base64), if that stopped the call.
    pub fn malformed(&self) -> Option<String> {
        self.lock().malformed.clone()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Shared<B>> {
        self.shared.lock()
    }
}

/// Reads the request bytes a [`ReplayBody`] took from the client ([`ReplayBody::tally`]).
pub struct Tally<B = RequestBody>(Arc<Mutex<Shared<B>>>);

impl<B> Tally<B> {
    /// Data bytes read from the client so far.
    pub fn bytes(&self) -> u64 {
        self.0.lock().read_bytes
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock();
        if this.pos < s.read {
            let Some(frame) = s.kept.get(this.pos).cloned() else {
                return Poll::Ready(Some(Err(ReplayError::NotReplayable.into())));
            };
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if let Some(size) = s.too_large {
            return Poll::Ready(Some(Err(ReplayError::TooLarge { size, limit: s.limit }.into())));
        }
        if s.done {
            if !this.trailers_sent
                && let Some(t) = s.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        let Some(inner) = s.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Some(parked) = &mut s.parked {
            if polled.is_pending() {
                if !parked.iter().any(|w| w.will_wake(cx.waker())) {
                    parked.push(cx.waker().clone());
                }
            } else {
                // Progress (a frame, the end, an error): the other views have something new to read.
                parked.drain(..).for_each(Waker::wake);
            }
        }
        match ready!(polled) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let limit = s.limit;
                    if let Some(size) = s.scanner.feed(&data, limit) {
                        s.too_large = Some(size);
                        s.inner = None;
                        return Poll::Ready(Some(Err(ReplayError::TooLarge { size, limit }.into())));
                    }
                    s.read += 1;
                    s.read_bytes += data.len() as u64;
                    this.pos = s.read;
                    if !s.overflowed && s.kept_bytes + data.len() <= s.cap {
                        s.kept_bytes += data.len();
                        s.kept.push(data.clone());
                    } else if !s.overflowed {
                        s.overflowed = true;
                        s.kept = Vec::new();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    s.done = true;
                    s.inner = None;
                    match frame.into_trailers() {
                        Ok(t) => {
                            s.trailers = Some(t.clone());
                            this.trailers_sent = true;
                            Poll::Ready(Some(Ok(Frame::trailers(t))))
                        }
                        Err(_) => Poll::Ready(None),
                    }
                }
            },
            Some(Err(e)) => {
                s.failed = true;
                s.inner = None;
                let e: BoxError = e.into();
                if let Some(m) = e.downcast_ref::<crate::proxy::web::MalformedText>() {
                    s.malformed = Some(m.to_string());
                }
                Poll::Ready(Some(Err(e)))
            }
            None => {
                s.done = true;
                s.inner = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        // Asking the client's body too lets the last DATA frame carry END_STREAM, rather than an empty frame after
        // it (servers count empty frames as abuse).
        let ended = s.done || s.inner.as_ref().is_some_and(Body::is_end_stream);
        ended && self.pos >= s.read && (self.trailers_sent || s.trailers.is_none()) && s.too_large.is_none()
    }
}

impl<B> Drop for ReplayBody<B> {
    /// A view dropped while it was the one registered with the client's body (a cancelled hedge) would leave the
    /// others waiting for a wake-up that goes nowhere: they are woken to take over.
    fn drop(&mut self) {
        if self.shared_view {
            self.shared.lock().wake_parked();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type TestBody = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn body(chunks: &[&[u8]]) -> TestBody {
        let frames: Vec<_> = chunks.iter().map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        StreamBody::new(stream::iter(frames))
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend((len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    async fn collect<B>(b: ReplayBody<B>) -> Result<Bytes, BoxError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        Ok(b.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_attempt_read() {
        let msg = message(10);
        let first = ReplayBody::new(body(&[&msg[..4], &msg[4..]]), 1024, 100);
        let retry = first.replay().expect("nothing read yet");
        assert_eq!(collect(first).await.expect("first").as_ref(), &msg[..]);
        assert_eq!(collect(retry).await.expect("retry").as_ref(), &msg[..]);
    }

    #[tokio::test]
    async fn a_body_past_the_cap_cannot_be_replayed() {
        let msg = message(100);
        let first = ReplayBody::new(body(&[&msg]), 64, 1000);
        let copy = first.replay().expect("nothing read yet");
        let mut first = first;
        let frame = first.frame().await.expect("a frame").expect("ok");
        assert_eq!(frame.into_data().expect("data").len(), msg.len());
        assert!(first.replay().is_none());
        assert!(collect(copy).await.is_err(), "the old view cannot see frames that were not kept");
    }

    #[tokio::test]
    async fn an_oversized_message_stops_the_body() {
        let msg = message(500);
        let b = ReplayBody::new(body(&[&msg]), 64, 100);
        let probe = b.replay().expect("fresh");
        let err = collect(b).await.expect_err("too large");
        assert!(err.to_string().contains("larger than max (500 vs. 100)"), "{err}");
        assert_eq!(probe.too_large(), Some((500, 100)));
        assert!(probe.replay().is_none());
    }
}
