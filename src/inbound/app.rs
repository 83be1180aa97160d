//! The inbound proxy's connection to the app on loopback: one h2c connection, opened on first use and again
//! whenever it closed.

use std::{net::SocketAddr, time::Duration};

use hyper::body::Incoming;
use parking_lot::RwLock;
use tracing::debug;

use crate::pool::{self, SendRequest};

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
        let tx = self.connect().await?;
        *self.current.write() = Some(tx.clone());
        Ok(tx)
    }

    async fn connect(&self) -> Result<SendRequest<AppBody>, String> {
        // h2's client, as the sidecar's pool uses it (no hyper dispatch task per call), h2c on loopback: no TLS, no
        // keepalive PINGs (a dead app closes its sockets), the pool's fixed windows.
        let settings = pool::Settings { connect_timeout: CONNECT_TIMEOUT, ..pool::Settings::default() };
        let (tx, driver) = pool::connect(self.addr, &settings, Duration::ZERO).await.map_err(|e| e.to_string())?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = driver.finish().await {
                debug!(%addr, error = %crate::error_chain(&e), "app connection closed");
            }
        });
        Ok(tx)
    }
}
