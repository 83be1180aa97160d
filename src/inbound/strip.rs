//! A request body that removes the identity header from the caller's request trailers.
//!
//! HTTP/2 request trailers (RFC 9113 §8.1) reach apps that read them (Go's `r.Trailer`, any framework exposing
//! request trailers), so a caller's own `x-hello-sidecar-client-id` must go from there as well as from the headers.
//! Header names are lowercase on the wire and in [`http::HeaderMap`], so one removal covers every spelling.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};

/// `B` with `header` removed from its trailers; data frames pass untouched.
#[derive(Debug)]
pub struct StripTrailer<B> {
    inner: B,
    header: &'static str,
}

impl<B> StripTrailer<B> {
    /// Wraps `inner`, dropping every `header` value from its trailers.
    pub fn new(inner: B, header: &'static str) -> Self {
        Self { inner, header }
    }
}

impl<B: Body + Unpin> Body for StripTrailer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let header = this.header;
        Pin::new(&mut this.inner).poll_frame(cx).map(|frame| {
            frame.map(|r| {
                r.map(|f| match f.into_trailers() {
                    Ok(mut t) => {
                        while t.remove(header).is_some() {}
                        Frame::trailers(t)
                    }
                    Err(f) => f,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test]
    async fn the_header_goes_from_trailers_and_everything_else_stays() {
        let mut trailers = HeaderMap::new();
        trailers.append("X-Hello-Sidecar-Client-Id", "spiffe://td/ns/ops/sa/admin".parse().unwrap());
        trailers.append("x-hello-sidecar-client-id", "spiffe://td/ns/ops/sa/other".parse().unwrap());
        trailers.insert("x-keep", "yes".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"abc"))), Ok(Frame::trailers(trailers))];
        let body = StripTrailer::new(StreamBody::new(futures_util::stream::iter(frames)), "x-hello-sidecar-client-id");
        let collected = body.collect().await.unwrap();
        let t = collected.trailers().cloned().unwrap();
        assert!(t.get("x-hello-sidecar-client-id").is_none());
        assert_eq!(t.get("x-keep").unwrap(), "yes");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"abc"));
    }
}
