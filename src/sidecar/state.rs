//! What the sidecar's admin port reports: readiness over every target, metrics, and `/debug/endpoints`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering::Relaxed},
};

use prometheus_client::registry::Registry;
use serde_json::json;

use crate::{
    admin::AdminState,
    pool,
    routes::ServiceMatch,
    sidecar::collector::TargetsCollector,
    target::Target,
    telemetry::{
        metrics::{self, Metrics},
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
    registry.register_collector(Box::new(TargetsCollector::new(targets)));
    registry.register_collector(Box::<ProcessCollector>::default());
    registry
}

impl SidecarState {
    fn problem(&self) -> Option<String> {
        self.targets.iter().find_map(|t| t.problem().map(|p| format!("{}: {p}", t.name())))
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
            (None, Some(p)) if self.targets.iter().any(|t| t.discovery.problem().is_some()) => {
                Some(format!("serving the last known endpoints; discovery: {p}"))
            }
            // The API answers, but a target's port is not the Service's (see `Target::problem`).
            (None, Some(p)) => Some(format!("no endpoints for {p}")),
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
                "discovery_problem": t.problem(),
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
