//! A target: one discovery source with its balancer and pool (DESIGN §10).
//!
//! Routes that name the same target (the same URI, or the same Service and port with the pod's namespace written
//! out or left out) share one [`Target`], with one connection per pod however many gRPC services route to it, and
//! targets that name one Kubernetes Service on different ports share its one EndpointSlice watch
//! ([`discovery::spawn_all`]). Each target runs two tasks: one feeds
//! the balancer every endpoint set discovery sends, the other hands discovery's problems (an API answering 403,
//! say) to the balancer, which names them when a call finds no endpoint.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering::Relaxed},
};

use crate::{balance, discovery, proxy::Balancer, telemetry::metrics::Metrics};

/// A running target.
pub struct Target {
    /// The endpoint set and the choice among it.
    pub balancer: Arc<Balancer>,
    /// What discovery is going through.
    pub discovery: Arc<discovery::Health>,
    /// The Kubernetes port this target watches (`grpc`, `8080`), the key of its notes in `discovery`; empty for a
    /// static target.
    port: String,
    synced: AtomicBool,
}

impl Target {
    /// Starts the balancer for `uri` that `discovery` (from [`discovery::spawn_all`]) feeds.
    pub fn spawn(
        uri: &discovery::Target,
        discovery: discovery::Discovery,
        settings: balance::Settings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let balancer = Arc::new(Balancer::new(uri.to_string(), settings, metrics.clone()));
        let discovery::Discovery { mut sets, health } = discovery;
        let port = match uri {
            discovery::Target::Kubernetes { port, .. } => port.to_string(),
            discovery::Target::Static(_) => String::new(),
        };
        let target = Arc::new(Self { balancer, discovery: health, port, synced: AtomicBool::new(false) });

        let mut problems = target.discovery.subscribe();
        let mut notes = target.discovery.subscribe_port_notes();
        let (balancer, port) = (target.balancer.clone(), target.port.clone());
        tokio::spawn(async move {
            loop {
                let problem = problems.borrow_and_update().clone();
                let note = notes.borrow_and_update().get(&port).cloned();
                balancer.set_discovery_problem(problem.or(note));
                let closed = tokio::select! {
                    changed = problems.changed() => changed.is_err(),
                    changed = notes.changed() => changed.is_err(),
                };
                if closed {
                    return;
                }
            }
        });
        let fed = target.clone();
        tokio::spawn(async move {
            while let Some(set) = sets.recv().await {
                metrics.discovery_updates.fetch_add(1, Relaxed);
                fed.balancer.update(set);
                fed.discovery.synced();
                fed.synced.store(true, Relaxed);
            }
        });
        target
    }

    /// The target URI as given (`kubernetes:///hello.shop:grpc`).
    pub fn name(&self) -> &str {
        self.balancer.target()
    }

    /// Why this target has no endpoints, when discovery knows: the watch's problem (e.g. the API's 403), else its
    /// port's (e.g. no port of that name in the Service's EndpointSlices).
    pub fn problem(&self) -> Option<String> {
        self.discovery.problem_for(&self.port)
    }

    /// Whether discovery has delivered an endpoint set at least once.
    pub fn synced(&self) -> bool {
        self.synced.load(Relaxed)
    }

    /// Whether some endpoint can take a call now.
    pub fn serving(&self) -> bool {
        self.balancer.any_ready()
    }
}
