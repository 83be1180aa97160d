//! The backend fixture's optional mTLS (`server --tls-cert --tls-key --tls-ca`): the server terminates TLS itself
//! (client certificates required, ALPN `h2`), so tests can reach it with the sidecar's outbound TLS directly.

use std::{
    io,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use futures_util::{Stream, StreamExt, future::Either};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::info;

use super::ServerStats;
use crate::tls::ServerTls;

/// A TLS handshake with a caller takes this long at most.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted connection: plain h2c, or TLS with its handshake done.
pub type ServerIo = crate::tls::Stream<TlsStream<TcpStream>>;

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            crate::tls::Stream::Plain(s) => s.connect_info(),
            crate::tls::Stream::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

/// The connections of `listener`: TCP as accepted, or (with `tls`) after a TLS handshake run in its own task, so a
/// slow caller holds up no other. Counts accepted connections in `stats`.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    stats: Arc<ServerStats>,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    let Some(tls) = tls else {
        return Either::Left(TcpListenerStream::new(listener).map(move |conn| {
            let stream = conn?;
            stats.connections.fetch_add(1, Relaxed);
            let _ = stream.set_nodelay(true);
            Ok(crate::tls::Stream::Plain(stream))
        }));
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = crate::listen::accept(&listener).await;
            let (tls, tx, stats) = (tls.clone(), tx.clone(), stats.clone());
            if tx.is_closed() {
                return;
            }
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await {
                    Ok(Ok(io)) => {
                        stats.connections.fetch_add(1, Relaxed);
                        let _ = tx.send(Ok(crate::tls::Stream::Tls(Box::new(io)))).await;
                    }
                    Ok(Err(e)) => info!(%remote, error = %e, "tls handshake with a caller failed"),
                    Err(_) => info!(%remote, "tls handshake with a caller timed out"),
                }
            });
        }
    });
    Either::Right(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
