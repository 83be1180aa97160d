//! What a failed request says about whether it reached the backend's application.
//!
//! The pool reports the facts of HTTP/2; the proxy decides what to do with them (retry, which status). The one
//! distinction that matters for safety is gRFC A6's: a request that cannot have reached the application may be
//! sent again at once ("transparent retry"); one that may have reached it must not, because the handler may
//! have run (RFC 9113 §8.7 says which streams a server guarantees it did not process).

use h2::Reason;

use crate::grpc::h2_error;

/// How a request to a backend failed, as far as the connection can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// The request cannot have reached the application: the peer refused the stream (`REFUSED_STREAM`), or a
    /// GOAWAY's last-stream-id was below it (RFC 9113 §8.7). Safe to send again, the same endpoint included, and
    /// not the endpoint's fault.
    Unprocessed,
    /// The peer reset the stream with this code before answering; the request may have been processed.
    Reset(Reason),
    /// The connection failed (reset, closed, timed out) after the request may have been written.
    Connection,
}

/// Classifies a request's failure from h2's error for its stream.
pub fn classify(h2: &h2::Error) -> SendFailure {
    if h2.is_remote() && h2.is_go_away() {
        // h2 fails a stream with the peer's GOAWAY only when the stream is above the GOAWAY's last-stream-id, or
        // was opened after it; streams at or below it carry on (and see a broken pipe if the peer then closes).
        return SendFailure::Unprocessed;
    }
    match h2.reason() {
        Some(Reason::REFUSED_STREAM) if h2.is_remote() => SendFailure::Unprocessed,
        Some(reason) if h2.is_reset() && h2.is_remote() => SendFailure::Reset(reason),
        _ => SendFailure::Connection,
    }
}

/// Whether a connection ended with the peer's GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings", which grpc-go and
/// gRPC-core send when a client pings more often than their policy allows (gRFC A8). h2 shows the GOAWAY's debug
/// data only in its message, so that is where it is read.
pub fn calm_goaway(e: &(dyn std::error::Error + 'static)) -> bool {
    h2_error(e).is_some_and(|h2| {
        h2.is_go_away()
            && h2.is_remote()
            && h2.reason() == Some(Reason::ENHANCE_YOUR_CALM)
            && h2.to_string().contains("too_many_pings")
    })
}
