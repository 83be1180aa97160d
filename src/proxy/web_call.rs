//! A grpc-web call: re-labelled as gRPC, forwarded like any call, re-framed on the way back.

use http::{HeaderValue, Request, Response, Uri, Version, header, request::Parts, uri::Scheme};
use hyper::body::Incoming;

use crate::proxy::{
    Proxy,
    body::ResponseBody,
    request_body::RequestBody,
    web::{self, Base64Decode, GrpcWebBody, Mode},
};

impl Proxy {
    pub(super) async fn grpc_web(&self, req: Request<Incoming>, mode: Mode) -> Response<ResponseBody> {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let (mut parts, body) = req.into_parts();
        authority_from_host(&mut parts);
        let h = &mut parts.headers;
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        // Hop-by-hop and HTTP/1.1-only headers must not reach an HTTP/2 backend; the text body changes length.
        for name in
            [header::CONTENT_LENGTH, header::CONNECTION, header::HOST, header::TRANSFER_ENCODING, header::UPGRADE]
        {
            h.remove(name);
        }
        h.remove("keep-alive");
        h.remove("x-grpc-web");
        parts.version = Version::HTTP_2;
        let body = match mode {
            Mode::Binary => RequestBody::Incoming(body),
            Mode::Text => RequestBody::Base64(Base64Decode::new(body)),
        };
        let res = self.forward(Request::from_parts(parts, body)).await;
        let (mut parts, body) = res.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, web::content_type(mode));
        web::add_cors(&mut parts.headers, origin.as_ref());
        Response::from_parts(parts, ResponseBody::Web(Box::new(GrpcWebBody::new(body, mode))))
    }
}

/// Gives an HTTP/1.1 request (origin-form URI, authority in `Host`) the `:authority` its caller named, before the
/// `Host` header is dropped for HTTP/2: backends route and authorise on it, so it must be the caller's on every
/// protocol (RFC 9113 §8.3.1: a proxy converting HTTP/1.1 puts the `Host` value in `:authority`). An HTTP/2 request
/// already carries it in its URI and is left alone; a `Host` that is not a valid authority is ignored.
pub(super) fn authority_from_host(parts: &mut Parts) {
    if parts.uri.authority().is_some() {
        return;
    }
    let Some(authority) = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()?.parse().ok()) else {
        return;
    };
    let mut uri = parts.uri.clone().into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(uri) {
        parts.uri = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_becomes_the_authority_of_an_http1_request() {
        let req = Request::post("/hello.v1.HelloService/SayHello").header("host", "api.example.test:8443").body(());
        let (mut parts, ()) = req.expect("valid").into_parts();
        authority_from_host(&mut parts);
        assert_eq!(parts.uri.to_string(), "http://api.example.test:8443/hello.v1.HelloService/SayHello");

        let req = Request::post("http://caller.test/x").header("host", "other.test").body(());
        let (mut parts, ()) = req.expect("valid").into_parts();
        authority_from_host(&mut parts);
        assert_eq!(parts.uri.authority().map(|a| a.as_str()), Some("caller.test"), "HTTP/2 keeps :authority");

        let req = Request::post("/x").header("host", "bad host").body(());
        let (mut parts, ()) = req.expect("valid").into_parts();
        authority_from_host(&mut parts);
        assert_eq!(parts.uri.authority(), None);
    }
}
