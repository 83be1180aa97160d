//! The `inbound` role: the server-side half of pod-to-pod mTLS, in front of an app on loopback.
//!
//! ```text
//! caller ──TLS (client cert required, chain checked)──▶ identity (SPIFFE ID in the URI SAN)
//!        ──▶ allow list ──▶ strip + set x-hello-sidecar-client-id ──▶ h2c to the app (frames untouched)
//! ```
//!
//! A caller without a SPIFFE ID gets `UNAUTHENTICATED`, one not on the allow list `PERMISSION_DENIED`, both as
//! Trailers-Only gRPC answers; a plaintext or unverifiable caller never gets past the handshake. The app's
//! answers go back as they came.

pub mod app;
pub mod stats;
pub mod strip;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Empty};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use self::{
    app::App,
    stats::{Outcome, Stats},
    strip::StripTrailer,
};
use crate::{
    admin,
    cli::InboundArgs,
    proxy::error::{ProxyError, status_response},
    telemetry::log_every::LogEvery,
    tls::{AllowList, ServerTls, TlsError, verify},
};

/// The request header that carries the verified caller's SPIFFE ID to the app. A caller's own copy is removed
/// from the request headers and from the request trailers ([`strip::StripTrailer`]).
pub const CLIENT_ID_HEADER: &str = "x-hello-sidecar-client-id";

/// A response to the caller: the app's, or one made here.
pub type InboundBody = Either<crate::pool::RecvBody, Empty<Bytes>>;

/// Why the inbound proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] crate::listen::BindError),
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A running inbound proxy.
pub struct Running {
    /// The TLS listener's address.
    pub listen: SocketAddr,
    /// The admin address.
    pub admin: SocketAddr,
    /// Completes when the proxy has drained and stopped.
    pub done: tokio::task::JoinHandle<()>,
}

/// A verified caller connection: who it is (if its certificate names a SPIFFE ID).
struct Peer {
    id: Option<HeaderValue>,
    label: String,
}

struct Inbound {
    allow: AllowList,
    app: App,
    stats: Arc<Stats>,
}

/// Starts the inbound proxy; it stops (after draining up to `--drain-timeout`) when `shutdown` resolves.
pub async fn start(
    args: InboundArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let tls = ServerTls::new(args.tls_cert.clone(), args.tls_key.clone(), args.tls_ca.clone())?;
    let listener = crate::listen::bind("--listen", args.listen).await?;
    let admin_listener = crate::listen::bind("--admin", args.admin).await?;
    let listen = listener.local_addr().unwrap_or(args.listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(args.admin);
    let stats = Arc::new(Stats::default());
    stats.serving.store(true, Relaxed);
    let inbound = Arc::new(Inbound { allow: args.allow_list(), app: App::new(args.forward), stats: stats.clone() });

    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(admin::serve(admin_listener, stats.clone(), async move {
        let _ = admin_stopped.await;
    }));
    info!(%listen, admin = %admin_addr, forward = %args.forward, allow = args.allow.len(), "inbound listening");
    let done = tokio::spawn(async move {
        let shutdown = async move {
            shutdown.await;
            stats.serving.store(false, Relaxed);
        };
        let handshakes = Handshakes {
            timeout: args.handshake_timeout,
            pending: Arc::new(tokio::sync::Semaphore::new(args.max_pending_handshakes as usize)),
        };
        serve(inbound, tls, listener, handshakes, shutdown, args.drain_timeout).await;
        let _ = stop_admin.send(());
        info!("inbound stopped");
    });
    Ok(Running { listen, admin: admin_addr, done })
}

/// How caller handshakes are bounded: each within `timeout`, and at most `pending`'s permits at once.
struct Handshakes {
    timeout: Duration,
    pending: Arc<tokio::sync::Semaphore>,
}

/// One log line per this period for failed handshakes, and one for shed connections.
const LOG_EVERY: Duration = Duration::from_secs(10);
static HANDSHAKE_LOG: LogEvery = LogEvery::new(LOG_EVERY);
static SHED_LOG: LogEvery = LogEvery::new(LOG_EVERY);

async fn serve(
    inbound: Arc<Inbound>,
    tls: Arc<ServerTls>,
    listener: TcpListener,
    handshakes: Handshakes,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .initial_connection_window_size(8 << 20)
        .initial_stream_window_size(1 << 20)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        // The caller is a sidecar, which has no use for `date`; hyper would format and encode it on every call.
        .auto_date_header(false);
    let graceful = GracefulShutdown::new();
    let (conns_tx, mut conns_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, remote) = crate::listen::accept(&listener) => {
                    // Too many handshakes pending (slow or idle callers, a flood): close this one at once.
                    let Ok(permit) = handshakes.pending.clone().try_acquire_owned() else {
                        inbound.stats.handshakes_shed.fetch_add(1, Relaxed);
                        if let Some(suppressed) = SHED_LOG.due() {
                            warn!(%remote, suppressed, "too many TLS handshakes pending; closed a caller's connection");
                        }
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (inbound, tls, conns_tx) = (inbound.clone(), tls.clone(), conns_tx.clone());
                    let timeout = handshakes.timeout;
                    // The handshake runs in its own task: a slow caller must not hold up the accept loop.
                    tokio::spawn(async move {
                        let ready = handshake(&inbound, &tls, stream, remote, timeout).await;
                        drop(permit);
                        if let Some(ready) = ready {
                            let _ = conns_tx.send(ready);
                        }
                    });
            }
            Some((io, peer)) = conns_rx.recv() => {
                let peer = Arc::new(peer);
                let inbound = inbound.clone();
                let svc = service_fn(move |req| {
                    let (inbound, peer) = (inbound.clone(), peer.clone());
                    async move { Ok::<_, Infallible>(inbound.handle(&peer, req).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "caller connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    crate::listen::drain(graceful, drain, "caller").await;
}

type TlsIo = tokio_rustls::server::TlsStream<TcpStream>;

/// The TLS handshake with one caller; `None` (logged, counted) when it fails.
async fn handshake(
    inbound: &Inbound,
    tls: &ServerTls,
    stream: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<(TlsIo, Peer)> {
    let io = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(io)) => io,
        // Counted always; logged at most once per LOG_EVERY (a flood of bad callers must not flood the log).
        Ok(Err(e)) => {
            inbound.stats.handshake_failures.fetch_add(1, Relaxed);
            if let Some(suppressed) = HANDSHAKE_LOG.due() {
                info!(%remote, error = %e, suppressed, "tls handshake with a caller failed");
            }
            return None;
        }
        Err(_) => {
            inbound.stats.handshake_failures.fetch_add(1, Relaxed);
            if let Some(suppressed) = HANDSHAKE_LOG.due() {
                info!(%remote, ?timeout, suppressed, "tls handshake with a caller timed out");
            }
            return None;
        }
    };
    let leaf = io.get_ref().1.peer_certificates().and_then(|c| c.first());
    // Only a well-formed SPIFFE ID names a caller: `spiffe://td/ns/shop/../x` must not pass a namespace wildcard
    // (`spiffe_id` checks it, and that it is the certificate's only URI SAN).
    let id = leaf.and_then(verify::spiffe_id);
    let serial = leaf.and_then(verify::serial_hex).unwrap_or_default();
    let label = id.clone().unwrap_or_else(|| "none".to_owned());
    inbound.stats.connected(&label, &serial);
    debug!(%remote, client_id = %label, %serial, "caller verified");
    let id = id.and_then(|s| HeaderValue::from_str(&s).ok());
    Some((io, Peer { id, label }))
}

impl Inbound {
    /// Answers one request: identity and allow list first, then the app. Never fails: every failure is a
    /// gRPC status.
    async fn handle(&self, peer: &Peer, mut req: Request<Incoming>) -> Response<InboundBody> {
        let Some(id) = &peer.id else {
            self.stats.record(&peer.label, Outcome::Unauthenticated);
            return answer(ProxyError::NoIdentity);
        };
        if !self.allow.allows(&peer.label) {
            self.stats.record(&peer.label, Outcome::PermissionDenied);
            debug!(client_id = %peer.label, path = req.uri().path(), "caller not on the allow list");
            return answer(ProxyError::NotAllowed(peer.label.clone()));
        }
        let headers = req.headers_mut();
        while headers.remove(CLIENT_ID_HEADER).is_some() {}
        headers.insert(CLIENT_ID_HEADER, id.clone());
        *req.uri_mut() = crate::grpc::absolute_uri(req.uri(), self.app.authority(), false);
        let req = req.map(|body| StripTrailer::new(body, CLIENT_ID_HEADER));
        let sent = match self.app.sender().await {
            Ok(tx) => tx.try_send_request(req).await.map_err(|e| crate::error_chain(&e)),
            Err(e) => Err(e),
        };
        match sent {
            Ok(res) => {
                self.stats.record(&peer.label, Outcome::Forwarded);
                res.map(Either::Left)
            }
            Err(e) => {
                self.stats.record(&peer.label, Outcome::Unavailable);
                warn!(app = %self.app.addr(), error = %e, "the app did not take the call");
                answer(ProxyError::AppUnavailable { addr: self.app.addr(), error: e })
            }
        }
    }
}

/// The Trailers-Only answer for a call the inbound proxy refuses (its status from [`ProxyError::code`]).
fn answer(e: ProxyError) -> Response<InboundBody> {
    status_response(e.code(), &e.to_string()).map(|_| Either::Right(Empty::new()))
}
