//! Leasing a connection for one call, and the extra connections opened when the peer's
//! max-concurrent-streams is reached on the primary one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use tracing::{debug, info};

use super::{Connection, SendBody, SendRequest, connect::connect};

pub(super) struct Overflow<B> {
    pub(super) conns: Vec<Extra<B>>,
    opening: bool,
}

impl<B> Default for Overflow<B> {
    fn default() -> Self {
        Self { conns: Vec::new(), opening: false }
    }
}

/// One extra connection: its handle, its calls in flight, and the peer's stream limit on it.
pub(super) struct Extra<B> {
    pub(super) tx: SendRequest<B>,
    in_flight: Arc<AtomicU32>,
    max_streams: Arc<AtomicUsize>,
}

/// Extra connections per endpoint at most (on top of the primary).
const MAX_OVERFLOW: usize = 4;
/// An extra connection idle this long is closed.
const OVERFLOW_IDLE: Duration = Duration::from_secs(30);
/// How often a connection's driver reports the peer's current stream limit.
pub(super) const LIMIT_REFRESH: Duration = Duration::from_millis(250);
/// How seldom a primary connection's driver reports the peer's stream limit while it stays the same.
pub(super) const LIMIT_REFRESH_MAX: Duration = Duration::from_secs(8);

/// A connection handle for one call; counts the call in flight on that connection until dropped.
pub struct Lease<B> {
    /// The handle to send on.
    pub sender: SendRequest<B>,
    in_flight: Arc<AtomicU32>,
}

impl<B> Drop for Lease<B> {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

fn lease<B>(sender: SendRequest<B>, in_flight: &Arc<AtomicU32>) -> Lease<B> {
    in_flight.fetch_add(1, Relaxed);
    Lease { sender, in_flight: in_flight.clone() }
}

impl<B: SendBody> Connection<B> {
    /// A handle for one call, or `None` while the connection is not up: the primary connection while the peer
    /// accepts more streams on it, else an extra connection with room. When every connection is at the peer's
    /// limit, one more is opened in the background (at most four) and this call queues on the primary meanwhile
    /// (inside h2, as a stream pending open). This is the one place that decides which connection carries a call.
    ///
    /// Known limit: a call queued so fails as `UNAVAILABLE` if the primary dies before its stream opens; it is not
    /// sent again, although it never left (h2 does not say which streams were still pending). hyper's client kept
    /// such calls in its own queue and handed them back unsent.
    pub fn lease(self: &Arc<Self>) -> Option<Lease<B>> {
        let primary = self.sender()?;
        Some(self.lease_with(primary))
    }

    fn lease_with(self: &Arc<Self>, primary: SendRequest<B>) -> Lease<B> {
        if (self.primary_in_flight.load(Relaxed) as usize) < self.primary_max_streams.load(Relaxed) {
            return lease(primary, &self.primary_in_flight);
        }
        let mut overflow = self.overflow.lock();
        overflow.conns.retain(|x| !x.tx.is_closed());
        let room = overflow.conns.iter().find(|x| (x.in_flight.load(Relaxed) as usize) < x.max_streams.load(Relaxed));
        if let Some(x) = room {
            return lease(x.tx.clone(), &x.in_flight);
        }
        if !overflow.opening && overflow.conns.len() < MAX_OVERFLOW && !*self.stop.borrow() {
            overflow.opening = true;
            tokio::spawn(open_overflow(self.clone()));
        }
        lease(primary, &self.primary_in_flight)
    }
}

impl<B> Connection<B> {
    /// Open connections (primary and extra), for metrics.
    pub fn open_connections(&self) -> usize {
        let extra = self.overflow.lock().conns.iter().filter(|x| !x.tx.is_closed()).count();
        usize::from(self.is_ready()) + extra
    }
}

/// Opens one extra connection, lends it out while it is needed, and lets it close once idle.
async fn open_overflow<B: SendBody>(conn: Arc<Connection<B>>) {
    let result = connect(conn.addr, &conn.settings, conn.keepalive_interval()).await;
    let (tx, driver) = match result {
        Ok(c) => c,
        Err(e) => {
            conn.metrics.connects_failed.fetch_add(1, Relaxed);
            debug!(addr = %conn.addr, error = %e, "extra connection failed");
            conn.overflow.lock().opening = false;
            return;
        }
    };
    conn.metrics.connects_ok.fetch_add(1, Relaxed);
    let in_flight = Arc::new(AtomicU32::new(0));
    // Until the peer's SETTINGS arrive the driver reports a default; lend it as if the primary's limit applied.
    let max_streams = Arc::new(AtomicUsize::new(conn.primary_max_streams.load(Relaxed)));
    {
        let mut overflow = conn.overflow.lock();
        overflow.opening = false;
        if *conn.stop.borrow() {
            return;
        }
        overflow.conns.push(Extra { tx: tx.clone(), in_flight: in_flight.clone(), max_streams: max_streams.clone() });
    }
    info!(addr = %conn.addr, "opened an extra connection: the peer's max-concurrent-streams was reached");
    drop(tx);
    let mut driver = driver;
    let mut limits = tokio::time::interval_at(tokio::time::Instant::now() + LIMIT_REFRESH, LIMIT_REFRESH);
    let mut idle_since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            res = &mut driver => {
                conn.closed(res.as_ref().err());
                // No new streams after a GOAWAY: stop lending it; the streams left finish first.
                conn.overflow.lock().conns.retain(|x| !Arc::ptr_eq(&x.in_flight, &in_flight));
                if driver.draining()
                    && let Err(e) = driver.finish().await
                {
                    conn.closed(Some(&e));
                }
                return;
            }
            _ = limits.tick() => {
                max_streams.store(driver.current_max_send_streams(), Relaxed);
                if in_flight.load(Relaxed) != 0 {
                    idle_since = tokio::time::Instant::now();
                } else if idle_since.elapsed() >= OVERFLOW_IDLE {
                    // Idle: stop lending it; h2 closes it once the last handle is gone.
                    conn.overflow.lock().conns.retain(|x| !Arc::ptr_eq(&x.in_flight, &in_flight));
                    let _ = driver.finish().await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize};

    use bytes::Bytes;
    use http_body_util::Empty;
    use parking_lot::{Mutex, RwLock};
    use tokio::sync::watch;

    use super::*;
    use crate::pool::{Settings, State};

    type Body = Empty<Bytes>;

    /// A request handle on an HTTP/2 connection over an in-memory pipe, and what keeps it open.
    async fn handle() -> (SendRequest<Body>, impl Sized) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (tx, conn) = h2::client::handshake(ours).await.expect("handshake");
        (SendRequest::new(tx, Arc::default(), Arc::default()), (conn, theirs))
    }

    /// A connection whose primary is `state`, with the peer's limit at `max_streams`.
    fn connection(state: State<Body>, max_streams: usize) -> Arc<Connection<Body>> {
        let settings = Settings::default();
        Arc::new(Connection {
            // Nothing listens on port 9 of 127.0.0.9: an extra connection cannot open, and nothing else is reached.
            addr: "127.0.0.9:9".parse().expect("address"),
            state: RwLock::new(state),
            stop: watch::channel(false).0,
            shared: Arc::default(),
            primary_in_flight: Arc::default(),
            primary_max_streams: AtomicUsize::new(max_streams),
            overflow: Mutex::default(),
            keepalive_ms: AtomicU64::new(settings.keepalive_interval.as_millis() as u64),
            settings,
            metrics: Arc::default(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn no_lease_while_the_connection_is_not_up() {
        for state in [State::Connecting, State::Backoff { error: "refused".into() }, State::Draining] {
            let name = state.name();
            assert!(connection(state, 100).lease().is_none(), "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_counts_its_call_on_the_primary_until_dropped() {
        let (tx, _keep) = handle().await;
        let conn = connection(State::Ready(tx), 100);
        let a = conn.lease().expect("up");
        let b = conn.lease().expect("up");
        assert_eq!(conn.primary_in_flight.load(Relaxed), 2);
        drop(a);
        assert_eq!(conn.primary_in_flight.load(Relaxed), 1);
        drop(b);
        assert_eq!(conn.primary_in_flight.load(Relaxed), 0);
        assert!(!conn.overflow.lock().opening, "below the peer's limit no extra connection is opened");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_primary_lends_an_extra_connection_with_room() {
        let (primary, _keep) = handle().await;
        let (extra, _keep_extra) = handle().await;
        let conn = connection(State::Ready(primary), 1);
        let first = conn.lease().expect("up");
        let extra_in_flight = Arc::new(AtomicU32::new(0));
        conn.overflow.lock().conns.push(Extra {
            tx: extra,
            in_flight: extra_in_flight.clone(),
            max_streams: Arc::new(AtomicUsize::new(1)),
        });
        let second = conn.lease().expect("up");
        assert_eq!((conn.primary_in_flight.load(Relaxed), extra_in_flight.load(Relaxed)), (1, 1));
        // Both at their limit, and an extra connection exists: a third call opens another one and queues on the
        // primary meanwhile.
        let third = conn.lease().expect("up");
        assert_eq!((conn.primary_in_flight.load(Relaxed), extra_in_flight.load(Relaxed)), (2, 1));
        assert!(conn.overflow.lock().opening);
        drop((first, second, third));
        assert_eq!((conn.primary_in_flight.load(Relaxed), extra_in_flight.load(Relaxed)), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_one_extra_connection_opens_at_a_time() {
        let (tx, _keep) = handle().await;
        let conn = connection(State::Ready(tx), 1);
        let _held: Vec<_> = (0..5).map(|_| conn.lease().expect("up")).collect();
        assert_eq!(conn.primary_in_flight.load(Relaxed), 5, "every call queues on the primary meanwhile");
        let overflow = conn.overflow.lock();
        assert!(overflow.opening);
        assert!(overflow.conns.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_connection_opens_no_extra_connection() {
        let (tx, _keep) = handle().await;
        let conn = connection(State::Ready(tx), 1);
        conn.stop.send_replace(true);
        let _a = conn.lease().expect("the handle is still published");
        let _b = conn.lease().expect("the handle is still published");
        assert!(!conn.overflow.lock().opening);
        assert_eq!(conn.primary_in_flight.load(Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_overflow_stops_at_four_extra_connections() {
        let (tx, _keep) = handle().await;
        let conn = connection(State::Ready(tx), 1);
        let mut keep = Vec::new();
        for _ in 0..MAX_OVERFLOW {
            let (extra, k) = handle().await;
            keep.push(k);
            conn.overflow.lock().conns.push(Extra {
                tx: extra,
                in_flight: Arc::new(AtomicU32::new(1)),
                max_streams: Arc::new(AtomicUsize::new(1)),
            });
        }
        let _a = conn.lease().expect("up");
        let _b = conn.lease().expect("up");
        assert!(!conn.overflow.lock().opening, "four extra connections, all full: no fifth");
        assert_eq!(conn.primary_in_flight.load(Relaxed), 2);
    }
}
