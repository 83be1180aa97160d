//! The executor handed to hyper's HTTP/2 server: tokio's, with each spawned future boxed first.
//!
//! hyper spawns a task per stream on a server connection (and did per request on a client connection, before the
//! pool sent requests on h2 directly: `H2ClientFuture`, an enum whose largest variant holds a whole HTTP/2
//! connection, so every per-request task was several KiB).
//! Handed to `tokio::spawn` as they are, those futures are moved by value through the spawn path into the task
//! cell and the cell's stage is rewritten at its size when the task completes: `memcpy` topped the per-call
//! profile (`bench/callgrind.py`). Boxed, one copy goes to the heap and tokio moves a pointer.

use std::future::Future;

/// [`hyper::rt::Executor`] over `tokio::spawn` that boxes each future before spawning it (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxExecutor;

impl<F> hyper::rt::Executor<F> for BoxExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}
