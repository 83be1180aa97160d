//! What one failed request to the API server means: the cause the metrics count, the message the operator sees
//! (one line, bounded, no control characters: it reaches `/ready`, the log and every failed call's `grpc-message`),
//! and when discovery retries ([`Retry`]).

use std::time::Duration;

use backon::BackoffBuilder;
use kube::runtime::watcher;
use tokio::time::Instant;

/// One failed request, as the retry policy and the operator see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    /// The HTTP status the API answered (`"403"`, `"429"`, `"410"` in-stream, …), or `connect` when it did not.
    pub(super) cause: String,
    /// The API's `Retry-After` (`details.retryAfterSeconds` of its `Status`).
    pub(super) retry_after: Option<Duration>,
    /// What to tell the operator.
    pub(super) message: String,
}

impl Failure {
    /// The failure `e` of a request for the EndpointSlices in `namespace` to the API server at `server`.
    pub(super) fn of(e: &watcher::Error, namespace: &str, server: &str) -> Self {
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
pub(super) fn one_line(text: &str) -> String {
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
pub(super) const ANSWERED_FOR: Duration = Duration::from_secs(2);

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
    pub(super) fn after(&mut self, failure: &Failure) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;

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
