//! A small Prometheus registry for the sidecar: counters and a latency histogram, rendered in the text format.
//!
//! Hand-written rather than pulled in: the proxy needs a handful of families, and keeping them as atomics
//! (plus one short lock per finished call for the per-method map) keeps the hot path cheap.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tonic::Code;

use crate::grpc::code_name;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Distinct method labels kept; past this, calls count under `other` so a client cannot blow up the registry.
const MAX_METHODS: usize = 64;

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct PerMethod {
    by_status: [u64; 17],
    latency: Histogram,
}

/// The sidecar's counters. One instance per process, shared by reference.
#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<String, PerMethod>>,
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
}

impl Metrics {
    /// Records one finished call.
    pub fn record_call(&self, method: &str, code: Code, elapsed: Duration) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let key = if calls.contains_key(method) || calls.len() < MAX_METHODS { method } else { "other" };
        let entry = match calls.get_mut(key) {
            Some(e) => e,
            None => calls.entry(key.to_owned()).or_default(),
        };
        entry.by_status[(code as i32).clamp(0, 16) as usize] += 1;
        let secs = elapsed.as_secs_f64();
        let h = &mut entry.latency;
        h.count += 1;
        h.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i] += 1;
        }
    }

    /// Counts a GOAWAY this side sent on an inbound (app) or upstream (backend) connection, with `reason`.
    pub fn record_goaway_sent(&self, upstream: bool, reason: h2::Reason) {
        let code = usize::from(reason != h2::Reason::ENHANCE_YOUR_CALM);
        self.goaways_sent[usize::from(upstream)][code].fetch_add(1, Relaxed);
    }

    /// Calls recorded for `method` with `code` (tests and the demo read this).
    pub fn calls(&self, method: &str, code: Code) -> u64 {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.get(method).map_or(0, |m| m.by_status[(code as i32).clamp(0, 16) as usize])
    }

    /// Renders the call families and the plain counters; `extra` gauges come from the caller.
    pub fn render(&self, out: &mut String) {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP hello_sidecar_requests_total gRPC calls handled, by method and grpc status.\n");
        out.push_str("# TYPE hello_sidecar_requests_total counter\n");
        for (method, m) in calls.iter() {
            for (i, n) in m.by_status.iter().enumerate().filter(|(_, n)| **n > 0) {
                let status = code_name(Code::from_i32(i as i32));
                let _ =
                    writeln!(out, "hello_sidecar_requests_total{{method=\"{method}\",grpc_status=\"{status}\"}} {n}");
            }
        }
        out.push_str("# HELP hello_sidecar_request_duration_seconds Time from a call's arrival to its last byte.\n");
        out.push_str("# TYPE hello_sidecar_request_duration_seconds histogram\n");
        for (method, m) in calls.iter() {
            let h = &m.latency;
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.buckets.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "hello_sidecar_request_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "hello_sidecar_request_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}\n\
                 hello_sidecar_request_duration_seconds_sum{{method=\"{method}\"}} {}\n\
                 hello_sidecar_request_duration_seconds_count{{method=\"{method}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        drop(calls);
        let retries = [("transparent", &self.retries_transparent), ("policy", &self.retries_policy)];
        out.push_str("# HELP hello_sidecar_retries_total Attempts sent again, by reason (transparent: never reached the application).\n");
        out.push_str("# TYPE hello_sidecar_retries_total counter\n");
        for (reason, n) in retries {
            let _ = writeln!(out, "hello_sidecar_retries_total{{reason=\"{reason}\"}} {}", n.load(Relaxed));
        }
        counter(
            out,
            "hello_sidecar_retries_refused_total",
            "Retries refused by the retry budget.",
            &self.retries_refused_by_budget,
        );
        counter(out, "hello_sidecar_ejections_total", "Endpoints ejected after consecutive failures.", &self.ejections);
        counter(
            out,
            "hello_sidecar_keepalive_goaways_total",
            "Backend connections closed by the peer's GOAWAY too_many_pings (the keepalive interval was doubled).",
            &self.keepalive_goaways,
        );
        counter(
            out,
            "hello_sidecar_headers_too_large_total",
            "Requests or responses refused because a header or trailer block was over --max-header-bytes.",
            &self.headers_too_large,
        );
        out.push_str("# HELP hello_sidecar_connects_total Connection attempts to endpoints, by result.\n");
        out.push_str("# TYPE hello_sidecar_connects_total counter\n");
        let _ = writeln!(out, "hello_sidecar_connects_total{{result=\"ok\"}} {}", self.connects_ok.load(Relaxed));
        let _ =
            writeln!(out, "hello_sidecar_connects_total{{result=\"error\"}} {}", self.connects_failed.load(Relaxed));
        counter(
            out,
            "hello_sidecar_discovery_updates_total",
            "Endpoint sets received from discovery.",
            &self.discovery_updates,
        );
        counter(out, "hello_sidecar_overloaded_total", "Calls refused at the concurrency limit.", &self.overloaded);
        out.push_str(
            "# HELP hello_sidecar_http2_goaways_sent_total HTTP/2 connections closed here because the peer broke a \
             protocol rule or an abuse limit (enhance_your_calm: floods), by side.\n",
        );
        out.push_str("# TYPE hello_sidecar_http2_goaways_sent_total counter\n");
        for (s, side) in ["inbound", "upstream"].iter().enumerate() {
            for (c, code) in ["enhance_your_calm", "other"].iter().enumerate() {
                let n = self.goaways_sent[s][c].load(Relaxed);
                let _ = writeln!(out, "hello_sidecar_http2_goaways_sent_total{{side=\"{side}\",code=\"{code}\"}} {n}");
            }
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n", value.load(Relaxed));
}

/// Appends one gauge family with labelled samples.
pub fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, u64)]) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calls_by_method_and_status_with_a_cumulative_histogram() {
        let m = Metrics::default();
        m.record_call("/hello.v1.HelloService/SayHello", Code::Ok, Duration::from_millis(2));
        m.record_call("/hello.v1.HelloService/SayHello", Code::InvalidArgument, Duration::from_millis(20));
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains(
                "hello_sidecar_requests_total{method=\"/hello.v1.HelloService/SayHello\",grpc_status=\"OK\"} 1"
            )
        );
        assert!(out.contains("grpc_status=\"INVALID_ARGUMENT\"} 1"));
        assert!(out.contains("le=\"0.0025\"} 1"));
        assert!(out.contains("le=\"0.025\"} 2"));
        assert!(
            out.contains("hello_sidecar_request_duration_seconds_count{method=\"/hello.v1.HelloService/SayHello\"} 2")
        );
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
