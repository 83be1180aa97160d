//! Kubernetes discovery: a kube `watcher` on the target Service's EndpointSlices.
//!
//! State is kept per slice name; every change recomputes the usable union ([`super::slices::usable`]) and sends it
//! when it differs from the last one sent, so a re-list that finds the same pods changes nothing downstream.
//! A re-list (`Init … InitApply … InitDone`) is buffered and swapped in whole at `InitDone`: slices absent from
//! the new list are gone, and nothing is removed half-way.
//!
//! Errors (API server down, 5xx, 410 Gone, dropped streams) never end the loop: the watcher retries with kube's
//! default backoff, and the last set stays in use meanwhile (static stability).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    Discovered, PortRef,
    slices::{SliceEndpoint, endpoints_of, usable},
};

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Watches `service` in `namespace` (the client's default namespace when `None`) and sends usable sets.
pub async fn run(
    service: String,
    namespace: Option<String>,
    port: PortRef,
    kubeconfig: Option<PathBuf>,
    tx: mpsc::Sender<Vec<Discovered>>,
) {
    let client = connect(kubeconfig.as_deref()).await;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    info!(%service, %namespace, %port, "watching EndpointSlices");
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let mut events = watcher(api, config).default_backoff().boxed();

    let mut slices: BTreeMap<String, Vec<SliceEndpoint>> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, Vec<SliceEndpoint>>> = None;
    let mut last: Option<Vec<Discovered>> = None;
    let mut failing = false;
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                relist = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(buffer) = relist.as_mut() {
                    buffer.insert(name_of(&s), endpoints_of(&s, &port));
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                slices = relist.take().unwrap_or_default();
                true
            }
            Ok(watcher::Event::Apply(s)) => {
                slices.insert(name_of(&s), endpoints_of(&s, &port));
                true
            }
            Ok(watcher::Event::Delete(s)) => {
                slices.remove(&name_of(&s));
                true
            }
            Err(e) => {
                // Logged once per outage; the backoff keeps retrying and the last set stays in use.
                if !failing {
                    warn!(error = %e, "EndpointSlice watch failed; keeping the last known endpoints");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            info!("EndpointSlice watch recovered");
            failing = false;
        }
        if !changed {
            continue;
        }
        let set = usable(&slices);
        if last.as_ref() != Some(&set) {
            if tx.send(set.clone()).await.is_err() {
                return;
            }
            last = Some(set);
        }
    }
}

async fn client_from(kubeconfig: Option<&Path>) -> Result<Client, String> {
    let Some(path) = kubeconfig else { return Client::try_default().await.map_err(|e| e.to_string()) };
    let file = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| e.to_string())
}

fn name_of(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

/// The client from `--kubeconfig`, else the standard places: in-cluster service account, else `KUBECONFIG` /
/// `~/.kube/config`. Retries until it works: a sidecar that starts before its config is mounted should not
/// crash-loop.
async fn connect(kubeconfig: Option<&Path>) -> Client {
    let mut delay = Duration::from_millis(200);
    loop {
        match client_from(kubeconfig).await {
            Ok(c) => return c,
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "no Kubernetes client configuration yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
