//! The sidecar's families read from its targets at scrape time: endpoints by state, connections, requests and
//! in-flight per target and per endpoint, and discovery's state.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, metrics::MetricType};

use crate::{
    balance::Endpoint,
    target::Target,
    telemetry::metrics::{counter_sample, gauge_sample},
};

/// Endpoint states of `hello_sidecar_endpoints` and `hello_sidecar_target_endpoints` (the connection's, with
/// `ejected` first).
const STATES: [&str; 5] = ["ready", "connecting", "backoff", "ejected", "draining"];

/// The families read from the targets at scrape time: endpoints by state, connections, calls in flight, per
/// target and per endpoint, and discovery's state. An endpoint's series exist while it is in its target's set:
/// one that leaves is gone from the next scrape. Its request series (counts, latency, in flight) start with its
/// first request, as a Prometheus client library's labelled child appears on first use: a target of 10,000
/// endpoints that takes no calls renders 10,000 state lines, not 180,000 histogram lines per scrape.
pub(super) struct TargetsCollector {
    targets: Vec<Arc<Target>>,
}

impl TargetsCollector {
    pub(super) fn new(targets: &[Arc<Target>]) -> Self {
        Self { targets: targets.to_vec() }
    }
}

impl std::fmt::Debug for TargetsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetsCollector").field("targets", &self.targets.len()).finish()
    }
}

/// An endpoint's `endpoint` label: its pod's name (the EndpointSlice's `targetRef`) when known and not taken by
/// another endpoint of the target, else its address.
fn endpoint_labels<B>(set: &[Arc<Endpoint<B>>]) -> Vec<String> {
    let mut seen = HashSet::new();
    set.iter()
        .map(|e| match e.pod() {
            Some(p) if seen.insert(p.clone()) => p,
            _ => e.addr().to_string(),
        })
        .collect()
}

/// An endpoint's state: its breaker's verdict first (ejected, on probation), else its connection's.
fn endpoint_state<B>(e: &Endpoint<B>, now: tokio::time::Instant) -> &'static str {
    match e.health(now) {
        crate::balance::breaker::Health::Ejected => "ejected",
        crate::balance::breaker::Health::Probation => "probation",
        crate::balance::breaker::Health::Ok => e.connection_state_name(),
    }
}

impl Collector for TargetsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let now = tokio::time::Instant::now();
        let sets: Vec<_> = self.targets.iter().map(|t| (t, t.balancer.snapshot())).collect();
        let labels: Vec<_> = sets.iter().map(|(_, set)| endpoint_labels(set)).collect();
        let endpoints = || {
            sets.iter()
                .zip(&labels)
                .flat_map(|((t, set), names)| set.iter().zip(names).map(move |(e, name)| (t.name(), name.as_str(), e)))
        };

        let mut total: BTreeMap<&str, u64> = STATES.into_iter().map(|s| (s, 0)).collect();
        let mut per_target = Vec::new();
        for (t, set) in &sets {
            let mut by_state: BTreeMap<&str, u64> = STATES.into_iter().map(|s| (s, 0)).collect();
            for e in set.iter() {
                let state = if e.is_ejected(now) { "ejected" } else { e.connection_state_name() };
                *by_state.entry(state).or_default() += 1;
                *total.entry(state).or_default() += 1;
            }
            per_target.push((t.name(), by_state));
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_endpoints",
            "Endpoints of every target, by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &total {
            gauge_sample(&mut f, [("state", state)], *n)?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_target_endpoints",
            "Endpoints of each target, by state.",
            None,
            MetricType::Gauge,
        )?;
        for (target, by_state) in &per_target {
            for (state, n) in by_state {
                gauge_sample(&mut f, [("target", target), ("state", state)], *n)?;
            }
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_connections_open",
            "Open HTTP/2 connections to endpoints, per target.",
            None,
            MetricType::Gauge,
        )?;
        for (t, set) in &sets {
            let open: u64 = set.iter().map(|e| e.open_connections() as u64).sum();
            gauge_sample(&mut f, [("target", t.name())], open)?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_calls_in_flight",
            "Calls in flight to endpoints, per target.",
            None,
            MetricType::Gauge,
        )?;
        for (t, set) in &sets {
            let n: u64 = set.iter().map(|e| u64::from(e.in_flight())).sum();
            gauge_sample(&mut f, [("target", t.name())], n)?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_target_requests",
            "Requests sent to the target's endpoints (one per attempt), by grpc status.",
            None,
            MetricType::Counter,
        )?;
        for (t, _) in &sets {
            t.balancer.stats().encode_statuses(&mut f, [("target", t.name())])?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_target_request_duration_seconds",
            "Time from sending a request to one of the target's endpoints to the response's end.",
            None,
            MetricType::Histogram,
        )?;
        for (t, _) in &sets {
            t.balancer.stats().encode_latency(&mut f, &[("target", t.name())])?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_endpoint_requests",
            "Requests sent to each endpoint (one per attempt), by grpc status; endpoint: the pod's name, else \
             its address.",
            None,
            MetricType::Counter,
        )?;
        for (target, name, e) in endpoints() {
            e.stats().own.encode_statuses(&mut f, [("target", target), ("endpoint", name)])?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_endpoint_request_duration_seconds",
            "Time from sending a request to the endpoint to the response's end.",
            None,
            MetricType::Histogram,
        )?;
        for (target, name, e) in endpoints().filter(|(_, _, e)| e.stats().own.total() > 0) {
            e.stats().own.encode_latency(&mut f, &[("target", target), ("endpoint", name)])?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_endpoint_requests_in_flight",
            "Requests in flight to each endpoint.",
            None,
            MetricType::Gauge,
        )?;
        for (target, name, e) in endpoints() {
            let in_flight = e.in_flight();
            if in_flight > 0 || e.stats().own.total() > 0 {
                gauge_sample(&mut f, [("target", target), ("endpoint", name)], u64::from(in_flight))?;
            }
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_endpoint_state",
            "1 for each endpoint's state: ready, connecting, backoff, draining (connection), ejected, probation \
             (failure accrual).",
            None,
            MetricType::Gauge,
        )?;
        for (target, name, e) in endpoints() {
            gauge_sample(&mut f, [("target", target), ("endpoint", name), ("state", endpoint_state(e, now))], 1)?;
        }
        self.encode_discovery(&mut enc)
    }
}

impl TargetsCollector {
    fn encode_discovery(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut f = enc.encode_descriptor(
            "hello_sidecar_discovery_errors",
            "Failed discovery requests, by target and HTTP status of the API's answer (connect: no answer).",
            None,
            MetricType::Counter,
        )?;
        for t in &self.targets {
            for (cause, n) in t.discovery.errors() {
                counter_sample(&mut f, [("target", t.name()), ("status", &cause)], n)?;
            }
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_discovery_failing",
            "1 while a target's discovery is failing (its last known endpoints stay in use).",
            None,
            MetricType::Gauge,
        )?;
        for t in &self.targets {
            gauge_sample(&mut f, [("target", t.name())], u64::from(t.discovery.problem().is_some()))?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_discovery_watch_restarts",
            "Times discovery re-listed a target's endpoints after its watch broke or expired.",
            None,
            MetricType::Counter,
        )?;
        for t in &self.targets {
            counter_sample(&mut f, [("target", t.name())], t.discovery.restarts())?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_discovery_last_sync_timestamp_seconds",
            "When discovery last delivered or confirmed a target's endpoint set, seconds since the Unix epoch \
             (absent before the first).",
            None,
            MetricType::Gauge,
        )?;
        for t in &self.targets {
            if let Some(at) = t.discovery.last_sync() {
                gauge_sample(&mut f, [("target", t.name())], at)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        balance::{Balancer, Settings},
        discovery::Discovered,
        telemetry::metrics::Metrics,
    };

    fn pod(addr: &str, name: Option<&str>) -> Discovered {
        let mut d = Discovered::addr(addr.parse().expect("address"));
        d.pod = name.map(str::to_owned);
        d
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_are_named_by_pod_and_by_address_when_the_pod_is_unknown_or_taken() {
        let settings = Settings { pool: Default::default(), eject_after: 5, ewma_decay: Duration::from_secs(1) };
        let b: Balancer<crate::proxy::UpstreamRequestBody> =
            Balancer::new("t".into(), settings, Arc::new(Metrics::default()));
        b.update(vec![
            pod("127.0.0.1:1", Some("hello-0")),
            pod("127.0.0.2:1", None),
            // Two endpoints claiming one pod (a misconfigured slice): one series each all the same.
            pod("127.0.0.3:1", Some("hello-0")),
        ]);
        assert_eq!(endpoint_labels(&b.snapshot()), ["hello-0", "127.0.0.2:1", "127.0.0.3:1"]);
    }
}
