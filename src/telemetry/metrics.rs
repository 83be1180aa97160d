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
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tonic::Code;

use crate::{grpc::code_name, telemetry::access_log::AccessLog};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency histograms, in seconds.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Distinct method labels kept; past this, calls count under `other` so a client cannot blow up the registry.
const MAX_METHODS: usize = 64;
/// gRPC status codes 0..=16 (the gRPC status code spec); anything else counts as `UNKNOWN`'s neighbour 16.
const CODES: usize = 17;

/// A latency histogram of atomics: observing is a few relaxed increments, no lock. Encoded through the
/// library's histogram encoder ([`MetricEncoder::encode_histogram`]).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket of [`BUCKETS`] (not cumulative; the encoder sums them).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn encode(&self, mut m: MetricEncoder<'_>) -> std::fmt::Result {
        let mut buckets = [(0.0, 0); BUCKETS.len()];
        let mut seen = 0;
        for (i, (bound, n)) in BUCKETS.iter().zip(&self.buckets).enumerate() {
            let n = n.load(Relaxed);
            seen += n;
            buckets[i] = (*bound, n);
        }
        // Read without a lock: an observation racing the scrape may be in a bucket and not yet in the count.
        let count = self.count.load(Relaxed).max(seen);
        let sum = Duration::from_nanos(self.sum_nanos.load(Relaxed)).as_secs_f64();
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Calls of one label set (a method, a target, an endpoint): counts by gRPC status and a latency histogram.
#[derive(Debug, Default)]
pub struct CallStats {
    by_status: [AtomicU64; CODES],
    latency: Histogram,
}

impl CallStats {
    /// Records one call that ended with `code` after `elapsed`.
    pub fn record(&self, code: Code, elapsed: Duration) {
        self.by_status[code_index(code)].fetch_add(1, Relaxed);
        self.latency.observe(elapsed);
    }

    /// Calls that ended with `code`.
    pub fn calls(&self, code: Code) -> u64 {
        self.by_status[code_index(code)].load(Relaxed)
    }

    /// Calls with any status.
    pub fn total(&self) -> u64 {
        self.latency.count()
    }

    /// Encodes the non-zero status counts, each with `labels` plus `grpc_status`, into a counter family.
    pub fn encode_statuses<const N: usize>(
        &self,
        family: &mut MetricEncoder<'_>,
        labels: [(&str, &str); N],
    ) -> std::fmt::Result {
        for (i, n) in self.by_status.iter().enumerate() {
            let n = n.load(Relaxed);
            if n == 0 {
                continue;
            }
            let status = code_name(Code::from_i32(i as i32));
            let set = (labels, [("grpc_status", status)]);
            family.encode_family(&set)?.encode_counter::<NoLabelSet, _, f64>(&n, None)?;
        }
        Ok(())
    }

    /// Encodes the latency histogram with `labels` into a histogram family.
    pub fn encode_latency(&self, family: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet) -> std::fmt::Result {
        self.latency.encode(family.encode_family(labels)?)
    }
}

/// What one endpoint records: its own calls and, in the same step, its target's (which outlive the endpoint).
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// The endpoint's calls; its series leave the scrape with the endpoint.
    pub own: CallStats,
    /// The target's calls, shared by its endpoints.
    pub target: std::sync::Arc<CallStats>,
    /// The target's name, as the user wrote it (for the access log).
    pub target_name: std::sync::Arc<str>,
}

impl EndpointStats {
    /// Stats for a new endpoint of the target `target_name` whose calls are `target`.
    pub fn new(target: std::sync::Arc<CallStats>, target_name: std::sync::Arc<str>) -> Self {
        Self { own: CallStats::default(), target, target_name }
    }

    /// Records one attempt on the endpoint that ended with `code` after `elapsed`.
    pub fn record(&self, code: Code, elapsed: Duration) {
        self.own.record(code, elapsed);
        self.target.record(code, elapsed);
    }
}

fn code_index(code: Code) -> usize {
    (code as i32).clamp(0, CODES as i32 - 1) as usize
}

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
            let calls = self.calls.read().unwrap_or_else(|e| e.into_inner());
            if let Some(stats) = calls.get(method) {
                stats.record(code, elapsed);
                return;
            }
        }
        let mut calls = self.calls.write().unwrap_or_else(|e| e.into_inner());
        let key = if calls.contains_key(method) || calls.len() < MAX_METHODS { method } else { "other" };
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
        let calls = self.calls.read().unwrap_or_else(|e| e.into_inner());
        calls.get(method).map_or(0, |m| m.calls(code))
    }
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        {
            let calls = self.calls.read().unwrap_or_else(|e| e.into_inner());
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
            let help = "Access log lines dropped because the writer fell behind (calls never wait for it).";
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

    #[test]
    fn a_histogram_counts_past_its_last_bound_only_in_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_secs(60));
        h.observe(Duration::from_micros(100));
        let stats = CallStats::default();
        assert_eq!(stats.total(), 0);
        assert_eq!(h.count(), 2);
        assert_eq!(h.buckets.iter().map(|b| b.load(Relaxed)).sum::<u64>(), 1);
        assert_eq!(h.sum_nanos.load(Relaxed), 60_000_100_000);
    }
}
