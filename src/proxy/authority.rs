//! The `:authority` of a request forwarded over HTTP/2, whatever protocol the caller spoke.

use http::{Uri, header, request::Parts, uri::Scheme};

/// Why a request's authority was refused (answered with HTTP 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadAuthority {
    /// More than one `Host` header (RFC 9112 §3.2: a server must answer 400).
    #[error("more than one Host header")]
    ManyHosts,
    /// The authority carries userinfo (`user@host`), which HTTP/2 forbids (RFC 9113 §8.3.1) and RFC 9110 §4.2.4
    /// deprecates.
    #[error("the authority must not carry userinfo (user@host)")]
    Userinfo,
}

/// Gives an HTTP/1.1 request (origin-form URI, authority in `Host`) the `:authority` its caller named, before the
/// `Host` header is dropped for HTTP/2: backends route and authorise on it, so it must be the caller's on every
/// protocol (RFC 9113 §8.3.1: a proxy converting HTTP/1.1 puts the `Host` value in `:authority`). An HTTP/2 request
/// already carries it in its URI and keeps it; a `Host` that is not a valid authority is ignored.
///
/// # Errors
/// Several `Host` headers, or userinfo in the authority: the caller gets HTTP 400.
pub fn authority_from_host(parts: &mut Parts) -> Result<(), BadAuthority> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadAuthority::ManyHosts);
    }
    if let Some(authority) = parts.uri.authority() {
        return if authority.as_str().contains('@') { Err(BadAuthority::Userinfo) } else { Ok(()) };
    }
    let Some(host) = host.and_then(|h| h.to_str().ok()) else { return Ok(()) };
    if host.contains('@') {
        return Err(BadAuthority::Userinfo);
    }
    let Ok(authority) = host.parse() else { return Ok(()) };
    let mut uri = parts.uri.clone().into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(uri) {
        parts.uri = uri;
    }
    Ok(())
}

/// Removes the headers an HTTP/1.1 request may carry that must not reach an HTTP/2 backend: the connection-specific
/// ones (`Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`; RFC 9113 §8.2.2 makes a
/// request carrying them malformed), `Host` (its value is the `:authority` by now, see [`authority_from_host`]) and
/// `Content-Length` (the translated body changes length). The one list of them.
pub fn remove_http1_headers(h: &mut http::HeaderMap) {
    for name in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE, header::HOST, header::CONTENT_LENGTH] {
        h.remove(name);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).expect("valid").into_parts().0
    }

    #[test]
    fn host_becomes_the_authority_of_an_http1_request() {
        let mut p = parts(Request::post("/hello.v1.HelloService/SayHello").header("host", "api.example.test:8443"));
        assert_eq!(authority_from_host(&mut p), Ok(()));
        assert_eq!(p.uri.to_string(), "http://api.example.test:8443/hello.v1.HelloService/SayHello");

        let mut p = parts(Request::post("http://caller.test/x").header("host", "other.test"));
        assert_eq!(authority_from_host(&mut p), Ok(()));
        assert_eq!(p.uri.authority().map(|a| a.as_str()), Some("caller.test"), "HTTP/2 keeps :authority");

        let mut p = parts(Request::post("/x").header("host", "bad host"));
        assert_eq!(authority_from_host(&mut p), Ok(()));
        assert_eq!(p.uri.authority(), None);
    }

    #[test]
    fn userinfo_and_several_hosts_are_refused() {
        let mut p = parts(Request::post("/x").header("host", "user:pw@api.example.test"));
        assert_eq!(authority_from_host(&mut p), Err(BadAuthority::Userinfo));
        let mut p = parts(Request::post("http://user@caller.test/x"));
        assert_eq!(authority_from_host(&mut p), Err(BadAuthority::Userinfo));
        let mut p = parts(Request::post("/x").header("host", "a.test").header("host", "b.test"));
        assert_eq!(authority_from_host(&mut p), Err(BadAuthority::ManyHosts));
    }
}
