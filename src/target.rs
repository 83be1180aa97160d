//! A target: one discovery source with its balancer and pool (DESIGN §10).
//!
//! Routes that name the same target (the same URI, or the same Service and port with the pod's namespace written
//! out or left out) share one [`Target`], with one connection per pod however many gRPC services route to it, and
//! targets that name one Kubernetes Service on different ports share its one EndpointSlice watch
//! ([`discovery::spawn_all`]). Each target runs two tasks: one feeds
//! the balancer every endpoint set discovery sends, the other hands discovery's problems (an API answering 403,
//! say) or why calls may find no endpoint (an empty set's cause, a port number no slice has) to the balancer,
//! which names them when a call finds no endpoint.

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
        let discovery::Discovery { mut sets, health, mut explain } = discovery;
        let target = Arc::new(Self { balancer, discovery: health, synced: AtomicBool::new(false) });

        let mut problems = target.discovery.subscribe();
        let balancer = target.balancer.clone();
        tokio::spawn(async move {
            // A source that cannot explain (static) has dropped its sender: stop asking.
            let mut explains = explain.has_changed().is_ok();
            loop {
                // A failing API is the more urgent news; else why the set is empty or its port likely wrong.
                let problem = problems.borrow_and_update().clone();
                let why = explain.borrow_and_update().clone();
                balancer.set_discovery_problem(problem.or(why));
                tokio::select! {
                    changed = problems.changed() => if changed.is_err() { return },
                    changed = explain.changed(), if explains => explains = changed.is_ok(),
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

    /// Whether discovery has delivered an endpoint set at least once.
    pub fn synced(&self) -> bool {
        self.synced.load(Relaxed)
    }

    /// Whether some endpoint can take a call now.
    pub fn serving(&self) -> bool {
        self.balancer.any_ready()
    }
}
