//! The admin HTTP server: `/live`, `/ready`, `/metrics` (Prometheus text), `/debug/endpoints` (JSON).
//!
//! Kept apart from the data path on its own port, so probes and scrapes never queue behind calls and the app's
//! port stays loopback-only.

use std::{convert::Infallible, future::Future, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tracing::debug;

/// What a role exposes on its admin port.
pub trait AdminState: Send + Sync + 'static {
    /// Whether the process should get traffic (`/ready`).
    fn ready(&self) -> bool;
    /// Why it is not ready, or what is degraded while it is (`/ready`'s body), where there is something to say.
    fn ready_detail(&self) -> Option<String> {
        None
    }
    /// Prometheus text exposition (`/metrics`).
    fn metrics(&self) -> String;
    /// The endpoint set as JSON (`/debug/endpoints`), where the role has one.
    fn debug_endpoints(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Serves the admin routes until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: Arc<dyn AdminState>, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, _) = crate::listen::accept(&listener) => {
                let state = state.clone();
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&*state, &req)) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => return,
        }
    }
}

fn answer(state: &dyn AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => {
            let (status, word) =
                if state.ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") };
            match state.ready_detail() {
                Some(detail) => text(status, format!("{word}: {detail}\n")),
                None => text(status, format!("{word}\n")),
            }
        }
        "/metrics" => {
            let mut res = text(StatusCode::OK, state.metrics());
            res.headers_mut()
                .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE));
            res
        }
        "/debug/endpoints" => match state.debug_endpoints() {
            Some(v) => {
                let mut res = text(StatusCode::OK, format!("{v:#}\n"));
                res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                res
            }
            None => text(StatusCode::NOT_FOUND, "no endpoints in this role\n".into()),
        },
        _ => text(StatusCode::NOT_FOUND, "try /live, /ready, /metrics, /debug/endpoints\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res
}
