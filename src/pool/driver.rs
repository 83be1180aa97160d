//! Driving one backend connection: h2's connection future, keepalive PINGs while calls are in flight, and the
//! flag its request handles read to know it has ended.
//!
//! Keepalive (gRFC A8, and the pool's module doc): a PING goes out only when calls are in flight on the connection
//! and nothing was read from it for a whole keepalive interval; a PING unanswered within the keepalive timeout
//! ends the connection (its calls fail with [`DriverError::KeepAliveTimedOut`], and the pool reconnects). h2 closes
//! the connection on its own once every request handle is gone and its last stream has finished.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use super::{coalesce::Coalesce, preface::Heard};
use crate::tls::Stream;

/// The I/O under a backend connection's HTTP/2.
pub(super) type Io = Heard<Coalesce<Stream>>;

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

/// One backend connection's driver: poll it (in the connector task) for the connection to make progress.
pub struct Driver {
    conn: h2::client::Connection<Io, Bytes>,
    closed: Arc<AtomicBool>,
    keepalive: Option<KeepAlive>,
}

impl Driver {
    /// Drives `conn`; `closed` is set when it ends. With `keepalive` (interval, timeout), PINGs go out as the module
    /// doc says: `reads` counts reads from the socket, `in_flight` the calls on the connection.
    pub(super) fn new(
        mut conn: h2::client::Connection<Io, Bytes>,
        closed: Arc<AtomicBool>,
        keepalive: Option<(Duration, Duration)>,
        reads: Arc<AtomicU64>,
        in_flight: Arc<AtomicU32>,
    ) -> Self {
        let keepalive = keepalive.and_then(|(interval, timeout)| {
            Some(KeepAlive {
                pings: conn.ping_pong()?,
                interval,
                timeout,
                timer: Box::pin(tokio::time::sleep(interval)),
                waiting: false,
                seen: reads.load(Relaxed),
                reads,
                in_flight,
            })
        });
        Self { conn, closed, keepalive }
    }

    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS as last seen (h2's initial guess until its SETTINGS arrive).
    pub fn current_max_send_streams(&self) -> usize {
        self.conn.max_concurrent_send_streams()
    }
}

impl Future for Driver {
    type Output = Result<(), DriverError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let res = match Pin::new(&mut this.conn).poll(cx) {
            Poll::Ready(res) => res.map_err(DriverError::H2),
            Poll::Pending => match this.keepalive.as_mut().map(|k| k.poll_expired(cx)) {
                Some(Poll::Ready(timeout)) => Err(DriverError::KeepAliveTimedOut(timeout)),
                _ => return Poll::Pending,
            },
        };
        this.closed.store(true, Relaxed);
        Poll::Ready(res)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.closed.store(true, Relaxed);
    }
}

struct KeepAlive {
    pings: h2::PingPong,
    interval: Duration,
    timeout: Duration,
    /// The next check: an interval after the last one, or the PING's timeout while `waiting`.
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    /// `reads` at the last check.
    seen: u64,
    reads: Arc<AtomicU64>,
    in_flight: Arc<AtomicU32>,
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
                    self.timer.as_mut().reset(Instant::now() + self.interval);
                    continue;
                }
                ready!(self.timer.as_mut().poll(cx));
                return Poll::Ready(self.timeout);
            }
            ready!(self.timer.as_mut().poll(cx));
            let reads = self.reads.load(Relaxed);
            let silent = reads == self.seen && self.in_flight.load(Relaxed) > 0;
            self.seen = reads;
            if silent && self.pings.send_ping(h2::Ping::opaque()).is_ok() {
                self.waiting = true;
                self.timer.as_mut().reset(Instant::now() + self.timeout);
            } else {
                self.timer.as_mut().reset(Instant::now() + self.interval);
            }
        }
    }
}
