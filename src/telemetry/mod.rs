//! Logs (tracing, `RUST_LOG`-style filter, plain or JSON) and Prometheus metrics.

pub mod access_log;
pub mod calls;
pub mod log_every;
pub mod metrics;
pub mod process;

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt};

/// How logs are written to stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// kube logs every failed request of the EndpointSlice watch, once per retry and at WARN or ERROR: its watcher
/// (`watch list error with 403`) and its client's trace layer (`failed with error client error (Connect)`).
/// Discovery reports each change of state itself, naming the Service (`discovery::health`), so these are muted
/// unless a directive of the filter names the crate: `kube` (the dependency's name, a prefix of both targets),
/// `kube_client`, `kube_runtime` or a module of one.
const KUBE_QUIET: [(&str, &str); 2] =
    [("kube_runtime", "kube_runtime::watcher=error"), ("kube_client", "kube_client::client::builder=off")];

/// Installs the global tracing subscriber. `RUST_LOG` filters; `default` applies without it.
pub fn init_logging(format: LogFormat, default: &str) {
    let given = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let asked = given.as_deref().unwrap_or(default);
    for (krate, quiet) in KUBE_QUIET {
        if !names_crate(asked, krate)
            && let Ok(quiet) = quiet.parse()
        {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests, demo children in-process) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Plain => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

/// Whether a directive of the `RUST_LOG`-style `filter` would match events of `krate`: its target (before `[` and
/// `=`; a bare word that is no level is a target) is a prefix of the crate's name, as `EnvFilter` matches targets,
/// or a module path within it.
fn names_crate(filter: &str, krate: &str) -> bool {
    filter.split(',').any(|directive| {
        let directive = directive.trim();
        let target = directive.split(['[', '=']).next().unwrap_or_default().trim();
        let bare_level =
            !directive.contains(['[', '=']) && target.parse::<tracing::level_filters::LevelFilter>().is_ok();
        !target.is_empty() && !bare_level && (krate.starts_with(target) || target.starts_with(krate))
    })
}

/// The label value that stands for every value past a label's cap.
pub const OTHER: &str = "other";

/// The label a series of `value` gets in `series` (a map from label value to what is recorded under it), capped at
/// `max` distinct values so no peer can create series at will (Prometheus: "do not use labels to store dimensions
/// with high cardinality"): `value` itself when it has a series already or fewer than `max` are in use, else
/// [`OTHER`]. `OTHER` then takes one more series, so a family has at most `max + 1`.
pub fn capped_label<'a, K, V>(series: &HashMap<K, V>, value: &'a str, max: usize) -> &'a str
where
    K: Borrow<str> + Hash + Eq,
{
    if series.len() < max || series.contains_key(value) { value } else { OTHER }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_filter_names_kube_by_any_of_its_targets() {
        use super::names_crate;
        for named in
            ["kube=debug", "info,kube=debug", "kube_client=trace", "kube_client::client::builder=debug", "kube"]
        {
            assert!(names_crate(named, "kube_client"), "{named}");
        }
        assert!(names_crate("kube_runtime::watcher=warn", "kube_runtime"));
        for not_named in
            ["debug", "info,hello_sidecar=debug", "kube_runtime=debug", "hello_sidecar::kube_standin=debug", ""]
        {
            assert!(!names_crate(not_named, "kube_client"), "{not_named}");
        }
    }

    use super::*;

    #[test]
    fn a_label_past_the_cap_is_other_and_known_labels_stay() {
        let mut series: HashMap<String, u64> = HashMap::new();
        for v in ["a", "b", "c"] {
            let label = capped_label(&series, v, 2).to_owned();
            *series.entry(label).or_default() += 1;
        }
        assert_eq!(series.get("c"), None);
        assert_eq!(series.get(OTHER), Some(&1));
        // Over the cap, a value with a series of its own keeps it.
        assert_eq!(capped_label(&series, "a", 2), "a");
        assert_eq!(capped_label(&series, "d", 2), OTHER);
    }
}
