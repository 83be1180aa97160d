//! A grpc-web call: re-labelled as gRPC, forwarded like any call, re-framed on the way back.

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use crate::proxy::{
    Proxy,
    authority::{BadAuthority, authority_from_host},
    body::ResponseBody,
    request_body::RequestBody,
    web::{self, Base64Decode, GrpcWebBody, Mode},
};

impl Proxy {
    pub(super) async fn grpc_web(&self, req: Request<Incoming>, mode: Mode) -> Response<ResponseBody> {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let (mut parts, body) = req.into_parts();
        if let Err(e) = authority_from_host(&mut parts) {
            return bad_request(e);
        }
        let h = &mut parts.headers;
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        // Hop-by-hop and HTTP/1.1-only headers must not reach an HTTP/2 backend; the text body changes length.
        super::authority::remove_http1_headers(h);
        h.remove("x-grpc-web");
        parts.version = Version::HTTP_2;
        let body = match mode {
            Mode::Binary => RequestBody::Incoming(body),
            Mode::Text => RequestBody::Base64(Base64Decode::new(body)),
        };
        let res = self.grpc(Request::from_parts(parts, body)).await;
        let (mut parts, body) = res.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, web::content_type(mode));
        web::add_cors(&mut parts.headers, origin.as_ref());
        Response::from_parts(parts, ResponseBody::Web(Box::new(GrpcWebBody::new(body, mode))))
    }
}

/// HTTP 400 for a request whose authority is refused ([`authority_from_host`]).
pub(super) fn bad_request(e: BadAuthority) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::text(format!("bad request: {e}\n")));
    *res.status_mut() = StatusCode::BAD_REQUEST;
    res
}
