//! Binding the listeners every role opens (`--listen`, `--admin`), with an error that names the flag, and the one
//! accept step every accept loop uses.

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};

/// A listener could not bind.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({flag}): {source}")]
pub struct BindError {
    /// The flag that named the address.
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Why (address in use, not local, no permission…).
    pub source: std::io::Error,
}

/// Binds `addr`, given by `flag`.
pub async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError { flag, addr, source })
}

/// The first wait after a failed accept; it doubles on each failure in a row up to [`ACCEPT_BACKOFF_MAX`] (the
/// shape of Go's `net/http` `Server.Serve`).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest wait after a failed accept.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The next connection on `listener`. A failed accept (out of file descriptors, a connection reset while it
/// queued) is logged and waited out, 5 ms doubling to 1 s while failures continue, instead of retried at once: a
/// persistent error would otherwise spin a core. Cancel-safe, so it can be one branch of a `select!`.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut delays = crate::backoff::doubling(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                let delay = delays.next().unwrap_or(ACCEPT_BACKOFF_MAX);
                tracing::warn!(error = %e, retry_in = ?delay, "accept failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Waits up to `within` for the connections `graceful` watches to finish their calls (each was told to close with
/// a GOAWAY), then gives up on the rest; `what` names them in the logs (`inbound`, `caller`).
pub async fn drain(graceful: hyper_util::server::graceful::GracefulShutdown, within: Duration, what: &str) {
    let started = tokio::time::Instant::now();
    tracing::info!(connections = graceful.count(), "draining {what} connections");
    if tokio::time::timeout(within, graceful.shutdown()).await.is_err() {
        tracing::warn!(after = ?started.elapsed(), "drain timed out; closing the remaining connections");
    }
}
