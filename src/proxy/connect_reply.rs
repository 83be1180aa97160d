//! Collecting the backend's answer to a Connect unary call, in bounded memory.
//!
//! A Connect unary reply is one bare message, so the sidecar must hold the whole gRPC answer before it can
//! translate it (unlike gRPC and gRPC-web, whose frames stream through). What it holds is bounded by the answer's
//! shape: one gRPC message of at most `--max-message-bytes` (grpc-go's clients refuse a larger one with
//! `RESOURCE_EXHAUSTED` too), then trailers. Collection stops as soon as the answer leaves that shape — a second
//! message begins (the method streams, or the pod misbehaves) or the first one announces more than the limit — and
//! the body is dropped, which resets the backend's stream. Without that stop, a backend that streams its answer
//! made the sidecar buffer it at line rate until the deadline (2.3 GB in 4 s on loopback).

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;

/// A gRPC answer collected whole: at most one message (with its 5-byte prefix) and the trailers.
pub(super) struct Collected {
    /// The data: empty, or one gRPC frame (possibly truncated, if the backend ended early).
    pub data: Bytes,
    /// The trailers, empty if the backend sent none.
    pub trailers: HeaderMap,
}

/// Why collection stopped early.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReplyError {
    /// A second message began: the answer is a stream, not a unary reply.
    #[error("the backend answered with more than one message")]
    SeveralMessages,
    /// The reply message announced more bytes than the limit.
    #[error("grpc: received message larger than max ({size} vs. {limit})")]
    TooLarge {
        /// The announced message length.
        size: u64,
        /// The limit (`--max-message-bytes`).
        limit: u64,
    },
    /// The body failed while it was read (a reset, a lost connection, the deadline).
    #[error("{0}")]
    Body(String),
}

/// Reads `body` to its end, holding at most one message of up to `limit` bytes (plus the last DATA frame read).
pub(super) async fn collect<B>(body: B, limit: u64) -> Result<Collected, ReplyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut data = BytesMut::new();
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReplyError::Body(e.to_string()))?;
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                check(&data, limit)?;
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.extend(t);
                }
            }
        }
    }
    Ok(Collected { data: data.freeze(), trailers })
}

/// Whether `data` (the answer so far) is still at most one message of at most `limit` bytes.
fn check(data: &[u8], limit: u64) -> Result<(), ReplyError> {
    let [_, a, b, c, d, rest @ ..] = data else { return Ok(()) };
    let size = u64::from(u32::from_be_bytes([*a, *b, *c, *d]));
    if size > limit {
        return Err(ReplyError::TooLarge { size, limit });
    }
    if rest.len() as u64 > size {
        return Err(ReplyError::SeveralMessages);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend(len.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn one_message_up_to_the_limit_fits_whole_or_in_part() {
        assert!(check(&[], 10).is_ok());
        assert!(check(&[0, 0, 0], 10).is_ok(), "a prefix split over frames");
        assert!(check(&frame(10, b"0123"), 10).is_ok(), "a message still arriving");
        assert!(check(&frame(10, b"0123456789"), 10).is_ok());
        assert!(check(&frame(0, b""), 0).is_ok());
    }

    #[test]
    fn a_second_message_or_a_message_over_the_limit_stops_it() {
        assert!(matches!(check(&frame(10, b"0123456789\0"), 10), Err(ReplyError::SeveralMessages)));
        assert!(matches!(check(&frame(0, b"\0"), 10), Err(ReplyError::SeveralMessages)));
        assert!(matches!(check(&frame(11, b""), 10), Err(ReplyError::TooLarge { size: 11, limit: 10 })));
        assert!(matches!(check(&frame(u32::MAX, b"x"), 10), Err(ReplyError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn a_whole_reply_is_collected_with_its_trailers() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(frame(3, b"a")))),
            Ok(http_body::Frame::data(Bytes::from_static(b"bc"))),
            Ok(http_body::Frame::trailers(t)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let got = collect(body, 3).await.expect("collected");
        assert_eq!(&got.data[..], &frame(3, b"abc")[..]);
        assert_eq!(got.trailers["grpc-status"], "0");
    }
}
