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
//! So the deadline is kept by a watchdog task per passed-through response, which takes over the call's timer (the
//! one that bounded the wait for response headers: still one timer per call). If the call has not ended by the
//! deadline, the watchdog ends it: the backend's stream is reset (its body dropped), the call recorded as
//! `DEADLINE_EXCEEDED`, freeing its slot, and the body's task woken; the body then sends the app the
//! `DEADLINE_EXCEEDED` trailers as soon as hyper polls it. A call that ends first aborts its watchdog.

use std::{pin::Pin, sync::Arc, task::Waker, time::Duration};

use parking_lot::Mutex;
use tokio::{task::AbortHandle, time::Sleep};
use tonic::Code;

use crate::{pool::RecvBody, proxy::call::CallRecord};

/// What a passed-through response shares with its watchdog: the backend's body (until the call ends) and the
/// call's record.
pub(super) struct Held {
    /// The backend's response body; `None` once the call has ended (dropping it resets an unfinished stream).
    pub inner: Option<RecvBody>,
    /// The call's accounting.
    pub record: CallRecord,
    /// The task that last found the backend's body pending, woken when the deadline ends the call.
    pub waker: Option<Waker>,
}

impl Held {
    /// Whether the watchdog ended the call: the deadline passed.
    pub fn expired(&self) -> bool {
        self.inner.is_none()
    }

    /// Notes the task waiting on the backend's body (cloning its waker only when it changed).
    pub fn park(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }
}

/// The watchdog of one response; dropping it (the body ended or was dropped) cancels it.
pub(super) struct Watchdog(AbortHandle);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the watchdog of `held`; `deadline` is the call's timer, set to its deadline (`timeout` after its start).
pub(super) fn watch(held: &Arc<Mutex<Held>>, deadline: Pin<Box<Sleep>>, timeout: Duration) -> Watchdog {
    let held = Arc::downgrade(held);
    let task = tokio::spawn(async move {
        deadline.await;
        let Some(held) = held.upgrade() else { return };
        let mut held = held.lock();
        if held.inner.take().is_some() {
            tracing::debug!(?timeout, "deadline exceeded while streaming the response");
            held.record.finish(Code::DeadlineExceeded);
            if let Some(waker) = held.waker.take() {
                waker.wake();
            }
        }
    });
    Watchdog(task.abort_handle())
}
