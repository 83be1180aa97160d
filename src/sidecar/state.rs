//! What the sidecar's admin port reports: readiness over every target, metrics, and `/debug/endpoints`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use serde_json::json;

use crate::{
    admin::AdminState,
    pool,
    routes::ServiceMatch,
    target::Target,
    telemetry::metrics::{Metrics, gauge},
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
}

impl SidecarState {
    fn problem(&self) -> Option<String> {
        self.targets.iter().find_map(|t| t.discovery.problem().map(|p| format!("{}: {p}", t.name())))
    }
}

const STATES: [&str; 5] = ["ready", "connecting", "backoff", "ejected", "draining"];

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
        let mut out = String::with_capacity(4096);
        self.metrics.render(&mut out);
        let now = tokio::time::Instant::now();
        let mut total: BTreeMap<&str, u64> = STATES.into_iter().map(|s| (s, 0)).collect();
        let (mut per_target, mut open, mut in_flight) = (Vec::new(), Vec::new(), Vec::new());
        for t in &self.targets {
            let set = t.balancer.snapshot();
            let mut by_state: BTreeMap<&str, u64> = STATES.into_iter().map(|s| (s, 0)).collect();
            for e in set.iter() {
                let state = if e.is_ejected(now) { "ejected" } else { e.connection_state().name() };
                *by_state.entry(state).or_default() += 1;
                *total.entry(state).or_default() += 1;
            }
            let label = format!("target=\"{}\"", t.name());
            per_target.extend(by_state.into_iter().map(|(s, n)| (format!("{label},state=\"{s}\""), n)));
            open.push((label.clone(), set.iter().map(|e| e.open_connections() as u64).sum()));
            in_flight.push((label, set.iter().map(|e| u64::from(e.in_flight())).sum()));
        }
        let samples: Vec<_> = total.into_iter().map(|(s, n)| (format!("state=\"{s}\""), n)).collect();
        gauge(&mut out, "hello_sidecar_endpoints", "Endpoints of every target, by state.", &samples);
        gauge(&mut out, "hello_sidecar_target_endpoints", "Endpoints of each target, by state.", &per_target);
        gauge(&mut out, "hello_sidecar_connections_open", "Open HTTP/2 connections to endpoints, per target.", &open);
        gauge(&mut out, "hello_sidecar_calls_in_flight", "Calls in flight to endpoints, per target.", &in_flight);
        let name = "hello_sidecar_discovery_errors_total";
        out.push_str(&format!(
            "# HELP {name} Failed discovery requests, by target and HTTP status of the API's answer (connect: no \
             answer).\n# TYPE {name} counter\n"
        ));
        let mut failing = Vec::new();
        for t in &self.targets {
            for (cause, n) in t.discovery.errors() {
                out.push_str(&format!("{name}{{target=\"{}\",status=\"{cause}\"}} {n}\n", t.name()));
            }
            failing.push((format!("target=\"{}\"", t.name()), u64::from(t.discovery.problem().is_some())));
        }
        let any = failing.iter().any(|(_, v)| *v == 1);
        failing.insert(0, (String::new(), u64::from(any)));
        gauge(
            &mut out,
            "hello_sidecar_discovery_failing",
            "1 while discovery is failing (the last known endpoints stay in use); unlabelled: any target.",
            &failing,
        );
        out
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
                    let meta = e.meta();
                    let conn = e.connection_state();
                    let error = match &conn {
                        pool::State::Backoff { error } => Some(error.clone()),
                        _ => None,
                    };
                    json!({
                        "target": t.name(),
                        "address": e.addr().to_string(),
                        "addresses": meta.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "pod": meta.pod,
                        "state": if meta.terminating { "terminating" } else { "ready" },
                        "ejected": e.is_ejected(now),
                        "breaker": e.health(now).name(),
                        "connection": conn.name(),
                        "last_error": error,
                        "in_flight": e.in_flight(),
                        "ewma_latency_ms": e.latency_estimate().as_secs_f64() * 1000.0,
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
