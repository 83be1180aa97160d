//! Opening one HTTP/2 connection to an endpoint: TCP with kernel keepalive, optional TLS, and the h2 settings that
//! stock peers and stalled readers need (windows, header-list size, PINGs only while streams are open).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU32},
    time::Duration,
};

use tokio::net::TcpStream;

use super::{SendRequest, Settings, coalesce::Coalesce, driver::Driver, preface::Heard};
use crate::tls::Stream;

/// TCP keepalive: probes start after this much idle time…
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// …and repeat this often, `TCP_KEEPALIVE_PROBES` times, before the kernel drops the connection.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const TCP_KEEPALIVE_PROBES: u32 = 3;
/// Data written but unacknowledged this long drops the connection (Linux `TCP_USER_TIMEOUT`): keepalive probes
/// do not run while data is in flight.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connect failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect + handshake took longer than the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// TCP connect failed (refused, unreachable…).
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (the certificate's reason, e.g. `invalid peer certificate: Expired`).
    #[error("tls handshake: {0}")]
    Tls(std::io::Error),
    /// The HTTP/2 handshake failed.
    #[error("http/2 handshake: {0}")]
    Handshake(#[from] h2::Error),
    /// The connection closed before the server's HTTP/2 preface arrived: nothing accepts it (a server that stopped
    /// accepting but whose listening socket is still bound, e.g. one draining after SIGTERM), or not HTTP/2, or,
    /// over TLS 1.3, the server refused our client certificate (it can say so only after the handshake, RFC 8446
    /// §4.4.2.4). The message says which it likely was.
    #[error("{0}")]
    NoPreface(String),
}

/// The HTTP/2 stream window (RFC 9113 §6.9) on both sides of the sidecar, in bytes: what one call whose reader
/// stops reading may hold here, in each direction, counted in bytes of data. A stream moves at most one window per
/// round trip, so it also caps one stream's throughput: 512 KiB is ~500 MB/s at a 1 ms round trip. Through a TCP
/// relay adding 1 ms each way (the issue 16 review's `delay_relay.py`, debug builds, a busy 2-core machine), a fixed
/// 64 KiB (grpc-go's and Envoy's starting value) carried one bulk stream at 12-22 MB/s, 256 KiB at 70 MB/s, 512 KiB
/// at 85-118 MB/s (hyper's adaptive windows had reached 88 MB/s, without the slow-reader guarantee).
///
/// Known limit: h2 (0.4.20) keeps each received DATA payload as a slice of the ~8 KiB read buffer it arrived in,
/// and a stream's flow-control capacity is released only as its body is polled, with no way to hold data
/// elsewhere without also releasing the window. So in memory a stalled stream is bounded by its window × the read
/// buffer per frame, not by its window: a peer that sends one-byte DATA frames on a stream nobody reads,
/// interleaved with larger frames on a stream another caller drains (which keep h2's small-DATA-frame budget
/// topped up), pins about one read buffer per byte held (65,000 one-byte frames: +540 MB). See README, "Known
/// limits".
pub const STREAM_WINDOW: u32 = 512 << 10;

/// The largest HTTP/2 window (RFC 9113 §6.9.1: 2³¹−1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// The connection window for a connection that may carry `streams` streams at once: `streams` full stream windows
/// ([`STREAM_WINDOW`]), capped at [`MAX_WINDOW`], so streams whose readers stalled (each holding at most its own
/// stream window) cannot starve the other calls that share the connection (issue 16.1). Data held stays bounded by
/// the streams × [`STREAM_WINDOW`] bytes.
///
/// It also sizes h2's small-DATA-frame flood budget, which hyper has no knob for: h2 (0.4.20,
/// `DataFrameBudget::Auto`) lets a connection hold unread DATA frames shorter than 256 bytes worth
/// `window / 2` bytes of accounted overhead (256 − payload bytes each), then sends GOAWAY `ENHANCE_YOUR_CALM`
/// "too_many_data_frames"; frames of 256 bytes or more replenish it. A stalled stream of ten-byte gRPC messages
/// (15-byte frames) holds at most 512 KiB / 15 × 241 B ≈ 8 MiB of it, so with the default 1,024 calls (a 512 MiB
/// window, a 256 MiB budget) 32 such streams fit at once, while a peer that floods one-byte frames alone still
/// trips it. h2 also ends a connection after 100 empty DATA frames without END_STREAM (`MAX_RECV_EMPTY_DATA_FRAMES`,
/// no knob); stock gRPC peers do not send them.
pub fn connection_window(streams: u32) -> u32 {
    streams.max(1).saturating_mul(STREAM_WINDOW).min(MAX_WINDOW)
}

/// What hyper's HTTP/2 client used until issue 14 and stock clients keep: at most 100 streams until the peer's
/// SETTINGS say otherwise, 16 KiB frames, 1 MiB of send buffer per stream, no server push.
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_FRAME_SIZE: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 1 << 20;
/// Streams this side may reset for the peer's protocol errors before the connection is ended (hyper's default).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Connects to `addr`; done once the server's preface has arrived ([`super::preface`]), within the connect timeout.
/// The driver PINGs (every `keepalive`, zero for never) only while streams are open on the connection. The pool's
/// connector tasks use it, and so does the inbound proxy for its one connection to the app: poll the driver (e.g.
/// `tokio::spawn(driver.finish())`) for the connection to make progress.
pub async fn connect<B>(
    addr: SocketAddr,
    settings: &Settings,
    keepalive: Duration,
) -> Result<(SendRequest<B>, std::pin::Pin<Box<Driver>>), ConnectError> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        tcp_keepalive(&tcp)?;
        let io = match &settings.tls {
            Some(tls) => Stream::Tls(Box::new(tls.connect(addr, tcp).await.map_err(ConnectError::Tls)?)),
            None => Stream::Plain(tcp),
        };
        let (io, mut heard) = Heard::new(Coalesce::new(io));
        let reads = io.reads();
        let (tx, conn) = h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .enable_push(false)
            // Also h2's CONTINUATION flood limit: a header block may span at most max(5, n + n/4) non-final
            // CONTINUATION frames, n = this / 16 KiB (h2 0.4.20, `calc_max_continuation_frames`). A 16 KiB limit
            // allowed 5, so a backend splitting its headers into 8 small frames (legal; grpc-go and grpcio accept
            // it) closed the shared connection; the 16 MiB of `proxy::h2_header_list_limit` allow 1,280, and a
            // flood of empty CONTINUATION frames still ends there.
            .max_header_list_size(settings.max_header_list_bytes)
            // Fixed windows (see `connection_window` for the ratio).
            .initial_connection_window_size(connection_window(settings.max_streams))
            .initial_window_size(STREAM_WINDOW)
            .handshake::<_, bytes::Bytes>(io)
            .await?;
        let gone = Arc::default();
        // No PINGs without calls in flight: stock servers count them as abuse (see the pool's module doc).
        let pings = (!keepalive.is_zero()).then_some((keepalive, settings.keepalive_timeout));
        let open = Arc::<AtomicU32>::default();
        let driver = Driver::new(conn, Arc::clone(&gone), pings, reads, Arc::clone(&open));
        // The driver reads the server's preface; a connection that ends first was never accepted.
        let mut driver = Box::pin(driver);
        tokio::select! {
            biased;
            Ok(()) = &mut heard => {}
            res = driver.as_mut() => {
                // The preface and the end may come in one read (a GOAWAY sent at once by a server that is
                // draining): then the server spoke HTTP/2, and saying it did not would send the reader astray.
                if heard.try_recv().is_ok() {
                    let why = match res {
                        Ok(()) => "a GOAWAY (draining, or not taking connections) or a close".to_owned(),
                        Err(e) => crate::error_chain(&e),
                    };
                    return Err(ConnectError::NoPreface(format!(
                        "the server ended the connection right after its HTTP/2 preface: {why}"
                    )));
                }
                let why = match res {
                    Ok(()) => "the peer closed the connection".to_owned(),
                    Err(e) => crate::error_chain(&e),
                };
                return Err(ConnectError::NoPreface(match settings.tls {
                    Some(_) => format!("closed right after the TLS handshake (client certificate refused?): {why}"),
                    None => format!("closed before the server's HTTP/2 preface: {why}"),
                }));
            }
        }
        Ok::<_, ConnectError>((SendRequest::new(tx, gone, open), driver))
    };
    tokio::time::timeout(settings.connect_timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout(settings.connect_timeout))?
}

/// Kernel-level liveness checks on a backend connection (see the module doc), invisible to the HTTP/2 peer.
fn tcp_keepalive(tcp: &TcpStream) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_PROBES);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))?;
    Ok(())
}
