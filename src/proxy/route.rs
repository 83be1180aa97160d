//! Which way a request goes, decided from its version, content-type and `:path` alone. Which target serves a
//! forwarded call is the route table's business ([`crate::routes`]), looked up when the call is forwarded.

use http::{Method, Request, Version, header};

use crate::proxy::{connect::Codec, error::ProxyError, web};

/// The service `--target` routes (the built-in default and the demo's).
pub const HELLO_SERVICE: &str = "hello.v1.HelloService";

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To a backend, untouched (or UNIMPLEMENTED when no route names its service).
    Forward,
    /// `grpc.health.v1.Health`, answered here.
    Health,
    /// gRPC server reflection (v1 and v1alpha), answered here or by the route's backends ([`crate::proxy::reflection`]).
    Reflection,
    /// grpc-web (HTTP/1.1 or HTTP/2), translated to gRPC.
    GrpcWeb(web::Mode),
    /// Connect unary (JSON or binary), translated to gRPC.
    Connect(Codec),
    /// A browser's CORS preflight.
    Preflight,
}

/// Routes a request, or says why it cannot be served.
pub fn route<B>(req: &Request<B>) -> Result<Route, ProxyError> {
    if web::is_preflight(req.method(), req.headers()) {
        return Ok(Route::Preflight);
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("<not ascii>"));
    let ct = content_type.unwrap_or("none");
    let path = req.uri().path();
    if let Some(mode) = web::mode_of(ct) {
        return Ok(Route::GrpcWeb(mode));
    }
    if let Some(codec) = Codec::of(ct).filter(|_| req.method() == Method::POST) {
        return Ok(Route::Connect(codec));
    }
    // A Connect GET: answered in Connect's error format (the sidecar translates POST only), not as "not gRPC".
    if let Some(codec) = Codec::of_get_query(req.uri().query()).filter(|_| req.method() == Method::GET) {
        return Ok(Route::Connect(codec));
    }
    let is_grpc =
        ct == "application/grpc" || ct.starts_with("application/grpc+") || ct.starts_with("application/grpc;");
    if !is_grpc {
        return Err(ProxyError::NotGrpc(ct.to_owned()));
    }
    if req.version() != Version::HTTP_2 {
        return Err(ProxyError::Http1);
    }
    Ok(of_grpc_path(path))
}

/// Where a gRPC call goes by its `:path`, whether the app sent it as gRPC or it was translated from grpc-web or
/// Connect: health and reflection are answered here, everything else is forwarded.
pub fn of_grpc_path(path: &str) -> Route {
    if path.starts_with("/grpc.health.v1.Health/") {
        Route::Health
    } else if path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
    {
        Route::Reflection
    } else {
        Route::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, ct: Option<&str>, version: Version) -> Request<()> {
        let mut b = Request::post(path).version(version);
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn routes_by_path() {
        let g = Some("application/grpc");
        assert_eq!(route(&req("/hello.v1.HelloService/SayHello", g, Version::HTTP_2)).ok(), Some(Route::Forward));
        assert_eq!(route(&req("/grpc.health.v1.Health/Check", g, Version::HTTP_2)).ok(), Some(Route::Health));
        let r = req("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", g, Version::HTTP_2);
        assert_eq!(route(&r).ok(), Some(Route::Reflection));
        let proto = Some("application/grpc+proto");
        assert_eq!(route(&req("/hello.v1.HelloService/Other", proto, Version::HTTP_2)).ok(), Some(Route::Forward));
        // Any other service is forwarded; the route table answers UNIMPLEMENTED for one it does not route.
        assert_eq!(route(&req("/x.Y/Z", g, Version::HTTP_2)).ok(), Some(Route::Forward));
    }

    #[test]
    fn grpc_web_and_connect_are_routed_on_either_http_version() {
        let p = "/hello.v1.HelloService/SayHello";
        let web = req(p, Some("application/grpc-web+proto"), Version::HTTP_11);
        assert_eq!(route(&web).ok(), Some(Route::GrpcWeb(web::Mode::Binary)));
        let text = req(p, Some("application/grpc-web-text"), Version::HTTP_2);
        assert_eq!(route(&text).ok(), Some(Route::GrpcWeb(web::Mode::Text)));
        assert_eq!(route(&req(p, Some("application/json"), Version::HTTP_11)).ok(), Some(Route::Connect(Codec::Json)));
        assert_eq!(route(&req(p, Some("application/proto"), Version::HTTP_2)).ok(), Some(Route::Connect(Codec::Proto)));
        let other = req("/x.Y/Z", Some("application/grpc-web"), Version::HTTP_11);
        assert_eq!(route(&other).ok(), Some(Route::GrpcWeb(web::Mode::Binary)));
        // A Connect GET is Connect's to answer; any other GET is not gRPC.
        let get = |uri: &str| Request::get(uri).body(()).unwrap_or_else(|e| panic!("{e}"));
        let connect_get = get("/a.B/C?connect=v1&encoding=proto&message=AA");
        assert_eq!(route(&connect_get).ok(), Some(Route::Connect(Codec::Proto)));
        assert_eq!(route(&get("/a.B/C?connect=v1&message=%7B%7D")).ok(), Some(Route::Connect(Codec::Json)));
        assert!(matches!(route(&get("/a.B/C")), Err(ProxyError::NotGrpc(_))));
    }

    #[test]
    fn refuses_what_is_not_grpc_over_http2() {
        let text = req("/hello.v1.HelloService/SayHello", Some("text/plain"), Version::HTTP_2);
        assert!(matches!(route(&text), Err(ProxyError::NotGrpc(ct)) if ct == "text/plain"));
        assert!(matches!(route(&req("/", None, Version::HTTP_2)), Err(ProxyError::NotGrpc(_))));
        let h1 = req("/hello.v1.HelloService/SayHello", Some("application/grpc"), Version::HTTP_11);
        assert!(matches!(route(&h1), Err(ProxyError::Http1)));
    }
}
