//! The Kubernetes client: from `--kubeconfig`, else the standard places, retried until it works, and named
//! without secrets when it does not.

use std::{path::Path, time::Duration};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use tracing::debug;

use super::{failure::one_line, health::Health};

/// The client configuration from `--kubeconfig`, else the standard places (see [`connect`]).
pub(super) async fn config_from(kubeconfig: Option<&Path>) -> Result<kube::Config, String> {
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
pub(super) async fn connect(kubeconfig: Option<&Path>, health: &Health) -> (Client, String) {
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
}
