//! The deadline of a response the app has stopped reading.
//!
//! A passed-through response body enforces the call's deadline when it is polled ([`super::body::UpstreamBody`]),
//! but hyper polls a response body only while the app's HTTP/2 flow-control window has room: it waits for window
//! before it asks the body for more. An app that stops reading a stream (without resetting it) therefore froze
//! the call past its deadline: the backend's stream stayed open, and the call kept its concurrency slot and its
//! place in the endpoint's in-flight count for as long as the app kept the connection. gRPC servers end a call at
//! its deadline whether or not the client reads (grpc-go cancels the handler and resets the stream), so the
//! sidecar must too.
//!
//! So each passed-through response has a watchdog task that sleeps until the deadline. If the call has not ended
//! by then, it ends it as the body would: the backend's stream is reset (its body dropped) and the call recorded
//! as `DEADLINE_EXCEEDED`, freeing its slot. The body, when hyper next polls it, sends the app the
//! `DEADLINE_EXCEEDED` trailers. A call that ends first aborts its watchdog.

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio::{task::AbortHandle, time::Instant};
use tonic::Code;

use crate::{pool::RecvBody, proxy::call::CallRecord};

/// What a passed-through response shares with its watchdog: the backend's body (until the call ends) and the
/// call's record.
pub(super) struct Held {
    /// The backend's response body; `None` once the call has ended (dropping it resets an unfinished stream).
    pub inner: Option<RecvBody>,
    /// The call's accounting.
    pub record: CallRecord,
}

/// The watchdog of one response; dropping it (the body ended or was dropped) cancels it.
pub(super) struct Watchdog(AbortHandle);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the watchdog of `held`, whose call's deadline is `deadline` (`timeout` after its start).
pub(super) fn watch(held: &Arc<Mutex<Held>>, deadline: Instant, timeout: Duration) -> Watchdog {
    let held = Arc::downgrade(held);
    let task = tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        let Some(held) = held.upgrade() else { return };
        let mut held = held.lock();
        if held.inner.take().is_some() {
            tracing::debug!(?timeout, "deadline exceeded while the caller was not reading the response");
            held.record.finish(Code::DeadlineExceeded);
        }
    });
    Watchdog(task.abort_handle())
}
