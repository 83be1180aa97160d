//! Logs (tracing, `RUST_LOG`-style filter, plain or JSON) and Prometheus metrics.

pub mod access_log;
pub mod calls;
pub mod metrics;
pub mod process;

use tracing_subscriber::{EnvFilter, fmt};

use crate::cli::LogFormat;

/// Installs the global tracing subscriber. `RUST_LOG` filters; `default` applies without it.
pub fn init_logging(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests, demo children in-process) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Plain => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
