//! One multiplexed HTTP/2 connection per endpoint, kept up in the background.
//!
//! Each endpoint gets a connector task: connect (with a timeout), handshake HTTP/2 with keepalive pings, publish
//! the request handle, drive the connection until it ends, then reconnect after an exponential backoff with full
//! jitter. Calls never wait for a connect: the balancer only picks endpoints whose connection is up, so a dead pod
//! costs nothing but its backoff timer.
//!
//! A second connection is opened only when the peer's max-concurrent-streams is reached on the first one
//! ([`Connection::lease`]), and closed again once idle.
//!
//! Keepalive (DESIGN §3, gRFC A8): stock servers police PINGs. grpc-go and gRPC-core allow one PING per 5 minutes
//! and none while no stream is open; past that they answer GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings" and close
//! the connection with every stream on it. So HTTP/2 PINGs go out only while streams are open, every
//! [`Settings::keepalive_interval`] of silence (5 min by default, the stock servers' minimum), and a
//! `too_many_pings` GOAWAY doubles that endpoint's interval, as grpc-go's client does. A dead host is found
//! sooner by TCP keepalive and `TCP_USER_TIMEOUT`, which the kernel handles below HTTP/2 where no server can
//! object; a hung process (alive to TCP) is the balancer's business, through deadlines and failure accrual.
//!
//! Draining: when discovery removes an endpoint, [`Connection::retire`] stops reconnects and drops the published
//! handle. h2 closes a client connection once every handle is gone and its last stream has finished, so calls in
//! flight complete and no new call can start there.
//!
//! Requests go out on h2's client directly (`pool/client.rs`), not through hyper's, which costs two tasks per call.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::telemetry::{log_every::LogEvery, metrics::Metrics};

mod client;
mod coalesce;
mod connect;
mod driver;
mod exec;
mod failure;
mod lease;
mod maintain;
mod preface;
mod shared;

pub use self::client::{RecvBody, SendError, SendRequest};
pub use self::connect::{ConnectError, MAX_WINDOW, STREAM_WINDOW, connect, connection_window};
pub use self::driver::{Driver, DriverError};
pub use self::exec::BoxExecutor;
pub use self::failure::{SendFailure, calm_goaway, classify};
pub use self::lease::Lease;
use self::lease::Overflow;
use self::maintain::maintain;
pub use self::shared::{MAX_CONNECTING, Shared};

/// A request body the pool can send: any [`http_body::Body`] of [`bytes::Bytes`] that can move between tasks.
/// The pool is generic over it so that it names nothing of the proxy above it; the proxy names its concrete body
/// once (`proxy::UpstreamRequestBody`). Generic code is monomorphised for that one body, so this costs nothing per call.
pub trait SendBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<crate::BoxError>> + Send + Unpin + 'static
{
}

impl<T> SendBody for T where
    T: http_body::Body<Data = bytes::Bytes, Error: Into<crate::BoxError>> + Send + Unpin + 'static
{
}

/// Where the pool reports how connects went. The pool states facts; the judge (the balancer's breaker) decides
/// what they mean for the endpoint.
pub trait ConnectOutcomes: Send + Sync + 'static {
    /// A connection to the endpoint came up.
    fn connected(&self);
    /// A connect to the endpoint failed (refused, timed out, TLS refused, closed right after connecting).
    fn connect_failed(&self);
}

/// Timings of the connector.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Timeout of TCP connect + HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`, with full jitter.
    pub min_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// Silence on a connection with open streams after which an HTTP/2 PING checks the peer (never while no
    /// stream is open). Doubled per endpoint after a `too_many_pings` GOAWAY.
    pub keepalive_interval: Duration,
    /// A PING unanswered this long closes the connection.
    pub keepalive_timeout: Duration,
    /// SETTINGS_MAX_HEADER_LIST_SIZE advertised to backends: the largest response header or trailer block
    /// accepted, in bytes as RFC 7541 §4.1 counts them (name + value + 32 per field).
    pub max_header_list_bytes: u32,
    /// Calls that may be in flight on one backend connection at once (`--max-concurrent-calls`): its connection
    /// window is [`connection_window`] of it.
    pub max_streams: u32,
    /// TLS to the target's endpoints; `None` is h2c. On a certificate reload, each endpoint's connection is
    /// replaced make-before-break.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            keepalive_interval: STOCK_MIN_PING_INTERVAL,
            keepalive_timeout: Duration::from_secs(20),
            max_header_list_bytes: 1 << 20,
            max_streams: 1024,
            tls: None,
        }
    }
}

/// The shortest PING interval that grpc-go and gRPC-core servers accept by default
/// (`keepalive.EnforcementPolicy.MinTime`, `grpc.http2.min_ping_interval_without_data_ms`).
pub const STOCK_MIN_PING_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The longest a doubled keepalive interval grows (a longer configured one is kept as it is).
const MAX_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// One warn line per 10 s about GOAWAYs sent to backends: one that reconnects and breaks the same rule again would
/// otherwise write a line per connection (the metric counts every GOAWAY).
static GOAWAY_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

/// What the connection of an endpoint is doing now.
#[derive(Debug)]
pub enum State<B> {
    /// A connect is under way.
    Connecting,
    /// Up: calls may use it.
    Ready(SendRequest<B>),
    /// The last attempt failed; the next one starts after a backoff.
    Backoff {
        /// Why the last attempt failed.
        error: String,
    },
    /// Retired by discovery: draining calls in flight, no reconnects.
    Draining,
}

impl<B> Clone for State<B> {
    fn clone(&self) -> Self {
        match self {
            State::Connecting => State::Connecting,
            State::Ready(tx) => State::Ready(tx.clone()),
            State::Backoff { error } => State::Backoff { error: error.clone() },
            State::Draining => State::Draining,
        }
    }
}

impl<B> State<B> {
    /// A short name for metrics and `/debug/endpoints`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Ready(_) => "ready",
            State::Backoff { .. } => "backoff",
            State::Draining => "draining",
        }
    }
}

/// The connection of one endpoint, shared by the balancer and its connector task.
pub struct Connection<B> {
    addr: SocketAddr,
    state: RwLock<State<B>>,
    stop: watch::Sender<bool>,
    /// Shared with the target's other connections: every state change is signalled there.
    shared: Arc<Shared>,
    /// Calls in flight on the primary connection.
    primary_in_flight: Arc<AtomicU32>,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS on the primary connection, as its driver last saw it.
    primary_max_streams: AtomicUsize,
    /// Extra connections, opened only while the peer's max-concurrent-streams is reached on the others.
    overflow: Mutex<Overflow<B>>,
    /// The keepalive interval of this endpoint's next connections, in milliseconds (doubled by `too_many_pings`).
    keepalive_ms: AtomicU64,
    settings: Settings,
    metrics: Arc<Metrics>,
}

impl<B: SendBody> Connection<B> {
    /// Creates the connection and starts its connector task, which reports every connect to `outcomes`.
    pub fn spawn(
        addr: SocketAddr,
        settings: Settings,
        outcomes: Arc<dyn ConnectOutcomes>,
        metrics: Arc<Metrics>,
        shared: Arc<Shared>,
    ) -> Arc<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let conn = Arc::new(Self {
            addr,
            state: RwLock::new(State::Connecting),
            stop,
            shared,
            primary_in_flight: Arc::default(),
            primary_max_streams: AtomicUsize::new(usize::MAX),
            overflow: Mutex::default(),
            keepalive_ms: AtomicU64::new(settings.keepalive_interval.as_millis() as u64),
            settings: settings.clone(),
            metrics: metrics.clone(),
        });
        tokio::spawn(maintain(conn.clone(), settings, outcomes, metrics, stop_rx));
        conn
    }
}

impl<B> Connection<B> {
    /// The request handle, if the connection is up.
    pub fn sender(&self) -> Option<SendRequest<B>> {
        match &*self.state.read() {
            State::Ready(tx) if !tx.is_closed() => Some(tx.clone()),
            _ => None,
        }
    }

    /// The current state (for metrics and debugging).
    pub fn state(&self) -> State<B> {
        self.state.read().clone()
    }

    /// Whether a call could be sent now.
    pub fn is_ready(&self) -> bool {
        matches!(&*self.state.read(), State::Ready(tx) if !tx.is_closed())
    }

    /// Stops reconnecting and lets the connection close once its calls in flight finish.
    pub fn retire(&self) {
        self.stop.send_replace(true);
        self.set(State::Draining);
        self.overflow.lock().conns.clear();
    }

    /// The keepalive interval the next connection to this endpoint uses.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms.load(Relaxed))
    }

    /// Notes how a connection ended: a `too_many_pings` GOAWAY doubles the keepalive interval (grpc-go's client
    /// does the same), so the next connection stays within the peer's ping policy.
    fn closed(&self, error: Option<&DriverError>) {
        let Some(e) = error else {
            debug!(addr = %self.addr, "connection closed by the peer");
            return;
        };
        if calm_goaway(e) {
            let now = self.keepalive_interval();
            let next = now.saturating_mul(2).min(MAX_KEEPALIVE_INTERVAL).max(now);
            self.keepalive_ms.store(next.as_millis() as u64, Relaxed);
            self.metrics.keepalive_goaways.fetch_add(1, Relaxed);
            warn!(
                addr = %self.addr,
                error = %crate::error_chain(e),
                keepalive_interval = ?next,
                "the peer closed the connection over our PINGs (too_many_pings); doubled the keepalive interval"
            );
        } else if let Some(reason) = crate::grpc::goaway_sent(e) {
            self.metrics.record_goaway_sent(true, reason);
            let (what, goaway) = crate::grpc::goaway_cause(reason, e);
            if let Some(suppressed) = GOAWAY_LOG.due() {
                warn!(addr = %self.addr, ?reason, %goaway, suppressed, "closed the connection: the backend broke {what}");
            }
        } else {
            info!(addr = %self.addr, error = %crate::error_chain(e), "connection closed");
        }
    }

    /// The current state's [`State::name`], without cloning the state (`/metrics` reads it for every endpoint).
    pub fn state_name(&self) -> &'static str {
        self.state.read().name()
    }

    fn set(&self, state: State<B>) {
        let now_ready = matches!(state, State::Ready(_));
        let was_ready = matches!(std::mem::replace(&mut *self.state.write(), state), State::Ready(_));
        self.shared.ready_changed(was_ready, now_ready);
        self.shared.notify();
    }
}
