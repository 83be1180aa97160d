//! The sidecar's counters and how they reach Prometheus.
//!
//! Recording is plain atomics (one short read lock for the per-method map), so the hot path never allocates or
//! formats; the exposition is the `prometheus-client` crate's Prometheus text encoder (format 0.0.4), fed at
//! scrape time by [`Collector`]s that read those atomics. Nothing here writes exposition text by hand.
//!
//! Naming follows the Prometheus conventions: base units in the name (`_seconds`, `_bytes`), `_total` on
//! counters (the encoder appends it: a counter's descriptor name here has no suffix), bounded label values.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use parking_lot::RwLock;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tonic::Code;

pub use super::calls::{BUCKETS, CallStats, EndpointStats, Histogram};
use crate::telemetry::access_log::AccessLog;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Distinct method labels kept; past this, calls count under `other` so a client cannot blow up the registry.
const MAX_METHODS: usize = 64;

/// The sidecar's counters. One instance per process, shared by reference.
#[derive(Default)]
pub struct Metrics {
    calls: RwLock<HashMap<Box<str>, CallStats>>,
    /// Transparent retries: attempts that never reached the backend's application (not sent, REFUSED_STREAM,
    /// above a GOAWAY's last-stream-id), sent again.
    pub retries_transparent: AtomicU64,
    /// Retries by a method's `retryPolicy` (service config) after a retryable status.
    pub retries_policy: AtomicU64,
    /// Backend connections closed by the peer's GOAWAY `too_many_pings` (our keepalive was doubled).
    pub keepalive_goaways: AtomicU64,
    /// Requests or responses refused because their header or trailer block was over `--max-header-bytes`.
    pub headers_too_large: AtomicU64,
    /// Retries the budget refused.
    pub retries_refused_by_budget: AtomicU64,
    /// Endpoints ejected by failure accrual.
    pub ejections: AtomicU64,
    /// Connection attempts that succeeded.
    pub connects_ok: AtomicU64,
    /// Connection attempts that failed.
    pub connects_failed: AtomicU64,
    /// Endpoint sets received from discovery.
    pub discovery_updates: AtomicU64,
    /// Calls refused because the concurrency limit was reached.
    pub overloaded: AtomicU64,
    /// HTTP/2 connections this side closed with a GOAWAY because the peer broke a rule or an abuse limit, by
    /// side (inbound, upstream) and code (`ENHANCE_YOUR_CALM`, any other).
    goaways_sent: [[AtomicU64; 2]; 2],
    /// The access log, when `--access-log` is on.
    access_log: std::sync::OnceLock<std::sync::Arc<AccessLog>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Records one finished call. Allocates only the first time a method label is seen.
    pub fn record_call(&self, method: &str, code: Code, elapsed: Duration) {
        {
            let calls = self.calls.read();
            if let Some(stats) = calls.get(method) {
                stats.record(code, elapsed);
                return;
            }
        }
        let mut calls = self.calls.write();
        let key = super::capped_label(&*calls, method, MAX_METHODS);
        calls.entry(key.into()).or_default().record(code, elapsed);
    }

    /// Counts a GOAWAY this side sent on an inbound (app) or upstream (backend) connection, with `reason`.
    pub fn record_goaway_sent(&self, upstream: bool, reason: h2::Reason) {
        let code = usize::from(reason != h2::Reason::ENHANCE_YOUR_CALM);
        self.goaways_sent[usize::from(upstream)][code].fetch_add(1, Relaxed);
    }

    /// Turns the access log on (once; later calls change nothing).
    pub fn set_access_log(&self, log: std::sync::Arc<AccessLog>) {
        let _ = self.access_log.set(log);
    }

    /// The access log, when it is on.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.get().map(|l| &**l)
    }

    /// Calls recorded for `method` with `code` (tests and the demo read this).
    pub fn calls(&self, method: &str, code: Code) -> u64 {
        let calls = self.calls.read();
        calls.get(method).map_or(0, |m| m.calls(code))
    }
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        {
            let calls = self.calls.read();
            let mut methods: Vec<_> = calls.iter().collect();
            methods.sort_by(|a, b| a.0.cmp(b.0));
            let mut family = enc.encode_descriptor(
                "hello_sidecar_requests",
                "gRPC calls handled, by method and grpc status.",
                None,
                MetricType::Counter,
            )?;
            for (method, stats) in &methods {
                stats.encode_statuses(&mut family, [("method", method)])?;
            }
            let mut family = enc.encode_descriptor(
                "hello_sidecar_request_duration_seconds",
                "Time from a call's arrival to its last byte.",
                None,
                MetricType::Histogram,
            )?;
            for (method, stats) in &methods {
                stats.encode_latency(&mut family, &[("method", &***method)])?;
            }
        }
        let retries = [("transparent", &self.retries_transparent), ("policy", &self.retries_policy)];
        let mut family = enc.encode_descriptor(
            "hello_sidecar_retries",
            "Attempts sent again, by reason (transparent: never reached the application).",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in retries {
            counter_sample(&mut family, [("reason", reason)], n.load(Relaxed))?;
        }
        let plain = [
            ("hello_sidecar_retries_refused", "Retries refused by the retry budget.", &self.retries_refused_by_budget),
            ("hello_sidecar_ejections", "Endpoints ejected after consecutive failures.", &self.ejections),
            (
                "hello_sidecar_keepalive_goaways",
                "Backend connections closed by the peer's GOAWAY too_many_pings (the keepalive interval was doubled).",
                &self.keepalive_goaways,
            ),
            (
                "hello_sidecar_headers_too_large",
                "Requests or responses refused because a header or trailer block was over --max-header-bytes.",
                &self.headers_too_large,
            ),
        ];
        for (name, help, n) in plain {
            counter(&mut enc, name, help, n.load(Relaxed))?;
        }
        let mut family = enc.encode_descriptor(
            "hello_sidecar_connects",
            "Connection attempts to endpoints, by result.",
            None,
            MetricType::Counter,
        )?;
        counter_sample(&mut family, [("result", "ok")], self.connects_ok.load(Relaxed))?;
        counter_sample(&mut family, [("result", "error")], self.connects_failed.load(Relaxed))?;
        let updates = self.discovery_updates.load(Relaxed);
        counter(&mut enc, "hello_sidecar_discovery_updates", "Endpoint sets received from discovery.", updates)?;
        if let Some(log) = self.access_log() {
            let help = "Access log lines dropped because the writer fell behind (calls never wait for it) or the sink refused them.";
            counter(&mut enc, "hello_sidecar_access_log_dropped", help, log.dropped())?;
        }
        counter(
            &mut enc,
            "hello_sidecar_overloaded",
            "Calls refused at the concurrency limit.",
            self.overloaded.load(Relaxed),
        )?;
        let mut family = enc.encode_descriptor(
            "hello_sidecar_http2_goaways_sent",
            "HTTP/2 connections closed here because the peer broke a protocol rule or an abuse limit \
             (enhance_your_calm: floods), by side.",
            None,
            MetricType::Counter,
        )?;
        for (s, side) in ["inbound", "upstream"].iter().enumerate() {
            for (c, code) in ["enhance_your_calm", "other"].iter().enumerate() {
                let n = self.goaways_sent[s][c].load(Relaxed);
                counter_sample(&mut family, [("side", side), ("code", code)], n)?;
            }
        }
        Ok(())
    }
}

/// Encodes one unlabelled counter family (`name` without `_total`: the encoder appends it).
pub fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, f64>(&value, None)
}

/// Encodes one sample with `labels` of a counter family.
pub fn counter_sample<const N: usize>(
    family: &mut MetricEncoder<'_>,
    labels: [(&str, &str); N],
    value: u64,
) -> std::fmt::Result {
    family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, f64>(&value, None)
}

/// Encodes one sample with `labels` of a gauge family.
pub fn gauge_sample<const N: usize>(
    family: &mut MetricEncoder<'_>,
    labels: [(&str, &str); N],
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> std::fmt::Result {
    family.encode_family(&labels)?.encode_gauge(&value)
}

/// Encodes a registry in the Prometheus text format (0.0.4), served with [`CONTENT_TYPE`].
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail; a collector's error would only cut the exposition short.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "metrics exposition failed");
    }
    out
}

/// Encodes one collector alone (a role's snapshot of its counters, taken at scrape time).
pub fn encode_collector(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    encode(&registry)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn render(m: Metrics) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(Arc::new(m)));
        encode(&r)
    }

    #[test]
    fn renders_calls_by_method_and_status_with_a_cumulative_histogram() {
        let m = Metrics::default();
        m.record_call("/hello.v1.HelloService/SayHello", Code::Ok, Duration::from_millis(2));
        m.record_call("/hello.v1.HelloService/SayHello", Code::InvalidArgument, Duration::from_millis(20));
        let out = render(m);
        assert!(
            out.contains(
                "hello_sidecar_requests_total{method=\"/hello.v1.HelloService/SayHello\",grpc_status=\"OK\"} 1\n"
            ),
            "{out}"
        );
        assert!(out.contains("# TYPE hello_sidecar_requests_total counter\n"), "{out}");
        assert!(out.contains("grpc_status=\"INVALID_ARGUMENT\"} 1"));
        assert!(out.contains("le=\"0.0025\"} 1"), "{out}");
        assert!(out.contains("le=\"0.025\"} 2"));
        assert!(out.contains("le=\"+Inf\"} 2"));
        assert!(
            out.contains("hello_sidecar_request_duration_seconds_count{method=\"/hello.v1.HelloService/SayHello\"} 2")
        );
        assert!(out.contains("hello_sidecar_retries_total{reason=\"transparent\"} 0\n"), "{out}");
        assert!(out.contains("hello_sidecar_ejections_total 0\n"), "{out}");
    }

    #[test]
    fn method_labels_are_capped() {
        let m = Metrics::default();
        for i in 0..100 {
            m.record_call(&format!("/x/{i}"), Code::Unimplemented, Duration::ZERO);
        }
        assert_eq!(m.calls("other", Code::Unimplemented), 36);
    }
}
