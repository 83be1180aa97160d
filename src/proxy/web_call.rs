//! A grpc-web call: re-labelled as gRPC, forwarded like any call, re-framed on the way back.

use http::{HeaderValue, Request, Response, Version, header};
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
