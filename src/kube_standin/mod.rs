//! A stand-in for the part of the Kubernetes API the sidecar uses: EndpointSlices over real HTTP.
//!
//! It follows the API conventions rather than what our own client happens to send: LIST with `labelSelector`,
//! `limit` / `continue` and a list `resourceVersion`; WATCH from a resourceVersion as chunked newline-delimited
//! JSON events, `BOOKMARK`s when `allowWatchBookmarks=true`, `timeoutSeconds` honoured, and an expired
//! resourceVersion answered as the real server does: HTTP 200, then an in-stream `ERROR` event carrying a
//! `Status` with code 410. One global resourceVersion counter, like etcd.
//!
//! The control surface lets tests and the demo play the cluster and break the API: put and delete slices, compact
//! history, drop every watch, fail the next N requests with 500, refuse every request with 403 (RBAC missing) or
//! 429 with `Retry-After` (throttling), stall, go down and come back.

pub mod controller;
mod http;
pub mod store;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use parking_lot::Mutex;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use self::store::Store;

/// Shared state of the stand-in.
pub(crate) struct Inner {
    pub(crate) store: Mutex<Store>,
    pub(crate) fail_next: AtomicU32,
    pub(crate) refusal: Mutex<Option<Refusal>>,
    pub(crate) stalled: watch::Sender<bool>,
    /// Bumped to end every open watch stream abruptly.
    pub(crate) drop_watches: watch::Sender<u64>,
    /// Bumped to cut every connection (going down).
    pub(crate) epoch: watch::Sender<u64>,
    pub(crate) bookmark_every: Duration,
    pub(crate) lists: AtomicU64,
    pub(crate) watches: AtomicU64,
}

/// How the stand-in refuses every new request until told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 403 `Forbidden`, as the API server answers a service account without the RBAC to list or watch.
    Forbidden,
    /// HTTP 403 `Forbidden` for WATCH only, LIST answered: a Role that grants `list` but forgets `watch`.
    ForbiddenWatch,
    /// HTTP 502 with an HTML page, not a `Status`: a load balancer in front of the API server whose backend is
    /// down (as during a control-plane upgrade).
    BadGateway,
    /// HTTP 429 `TooManyRequests` with `Retry-After` (header and `details.retryAfterSeconds`), as API Priority
    /// and Fairness answers when it throttles.
    Throttled {
        /// The `Retry-After` in seconds.
        retry_after: u32,
    },
}

/// A running stand-in API server.
pub struct StandIn {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl StandIn {
    /// Starts serving on `addr` (port 0 picks one).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            store: Mutex::default(),
            fail_next: AtomicU32::new(0),
            refusal: Mutex::default(),
            stalled: watch::channel(false).0,
            drop_watches: watch::channel(0).0,
            epoch: watch::channel(0).0,
            bookmark_every: Duration::from_secs(1),
            lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
        });
        let accept = tokio::spawn(http::accept_loop(listener, inner.clone()));
        Ok(Self { inner, addr, accept: Mutex::new(Some(accept)) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig that points a kube client here (plain HTTP, no auth), with `namespace` as the default.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: {namespace}\n\
             current-context: standin\nusers:\n- name: standin\n  user: {{}}\n",
            self.addr
        )
    }

    /// Creates or replaces a slice (`ADDED` / `MODIFIED`).
    pub fn put_slice(&self, slice: &EndpointSlice) {
        if let Ok(v) = serde_json::to_value(slice) {
            self.store().put(v);
        }
    }

    /// Deletes a slice (`DELETED`).
    pub fn delete_slice(&self, namespace: &str, name: &str) -> bool {
        self.store().delete(namespace, name)
    }

    /// Compacts history: a watch resuming from before now gets an in-stream 410.
    pub fn compact(&self) {
        self.store().compact();
    }

    /// Ends every open watch stream abruptly (as a restarting API server or a proxy timeout would).
    pub fn drop_watches(&self) {
        self.inner.drop_watches.send_modify(|n| *n += 1);
    }

    /// The next `n` requests get HTTP 500.
    pub fn fail_next(&self, n: u32) {
        self.inner.fail_next.store(n, Relaxed);
    }

    /// Refuses every new request (LIST and WATCH) so, or (`None`) answers them again. Open watches stay open, as
    /// on a real API server.
    pub fn refuse(&self, refusal: Option<Refusal>) {
        *self.inner.refusal.lock() = refusal;
    }

    /// While stalled, requests are accepted but not answered, and watches deliver nothing.
    pub fn stall(&self, stalled: bool) {
        self.inner.stalled.send_replace(stalled);
    }

    /// Stops listening and cuts every connection.
    pub fn down(&self) {
        if let Some(task) = self.accept.lock().take() {
            task.abort();
        }
        self.inner.epoch.send_modify(|n| *n += 1);
    }

    /// Listens again on the same address.
    pub async fn up(&self) -> std::io::Result<()> {
        // The aborted accept task drops its listener on its next poll: retry the bind briefly.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let task = tokio::spawn(http::accept_loop(listener, self.inner.clone()));
        *self.accept.lock() = Some(task);
        Ok(())
    }

    /// LIST requests received so far, those refused or failed included.
    pub fn lists(&self) -> u64 {
        self.inner.lists.load(Relaxed)
    }

    /// WATCH requests received so far, those refused or failed included.
    pub fn watches(&self) -> u64 {
        self.inner.watches.load(Relaxed)
    }

    fn store(&self) -> parking_lot::MutexGuard<'_, Store> {
        self.inner.store.lock()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.down();
    }
}
