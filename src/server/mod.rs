//! The `server` role: the backend HelloService pod, and the test fixture behind the sidecar.
//!
//! - `SayHello`: empty name → `INVALID_ARGUMENT` "name is required"; else `Hello, <name>!` and code 200.
//! - Every answer (errors too) carries `x-hello-pod` (which pod answered) and `x-hello-peer` (the caller's
//!   address, i.e. which connection carried the call); behind the `inbound` proxy also `x-hello-client-id`
//!   (the caller's verified SPIFFE ID, from `x-hello-sidecar-client-id`); `x-hello-scheme` is the `:scheme` the
//!   call came with.
//! - Fault knobs, off by default ([`faults`]): delay, jitter, error rate with a chosen status, and per-call
//!   overrides by metadata.
//! - Health and reflection served; SIGTERM flips health to NOT_SERVING, then drains calls in flight.

pub mod deadline;
pub mod faults;
pub mod tls;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tonic::{Request, Response, Status, metadata::MetadataValue, transport::server::TcpConnectInfo};
use tracing::info;

use crate::{
    admin::{self, AdminState},
    cli::ServerArgs,
    pb::{
        HelloRequest, HelloResponse,
        hello_service_server::{HelloService, HelloServiceServer},
    },
};

use self::faults::Faults;

/// Counters of the backend, on its optional admin port.
#[derive(Default)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Calls answered (any status).
    pub calls: AtomicU64,
    /// Calls the caller cancelled (`RST_STREAM`) before the answer was ready.
    pub cancelled: AtomicU64,
}

impl AdminState for ServerStats {
    fn ready(&self) -> bool {
        true
    }

    fn metrics(&self) -> String {
        crate::telemetry::metrics::encode_collector(StatsSnapshot {
            connections: self.connections.load(Relaxed),
            calls: self.calls.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
        })
    }
}

/// [`ServerStats`] as read at one scrape.
#[derive(Debug)]
struct StatsSnapshot {
    connections: u64,
    calls: u64,
    cancelled: u64,
}

impl prometheus_client::collector::Collector for StatsSnapshot {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder<'_>) -> std::fmt::Result {
        use crate::telemetry::metrics::counter;
        counter(&mut enc, "hello_server_connections_accepted", "TCP connections accepted.", self.connections)?;
        counter(&mut enc, "hello_server_calls", "Calls answered.", self.calls)?;
        counter(
            &mut enc,
            "hello_server_calls_cancelled",
            "Calls the caller cancelled before the answer was ready.",
            self.cancelled,
        )
    }
}

struct Hello {
    pod: MetadataValue<tonic::metadata::Ascii>,
    faults: Faults,
    stats: Arc<ServerStats>,
}

#[tonic::async_trait]
impl HelloService for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        self.stats.calls.fetch_add(1, Relaxed);
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .and_then(|a| MetadataValue::try_from(a.to_string()).ok());
        // Behind the mTLS `inbound` proxy: the verified caller, echoed so tests and the demo can see it.
        let client_id = req.metadata().get(crate::inbound::CLIENT_ID_HEADER).cloned();
        let plan = self.faults.plan(req.metadata());
        // The `:scheme` the call came with (`https` over TLS), echoed as `x-hello-scheme`.
        let scheme = req.extensions().get::<http::uri::Scheme>().and_then(|s| MetadataValue::try_from(s.as_str()).ok());
        if !plan.delay.is_zero() {
            // tonic drops this future when the caller resets the stream: counted as cancelled.
            let cancelled = Cancelled(Some(&self.stats));
            tokio::time::sleep(plan.delay).await;
            cancelled.disarm();
        }
        let result = match plan.fail {
            Some(status) => Err(status),
            None if req.get_ref().name.is_empty() => Err(Status::invalid_argument("name is required")),
            None => {
                let name = &req.get_ref().name;
                Ok(Response::new(HelloResponse { message: format!("Hello, {name}!"), code: 200 }))
            }
        };
        let stamp = |md: &mut tonic::metadata::MetadataMap| {
            md.insert("x-hello-pod", self.pod.clone());
            if let Some(p) = &peer {
                md.insert("x-hello-peer", p.clone());
            }
            if let Some(id) = &client_id {
                md.insert("x-hello-client-id", id.clone());
            }
            if let Some(s) = &scheme {
                md.insert("x-hello-scheme", s.clone());
            }
        };
        match result {
            Ok(mut res) => {
                stamp(res.metadata_mut());
                Ok(res)
            }
            Err(mut status) => {
                stamp(status.metadata_mut());
                Err(status)
            }
        }
    }
}

/// Counts a call whose handler was dropped (the caller cancelled) unless disarmed first.
struct Cancelled<'a>(Option<&'a ServerStats>);

impl Cancelled<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(stats) = self.0 {
            stats.cancelled.fetch_add(1, Relaxed);
        }
    }
}

/// Keeps the request's `:scheme` for the handler (tonic passes extensions on, not the URI).
fn keep_scheme(mut req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    if let Some(scheme) = req.uri().scheme().cloned() {
        req.extensions_mut().insert(scheme);
    }
    req
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] crate::listen::BindError),
    /// `--id` or `POD_NAME` is not a valid header value.
    #[error("--id {0:?} must be printable ASCII")]
    BadId(String),
    /// Reflection could not load the compiled descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The server failed while running.
    #[error("serve: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the backend until `shutdown`, then drains. Returns the bound address through `bound` once listening.
pub async fn run(
    args: ServerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), StartError> {
    let id = args.id.clone().unwrap_or_else(default_id);
    let pod = MetadataValue::try_from(id.as_str()).map_err(|_| StartError::BadId(id.clone()))?;
    let stats = Arc::new(ServerStats::default());
    let faults = Faults::new(args.delay, args.delay_jitter, args.error_rate, args.error_code);
    let hello = Hello { pod, faults, stats: stats.clone() };

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<HelloServiceServer<Hello>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let server_tls = match args.tls.files() {
        Some((cert, key, ca)) => Some(crate::tls::ServerTls::new(cert, key, ca)?),
        None => None,
    };
    let listener = crate::listen::bind("--listen", args.listen).await?;
    let local = listener.local_addr().unwrap_or(args.listen);
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = args.admin {
        let admin_listener = crate::listen::bind("--admin", addr).await?;
        tokio::spawn(admin::serve(admin_listener, stats.clone(), async move {
            let _ = admin_stopped.await;
        }));
    }
    info!(addr = %local, pod = %id, "server listening");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }

    let incoming = tls::incoming(listener, server_tls, stats.clone());
    let drain = args.drain_timeout;
    let draining = Arc::new(tokio::sync::Notify::new());
    let start_drain = draining.clone();
    let shutdown = async move {
        shutdown.await;
        start_drain.notify_one();
        // Tell health checkers first, then stop accepting; tonic finishes the calls in flight (GOAWAY).
        reporter.set_not_serving::<HelloServiceServer<Hello>>().await;
        info!(?drain, "draining");
    };
    let serve = tonic::transport::Server::builder()
        .max_concurrent_streams(args.max_concurrent_streams)
        // As grpc-go (16 MiB) rather than hyper's 16 KiB: the fixture stands for stock servers, which accept large
        // metadata.
        .http2_max_header_list_size(16 << 20)
        .layer(tower::util::MapRequestLayer::new(keep_scheme))
        // Inside tonic's own grpc-timeout timer, which would answer CANCELLED: see `deadline`.
        .layer(deadline::DeadlineLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(HelloServiceServer::new(hello))
        .serve_with_incoming_shutdown(incoming, shutdown);
    // The drain is bounded: a call that outlives it is cut when the process exits.
    let result = tokio::select! {
        r = serve => r,
        () = async { draining.notified().await; tokio::time::sleep(drain).await } => Ok(()),
    };
    let _ = stop_admin.send(());
    info!("server stopped");
    Ok(result?)
}

fn default_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "hello-server".to_owned())
}
