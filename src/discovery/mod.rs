//! The control path: where the backends are.
//!
//! Every source produces whole endpoint sets on a channel: the balancer diffs each set against the one it has, so
//! a source never has to compute additions and removals, and a re-list is just another set. The first set marks
//! the sidecar as synced (`/ready`).
//!
//! Static stability: a source that loses its upstream (DNS, the API server) sends nothing, and the last set stays
//! in use. Only a new set can remove an endpoint.

mod failure;
pub mod health;
mod kube_client;
pub mod kubernetes;
mod relist;
pub mod slices;
pub mod target;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

pub use self::{
    health::Health,
    slices::IpFamily,
    target::{PortRef, Target, TargetError},
};

/// One usable endpoint as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Address and port to connect to.
    pub addr: SocketAddr,
    /// The pod behind it, when known (`targetRef.name`).
    pub pod: Option<String>,
    /// It is terminating but still serving (used only when no ready endpoint is left).
    pub terminating: bool,
    /// Every address the pod is known by, `addr` first (a dual-stack pod has an IPv4 and an IPv6 one).
    pub addresses: Vec<SocketAddr>,
}

impl Discovered {
    /// An endpoint known only by address.
    pub fn addr(addr: SocketAddr) -> Self {
        Self { addr, pod: None, terminating: false, addresses: vec![addr] }
    }
}

/// How discovery is set up beyond the target.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Overrides the standard Kubernetes client configuration.
    pub kubeconfig: Option<PathBuf>,
    /// Which address family to call a dual-stack pod on.
    pub ip_family: IpFamily,
}

/// A running discovery: its endpoint sets and its health.
pub struct Discovery {
    /// Whole endpoint sets, as they change.
    pub sets: mpsc::Receiver<Vec<Discovered>>,
    /// What discovery is going through.
    pub health: Arc<Health>,
    /// Why calls may find no endpoint, in words for the caller: why the set is empty, or a likely wrong port
    /// (`None` while there is nothing to say, and from a source that cannot say).
    pub explain: watch::Receiver<Option<String>>,
}

/// One watched Service: its namespace (`None`: the client's default) and name.
type WatchKey = (Option<String>, String);

/// Starts discovery for `targets`, one [`Discovery`] each, in order. Kubernetes targets that name the same Service
/// (same namespace and name; ports may differ) share one EndpointSlice watch, which feeds each its own port's
/// endpoints and reports through one [`Health`] (issue 12: one watch per Service, never per route). Give targets
/// their namespace first ([`Target::in_namespace`]), so that `hello:grpc` and `hello.default:grpc` are one Service.
pub fn spawn_all(targets: &[Target], options: &Options) -> Vec<Discovery> {
    let mut out: Vec<Option<Discovery>> = targets.iter().map(|_| None).collect();
    // One per (namespace, service), in order of first appearance: its ports' feeds and its health.
    let mut watches: Vec<(WatchKey, Vec<kubernetes::Feed>, Arc<Health>)> = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let (tx, sets) = mpsc::channel(16);
        let (explain_tx, explain) = watch::channel(None);
        match target {
            Target::Static(hosts) => {
                let health = Arc::new(Health::default());
                tokio::spawn(resolve_static(hosts.clone(), health.clone(), tx));
                out[i] = Some(Discovery { sets, health, explain });
            }
            Target::Kubernetes { service, namespace, port } => {
                let key = (namespace.clone(), service.clone());
                let w = match watches.iter().position(|(k, _, _)| *k == key) {
                    Some(w) => w,
                    None => {
                        watches.push((key, Vec::new(), Arc::new(Health::default())));
                        watches.len() - 1
                    }
                };
                let (_, feeds, health) = &mut watches[w];
                feeds.push(kubernetes::Feed::new(port.clone(), tx, explain_tx));
                out[i] = Some(Discovery { sets, health: health.clone(), explain });
            }
        }
    }
    for ((namespace, service), feeds, health) in watches {
        tokio::spawn(kubernetes::run(service, namespace, feeds, options.clone(), health));
    }
    out.into_iter().flatten().collect()
}

/// Resolves a static host list once (retrying with backoff until every name resolves), then holds the set.
async fn resolve_static(hosts: Vec<String>, health: Arc<Health>, tx: mpsc::Sender<Vec<Discovered>>) {
    let mut delays = crate::backoff::doubling(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let mut set = Vec::new();
        let mut failed = None;
        for host in &hosts {
            match tokio::net::lookup_host(host.as_str()).await {
                Ok(addrs) => set.extend(addrs.map(Discovered::addr)),
                Err(e) => failed = Some(format!("{host}: {e}")),
            }
        }
        if let Some(err) = failed {
            health.failed("dns", format!("static target did not resolve: {err}"));
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
            continue;
        }
        set.sort_by_key(|d| d.addr);
        set.dedup_by_key(|d| d.addr);
        health.recovered();
        if tx.send(set).await.is_err() {
            return;
        }
        // Keep the channel open: a closed channel would read as "discovery ended".
        tx.closed().await;
        return;
    }
}
