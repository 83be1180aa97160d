//! Kubernetes discovery: a kube `watcher` on the target Service's EndpointSlices.
//!
//! One watch per Service (issue 12: "one EndpointSlice watch per Kubernetes Service, never per route"): targets
//! that name the same Service on different ports ([`Feed`]) share it, and each gets the endpoints of its own port.
//! State is kept per slice name and port; every change recomputes each port's usable union
//! ([`super::slices::usable`]) and sends it when it differs from the last one sent to that port, so a re-list that
//! finds the same pods changes nothing downstream.
//! A re-list (`Init … InitApply … InitDone`) is buffered and swapped in whole at `InitDone` (`discovery::relist`).
//!
//! Errors (API server down, 403, 429, 5xx, 410 Gone, dropped streams) never end the loop, and the last set stays in
//! use meanwhile (static stability). The retry policy is discovery's own (`failure::Retry`), because kube's
//! `default_backoff()` gets two things wrong for a sidecar: it resets on the watcher's `Init` marker, which comes
//! *before* the LIST, so a refused LIST was retried about once a second; and it resets only on an event, so after an
//! outage a quiet watch kept the outage's backoff and a later 410 waited it out before re-listing (issue 10.6).
//! What happens is reported through [`Health`] (the problem, errors by HTTP status, one log line per change).
//! Recovery is reported on data, or, when a watch resumed after an error stays quiet (a watch resumed from its
//! resourceVersion yields nothing when nothing changed), once a one-item LIST shows that the API answers again.

use std::{path::Path, sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client, runtime::watcher};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{Instrument, debug, info, warn};

use super::{
    Discovered, PortRef,
    failure::{ANSWERED_FOR, Failure, Retry},
    health::Health,
    kube_client::{config_from, connect},
    relist::SliceState,
    slices::usable,
};

/// How long discovery waits for the next slice change of a burst before it hands the set on: a controller writes
/// the slices of a large Service one by one (100 for 10,000 endpoints), and each hand-over costs the whole set
/// (union, comparison, balancer update). Kubernetes' own EndpointSlice controller batches pod changes for up to a
/// second (`--endpointslice-updates-batch-period`); 2 ms is nothing beside that.
const BURST_QUIET: Duration = Duration::from_millis(2);
/// Changes this soon after the last hand-over are a burst, and wait BURST_QUIET for more.
const BURST_WINDOW: Duration = Duration::from_millis(100);
/// Sets at least this large wait for the rest of a burst; a smaller one costs little to hand over.
const LARGE_SET: usize = 1000;
/// The longest a burst is held back while changes keep coming.
const BURST_MAX: Duration = Duration::from_millis(50);

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of a watched Service and where its usable sets go.
pub struct Feed {
    /// The Service port, by name or number.
    pub port: PortRef,
    /// Whole usable sets for this port, as they change.
    pub tx: mpsc::Sender<Vec<Discovered>>,
    /// Why calls may find no endpoint, for their `UNAVAILABLE` message: while the usable set is empty, why (e.g.
    /// `no port of the Service is named "grpc" (its ports: http)`); else a port number no slice has (the
    /// Service's port given for the pod's: `SliceState::port_hint`).
    pub explain: watch::Sender<Option<String>>,
    slices: SliceState,
    last: Option<Vec<Discovered>>,
}

impl Feed {
    /// A port to feed.
    pub fn new(port: PortRef, tx: mpsc::Sender<Vec<Discovered>>, explain: watch::Sender<Option<String>>) -> Self {
        Self { port, tx, explain, slices: SliceState::default(), last: None }
    }
}

/// The pod's own namespace as the Kubernetes client configuration gives it (the service account's namespace in a
/// pod, else the kubeconfig context's, else `default`); `None` when there is no configuration yet.
pub async fn own_namespace(kubeconfig: Option<&Path>) -> Option<String> {
    config_from(kubeconfig).await.ok().map(|c| c.default_namespace)
}

/// Watches `service` in `namespace` (the client's default namespace when `None`) and sends each feed the usable
/// sets of its port; ends when every feed's receiver is gone.
pub async fn run(
    service: String,
    namespace: Option<String>,
    feeds: Vec<Feed>,
    options: super::Options,
    health: Arc<Health>,
) {
    let (client, server) = connect(options.kubeconfig.as_deref(), &health).await;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    // Every line logged for this watch (a failure, a recovery) names the Service: a sidecar may watch several.
    let span = tracing::info_span!("discovery", %service, %namespace);
    let service = Service { name: service, namespace, server };
    watch_slices(client, service, feeds, options, health).instrument(span).await;
}

/// The watched Service and where its API server is.
struct Service {
    name: String,
    namespace: String,
    /// The API server's URL, named when it cannot be reached.
    server: String,
}

/// [`run`] once the client and the namespace are known.
async fn watch_slices(
    client: Client,
    service: Service,
    mut feeds: Vec<Feed>,
    options: super::Options,
    health: Arc<Health>,
) {
    let Service { name: service, namespace, server } = service;
    let ports: Vec<String> = feeds.iter().map(|f| f.port.to_string()).collect();
    info!(%service, %namespace, ?ports, "watching EndpointSlices");
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let selector = format!("{SERVICE_NAME_LABEL}={service}");
    let config = watcher::Config::default().labels(&selector);
    let mut events = watcher(api.clone(), config).boxed();
    // After an error, when to ask the API directly whether it answers again (see `answers_again`).
    let mut check_at: Option<Instant> = None;

    let mut retry = Retry::default();
    // An event already taken from the stream while coalescing a burst, handled next.
    let mut peeked = None;
    // When the burst of slice changes not yet handed to the balancer began.
    let mut burst_since: Option<Instant> = None;
    // When a set was last handed on: a change soon after it is part of a burst.
    let mut last_handover: Option<Instant> = None;
    loop {
        let next = match (peeked.take(), check_at) {
            (Some(event), _) => Some(event),
            (None, Some(at)) => tokio::time::timeout_at(at, events.next()).await.ok(),
            (None, None) => Some(events.next().await),
        };
        let Some(next) = next else {
            // The watch resumed after an error and has stayed quiet: a watch that resumes from its
            // resourceVersion delivers nothing when nothing changed, so only the API itself can say it is back.
            check_at = None;
            if answers_again(&api, &selector).await {
                retry.reset();
                health.recovered();
            } else {
                check_at = Some(Instant::now() + RECHECK);
            }
            continue;
        };
        let Some(event) = next else { break };
        let changed = match event {
            Ok(event) => {
                match event {
                    // `Init` comes before the LIST request: it says nothing about whether the API answers.
                    watcher::Event::Init => health.listing(),
                    // The LIST answered.
                    watcher::Event::InitApply(_) => retry.reset(),
                    _ => {}
                }
                let mut changed = false;
                for feed in &mut feeds {
                    changed |= feed.slices.apply(event.clone(), &feed.port);
                }
                changed
            }
            Err(e) => {
                let failure = Failure::of(&e, &namespace, &server);
                let delay = retry.after(&failure);
                if failure.cause == "410" {
                    // An expired resourceVersion is routine: kube re-lists on the next poll.
                    debug!(error = %failure.message, "EndpointSlice watch expired; re-listing");
                    health.count(&failure.cause);
                } else {
                    health.failed(&failure.cause, failure.message);
                }
                if !delay.is_zero() {
                    debug!(retry_in = ?delay, "discovery backing off");
                    tokio::time::sleep(delay).await;
                }
                retry.resumed();
                check_at = health.problem().is_some().then(|| Instant::now() + ANSWERED_FOR);
                continue;
            }
        };
        if !changed {
            continue;
        }
        retry.reset();
        health.recovered();
        health.synced();
        check_at = None;
        // Coalesce a burst: changes already waiting are applied before the union is recomputed, and for a large
        // set while changes keep coming (the last hand-over was within BURST_WINDOW) those that follow within
        // BURST_QUIET of each other (for at most BURST_MAX) too, so a controller writing 100 slices costs a few
        // recomputations and balancer updates, not 100 ever larger ones. A change to a small set, or after a quiet
        // spell, goes on at once.
        let large = feeds.iter().any(|f| f.last.as_ref().is_some_and(|set| set.len() >= LARGE_SET));
        let in_burst = large && last_handover.is_some_and(|t: Instant| t.elapsed() < BURST_WINDOW);
        let since = *burst_since.get_or_insert_with(Instant::now);
        let quiet = if in_burst {
            BURST_QUIET.min((since + BURST_MAX).saturating_duration_since(Instant::now()))
        } else {
            Duration::ZERO
        };
        let waiting = if quiet.is_zero() {
            events.next().now_or_never()
        } else {
            tokio::time::timeout(quiet, events.next()).await.ok()
        };
        if let Some(event) = waiting {
            let more = matches!(event, Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))));
            peeked = Some(event);
            if more {
                continue;
            }
        }
        burst_since = None;
        last_handover = Some(Instant::now());
        let mut gone = Vec::new();
        for (i, feed) in feeds.iter_mut().enumerate() {
            let set = usable(feed.slices.current(), options.ip_family);
            // Said before the set goes on, so the first call that finds no endpoint can be told why.
            let why = if set.is_empty() {
                Some(feed.slices.why_empty(&feed.port))
            } else {
                feed.slices.port_hint(&feed.port)
            };
            let port = &feed.port;
            feed.explain.send_if_modified(|old| {
                if *old == why {
                    return false;
                }
                match &why {
                    Some(why) if set.is_empty() => warn!(%port, reason = %why, "no usable endpoint"),
                    Some(why) => warn!(%port, reason = %why, "the target's port may be the wrong one"),
                    None => {}
                }
                old.clone_from(&why);
                true
            });
            if feed.last.as_ref() != Some(&set) {
                if feed.tx.send(set.clone()).await.is_err() {
                    gone.push(i);
                    continue;
                }
                feed.last = Some(set);
            }
        }
        for i in gone.into_iter().rev() {
            feeds.swap_remove(i);
        }
        if feeds.is_empty() {
            return;
        }
    }
}

/// Whether the API answers a LIST of the Service's slices (one item, within [`CHECK_TIMEOUT`]): asked once after a
/// watch resumed from an error and stayed quiet for [`ANSWERED_FOR`], because a resumed watch with nothing to report
/// yields no event, and without one discovery never said it had recovered. A real answer, not the mere absence of
/// errors, so a stalled API is not taken for a working one.
async fn answers_again(api: &Api<EndpointSlice>, selector: &str) -> bool {
    let params = kube::api::ListParams::default().labels(selector).limit(1);
    matches!(tokio::time::timeout(CHECK_TIMEOUT, api.list(&params)).await, Ok(Ok(_)))
}

/// How long [`answers_again`] waits for the API.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// While the watch stays quiet and the API did not answer [`answers_again`], how often to ask again.
const RECHECK: Duration = Duration::from_secs(10);
