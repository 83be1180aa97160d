//! Small pieces of the gRPC-over-HTTP/2 wire format that the proxy needs without decoding messages.

use std::time::Duration;

use tonic::Code;

/// The `grpc-timeout` header: an ASCII integer of at most 8 digits and a unit (`H M S m u n`).
///
/// Returns `None` for a malformed value, which gRPC servers answer with `INTERNAL`.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a duration as a `grpc-timeout` value, choosing the finest unit whose value fits in 8 digits (the gRPC
/// HTTP/2 document's `TimeoutValue`), rounded up so the forwarded deadline is never shorter than the caller's.
/// Written into a stack buffer, not through `format!`: this runs once per forwarded call.
pub fn encode_timeout(d: Duration) -> http::HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let (value, unit) = [(b'n', 1u128), (b'u', 1_000), (b'm', 1_000_000), (b'S', 1_000_000_000)]
        .into_iter()
        .map(|(unit, per)| (nanos.div_ceil(per), unit))
        .find(|(v, _)| *v <= MAX)
        .unwrap_or_else(|| (nanos.div_ceil(60_000_000_000).min(MAX), b'M'));
    // At most eight digits and the unit.
    let mut buf = [0u8; 9];
    let mut at = buf.len() - 1;
    buf[at] = unit;
    let mut v = value as u64;
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    http::HeaderValue::from_bytes(&buf[at..]).unwrap_or_else(|_| http::HeaderValue::from_static("99999999M"))
}

/// Decodes a percent-encoded `grpc-message` (as [`add_status`] and every gRPC peer encode
/// it); bad escapes stay as they are and bytes that are not UTF-8 become U+FFFD: the gRPC HTTP/2 document says a
/// decoder must not fail. Not tonic's `Status::from_header_map`, which also needs `grpc-status`, copies every
/// other header into the status's metadata, and gives up on a message that is not UTF-8.
pub fn decode_message(v: &[u8]) -> String {
    percent_encoding::percent_decode(v).decode_utf8_lossy().into_owned()
}

/// The request URI with a scheme and authority (the endpoint's address, made once per endpoint rather than per
/// call), which an HTTP/2 client needs for its pseudo-headers. The scheme is the connection's, not the caller's (RFC 9113 §8.3.1: `:scheme` names the scheme of the target URI, and
/// a TLS connection to the endpoint makes it `https`; the app speaks h2c to the sidecar, so its own is `http`).
pub fn absolute_uri(uri: &http::Uri, authority: Option<&http::uri::Authority>, tls: bool) -> http::Uri {
    let scheme = if tls { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP };
    if uri.scheme() == Some(&scheme) && uri.authority().is_some() {
        return uri.clone();
    }
    let mut parts = uri.clone().into_parts();
    if parts.scheme.is_none() || parts.authority.is_none() {
        parts.authority = authority.cloned();
    }
    parts.scheme = Some(scheme);
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Every status code with its name in the gRPC documentation (`DEADLINE_EXCEEDED`, the `grpc/grpc` repository's
/// `doc/statuscodes.md`) and in the Connect protocol (`deadline_exceeded`; Connect spells `canceled`), indexed by
/// the code's number. The one table of code names.
const CODES: [(Code, &str, &str); 17] = [
    (Code::Ok, "OK", "ok"),
    (Code::Cancelled, "CANCELLED", "canceled"),
    (Code::Unknown, "UNKNOWN", "unknown"),
    (Code::InvalidArgument, "INVALID_ARGUMENT", "invalid_argument"),
    (Code::DeadlineExceeded, "DEADLINE_EXCEEDED", "deadline_exceeded"),
    (Code::NotFound, "NOT_FOUND", "not_found"),
    (Code::AlreadyExists, "ALREADY_EXISTS", "already_exists"),
    (Code::PermissionDenied, "PERMISSION_DENIED", "permission_denied"),
    (Code::ResourceExhausted, "RESOURCE_EXHAUSTED", "resource_exhausted"),
    (Code::FailedPrecondition, "FAILED_PRECONDITION", "failed_precondition"),
    (Code::Aborted, "ABORTED", "aborted"),
    (Code::OutOfRange, "OUT_OF_RANGE", "out_of_range"),
    (Code::Unimplemented, "UNIMPLEMENTED", "unimplemented"),
    (Code::Internal, "INTERNAL", "internal"),
    (Code::Unavailable, "UNAVAILABLE", "unavailable"),
    (Code::DataLoss, "DATA_LOSS", "data_loss"),
    (Code::Unauthenticated, "UNAUTHENTICATED", "unauthenticated"),
];

/// Parses a status code given as a number (`14`) or a name (`UNAVAILABLE`, `unavailable`, `Unavailable`).
pub fn parse_code(s: &str) -> Option<Code> {
    if let Ok(n) = s.parse::<i32>() {
        return (0..=16).contains(&n).then(|| Code::from_i32(n));
    }
    let norm =
        |s: &str| -> String { s.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_ascii_lowercase() };
    let wanted = norm(s);
    CODES.iter().find(|(_, name, _)| norm(name) == wanted).map(|(code, _, _)| *code)
}

/// The upper-case name gRPC documentation uses for a code (`DEADLINE_EXCEEDED`), for logs and metrics labels.
pub fn code_name(code: Code) -> &'static str {
    CODES[code as usize].1
}

/// Connect's name of a code (`deadline_exceeded`, `canceled`), as its error bodies carry it.
pub fn connect_code_name(code: Code) -> &'static str {
    CODES[code as usize].2
}

/// One length-prefixed frame (gRPC's message framing, also grpc-web's trailer frame): the flags byte (`0`: an
/// uncompressed message; `0x80`: grpc-web trailers), the payload's length as a 4-byte big-endian integer, the
/// payload. A payload over 4 GiB − 1 cannot be framed; callers hold far smaller ones (messages are capped).
pub fn frame(flags: u8, payload: &[u8]) -> bytes::Bytes {
    use bytes::BufMut;
    let mut frame = bytes::BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(flags);
    frame.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    frame.put_slice(payload);
    frame.freeze()
}

/// Reads `grpc-status` from a header map (response headers of a Trailers-Only response, or trailers) as grpc-go and
/// gRPC-core read it: a repeated one by its last value, one that is not a number as `INTERNAL` (both report a
/// malformed `grpc-status` so), a number outside the codes as `UNKNOWN`; `None` when it is missing. On every
/// proxied response's trailers, so it reads one header and allocates nothing: not tonic's
/// `Status::from_header_map`, which decodes the message and copies every other header into the status's metadata.
pub fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers.get_all("grpc-status").iter().next_back()?;
    let n = std::str::from_utf8(v.as_bytes()).ok().and_then(|s| s.parse::<i32>().ok());
    Some(n.map_or(Code::Internal, Code::from_i32))
}

/// The status a gRPC client reports for a response whose HTTP status is `status` and that carries no
/// `grpc-status`, from gRPC's "HTTP to gRPC Status Code Mapping" (`doc/http-grpc-status-mapping.md`, which grpc-go,
/// gRPC-core, tonic and connect-go follow): 400 → `INTERNAL`, 401 → `UNAUTHENTICATED`, 403 → `PERMISSION_DENIED`,
/// 404 → `UNIMPLEMENTED`, 429, 502, 503, 504 → `UNAVAILABLE`, any other → `UNKNOWN`. `None` for 200, whose
/// status comes in the trailers.
pub fn code_of_http_status(status: http::StatusCode) -> Option<Code> {
    Some(match status.as_u16() {
        200 => return None,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    })
}

/// The status response headers already settle, as a gRPC client reads them: their `grpc-status` (a Trailers-Only
/// response), else, for an HTTP status other than 200, that status's mapping ([`code_of_http_status`]: a proxy's
/// 503, a 404 error page). `None` for a 200 without `grpc-status`: the status comes in the trailers.
pub fn status_of_response(status: http::StatusCode, headers: &http::HeaderMap) -> Option<Code> {
    status_of(headers).or_else(|| code_of_http_status(status))
}

/// The status a gRPC client reports for an RST_STREAM with `reason`, per the gRPC HTTP/2 protocol document
/// ("Errors": CANCEL → CANCELLED, ENHANCE_YOUR_CALM → RESOURCE_EXHAUSTED, INADEQUATE_SECURITY →
/// PERMISSION_DENIED, REFUSED_STREAM → UNAVAILABLE, every other code → INTERNAL).
pub fn code_of_reset(reason: h2::Reason) -> Code {
    match reason {
        h2::Reason::CANCEL => Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// Adds `grpc-status: code` and, unless `message` is empty, its percent-encoded `grpc-message` to `headers` (a
/// Trailers-Only response's headers, or trailers) through tonic's `Status::add_header`: the sidecar's own answers
/// are encoded exactly as those of the services tonic serves here (health, reflection). tonic percent-encodes
/// a few printable characters as well (space, `"`, `#`, `<`, `>`, `?`, `` ` ``, `{`, `}`), which the gRPC HTTP/2
/// document allows: a decoder must accept any percent-encoded byte.
pub fn add_status(headers: &mut http::HeaderMap, code: Code, message: &str) {
    // `add_header` fails only on a value that cannot be a header, which percent-encoding rules out; the status
    // alone still goes out then.
    if tonic::Status::new(code, message).add_header(headers).is_err() {
        headers.insert("grpc-status", http::HeaderValue::from(code as i32));
    }
}

/// The size of a header block as HTTP/2 counts it against SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2, RFC
/// 7541 §4.1): name + value + 32 bytes per field.
pub fn header_list_size(headers: &http::HeaderMap) -> u32 {
    let size: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// The stream reset behind `err`, if the failure was one stream's `RST_STREAM` sent by the peer rather than the
/// connection's failure or a reset this side's HTTP/2 stack sent (a protocol violation by the peer on that stream).
///
/// A reset says something about that call only; a connection failure (GOAWAY, I/O error) says something about
/// the endpoint. Returns the reset's reason ([`code_of_reset`] gives its status).
pub fn stream_reset(err: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let e = h2_error(err)?;
    if !e.is_reset() || !e.is_remote() {
        return None;
    }
    e.reason()
}

/// The error code of a GOAWAY that this side's HTTP/2 stack sent because the peer broke a protocol rule or one of
/// its abuse limits (`ENHANCE_YOUR_CALM`: rapid reset, CONTINUATION or small-DATA-frame floods), if that is why a
/// connection ended with `err`. A GOAWAY the peer sent, an I/O error or a clean close give `None`.
pub fn goaway_sent(err: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let e = h2_error(err)?;
    (e.is_go_away() && e.is_library()).then(|| e.reason()).flatten()
}

/// How a GOAWAY this side sent reads in a log line: `ENHANCE_YOUR_CALM` is one of h2's abuse limits (rapid reset,
/// CONTINUATION or small-DATA-frame floods); any other code (`PROTOCOL_ERROR`, `FRAME_SIZE_ERROR`, …) is a broken
/// protocol rule. h2's description of `err` carries the GOAWAY's debug data (e.g. `"too_many_data_frames"`).
pub fn goaway_cause(reason: h2::Reason, err: &(dyn std::error::Error + 'static)) -> (&'static str, String) {
    let what =
        if reason == h2::Reason::ENHANCE_YOUR_CALM { "an HTTP/2 abuse limit" } else { "an HTTP/2 protocol rule" };
    (what, h2_error(err).map(ToString::to_string).unwrap_or_default())
}

/// Tracks gRPC message boundaries in a request body to enforce a per-message size limit, without copying.
///
/// Each message is a 5-byte prefix (compressed flag + big-endian u32 length) followed by that many bytes; the
/// scanner only reads prefixes, so the proxy never decodes a body.
#[derive(Debug, Default)]
pub struct MessageScanner {
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: u64,
}

impl MessageScanner {
    /// Feeds the next chunk; returns the length of the first message that exceeds `limit`, if any.
    pub fn feed(&mut self, mut chunk: &[u8], limit: u64) -> Option<u64> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() as u64);
                self.remaining -= skip;
                chunk = &chunk[skip as usize..];
                continue;
            }
            let take = (5 - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                if u64::from(len) > limit {
                    return Some(len.into());
                }
                self.remaining = len.into();
            }
        }
        None
    }
}

/// The HTTP/2 error somewhere in an error's chain of causes (hyper wraps h2's errors), if any.
pub fn h2_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
