//! What is recorded per call, lock-free: counts by gRPC status and a latency histogram, for one label set (a
//! method, a target, an endpoint). Encoded by the `prometheus-client` crate's encoders at scrape time.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use prometheus_client::encoding::{EncodeLabelSet, MetricEncoder, NoLabelSet};
use tonic::Code;

use crate::grpc::code_name;

/// Upper bounds of the latency histograms, in seconds.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
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

#[cfg(test)]
mod tests {
    use super::*;

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
