//! The connector task of one endpoint: connect, publish the request handle, drive the connection until it ends
//! (or a GOAWAY, a certificate rotation or a retire replaces it), then reconnect after a backoff. The pool's module
//! doc says why each rule is there.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use rand::Rng;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    ConnectOutcomes, Connection, SendBody, Settings, State,
    connect::connect,
    driver::Driver,
    lease::{LIMIT_REFRESH, LIMIT_REFRESH_MAX},
    shared::connect_permit,
};
use crate::telemetry::metrics::Metrics;

pub(super) async fn maintain<B: SendBody>(
    conn: Arc<Connection<B>>,
    settings: Settings,
    outcomes: Arc<dyn ConnectOutcomes>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let addr = conn.addr;
    let mut failures: u32 = 0;
    let mut tls_changes = settings.tls.as_ref().map(|t| t.subscribe());
    let mut rotating = false;
    while !*stop.borrow() {
        // On a certificate rotation the old connection stays published until the new one replaces it
        // (make-before-break), also across failed attempts with the new certificates while it still works.
        if !rotating {
            conn.set(State::Connecting);
        }
        // The driver comes boxed, not pinned on the stack: a certificate rotation hands it to its own task to drain.
        let Some(permit) = connect_permit(&conn.shared, &mut stop).await else { return };
        let connected = connect(addr, &settings, conn.keepalive_interval()).await.map_err(|e| e.to_string());
        drop(permit);
        let connected = match connected {
            Ok((tx, mut driver)) if rotating => {
                match settle(&mut driver, settings.connect_timeout.min(ROTATION_SETTLE)).await {
                    Err(e) => Err(format!("with the new certificates (client certificate refused?): {e}")),
                    Ok(()) => Ok((tx, driver)),
                }
            }
            other => other,
        };
        let error = match connected {
            Ok((tx, mut driver)) => {
                if std::mem::take(&mut rotating) {
                    // Up with the new certificates: backoff and log level start fresh.
                    failures = 0;
                }
                metrics.connects_ok.fetch_add(1, Relaxed);
                outcomes.connected();
                debug!(%addr, "connected");
                let up_since = tokio::time::Instant::now();
                let mut closed_with = None;
                conn.set(State::Ready(tx));
                // The first reading waits a refresh period: until the peer's SETTINGS arrive, the driver reports
                // a default (100), not the peer's limit. A limit that stays the same is read ever less often (up to
                // LIMIT_REFRESH_MAX), one that changed soon again: a fixed 250 ms woke every connection 4 times a
                // second, which with 1000 endpoints was 4000 idle wake-ups a second.
                let mut refresh = LIMIT_REFRESH;
                let limits = tokio::time::sleep(refresh);
                tokio::pin!(limits);
                let retired = loop {
                    tokio::select! {
                        res = &mut driver => {
                            conn.closed(res.as_ref().err());
                            if let Err(e) = res {
                                closed_with = Some(crate::error_chain(&e));
                            }
                            break false;
                        }
                        _ = stop.wait_for(|s| *s) => break true,
                        () = &mut limits => {
                            let limit = driver.current_max_send_streams();
                            let before = conn.primary_max_streams.swap(limit, Relaxed);
                            refresh = if before == limit { (refresh * 2).min(LIMIT_REFRESH_MAX) } else { LIMIT_REFRESH };
                            limits.as_mut().reset(tokio::time::Instant::now() + refresh);
                        }
                        Some(()) = tls_changed(&mut tls_changes) => {
                            rotating = true;
                            break false;
                        }
                    }
                };
                if rotating {
                    // New certificates: connect again with them; this driver finishes its calls in flight and
                    // closes once the new connection has replaced its handle.
                    debug!(%addr, "tls certificates changed; replacing the connection");
                    tokio::spawn(driver.finish());
                    // This connection was up: backoff and log level start fresh for the new certificates.
                    failures = 0;
                    continue;
                }
                if retired {
                    // Drop our handle (a retire may have raced the connect and been overwritten by Ready); h2
                    // finishes the streams in flight, then closes.
                    conn.set(State::Draining);
                    let _ = driver.finish().await;
                    debug!(%addr, "drained");
                    return;
                }
                if driver.draining() {
                    // A GOAWAY stopped new streams: connect anew now, and let the old connection finish its
                    // streams in the background (make-before-break).
                    debug!(%addr, "the peer stopped new streams (GOAWAY); connecting anew while the old connection drains");
                    let old = conn.clone();
                    tokio::spawn(async move {
                        // How it ends still counts: a `too_many_pings` GOAWAY doubles the keepalive interval.
                        if let Err(e) = driver.finish().await {
                            old.closed(Some(&e));
                        }
                    });
                    failures = 0;
                    continue;
                }
                if *stop.borrow() {
                    return;
                }
                match closed_with {
                    // Closed with an error right after connecting — a TLS 1.3 server refusing our certificate
                    // (it can only say so after the handshake), a peer that resets at once: a failed connect,
                    // which backs off instead of reconnecting in a loop.
                    Some(error) if up_since.elapsed() < settings.connect_timeout => match settings.tls {
                        Some(_) => {
                            format!("closed right after the TLS handshake (client certificate refused?): {error}")
                        }
                        None => format!("closed right after connecting: {error}"),
                    },
                    // The peer went away (GOAWAY, reset, keepalive timeout): reconnect at once, once; a peer that
                    // is really gone refuses the connect and the backoff below takes over.
                    _ => {
                        failures = 0;
                        continue;
                    }
                }
            }
            Err(e) => e,
        };
        metrics.connects_failed.fetch_add(1, Relaxed);
        failures = failures.saturating_add(1);
        // A failed rotation while the old connection still serves: keep it published, back off, retry.
        rotating = rotating && conn.is_ready();
        if rotating {
            if failures == 1 {
                warn!(%addr, %error, "connect failed; the previous connection keeps serving until the new certificates work");
            } else {
                debug!(%addr, %error, failures, "connect with the new certificates failed");
            }
        } else {
            outcomes.connect_failed();
            if failures == 1 {
                warn!(%addr, %error, "connect failed");
            } else {
                debug!(%addr, %error, failures, "connect failed");
            }
        }
        if *stop.borrow() {
            return;
        }
        if !rotating {
            conn.set(State::Backoff { error });
        }
        let delay = backoff(&settings, failures);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// How long a connection made with rotated certificates must stay up before it replaces the working one.
const ROTATION_SETTLE: Duration = Duration::from_millis(500);

/// Whether a new connection is up: a TLS 1.3 server can refuse our client certificate only after the handshake
/// (RFC 8446 §4.4.2.4), which the driver then reads as an alert within a round trip. `Ok` when the driver is still
/// running after `wait`.
async fn settle(driver: &mut std::pin::Pin<Box<Driver>>, wait: Duration) -> Result<(), String> {
    match tokio::time::timeout(wait, driver.as_mut()).await {
        Err(_) => Ok(()),
        Ok(Ok(())) => Err("closed by the peer right after the handshake".to_owned()),
        Ok(Err(e)) => Err(crate::error_chain(&e)),
    }
}

/// Resolves when the target's certificates were reloaded; never without TLS.
async fn tls_changed(changes: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match changes {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, min * 2^(n-1))]`, at least 1 ms. The doubling is
/// the shared [`crate::backoff`]; the jitter is "full" (AWS's name: uniform from zero up to the step), which backon
/// does not offer (its jitter adds up to one step), so that endpoints that failed together reconnect spread out.
fn backoff(settings: &Settings, failures: u32) -> Duration {
    let step = failures.saturating_sub(1).min(16) as usize;
    let exp = crate::backoff::doubling(settings.min_backoff, settings.max_backoff).nth(step);
    let cap = exp.unwrap_or(settings.max_backoff).min(settings.max_backoff).as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(1..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let s = Settings::default();
        for n in 1..40 {
            let d = backoff(&s, n);
            assert!(d >= Duration::from_millis(1) && d <= s.max_backoff, "{n}: {d:?}");
        }
        assert!(backoff(&s, 1) <= s.min_backoff);
    }
}
