//! What the inbound proxy reports: requests by caller identity and outcome, and the recent callers.
//!
//! Label cardinality is bounded: at most [`MAX_IDS`] distinct caller identities get their own label; the rest
//! count as `other`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::SystemTime,
};

use parking_lot::Mutex;

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, metrics::MetricType};
use serde_json::json;

use crate::{
    admin::AdminState,
    telemetry::metrics::{counter, counter_sample},
};

/// Distinct caller identities with their own metrics label; past them, callers count as `other`
/// ([`crate::telemetry::capped_label`]).
pub const MAX_IDS: usize = 100;
/// Distinct (identity, certificate serial) pairs kept in the callers view.
const MAX_CALLERS: usize = 64;

/// How a request ended at the inbound proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Sent to the app (its answer, whatever the status, went back).
    Forwarded,
    /// The caller is not on the allow list.
    PermissionDenied,
    /// The caller's certificate carries no SPIFFE ID.
    Unauthenticated,
    /// The app could not be reached.
    Unavailable,
}

impl Outcome {
    const ALL: [Outcome; 4] =
        [Outcome::Forwarded, Outcome::PermissionDenied, Outcome::Unauthenticated, Outcome::Unavailable];

    fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::PermissionDenied => "permission_denied",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Unavailable => "unavailable",
        }
    }
}

struct Caller {
    connections: u64,
    last_seen: SystemTime,
}

/// Counters of the inbound role.
#[derive(Default)]
pub struct Stats {
    /// Requests by caller identity, one counter per [`Outcome`] (in `Outcome::ALL` order).
    requests: Mutex<HashMap<String, [u64; 4]>>,
    callers: Mutex<BTreeMap<(String, String), Caller>>,
    /// TLS handshakes that failed (plaintext callers, unknown CAs, expired certificates…).
    pub handshake_failures: AtomicU64,
    /// Connections closed unhandshaken because `--max-pending-handshakes` handshakes were already running.
    pub handshakes_shed: AtomicU64,
    /// Connections whose handshake succeeded.
    pub connections: AtomicU64,
    /// False once shutdown began.
    pub serving: AtomicBool,
}

impl Stats {
    /// Counts one request of `id` (`none` without a SPIFFE ID).
    pub fn record(&self, id: &str, outcome: Outcome) {
        let i = outcome as usize;
        let mut m = self.requests.lock();
        if let Some(counts) = m.get_mut(id) {
            counts[i] += 1;
            return;
        }
        let label = crate::telemetry::capped_label(&*m, id, MAX_IDS);
        m.entry(label.to_owned()).or_default()[i] += 1;
    }

    /// Notes a caller's verified connection, with its certificate serial (hex).
    pub fn connected(&self, id: &str, serial: &str) {
        self.connections.fetch_add(1, Relaxed);
        let mut m = self.callers.lock();
        let key = (id.to_owned(), serial.to_owned());
        if !m.contains_key(&key)
            && m.len() >= MAX_CALLERS
            && let Some(oldest) = m.iter().min_by_key(|(_, c)| c.last_seen).map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        let c = m.entry(key).or_insert(Caller { connections: 0, last_seen: SystemTime::now() });
        c.connections += 1;
        c.last_seen = SystemTime::now();
    }
}

impl AdminState for Stats {
    fn ready(&self) -> bool {
        self.serving.load(Relaxed)
    }

    fn metrics(&self) -> String {
        let mut requests: Vec<_> = self.requests.lock().clone().into_iter().collect();
        requests.sort();
        crate::telemetry::metrics::encode_collector(StatsSnapshot {
            requests,
            handshake_failures: self.handshake_failures.load(Relaxed),
            handshakes_shed: self.handshakes_shed.load(Relaxed),
            connections: self.connections.load(Relaxed),
        })
    }

    /// The recent callers: identity, certificate serial, connections.
    fn debug_endpoints(&self) -> Option<serde_json::Value> {
        let m = self.callers.lock();
        let callers: Vec<_> = m
            .iter()
            .map(|((id, serial), c)| json!({ "client_id": id, "serial": serial, "connections": c.connections }))
            .collect();
        Some(json!({ "callers": callers }))
    }
}

/// [`Stats`] as read at one scrape.
#[derive(Debug)]
struct StatsSnapshot {
    requests: Vec<(String, [u64; 4])>,
    handshake_failures: u64,
    handshakes_shed: u64,
    connections: u64,
}

impl Collector for StatsSnapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut f = enc.encode_descriptor(
            "hello_inbound_requests",
            "Requests by verified caller identity (SPIFFE ID) and outcome.",
            None,
            MetricType::Counter,
        )?;
        for (id, counts) in &self.requests {
            for (outcome, n) in Outcome::ALL.iter().zip(counts).filter(|(_, n)| **n > 0) {
                counter_sample(&mut f, [("client_id", id), ("outcome", outcome.label())], *n)?;
            }
        }
        let failures = "TLS handshakes with callers that failed.";
        counter(&mut enc, "hello_inbound_tls_handshake_failures", failures, self.handshake_failures)?;
        let shed = "Connections closed at once: too many handshakes pending.";
        counter(&mut enc, "hello_inbound_handshakes_shed", shed, self.handshakes_shed)?;
        let connections = "Caller connections with a verified certificate.";
        counter(&mut enc, "hello_inbound_connections", connections, self.connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_beyond_the_cap_count_as_other() {
        let s = Stats::default();
        for i in 0..MAX_IDS + 10 {
            s.record(&format!("spiffe://td/ns/a/sa/{i}"), Outcome::Forwarded);
        }
        s.record("spiffe://td/ns/a/sa/0", Outcome::PermissionDenied);
        let text = s.metrics();
        assert!(text.contains("client_id=\"other\",outcome=\"forwarded\"} 10"), "{text}");
        assert!(text.contains("client_id=\"spiffe://td/ns/a/sa/0\",outcome=\"permission_denied\"} 1"), "{text}");
        let series = text.lines().filter(|l| l.starts_with("hello_inbound_requests_total{")).count();
        assert_eq!(series, MAX_IDS + 2);
    }
}
