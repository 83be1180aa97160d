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
//! use meanwhile (static stability). The retry policy is this module's own (`Retry`), because kube's
//! `default_backoff()` gets two things wrong for a sidecar: it resets on the watcher's `Init` marker, which comes
//! *before* the LIST, so a refused LIST was retried about once a second; and it resets only on an event, so after an
//! outage a quiet watch kept the outage's backoff and a later 410 waited it out before re-listing (issue 10.6).
//! What happens is reported through [`Health`] (the problem, errors by HTTP status, one log line per change).
//! Recovery is reported on data, or, when a watch resumed after an error stays quiet (a watch resumed from its
//! resourceVersion yields nothing when nothing changed), once a one-item LIST shows that the API answers again.

use std::{path::Path, sync::Arc, time::Duration};

use backon::BackoffBuilder;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{Instrument, debug, info, warn};

use super::{Discovered, PortRef, health::Health, relist::SliceState, slices::usable};

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

/// One failed request, as the retry policy and the operator see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// The HTTP status the API answered (`"403"`, `"429"`, `"410"` in-stream, …), or `connect` when it did not.
    cause: String,
    /// The API's `Retry-After` (`details.retryAfterSeconds` of its `Status`).
    retry_after: Option<Duration>,
    /// What to tell the operator.
    message: String,
}

impl Failure {
    /// The failure `e` of a request for the EndpointSlices in `namespace` to the API server at `server`.
    fn of(e: &watcher::Error, namespace: &str, server: &str) -> Self {
        let (what, inner) = match e {
            watcher::Error::InitialListFailed(k) => ("EndpointSlice list", Some(k)),
            watcher::Error::WatchStartFailed(k) | watcher::Error::WatchFailed(k) => ("EndpointSlice watch", Some(k)),
            watcher::Error::WatchError(status) => return Self::of_status("EndpointSlice watch", status, namespace),
            watcher::Error::NoResourceVersion => ("EndpointSlice list", None),
        };
        match inner {
            Some(kube::Error::Api(status)) => Self::of_status(what, status, namespace),
            // The API server (or what stands at its URL) answered, but kube could not read the answer: an error
            // page not in UTF-8 (kube then drops its HTTP status), or a 200 that is not JSON (a proxy's login
            // page). Not "connect", which says nothing answered and sends the operator to the network.
            Some(unreadable @ (kube::Error::FromUtf8(_) | kube::Error::SerdeError(_))) => Self {
                cause: "unreadable".into(),
                retry_after: None,
                message: format!(
                    "{what} failed: the answer of API server {server} is not a Kubernetes answer (a proxy in front \
                     of the API?): {}",
                    one_line(&crate::error_chain(unreadable))
                ),
            },
            Some(other) => Self {
                cause: "connect".into(),
                retry_after: None,
                message: format!("{what} failed: API server {server}: {}", crate::error_chain(other)),
            },
            None => Self { cause: "other".into(), retry_after: None, message: format!("{what} failed: {e}") },
        }
    }

    fn of_status(what: &str, status: &kube::core::Status, namespace: &str) -> Self {
        let retry_after = status
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(u64::from(s)));
        let (reason, text) = if status.reason == NOT_A_STATUS {
            // kube's stand-in Status for an answer that was not one: its message is the whole body, e.g. a load
            // balancer's HTML error page, which must not reach the log, /ready and grpc-message as it is.
            (
                ": the answer is not a Kubernetes Status (a proxy in front of the API?)".to_owned(),
                summary(&status.message),
            )
        } else if status.reason.is_empty() {
            (String::new(), one_line(&status.message))
        } else {
            (format!(" {}", one_line(&status.reason)), one_line(&status.message))
        };
        let mut message = format!("{what} refused by the API server: HTTP {}{reason}: {text}", status.code);
        if status.code == 403 {
            // The fix, not only the symptom: the API's message names one verb, and the sidecar needs both.
            message.push_str(&format!(
                "; RBAC: the sidecar's service account needs verbs [\"list\", \"watch\"] on resource \"endpointslices\" \
                 in API group \"discovery.k8s.io\" in namespace {namespace:?} (a Role and a RoleBinding there)"
            ));
        }
        Self { cause: status.code.to_string(), retry_after, message }
    }
}

/// The `reason` kube gives the `Status` it makes up when an error answer's body is not a `Status`.
const NOT_A_STATUS: &str = "Failed to parse error data";
/// The longest API message quoted in a problem (it reaches every failed call's `grpc-message`).
const MESSAGE_MAX: usize = 400;

/// `text` on one line (runs of whitespace and control characters made one space: a terminal escape, a bell or a NUL
/// in a proxy's page must not reach a terminal or `/ready`), cut with `…` past [`MESSAGE_MAX`] bytes (at a
/// character).
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            if out.len() + c.len_utf8() > MESSAGE_MAX {
                out.push('…');
                return out;
            }
            out.push(c);
        }
    }
    out
}

/// A body that is not a `Status` summed up: an HTML page by its `<title>` (when it has words), else its text
/// without tags, on one line.
fn summary(body: &str) -> String {
    let lower = body.to_ascii_lowercase();
    if let Some(start) = lower.find("<title>").map(|i| i + "<title>".len())
        && let Some(len) = lower[start..].find("</title>")
    {
        let title = one_line(&body[start..start + len]);
        if !title.is_empty() {
            return title;
        }
    }
    let mut text = String::with_capacity(body.len());
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    one_line(&text)
}

/// The API answered (no error) for at least this long since the last retry: the next error starts the backoff over.
const ANSWERED_FOR: Duration = Duration::from_secs(2);

/// When discovery retries after an error: exponential backoff with jitter from 800 ms to 30 s (kube's and
/// client-go's reflector defaults, through `backon`), except that
/// - an expired resourceVersion (410) re-lists at once;
/// - a `Retry-After` (429) is honoured as given, without growing the backoff;
/// - the backoff starts over once the API has answered again: on data, or when the last retry went ≥ 2 s without
///   an error (a watch that opened and stayed open), so a problem after an outage is not made to wait out the
///   outage's backoff.
pub(crate) struct Retry {
    backoff: backon::ExponentialBackoff,
    resumed: Option<Instant>,
}

impl Default for Retry {
    fn default() -> Self {
        Self { backoff: Self::builder().build(), resumed: None }
    }
}

impl Retry {
    fn builder() -> backon::ExponentialBuilder {
        crate::backoff::exponential(Duration::from_millis(800), Duration::from_secs(30)).with_jitter()
    }

    /// The API answered with data: start the backoff over.
    pub(crate) fn reset(&mut self) {
        self.backoff = Self::builder().build();
    }

    /// Polling resumes now, after an error's delay.
    pub(crate) fn resumed(&mut self) {
        self.resumed = Some(Instant::now());
    }

    /// The delay before retrying after `failure`.
    fn after(&mut self, failure: &Failure) -> Duration {
        if self.resumed.is_some_and(|t| t.elapsed() >= ANSWERED_FOR) {
            self.reset();
        }
        if failure.cause == "410" {
            return Duration::ZERO;
        }
        if let Some(after) = failure.retry_after {
            return after;
        }
        self.backoff.next().unwrap_or(Duration::from_secs(30))
    }
}

/// The client configuration from `--kubeconfig`, else the standard places (see [`connect`]).
async fn config_from(kubeconfig: Option<&Path>) -> Result<kube::Config, String> {
    let config = match kubeconfig {
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    Ok(config)
}

/// The client and the API server's URL (to name when it cannot be reached).
async fn client_from(kubeconfig: Option<&Path>) -> Result<(Client, String), String> {
    let mut config = config_from(kubeconfig).await?;
    let server = without_userinfo(&config.cluster_url);
    // kube's client retries 429/503/504 inside each request (up to 15 times, the longer of its own growing backoff
    // and Retry-After): throttling never reached this loop — no log, no metric — and discovery resumed long after
    // the throttling ended. [`Retry`] handles those answers here instead.
    config.default_retry = false;
    Client::try_from(config).map(|c| (c, server)).map_err(|e| e.to_string())
}

/// `url` as it may be shown: without the `user:password@` a kubeconfig's server URL may carry (RFC 3986 §3.2.1
/// deprecates a password there; it must not reach `/ready`, the log and calls' messages).
fn without_userinfo(url: &http::Uri) -> String {
    let Some(authority) = url.authority() else { return url.to_string() };
    let Some((_, host)) = authority.as_str().rsplit_once('@') else { return url.to_string() };
    let scheme = url.scheme_str().unwrap_or("https");
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{host}{path}")
}

/// The client from `--kubeconfig`, else the standard places: in-cluster service account, else `KUBECONFIG` /
/// `~/.kube/config`. Retries until it works: a sidecar that starts before its config is mounted should not
/// crash-loop. Meanwhile the error is `health`'s problem (cause `config`), so `/ready` and calls name it.
async fn connect(kubeconfig: Option<&Path>, health: &Health) -> (Client, String) {
    let mut delays = crate::backoff::doubling(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match client_from(kubeconfig).await {
            Ok(c) => return c,
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                let e = config_error(&e);
                debug!(error = %e, retry_in = ?delay, "no Kubernetes client configuration yet");
                health.failed("config", format!("no Kubernetes client configuration yet: {e}"));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A Kubernetes client configuration error as it may be shown (`/ready`, the log, every failed call): its first
/// line, with quoted values other than absolute paths elided. A YAML parse error goes on to quote the kubeconfig's lines around the fault,
/// and serde quotes a value of the wrong type: either can be a bearer token or a client key.
fn config_error(e: &str) -> String {
    let first = e.lines().next().unwrap_or_default();
    let quotes = first.matches('"').count();
    let mut out = String::with_capacity(first.len());
    for (i, part) in first.split('"').enumerate() {
        // Odd parts are inside quotes (an unmatched quote elides the rest); an absolute path (kube quotes the file
        // it could not read) is kept.
        out.push_str(if i % 2 == 1 && !part.starts_with('/') { "…" } else { part });
        if i < quotes {
            out.push('"');
        }
    }
    one_line(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_is_shown_without_its_credentials() {
        let shown = |u: &str| without_userinfo(&u.parse().unwrap());
        assert_eq!(shown("https://admin:hunter2@10.0.0.1:6443"), "https://10.0.0.1:6443/");
        assert_eq!(shown("https://kube.example:6443/prefix"), "https://kube.example:6443/prefix");
    }

    #[test]
    fn config_errors_show_no_content_of_the_kubeconfig() {
        let yaml = "/k: failed to parse kubeconfig YAML: error: line 6 column 9: unexpected character\n --> <input>:6:9\n  \
                    |\n5 |     token: sekret\n";
        assert_eq!(
            config_error(yaml),
            "/k: failed to parse kubeconfig YAML: error: line 6 column 9: unexpected character"
        );
        let typed = "/k: invalid type: string \"sekret\", expected struct AuthInfo";
        assert_eq!(config_error(typed), "/k: invalid type: string \"…\", expected struct AuthInfo");
        assert_eq!(config_error("a \"b"), "a \"…");
        let unread = "failed to read kubeconfig from '\"/etc/kc\"': No such file or directory (os error 2)";
        assert_eq!(config_error(unread), unread, "the file it could not read is named");
    }

    fn failure(cause: &str, retry_after: Option<u64>) -> Failure {
        Failure { cause: cause.into(), retry_after: retry_after.map(Duration::from_secs), message: String::new() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_list_backs_off_and_the_backoff_starts_over_once_the_api_answers() {
        let mut r = Retry::default();
        let mut delays = Vec::new();
        for _ in 0..6 {
            let d = r.after(&failure("403", None));
            tokio::time::advance(d).await;
            r.resumed();
            delays.push(d);
        }
        // Exponential with jitter: each step in [base·2^n, base·2^(n+1)], capped at 30 s (+ jitter).
        for (n, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(800).saturating_mul(1 << n).min(Duration::from_secs(30));
            assert!(*d >= base && *d <= base * 2, "step {n}: {d:?}");
        }
        // The API answered for 2 s (a watch stayed open): a 410 now re-lists at once, and the next error starts
        // from the bottom again.
        tokio::time::advance(ANSWERED_FOR).await;
        assert_eq!(r.after(&failure("410", None)), Duration::ZERO);
        r.resumed();
        let d = r.after(&failure("500", None));
        assert!(d <= Duration::from_millis(1600), "{d:?}");
    }

    #[test]
    fn answers_that_are_not_a_status_are_summed_up_on_one_line() {
        assert_eq!(
            summary("<html><head><title>502 Bad\n Gateway</title></head><body>…</body></html>"),
            "502 Bad Gateway"
        );
        assert_eq!(summary("<p><b>503.</b>\n  Service   Unavailable</p>"), "503. Service Unavailable");
        assert_eq!(summary("404 page not found\n"), "404 page not found");
        // An empty title says nothing: the page's text does.
        assert_eq!(
            summary("<html><title> </title><body>503 Service Unavailable</body></html>"),
            "503 Service Unavailable"
        );
        assert_eq!(summary("<title>\u{1b}[31mBad\u{7}\0Gateway</title>"), "[31mBad Gateway");
        for long in [one_line(&"word ".repeat(500)), one_line(&"é".repeat(1000))] {
            // Cut at a character, never inside one (é is two bytes).
            assert!(long.len() <= MESSAGE_MAX + '…'.len_utf8() && long.ends_with('…'), "{long}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_as_given() {
        let mut r = Retry::default();
        for _ in 0..5 {
            assert_eq!(r.after(&failure("429", Some(3))), Duration::from_secs(3));
            r.resumed();
        }
        // Throttling did not grow the backoff.
        assert!(r.after(&failure("500", None)) <= Duration::from_millis(1600));
    }
}
