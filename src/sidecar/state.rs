//! What the sidecar's admin port reports: readiness over every target, metrics, and `/debug/endpoints`.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, metrics::MetricType, registry::Registry};
use serde_json::json;

use crate::{
    admin::AdminState,
    balance::Endpoint,
    pool,
    routes::ServiceMatch,
    target::Target,
    telemetry::{
        metrics::{self, Metrics, counter_sample, gauge_sample},
        process::ProcessCollector,
    },
};

/// The sidecar's shared state, as the admin port sees it.
pub struct SidecarState {
    /// Every distinct target, in the order routes first name them.
    pub targets: Vec<Arc<Target>>,
    /// Each route: the service it matches and the index of its target.
    pub routes: Vec<(ServiceMatch, usize)>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    pub(super) serving: AtomicBool,
    /// What `/metrics` encodes: [`Metrics`], the targets' families, the process and build families.
    pub(super) registry: Registry,
}

/// The registry of the sidecar role.
pub(super) fn registry(targets: &[Arc<Target>], metrics: &Arc<Metrics>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics.clone()));
    registry.register_collector(Box::new(TargetsCollector { targets: targets.to_vec() }));
    registry.register_collector(Box::<ProcessCollector>::default());
    registry
}

impl SidecarState {
    fn problem(&self) -> Option<String> {
        self.targets.iter().find_map(|t| t.discovery.problem().map(|p| format!("{}: {p}", t.name())))
    }
}

const STATES: [&str; 5] = ["ready", "connecting", "backoff", "ejected", "draining"];

/// The families read from the targets at scrape time: endpoints by state, connections, calls in flight, per
/// target and per endpoint, and discovery's state. An endpoint's series exist while it is in its target's set:
/// one that leaves is gone from the next scrape.
struct TargetsCollector {
    targets: Vec<Arc<Target>>,
}

impl std::fmt::Debug for TargetsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetsCollector").field("targets", &self.targets.len()).finish()
    }
}

/// An endpoint's `endpoint` label: its pod's name (the EndpointSlice's `targetRef`) when known and not taken by
/// another endpoint of the target, else its address.
fn endpoint_labels(set: &[Arc<Endpoint>]) -> Vec<String> {
    let mut seen = HashSet::new();
    set.iter()
        .map(|e| {
            let pod = e.meta.read().unwrap_or_else(|p| p.into_inner()).pod.clone();
            match pod {
                Some(p) if seen.insert(p.clone()) => p,
                _ => e.addr.to_string(),
            }
        })
        .collect()
}

/// An endpoint's state: its breaker's verdict first (ejected, on probation), else its connection's.
fn endpoint_state(e: &Endpoint, now: tokio::time::Instant) -> &'static str {
    match e.breaker.health(now) {
        crate::balance::breaker::Health::Ejected => "ejected",
        crate::balance::breaker::Health::Probation => "probation",
        crate::balance::breaker::Health::Ok => e.conn.state().name(),
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
                let state = if e.breaker.is_ejected(now) { "ejected" } else { e.conn.state().name() };
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
            let open: u64 = set.iter().map(|e| e.conn.open_connections() as u64).sum();
            gauge_sample(&mut f, [("target", t.name())], open)?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_calls_in_flight",
            "Calls in flight to endpoints, per target.",
            None,
            MetricType::Gauge,
        )?;
        for (t, set) in &sets {
            let n: u64 = set.iter().map(|e| u64::from(e.load.pending())).sum();
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
            e.stats.own.encode_statuses(&mut f, [("target", target), ("endpoint", name)])?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_endpoint_request_duration_seconds",
            "Time from sending a request to the endpoint to the response's end.",
            None,
            MetricType::Histogram,
        )?;
        for (target, name, e) in endpoints() {
            e.stats.own.encode_latency(&mut f, &[("target", target), ("endpoint", name)])?;
        }
        let mut f = enc.encode_descriptor(
            "hello_sidecar_endpoint_requests_in_flight",
            "Requests in flight to each endpoint.",
            None,
            MetricType::Gauge,
        )?;
        for (target, name, e) in endpoints() {
            gauge_sample(&mut f, [("target", target), ("endpoint", name)], u64::from(e.load.pending()))?;
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
            "1 while discovery is failing (the last known endpoints stay in use); unlabelled: any target.",
            None,
            MetricType::Gauge,
        )?;
        let any = self.targets.iter().any(|t| t.discovery.problem().is_some());
        f.encode_gauge(&u64::from(any))?;
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

impl AdminState for SidecarState {
    /// Ready once every target has synced at least once (and until shutdown starts).
    fn ready(&self) -> bool {
        self.targets.iter().all(|t| t.synced()) && self.serving.load(Relaxed)
    }

    fn ready_detail(&self) -> Option<String> {
        if !self.serving.load(Relaxed) {
            return Some("shutting down".into());
        }
        let problem = self.problem();
        match (self.targets.iter().find(|t| !t.synced()), problem) {
            (Some(t), Some(p)) => Some(format!("no endpoint set yet for {}: discovery: {p}", t.name())),
            (Some(t), None) => Some(format!("no endpoint set yet for {}: discovery has not synced", t.name())),
            // Ready on the last known set (static stability), but say what discovery is going through.
            (None, Some(p)) => Some(format!("serving the last known endpoints; discovery: {p}")),
            (None, None) => None,
        }
    }

    fn metrics(&self) -> String {
        metrics::encode(&self.registry)
    }

    fn debug_endpoints(&self) -> Option<serde_json::Value> {
        let now = tokio::time::Instant::now();
        let mut all = Vec::new();
        let mut targets = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            let rows: Vec<_> = t
                .balancer
                .snapshot()
                .iter()
                .map(|e| {
                    let meta = e.meta.read().unwrap_or_else(|p| p.into_inner()).clone();
                    let conn = e.conn.state();
                    let error = match &conn {
                        pool::State::Backoff { error } => Some(error.clone()),
                        _ => None,
                    };
                    json!({
                        "target": t.name(),
                        "address": e.addr.to_string(),
                        "addresses": meta.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "pod": meta.pod,
                        "state": if meta.terminating { "terminating" } else { "ready" },
                        "ejected": e.breaker.is_ejected(now),
                        "breaker": e.breaker.health(now).name(),
                        "connection": conn.name(),
                        "last_error": error,
                        "in_flight": e.load.pending(),
                        "ewma_latency_ms": e.load.estimate().as_secs_f64() * 1000.0,
                    })
                })
                .collect();
            let services: Vec<String> =
                self.routes.iter().filter(|(_, ti)| *ti == i).map(|(s, _)| s.to_string()).collect();
            targets.push(json!({
                "target": t.name(),
                "routes": services,
                "synced": t.synced(),
                "discovery_problem": t.discovery.problem(),
                "endpoints": rows.len(),
            }));
            all.extend(rows);
        }
        Some(json!({
            "synced": self.targets.iter().all(|t| t.synced()),
            "discovery_problem": self.problem(),
            "targets": targets,
            "endpoints": all,
        }))
    }
}
