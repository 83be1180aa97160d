//! The inbound side of the data path: the app's HTTP/2 connections on loopback, and each call's way through.
//!
//! ```text
//! accept → route (:path, content-type) ─┬─ HelloService → forward (deadline, pick, retry) → pooled h2 → backend
//!                                        ├─ grpc-web, Connect → translated (web_call, connect_call) → forward
//!                                        ├─ grpc.health.v1 → answered here; reflection → here or the route's backends
//!                                        └─ anything else → UNIMPLEMENTED / 415 / 426
//! ```

mod authority;
pub mod body;
pub mod budget;
pub mod call;
pub mod call_log;
pub mod connect;
mod connect_call;
pub mod error;
mod forward;
mod hedge;
pub mod reflection;
pub mod replay;
pub mod request_body;
pub mod route;
mod stalled;
pub mod web;
mod web_call;

use std::{collections::HashMap, convert::Infallible, future::Future, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use parking_lot::RwLock;
use tokio::{net::TcpListener, sync::Semaphore};
use tower::{ServiceExt, util::BoxCloneSyncService};
use tracing::warn;

use crate::{
    pool::{BoxExecutor, STREAM_WINDOW},
    proxy::{body::ResponseBody, budget::RetryBudget, error::ProxyError, request_body::RequestBody, route::Route},
    routes::RouteTable,
    service_config::ServiceConfig,
    telemetry::{log_every::LogEvery, metrics::Metrics},
};

/// The request body the proxy sends upstream: the caller's body, kept for retries. The one place that names the
/// concrete body the balancer and the pool carry (both are generic over it).
pub type UpstreamRequestBody = replay::ReplayBody;
/// The balancer of a target, carrying [`UpstreamRequestBody`].
pub type Balancer = crate::balance::Balancer<UpstreamRequestBody>;
/// One try of a call on one endpoint ([`crate::balance::Attempt`]).
pub type Attempt = crate::balance::Attempt<UpstreamRequestBody>;

/// A gRPC service answered inside the sidecar (health, reflection).
pub type LocalService = BoxCloneSyncService<Request<RequestBody>, Response<tonic::body::Body>, Infallible>;

/// Per-call policy.
#[derive(Debug, Clone)]
pub struct Config {
    /// Deadline of a call that carries no `grpc-timeout`.
    pub default_timeout: Duration,
    /// Longest wait for a usable endpoint.
    pub failfast_timeout: Duration,
    /// Calls in flight at once.
    pub max_concurrent_calls: u32,
    /// Largest request message.
    pub max_message_bytes: u64,
    /// Retries as a fraction of calls.
    pub retry_budget: f64,
    /// Largest header or trailer block passed through, in RFC 7541 §4.1 bytes; larger ones get an explicit
    /// `RESOURCE_EXHAUSTED` naming the size.
    pub max_header_bytes: u32,
    /// The backend connections use TLS (`--tls-*`): forwarded requests carry `:scheme https`.
    pub backend_tls: bool,
}

/// The proxy: everything a call needs, shared by every connection.
pub struct Proxy {
    config: Config,
    /// Which target's balancer serves each gRPC service.
    routes: RouteTable<Arc<Balancer>>,
    /// Per-method policy (deadline, retries, wait-for-ready) from the gRPC service config.
    service_config: ServiceConfig,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    budget: RetryBudget,
    health: LocalService,
    reflection: LocalService,
    reflection_v1alpha: LocalService,
    methods: RwLock<HashMap<String, Arc<str>>>,
    /// Message types for Connect JSON beyond the compiled schema (descriptor sets, backends' reflection).
    schemas: Option<Arc<crate::proxy::reflection::schema::Schemas>>,
}

impl Proxy {
    /// Builds the proxy over the route table, with the local services it answers itself.
    pub fn new(
        config: Config,
        routes: RouteTable<Arc<Balancer>>,
        service_config: ServiceConfig,
        metrics: Arc<Metrics>,
        health: LocalService,
        reflection: LocalService,
        reflection_v1alpha: LocalService,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_concurrent_calls as usize)),
            budget: RetryBudget::new(config.retry_budget),
            config,
            routes,
            service_config,
            metrics,
            health,
            reflection,
            reflection_v1alpha,
            methods: RwLock::default(),
            schemas: None,
        }
    }

    /// Lets Connect JSON find message types in `schemas` (descriptor sets, the routes' backends' reflection) for
    /// services the sidecar was not compiled with.
    pub fn with_schemas(mut self, schemas: Arc<crate::proxy::reflection::schema::Schemas>) -> Self {
        self.schemas = Some(schemas);
        self
    }

    /// Answers one request. Never fails: every failure is a response.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
        let res = match route::route(&req) {
            Ok(Route::Forward) => self.forward(req.map(RequestBody::Incoming)).await,
            Ok(Route::GrpcWeb(mode)) => self.grpc_web(req, mode).await,
            Ok(Route::Connect(codec)) => self.connect(req, codec).await,
            Ok(Route::Preflight) => web::preflight(req.headers()),
            Ok(Route::Health | Route::Reflection) => self.grpc(req.map(RequestBody::Incoming)).await,
            Err(e) => {
                if let ProxyError::Unimplemented(_) = &e {
                    self.metrics.record_call(OTHER_METHOD, e.code(), Duration::ZERO);
                    if self.metrics.access_log().is_some() {
                        let mut log = call_log::CallLog::new(&self.metrics);
                        log.finish(&self.metrics, &Arc::from(OTHER_METHOD), e.code(), tokio::time::Instant::now());
                    }
                }
                e.into_response()
            }
        };
        Ok(res)
    }

    /// A gRPC call, as the app sent it or translated from grpc-web or Connect: health and reflection are answered
    /// here ([`route::of_grpc_path`]), everything else is forwarded.
    pub(super) async fn grpc(&self, req: Request<RequestBody>) -> Response<ResponseBody> {
        match route::of_grpc_path(req.uri().path()) {
            Route::Health => local(&self.health, req).await,
            Route::Reflection if req.uri().path().contains(".v1alpha.") => local(&self.reflection_v1alpha, req).await,
            Route::Reflection => local(&self.reflection, req).await,
            _ => self.forward(req).await,
        }
    }

    /// The interned metrics label of a method path: one allocation per distinct label, not per call, and a
    /// bounded set of labels, so no client can create series at will. A method of the compiled schema is its
    /// path; any other method of a service routed by name (whose schema the sidecar lacks) is `/service/*`, one
    /// label per route; everything else (unknown methods of a compiled service, unrouted or random paths) is
    /// [`OTHER_METHOD`].
    fn method_label(&self, path: &str) -> Arc<str> {
        if let Some(m) = self.methods.read().get(path) {
            return m.clone();
        }
        if is_known_method(path) {
            let mut methods = self.methods.write();
            return methods.entry(path.to_owned()).or_insert_with(|| Arc::from(path)).clone();
        }
        let service = path.strip_prefix('/').and_then(|p| p.split_once('/')).map(|(s, _)| s);
        if let Some(service) = service.filter(|s| self.routes.routes_by_name(s) && !is_known_service(s)) {
            let key = format!("/{service}/*");
            if let Some(m) = self.methods.read().get(&key) {
                return m.clone();
            }
            let mut methods = self.methods.write();
            return methods.entry(key.clone()).or_insert_with(|| Arc::from(key)).clone();
        }
        static OTHER: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(OTHER_METHOD));
        OTHER.clone()
    }

    /// Accepts connections until `shutdown` resolves, then waits up to `drain` for calls in flight.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>, drain: Duration) {
        let max_streams = self.config.max_concurrent_calls.saturating_add(64);
        let mut builder = auto::Builder::new(BoxExecutor);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(max_streams)
            // h2 answers a header block over SETTINGS_MAX_HEADER_LIST_SIZE with a bare HTTP 431, which gRPC
            // clients report as UNKNOWN. So h2's limit sits well above ours, and the call path refuses what is
            // over ours with a gRPC status that names the size.
            .max_header_list_size(h2_header_list_limit(self.config.max_header_bytes))
            // See `inbound_connection_window`: stalled request streams cannot starve the app's other calls.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(inbound_connection_window(max_streams))
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            // No `date` on HTTP/2 answers: gRPC does not use it (grpc-go and gRPC-core send none), and hyper would
            // format, insert and HPACK-encode it on every call. HTTP/1.1 answers (browsers: grpc-web, Connect)
            // keep it, as RFC 9110 §6.6.1 asks of a server with a clock.
            .auto_date_header(false);
        // HTTP/1.1 callers (grpc-web, Connect) get the same header room as HTTP/2 ones: hyper's defaults (100
        // fields, a ~408 KiB read buffer) answer a bare 431 where HTTP/2 reaches the call path, which refuses what
        // is over `--max-header-bytes` with a status that names the size.
        builder
            .http1()
            .max_headers(h1_max_headers(self.config.max_header_bytes))
            .max_buf_size(h2_header_list_limit(self.config.max_header_bytes) as usize);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                (stream, peer) = crate::listen::accept(&listener) => {
                        let _ = stream.set_nodelay(true);
                        let proxy = self.clone();
                        // Boxed once here: a call's state machine is large, and unboxed it would be copied into
                        // the stream's task cell and through every poll (memcpy topped the profile).
                        let svc = service_fn(move |req| Box::pin(proxy.clone().handle(req)));
                        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                        let conn = graceful.watch(conn);
                        let metrics = self.metrics.clone();
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                if let Some(reason) = crate::grpc::goaway_sent(&*e) {
                                    metrics.record_goaway_sent(false, reason);
                                    let (what, goaway) = crate::grpc::goaway_cause(reason, &*e);
                                    if let Some(suppressed) = GOAWAY_LOG.due() {
                                        warn!(%peer, ?reason, %goaway, suppressed, "closed an inbound connection: the client broke {what}");
                                    }
                                } else {
                                    tracing::debug!(error = %e, "inbound connection ended with an error");
                                }
                            }
                        });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        crate::listen::drain(graceful, drain, "inbound").await;
    }
}

/// The SETTINGS_MAX_HEADER_LIST_SIZE given to h2 for a `--max-header-bytes` limit: 16 MiB (grpc-go's default) or
/// four times the limit if that is more, so a block over the limit still reaches the code that answers it with a
/// gRPC status. Past h2's own limit h2 acts first (a bare 431 for a request; a trailer block loses its fields), as
/// a stock grpc-go peer would past its 16 MiB. The decoded block is held only while a call's headers are read.
pub fn h2_header_list_limit(max_header_bytes: u32) -> u32 {
    max_header_bytes.saturating_mul(4).max(16 << 20)
}

/// How many header fields an HTTP/1.1 request may carry: as many of the smallest fields (32 bytes of RFC 7541
/// overhead each, as `--max-header-bytes` counts them) as fit in `max_header_bytes`, at least hyper's default of
/// 100 and at most 4,096 (hyper allocates room for them per request).
fn h1_max_headers(max_header_bytes: u32) -> usize {
    (max_header_bytes as usize / 32).clamp(100, 4096)
}

/// The inbound connection window: every stream the app may open (`max_streams`) × [`STREAM_WINDOW`], capped at
/// the RFC 9113 maximum ([`crate::pool::connection_window`]). A request stream whose backend stops reading holds at
/// most its own stream window here, so however many stall, the app's other calls on the same connection can still
/// send (issue 16.1); data held stays bounded by the streams × [`STREAM_WINDOW`] (in memory, see the known limit
/// at [`STREAM_WINDOW`]). h2 derives its small-DATA-frame flood budget from this window: a client stream of 20,000
/// ten-byte messages, each in its own DATA frame, fits many times over, while a flood of one-byte frames still ends
/// in GOAWAY `ENHANCE_YOUR_CALM`.
fn inbound_connection_window(max_streams: u32) -> u32 {
    crate::pool::connection_window(max_streams)
}

/// One warn line per 10 s about GOAWAYs sent to clients: one that reconnects and breaks the same rule again would
/// otherwise write a line per connection (the metric counts every GOAWAY).
static GOAWAY_LOG: LogEvery = LogEvery::new(std::time::Duration::from_secs(10));

/// The `method` label of every call whose path is not a method of the compiled schema.
pub const OTHER_METHOD: &str = "other";

/// The compiled descriptor set, decoded once.
fn schema() -> Option<&'static prost_reflect::DescriptorPool> {
    static POOL: std::sync::OnceLock<Option<prost_reflect::DescriptorPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| prost_reflect::DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).ok()).as_ref()
}

/// Whether `service` is in the compiled descriptor set.
fn is_known_service(service: &str) -> bool {
    schema().is_some_and(|pool| pool.get_service_by_name(service).is_some())
}

/// Whether `path` (`/package.Service/Method`) names a method in the compiled descriptor set.
fn is_known_method(path: &str) -> bool {
    let Some(pool) = schema() else { return false };
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else { return false };
    pool.get_service_by_name(service).is_some_and(|s| s.methods().any(|m| m.name() == method))
}

async fn local(svc: &LocalService, req: Request<RequestBody>) -> Response<ResponseBody> {
    match svc.clone().oneshot(req).await {
        Ok(res) => res.map(ResponseBody::local),
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbound_connection_window_covers_every_stream_up_to_the_rfc_maximum() {
        assert_eq!(inbound_connection_window(1088), 1088 * STREAM_WINDOW);
        assert_eq!(inbound_connection_window(u32::MAX), (1 << 31) - 1);
        // h2's small-DATA-frame budget is half of it: a stalled stream of 15-byte frames (241 accounted bytes
        // each) must fit many times over.
        let per_stalled_stream = u64::from(STREAM_WINDOW) / 15 * 241;
        assert!(u64::from(inbound_connection_window(1088)) / 2 > 30 * per_stalled_stream);
    }

    #[test]
    fn only_methods_of_the_schema_are_labels() {
        assert!(is_known_method("/hello.v1.HelloService/SayHello"));
        for path in ["/hello.v1.HelloService/Nope", "/x.Y/Z", "/", "", "/hello.v1.HelloService", "/a/b/c"] {
            assert!(!is_known_method(path), "{path}");
        }
    }
}
