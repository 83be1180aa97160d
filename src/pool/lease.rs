//! Leasing a connection for one call, and the extra connections opened when the peer's
//! max-concurrent-streams is reached on the primary one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use hyper::client::conn::http2::SendRequest;
use tracing::{debug, info};

use super::{Connection, connect};
use crate::proxy::replay::ReplayBody;

#[derive(Default)]
pub(super) struct Overflow {
    pub(super) conns: Vec<Extra>,
    opening: bool,
}

/// One extra connection: its handle, its calls in flight, and the peer's stream limit on it.
pub(super) struct Extra {
    pub(super) tx: SendRequest<ReplayBody>,
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
pub struct Lease {
    /// The handle to send on.
    pub sender: SendRequest<ReplayBody>,
    in_flight: Arc<AtomicU32>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

fn lease(sender: SendRequest<ReplayBody>, in_flight: &Arc<AtomicU32>) -> Lease {
    in_flight.fetch_add(1, Relaxed);
    Lease { sender, in_flight: in_flight.clone() }
}

impl Connection {
    /// A handle for one call: the primary connection while the peer accepts more streams on it, else an extra
    /// connection with room. When every connection is at the peer's limit, one more is opened in the background
    /// (at most four) and this call queues on the primary meanwhile, as hyper does.
    pub fn lease(self: &Arc<Self>, primary: SendRequest<ReplayBody>) -> Lease {
        if (self.primary_in_flight.load(Relaxed) as usize) < self.primary_max_streams.load(Relaxed) {
            return lease(primary, &self.primary_in_flight);
        }
        let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Open connections (primary and extra), for metrics.
    pub fn open_connections(&self) -> usize {
        let extra =
            self.overflow.lock().unwrap_or_else(|e| e.into_inner()).conns.iter().filter(|x| !x.tx.is_closed()).count();
        usize::from(self.is_ready()) + extra
    }
}

/// Opens one extra connection, lends it out while it is needed, and lets it close once idle.
async fn open_overflow(conn: Arc<Connection>) {
    let result = connect(conn.addr, &conn.settings, conn.keepalive_interval()).await;
    let (tx, driver) = match result {
        Ok(c) => c,
        Err(e) => {
            conn.metrics.connects_failed.fetch_add(1, Relaxed);
            debug!(addr = %conn.addr, error = %e, "extra connection failed");
            conn.overflow.lock().unwrap_or_else(|e| e.into_inner()).opening = false;
            return;
        }
    };
    conn.metrics.connects_ok.fetch_add(1, Relaxed);
    let in_flight = Arc::new(AtomicU32::new(0));
    // Until the peer's SETTINGS arrive the driver reports a default; lend it as if the primary's limit applied.
    let max_streams = Arc::new(AtomicUsize::new(conn.primary_max_streams.load(Relaxed)));
    {
        let mut overflow = conn.overflow.lock().unwrap_or_else(|e| e.into_inner());
        overflow.opening = false;
        if *conn.stop.borrow() {
            return;
        }
        overflow.conns.push(Extra { tx: tx.clone(), in_flight: in_flight.clone(), max_streams: max_streams.clone() });
    }
    info!(addr = %conn.addr, "opened an extra connection: the peer's max-concurrent-streams was reached");
    drop(tx);
    tokio::pin!(driver);
    let mut limits = tokio::time::interval_at(tokio::time::Instant::now() + LIMIT_REFRESH, LIMIT_REFRESH);
    let mut idle_since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            res = &mut driver => {
                conn.closed(res.as_ref().err());
                return;
            }
            _ = limits.tick() => {
                max_streams.store(driver.current_max_send_streams(), Relaxed);
                if in_flight.load(Relaxed) != 0 {
                    idle_since = tokio::time::Instant::now();
                } else if idle_since.elapsed() >= OVERFLOW_IDLE {
                    // Idle: stop lending it; hyper closes it once the last handle is gone.
                    conn.overflow.lock().unwrap_or_else(|e| e.into_inner()).conns.retain(|x| !Arc::ptr_eq(&x.in_flight, &in_flight));
                    let _ = driver.await;
                    return;
                }
            }
        }
    }
}
