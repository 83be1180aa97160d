//! gRPC-web on the app's port, translated to gRPC towards the backends (binary and text modes, HTTP/1.1 and
//! HTTP/2), so a browser or any grpc-web client can call through the sidecar.
//!
//! What changes on the way: the request's content-type becomes `application/grpc` (the text mode's base64 body is
//! decoded as it streams); on the way back the response body passes through, the trailers become the final
//! grpc-web frame (flag `0x80`, `name: value\r\n` lines), and the text mode base64-encodes each chunk. Browsers get
//! CORS headers so a page on another origin may call the loopback port.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body::{Body, Frame};

use crate::BoxError;

/// The two grpc-web encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/grpc-web` / `application/grpc-web+proto`: frames as in gRPC.
    Binary,
    /// `application/grpc-web-text`: the same frames, base64-encoded.
    Text,
}

/// The grpc-web mode of a content-type, if it is one.
pub fn mode_of(content_type: &str) -> Option<Mode> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    if ct == "application/grpc-web-text" || ct.starts_with("application/grpc-web-text+") {
        Some(Mode::Text)
    } else if ct == "application/grpc-web" || ct.starts_with("application/grpc-web+") {
        Some(Mode::Binary)
    } else {
        None
    }
}

/// The response content-type for a mode.
pub fn content_type(mode: Mode) -> HeaderValue {
    HeaderValue::from_static(match mode {
        Mode::Binary => "application/grpc-web+proto",
        Mode::Text => "application/grpc-web-text+proto",
    })
}

/// Trailers as the last grpc-web frame: flag 0x80, length, then `name: value\r\n` lines.
pub fn trailers_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = BytesMut::new();
    for (name, value) in trailers {
        block.put_slice(name.as_str().as_bytes());
        block.put_slice(b": ");
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    crate::grpc::frame(0x80, &block)
}

/// CORS headers added to every grpc-web and Connect response (the port is loopback-only, so any origin may call).
///
/// The caller's `Origin` is echoed, with `Access-Control-Allow-Credentials: true`, so a browser client that sends
/// cookies (`credentials: "include"`) is allowed; without an `Origin` (or with `null`) the answer is `*`, never
/// with credentials, as the Fetch standard forbids that pair.
pub fn add_cors(headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
    // `Origin: null` (sandboxed iframes, file: pages) names no one: echoing it with credentials would let any
    // such page read the answer, so it gets `*`, without credentials.
    match origin.filter(|o| o.as_bytes() != b"null") {
        Some(origin) => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        None => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
    }
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin, x-hello-pod, x-hello-peer"),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// The answer to a CORS preflight (`OPTIONS`).
pub fn preflight<B: Default>(req_headers: &HeaderMap) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    add_cors(h, req_headers.get(header::ORIGIN));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    let allow = req_headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned().unwrap_or(HeaderValue::from_static(
        "content-type, x-grpc-web, x-user-agent, grpc-timeout, connect-protocol-version, connect-timeout-ms",
    ));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    res
}

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// A grpc-web-text request body that is not base64: the caller's mistake, answered `INTERNAL` (a malformed
/// request, as gRPC servers answer a malformed frame) and never held against the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("grpc-web-text body is not base64: {0}")]
pub struct MalformedText(pub String);

/// A request body in grpc-web-text mode, base64-decoded as it streams (groups of 4 characters may straddle
/// chunks; padding may appear between chunks, as clients encode message by message).
pub struct Base64Decode<B> {
    inner: B,
    pending: BytesMut,
}

impl<B> Base64Decode<B> {
    /// Wraps a base64 body.
    pub fn new(inner: B) -> Self {
        Self { inner, pending: BytesMut::new() }
    }
}

impl<B> Body for Base64Decode<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let this = &mut *self;
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    this.pending.extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
                    // Decode every complete group of 4; a group ending in padding closes an encoded unit.
                    let whole = this.pending.len() / 4 * 4;
                    if whole == 0 {
                        continue;
                    }
                    let chunk = this.pending.split_to(whole);
                    match decode_groups(&chunk) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None if this.pending.is_empty() => return Poll::Ready(None),
                None => {
                    let rest = std::mem::take(&mut this.pending);
                    let why = format!("{} trailing characters", rest.len());
                    return Poll::Ready(Some(Err(MalformedText(why).into())));
                }
            }
        }
    }
}

/// Decodes whole 4-character groups; a group with padding ends one encoded unit, so decode unit by unit.
fn decode_groups(chunk: &[u8]) -> Result<Vec<u8>, BoxError> {
    let mut out = Vec::with_capacity(chunk.len() / 4 * 3);
    let mut start = 0;
    for (i, group) in chunk.chunks(4).enumerate() {
        let end = (i + 1) * 4;
        if group.contains(&b'=') || end == chunk.len() {
            STANDARD
                .decode_vec(&chunk[start..end], &mut out)
                .map_err(|e| -> BoxError { MalformedText(e.to_string()).into() })?;
            start = end;
        }
    }
    Ok(out)
}

/// Encodes one response chunk for the text mode.
pub fn encode_text(data: &[u8]) -> Bytes {
    Bytes::from(STANDARD.encode(data))
}

/// A gRPC response body re-framed for grpc-web: data as it is (base64 in text mode), trailers as the last frame.
pub struct GrpcWebBody<B> {
    inner: B,
    mode: Mode,
    done: bool,
}

impl<B> GrpcWebBody<B> {
    /// Wraps a gRPC response body.
    pub fn new(inner: B, mode: Mode) -> Self {
        Self { inner, mode, done: false }
    }
}

impl<B> Body for GrpcWebBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let data = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => {
                this.done = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        this.done = true;
                        trailers_frame(&trailers)
                    }
                    Err(_) => Bytes::new(),
                },
            },
        };
        Poll::Ready(Some(Ok(Frame::data(match this.mode {
            Mode::Binary => data,
            Mode::Text => encode_text(&data),
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[test]
    fn modes_follow_the_content_type() {
        assert_eq!(mode_of("application/grpc-web"), Some(Mode::Binary));
        assert_eq!(mode_of("application/grpc-web+proto"), Some(Mode::Binary));
        assert_eq!(mode_of("application/grpc-web-text"), Some(Mode::Text));
        assert_eq!(mode_of("application/grpc-web-text+proto; charset=utf-8"), Some(Mode::Text));
        assert_eq!(mode_of("application/grpc"), None);
    }

    #[test]
    fn trailers_become_a_flagged_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let f = trailers_frame(&t);
        assert_eq!(f[0], 0x80);
        assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize, f.len() - 5);
        assert_eq!(&f[5..], b"grpc-status: 0\r\n");
    }

    #[tokio::test]
    async fn text_bodies_decode_across_chunks_and_padding() {
        let frame = [0u8, 0, 0, 0, 7, 0x0a, 5, b'w', b'o', b'r', b'l', b'd'];
        let encoded = STANDARD.encode(frame); // 16 chars, no padding
        let twice = format!("{}{}", STANDARD.encode(&frame[..4]), STANDARD.encode(&frame[4..])); // padded units
        for text in [encoded, twice] {
            let body = Base64Decode::new(Full::new(Bytes::from(text)));
            let out = body.collect().await.expect("decodes").to_bytes();
            assert_eq!(&out[..], &frame[..]);
        }
    }
}
