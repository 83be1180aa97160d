//! The inbound proxy's connection to the app on loopback: one h2c connection, opened on first use and again
//! whenever it closed.

use std::{net::SocketAddr, time::Duration};

use parking_lot::RwLock;

use hyper::{
    body::Incoming,
    client::conn::http2::{self, SendRequest},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

/// What goes to the app: the caller's body, its trailers without the identity header.
pub type AppBody = super::strip::StripTrailer<Incoming>;

/// Connect + HTTP/2 handshake to the app, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The app's HTTP/2 connection.
pub struct App {
    addr: SocketAddr,
    /// `addr` as a request `:authority`, made once.
    authority: Option<http::uri::Authority>,
    current: RwLock<Option<SendRequest<AppBody>>>,
    /// Serialises reconnects, so a burst of calls after a restart of the app opens one connection, not many.
    connecting: tokio::sync::Mutex<()>,
}

impl App {
    /// The app at `addr` (not connected yet).
    pub fn new(addr: SocketAddr) -> Self {
        let authority = addr.to_string().parse().ok();
        Self { addr, authority, current: RwLock::new(None), connecting: tokio::sync::Mutex::new(()) }
    }

    /// Where the app listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the app listens, as a request `:authority`.
    pub fn authority(&self) -> Option<&http::uri::Authority> {
        self.authority.as_ref()
    }

    fn usable(&self) -> Option<SendRequest<AppBody>> {
        match &*self.current.read() {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            _ => None,
        }
    }

    /// A handle to send on, connecting first if needed. Errors: why the app cannot be reached.
    pub async fn sender(&self) -> Result<SendRequest<AppBody>, String> {
        if let Some(tx) = self.usable() {
            return Ok(tx);
        }
        let _guard = self.connecting.lock().await;
        if let Some(tx) = self.usable() {
            return Ok(tx);
        }
        let tx = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| format!("connect timed out after {CONNECT_TIMEOUT:?}"))??;
        *self.current.write() = Some(tx.clone());
        Ok(tx)
    }

    async fn connect(&self) -> Result<SendRequest<AppBody>, String> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // The same large fixed windows as the sidecar's pool (see pool::connect).
            .initial_connection_window_size(8 << 20)
            .initial_stream_window_size(1 << 20)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("http/2 handshake: {}", crate::error_chain(&e)))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %crate::error_chain(&e), "app connection closed");
            }
        });
        Ok(tx)
    }
}
