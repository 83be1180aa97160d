//! The request body sent upstream: the client's own body (gRPC, grpc-web binary), a body decoded as it streams
//! (grpc-web-text), or one made here (Connect). An enum rather than a box, so plain gRPC pays nothing for the
//! other protocols.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::{BoxError, proxy::web::Base64Decode};

/// A request body on its way to a backend.
pub enum RequestBody {
    /// The client's body, frames untouched.
    Incoming(Incoming),
    /// grpc-web-text: the client's body, base64-decoded as it streams.
    Base64(Base64Decode<Incoming>),
    /// A whole body made by the sidecar (Connect's translated message).
    Full(Full<Bytes>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Base64(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e: Infallible| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) => b.is_end_stream(),
            RequestBody::Base64(_) => false,
            RequestBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) => b.size_hint(),
            RequestBody::Base64(_) => SizeHint::default(),
            RequestBody::Full(b) => b.size_hint(),
        }
    }
}
