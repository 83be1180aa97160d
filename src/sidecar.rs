//! The `sidecar` role: wires discovery → balancer → proxy, plus health, reflection and the admin port.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use serde_json::json;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tower::util::BoxCloneSyncService;
use tracing::info;

use crate::{
    admin::{self, AdminState},
    balance::{self, Balancer},
    cli::SidecarArgs,
    discovery, pool,
    proxy::{self, Proxy},
    telemetry::metrics::{Metrics, gauge},
};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        /// The flag that named the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Reflection could not load the compiled descriptors (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The target's TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A running sidecar: its bound addresses, for tests and the demo.
pub struct Running {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Where the admin server listens.
    pub admin: SocketAddr,
    /// Shared state (metrics, balancer).
    pub state: Arc<SidecarState>,
    /// Completes when the sidecar has drained and stopped.
    pub done: tokio::task::JoinHandle<()>,
}

/// What the admin port reports.
pub struct SidecarState {
    /// The endpoint set.
    pub balancer: Arc<Balancer>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// What discovery is going through.
    pub discovery: Arc<discovery::Health>,
    synced: AtomicBool,
    serving: AtomicBool,
}

/// Starts the sidecar; it stops when `shutdown` resolves.
pub async fn start(
    args: SidecarArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::default());
    let tls = args.tls.settings().map(|s| crate::tls::ClientTls::new(&s)).transpose()?;
    let settings = balance::Settings {
        pool: pool::Settings {
            connect_timeout: args.connect_timeout,
            keepalive_interval: args.keepalive_interval,
            max_header_list_bytes: proxy::h2_header_list_limit(args.max_header_bytes),
            max_streams: args.max_concurrent_calls,
            tls,
            ..Default::default()
        },
        eject_after: args.eject_after,
        ewma_decay: args.ewma_decay,
    };
    let target = args.target.clone();
    let balancer = Arc::new(Balancer::new(target.to_string(), settings, metrics.clone()));

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::NotServing).await;
    reporter.set_service_status("hello.v1.HelloService", ServingStatus::NotServing).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let listener = TcpListener::bind(args.listen).await.map_err(|source| StartError::Bind {
        flag: "--listen",
        addr: args.listen,
        source,
    })?;
    let admin_listener = TcpListener::bind(args.admin).await.map_err(|source| StartError::Bind {
        flag: "--admin",
        addr: args.admin,
        source,
    })?;
    let listen = listener.local_addr().unwrap_or(args.listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(args.admin);

    let options = discovery::Options { kubeconfig: args.kubeconfig.clone(), ip_family: args.ip_family };
    let discovery::Discovery { mut sets, health: discovery_health } = discovery::spawn(target, options);
    let state = Arc::new(SidecarState {
        balancer: balancer.clone(),
        metrics: metrics.clone(),
        discovery: discovery_health.clone(),
        synced: AtomicBool::new(false),
        serving: AtomicBool::new(true),
    });

    // Control path: every endpoint set from discovery goes to the balancer; its problems to the balancer's
    // "no endpoint" answers and to the admin port.
    let mut problems = discovery_health.subscribe();
    let problem_balancer = balancer.clone();
    tokio::spawn(async move {
        loop {
            let problem = problems.borrow_and_update().clone();
            problem_balancer.set_discovery_problem(problem);
            if problems.changed().await.is_err() {
                return;
            }
        }
    });
    let discovery_state = state.clone();
    tokio::spawn(async move {
        while let Some(set) = sets.recv().await {
            discovery_state.metrics.discovery_updates.fetch_add(1, Relaxed);
            discovery_state.balancer.update(set);
            discovery_state.synced.store(true, Relaxed);
        }
    });

    // Health follows the balancer: SERVING only while some endpoint can take a call.
    let mut changes = balancer.subscribe();
    let health_balancer = balancer.clone();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let status =
                if health_balancer.ready_count() > 0 { ServingStatus::Serving } else { ServingStatus::NotServing };
            if last != Some(status) {
                reporter.set_service_status("", status).await;
                reporter.set_service_status("hello.v1.HelloService", status).await;
                last = Some(status);
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    });

    let config = proxy::Config {
        default_timeout: args.default_timeout,
        failfast_timeout: args.failfast_timeout,
        max_concurrent_calls: args.max_concurrent_calls,
        max_message_bytes: args.max_message_bytes,
        retry_budget: args.retry_budget,
        max_header_bytes: args.max_header_bytes,
    };
    let proxy = Arc::new(Proxy::new(
        config,
        balancer,
        metrics,
        BoxCloneSyncService::new(health),
        BoxCloneSyncService::new(reflection_v1),
        BoxCloneSyncService::new(reflection_v1alpha),
    ));

    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(admin::serve(admin_listener, state.clone(), async move {
        let _ = admin_stopped.await;
    }));
    info!(%listen, admin = %admin_addr, target = %state.balancer.target(), "sidecar listening");
    let serving_state = state.clone();
    let drain = args.drain_timeout;
    let done = tokio::spawn(async move {
        let shutdown = async move {
            shutdown.await;
            serving_state.serving.store(false, Relaxed);
        };
        proxy.serve(listener, shutdown, drain).await;
        let _ = stop_admin.send(());
        info!("sidecar stopped");
    });
    Ok(Running { listen, admin: admin_addr, state, done })
}

impl AdminState for SidecarState {
    fn ready(&self) -> bool {
        self.synced.load(Relaxed) && self.serving.load(Relaxed)
    }

    fn ready_detail(&self) -> Option<String> {
        let problem = self.discovery.problem();
        if !self.serving.load(Relaxed) {
            return Some("shutting down".into());
        }
        match (self.synced.load(Relaxed), problem) {
            (false, Some(p)) => Some(format!("no endpoint set yet: discovery: {p}")),
            (false, None) => Some("no endpoint set yet: discovery has not synced".into()),
            // Ready on the last known set (static stability), but say what discovery is going through.
            (true, Some(p)) => Some(format!("serving the last known endpoints; discovery: {p}")),
            (true, None) => None,
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.metrics.render(&mut out);
        let set = self.balancer.snapshot();
        let mut by_state: std::collections::BTreeMap<&str, u64> =
            ["ready", "connecting", "backoff", "ejected", "draining"].into_iter().map(|s| (s, 0)).collect();
        let now = tokio::time::Instant::now();
        let mut in_flight = 0u64;
        for e in set.iter() {
            let state = if e.breaker.is_ejected(now) { "ejected" } else { e.conn.state().name() };
            *by_state.entry(state).or_default() += 1;
            in_flight += u64::from(e.load.pending());
        }
        let samples: Vec<_> = by_state.into_iter().map(|(s, n)| (format!("state=\"{s}\""), n)).collect();
        gauge(&mut out, "hello_sidecar_endpoints", "Endpoints of the target, by state.", &samples);
        let open: u64 = set.iter().map(|e| e.conn.open_connections() as u64).sum();
        gauge(
            &mut out,
            "hello_sidecar_connections_open",
            "Open HTTP/2 connections to endpoints.",
            &[(String::new(), open)],
        );
        gauge(
            &mut out,
            "hello_sidecar_calls_in_flight",
            "Calls in flight to endpoints.",
            &[(String::new(), in_flight)],
        );
        let name = "hello_sidecar_discovery_errors_total";
        out.push_str(&format!(
            "# HELP {name} Failed discovery requests, by HTTP status of the API's answer (connect: no answer).\n\
             # TYPE {name} counter\n"
        ));
        for (cause, n) in self.discovery.errors() {
            out.push_str(&format!("{name}{{status=\"{cause}\"}} {n}\n"));
        }
        gauge(
            &mut out,
            "hello_sidecar_discovery_failing",
            "1 while discovery is failing (the last known endpoints stay in use).",
            &[(String::new(), u64::from(self.discovery.problem().is_some()))],
        );
        out
    }

    fn debug_endpoints(&self) -> Option<serde_json::Value> {
        let now = tokio::time::Instant::now();
        let endpoints: Vec<_> = self
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
        Some(json!({
            "target": self.balancer.target(),
            "synced": self.synced.load(Relaxed),
            "discovery_problem": self.discovery.problem(),
            "endpoints": endpoints,
        }))
    }
}
