//! Binding the listeners every role opens (`--listen`, `--admin`), with an error that names the flag.

use std::net::SocketAddr;

use tokio::net::TcpListener;

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
