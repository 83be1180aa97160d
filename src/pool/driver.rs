//! Driving one backend connection: h2's connection future, keepalive PINGs while calls are in flight, and the
//! flag ([`Gone`]) its request handles read to know it takes no new streams.
//!
//! A peer's GOAWAY (nginx sends one every `keepalive_requests` requests; servers send one when they drain) ends
//! new streams on a connection while the ones below its last-stream-id carry on (RFC 9113 §6.8). h2 shows it
//! only to a request that then fails, so that request's handle marks the connection gone ([`Gone::set`]); the
//! driver then resolves at once, so the pool connects anew, and keeps driving the old connection's remaining
//! streams when polled again ([`Driver::draining`]), as hyper's client did (make-before-break).
//!
//! Keepalive (gRFC A8, and the pool's module doc): a PING goes out only when streams are open on the connection and
//! nothing was read from it for a whole keepalive interval (checked every half interval, so after one to one and a half
//! intervals of silence), at most one per interval; a PING unanswered within the keepalive timeout ends the connection (its calls fail with
//! [`DriverError::KeepAliveTimedOut`], and the pool reconnects). h2 closes the connection on its own once every request
//! handle is gone and its last stream has finished.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{
            AtomicBool, AtomicU32, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};

use super::{coalesce::Coalesce, preface::Heard};
use crate::tls::Stream;

/// The I/O under a backend connection's HTTP/2.
pub type Io = Heard<Coalesce<Stream>>;

/// Why a backend connection ended.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// HTTP/2 or the socket failed, or a GOAWAY came (the h2 error says which).
    #[error("{0}")]
    H2(#[source] h2::Error),
    /// A keepalive PING went unanswered this long.
    #[error("keepalive ping not answered within {0:?}")]
    KeepAliveTimedOut(Duration),
}

/// Whether a connection takes no new streams: it ended, or a request on it failed to open a stream (a GOAWAY).
/// Shared by the connection's request handles and its driver.
#[derive(Debug, Default)]
pub struct Gone {
    flag: AtomicBool,
    driver: AtomicWaker,
}

impl Gone {
    /// Marks the connection gone and wakes its driver.
    pub fn set(&self) {
        if !self.flag.swap(true, Release) {
            self.driver.wake();
        }
    }

    /// Whether it is gone.
    pub fn is_set(&self) -> bool {
        self.flag.load(Acquire)
    }
}

/// One backend connection's driver: poll it (in the connector task) for the connection to make progress. It
/// resolves when the connection ends, or early with `Ok` once the connection is [`Gone`] (then
/// [`Driver::draining`] is true, and polling it further drives the streams left on it until they end).
pub struct Driver<T = Io> {
    conn: h2::client::Connection<T, Bytes>,
    gone: Arc<Gone>,
    draining: bool,
    /// Whether the connection has really ended (not just resolved early as draining).
    ended: bool,
    keepalive: Option<KeepAlive>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    /// Drives `conn`; `gone` is set when it ends. With `keepalive` (interval, timeout), PINGs go out as the module
    /// doc says: `reads` counts reads from the socket, `open` the streams open on this connection.
    pub(super) fn new(
        mut conn: h2::client::Connection<T, Bytes>,
        gone: Arc<Gone>,
        keepalive: Option<(Duration, Duration)>,
        reads: Arc<AtomicU64>,
        open: Arc<AtomicU32>,
    ) -> Self {
        let keepalive = keepalive.and_then(|(interval, timeout)| {
            Some(KeepAlive {
                pings: conn.ping_pong()?,
                interval,
                timeout,
                timer: Box::pin(tokio::time::sleep(interval / 2)),
                waiting: false,
                seen: reads.load(Relaxed),
                active: Instant::now(),
                pinged: None,
                reads,
                open,
            })
        });
        Self { conn, gone, draining: false, ended: false, keepalive }
    }

    /// Drives the connection until it has really ended, through an early resolution as draining: what a caller
    /// that only waits for the end (a retired or replaced connection) must await, else dropping the driver early
    /// would kill the streams still on it.
    pub async fn finish(mut self: Pin<Box<Self>>) -> Result<(), DriverError> {
        loop {
            let res = self.as_mut().await;
            if self.ended {
                return res;
            }
        }
    }

    /// Whether it resolved early because the connection takes no new streams, with streams possibly left on it.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS as last seen (h2's initial guess until its SETTINGS arrive).
    pub fn current_max_send_streams(&self) -> usize {
        self.conn.max_concurrent_send_streams()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = Result<(), DriverError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let res = match Pin::new(&mut this.conn).poll(cx) {
            Poll::Ready(res) => res.map_err(DriverError::H2),
            Poll::Pending => {
                if !this.draining {
                    this.gone.driver.register(cx.waker());
                    if this.gone.is_set() {
                        this.draining = true;
                        return Poll::Ready(Ok(()));
                    }
                }
                match this.keepalive.as_mut().map(|k| k.poll_expired(cx)) {
                    Some(Poll::Ready(timeout)) => Err(DriverError::KeepAliveTimedOut(timeout)),
                    _ => return Poll::Pending,
                }
            }
        };
        this.ended = true;
        this.gone.set();
        Poll::Ready(res)
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        self.gone.set();
    }
}

struct KeepAlive {
    pings: h2::PingPong,
    interval: Duration,
    timeout: Duration,
    /// The next check (every half interval), or the PING's timeout while `waiting`.
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    /// `reads` at the last check.
    seen: u64,
    /// When the connection was last read from, as of the checks (at most half an interval late), so a PING goes
    /// out after one to one and a half intervals of silence, never sooner.
    active: Instant,
    /// When the last PING went out: the next one waits at least an interval (grpc-go's `too_many_pings` policy).
    pinged: Option<Instant>,
    reads: Arc<AtomicU64>,
    /// Streams open on this connection (not the endpoint's: a replaced connection's streams are not this one's).
    open: Arc<AtomicU32>,
}

impl KeepAlive {
    /// Ready with the timeout when a PING went unanswered.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        loop {
            if self.waiting {
                if self.pings.poll_pong(cx).is_ready() {
                    // Answered (or the connection is ending, which its own poll reports).
                    self.waiting = false;
                    self.seen = self.reads.load(Relaxed);
                    self.active = Instant::now();
                    self.timer.as_mut().reset(self.active + self.interval / 2);
                    continue;
                }
                ready!(self.timer.as_mut().poll(cx));
                return Poll::Ready(self.timeout);
            }
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            let reads = self.reads.load(Relaxed);
            if reads != self.seen {
                self.seen = reads;
                self.active = now;
            }
            // Streams must be open when it goes (stock servers police PINGs on idle connections), not through the
            // whole silence: a hung backend that sparse short calls reach must still be found.
            let due = now >= self.active + self.interval && self.pinged.is_none_or(|p| now >= p + self.interval);
            if due && self.open.load(Relaxed) > 0 && self.pings.send_ping(h2::Ping::opaque()).is_ok() {
                self.waiting = true;
                self.pinged = Some(now);
                self.timer.as_mut().reset(now + self.timeout);
            } else {
                self.timer.as_mut().reset(now + self.interval / 2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// An empty SETTINGS frame: a server's whole preface (RFC 9113 §3.4).
    const SERVER_PREFACE: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    const PING: u8 = 6;

    /// A driver over an in-memory pipe whose far end (returned) is a peer that sent its preface and then never
    /// answers anything; keepalive every second with a one-second timeout; `open` streams.
    /// (The request handle is returned too: h2 closes a connection that has none and no stream.)
    /// The open-stream count is returned last, for a test to change.
    async fn silent_peer(
        open: u32,
    ) -> (Pin<Box<Driver<Heard<DuplexStream>>>>, DuplexStream, impl Sized, Arc<AtomicU32>) {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(&SERVER_PREFACE).await.expect("preface");
        let (io, _heard) = Heard::new(ours);
        let reads = io.reads();
        let (tx, conn) = h2::client::handshake(io).await.expect("handshake");
        let ka = Some((Duration::from_secs(1), Duration::from_secs(1)));
        let open = Arc::new(AtomicU32::new(open));
        let driver = Driver::new(conn, Arc::default(), ka, reads, open.clone());
        (Box::pin(driver), theirs, tx, open)
    }

    /// The frame types the peer has received since the last call (after the client's 24-byte connection preface).
    async fn frames_seen(peer: &mut DuplexStream) -> Vec<u8> {
        let mut buf = vec![0; 1 << 16];
        let n = tokio::time::timeout(Duration::from_millis(1), peer.read(&mut buf)).await.map_or(0, |r| r.unwrap_or(0));
        let mut types = Vec::new();
        let mut at = if buf[..n].starts_with(b"PRI * HTTP/2.0") { 24 } else { 0 };
        while at + 9 <= n {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            types.push(buf[at + 3]);
            at += 9 + len;
        }
        types
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_ping_with_calls_in_flight_ends_the_connection() {
        let (mut driver, mut peer, _tx, _) = silent_peer(1).await;
        let ended = tokio::time::timeout(Duration::from_secs(5), driver.as_mut()).await;
        assert!(matches!(ended, Ok(Err(DriverError::KeepAliveTimedOut(_)))), "{ended:?}");
        assert!(frames_seen(&mut peer).await.contains(&PING), "a PING went out first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_waits_for_a_whole_interval_of_silence() {
        let (mut driver, mut peer, _tx, _) = silent_peer(1).await;
        let _ = tokio::time::timeout(Duration::from_millis(900), driver.as_mut()).await;
        assert!(!frames_seen(&mut peer).await.contains(&PING), "a PING before one interval of silence");
        let _ = tokio::time::timeout(Duration::from_millis(700), driver.as_mut()).await;
        assert!(frames_seen(&mut peer).await.contains(&PING), "no PING after one and a half intervals of silence");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_that_sparse_calls_reach_is_still_pinged() {
        // Streams open only now and then (short calls, far apart), and the peer never answers anything.
        let (mut driver, mut peer, _tx, open) = silent_peer(0).await;
        // A 300 ms call every second, each over one of the driver's checks (every 500 ms from the start).
        let mut ended = None;
        for _ in 0..6 {
            if let Ok(res) = tokio::time::timeout(Duration::from_millis(400), driver.as_mut()).await {
                ended = Some(res);
                break;
            }
            open.store(1, Relaxed);
            if let Ok(res) = tokio::time::timeout(Duration::from_millis(300), driver.as_mut()).await {
                ended = Some(res);
                break;
            }
            open.store(0, Relaxed);
            if let Ok(res) = tokio::time::timeout(Duration::from_millis(300), driver.as_mut()).await {
                ended = Some(res);
                break;
            }
        }
        assert!(frames_seen(&mut peer).await.contains(&PING), "no PING although calls waited on a silent peer");
        assert!(matches!(ended, Some(Err(DriverError::KeepAliveTimedOut(_)))), "{ended:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_ping_without_calls_in_flight() {
        let (mut driver, mut peer, _tx, _) = silent_peer(0).await;
        let still_up = tokio::time::timeout(Duration::from_secs(10), driver.as_mut()).await;
        assert!(still_up.is_err(), "the connection ended: {still_up:?}");
        assert!(!frames_seen(&mut peer).await.contains(&PING), "a PING went out with no call in flight");
    }
}
