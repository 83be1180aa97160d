//! The `sidecar` role: wires routes → targets (discovery → balancer) → proxy, plus health, reflection (local and
//! forwarded, [`crate::proxy::reflection`]) and the admin port.

mod collector;
mod health;
mod state;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use tower::util::BoxCloneSyncService;
use tracing::{info, warn};

pub use self::state::SidecarState;
use crate::{
    admin, balance,
    cli::SidecarArgs,
    discovery, pool,
    proxy::{
        self, Balancer, Proxy,
        reflection::{Reflector, schema::Schemas},
    },
    routes::{RouteError, RouteTable},
    target::Target,
    telemetry::{access_log::AccessLog, metrics::Metrics},
};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] crate::listen::BindError),
    /// A `--descriptor-set` file cannot be read or decoded.
    #[error("invalid value for --descriptor-set: {0}")]
    DescriptorSet(String),
    /// The target's TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The routes contradict each other (a service routed twice) or there are none.
    #[error("invalid value for --route: {0}")]
    Route(#[from] RouteError),
    /// The access log's file could not be opened.
    #[error("--access-log {path}: {source}")]
    AccessLog {
        /// The file.
        path: String,
        /// Why it could not be opened.
        source: std::io::Error,
    },
}

/// A running sidecar: its bound addresses, for tests and the demo.
pub struct Running {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Where the admin server listens.
    pub admin: SocketAddr,
    /// Shared state (metrics, targets).
    pub state: Arc<SidecarState>,
    /// Completes when the sidecar has drained and stopped.
    pub done: tokio::task::JoinHandle<()>,
}

/// Starts the sidecar; it stops when `shutdown` resolves.
pub async fn start(
    args: SidecarArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::default());
    if let Some(sink) = &args.access_log {
        let log = AccessLog::start(sink).map_err(|source| StartError::AccessLog { path: sink.to_string(), source })?;
        metrics.set_access_log(log);
    }
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
    let (targets, routes, table) = build_targets(&args, &settings, &metrics).await?;

    let reporter = tonic_health::server::HealthReporter::new();
    let health_service = health::service(&reporter);
    // Reflection and Connect JSON answer from the compiled schema and the descriptor sets, and ask the routes'
    // backends for the rest.
    let mut pools = vec![Reflector::compiled()];
    pools.extend(args.descriptor_pool().map_err(StartError::DescriptorSet)?);
    let reflector = Reflector::new(pools, table.clone());
    let (reflection_v1, reflection_v1alpha) = reflector.services();
    let schemas = Arc::new(Schemas::new(reflector));

    let listener = crate::listen::bind("--listen", args.listen).await?;
    let admin_listener = crate::listen::bind("--admin", args.admin).await?;
    let listen = listener.local_addr().unwrap_or(args.listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(args.admin);

    let registry = state::registry(&targets, &metrics);
    let state = Arc::new(SidecarState {
        targets,
        routes,
        metrics: metrics.clone(),
        serving: std::sync::atomic::AtomicBool::new(true),
        registry,
    });
    health::spawn(reporter, state.clone()).await;

    let config = proxy::Config {
        default_timeout: args.default_timeout,
        failfast_timeout: args.failfast_timeout,
        max_concurrent_calls: args.max_concurrent_calls,
        max_message_bytes: args.max_message_bytes,
        retry_budget: args.retry_budget,
        max_header_bytes: args.max_header_bytes,
        backend_tls: settings.pool.tls.is_some(),
    };
    let proxy = Arc::new(
        Proxy::new(
            config,
            table,
            args.service_config.clone().unwrap_or_default(),
            metrics,
            BoxCloneSyncService::new(health_service),
            reflection_v1,
            reflection_v1alpha,
        )
        .with_schemas(schemas),
    );

    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(admin::serve(admin_listener, state.clone(), async move {
        let _ = admin_stopped.await;
    }));
    warn_unrouted_policies(&args);
    let targets: Vec<&str> = state.targets.iter().map(|t| t.name()).collect();
    info!(%listen, admin = %admin_addr, routes = state.routes.len(), ?targets, "sidecar listening");
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

/// Every route's target, started once per distinct target (a namespace-less Kubernetes URI is first given the
/// pod's own namespace, so two spellings of one Service and port are one target, and one Service is one watch);
/// the route table the proxy looks calls up in.
#[allow(clippy::type_complexity)]
async fn build_targets(
    args: &SidecarArgs,
    settings: &balance::Settings,
    metrics: &Arc<Metrics>,
) -> Result<(Vec<Arc<Target>>, Vec<(crate::routes::ServiceMatch, usize)>, RouteTable<Arc<Balancer>>), RouteError> {
    let routes = args.all_routes();
    crate::routes::check(&routes)?;
    let options = discovery::Options { kubeconfig: args.kubeconfig.clone(), ip_family: args.ip_family };
    // The pod's namespace, when some URI leaves it out; without a client configuration yet, such a target stays
    // apart and its watch learns the namespace once the configuration appears.
    let own = match routes.iter().any(|r| r.target.lacks_namespace()) {
        true => discovery::kubernetes::own_namespace(options.kubeconfig.as_deref()).await,
        false => None,
    };
    let mut uris: Vec<discovery::Target> = Vec::new();
    let mut of_route = Vec::with_capacity(routes.len());
    for route in &routes {
        let uri = match &own {
            Some(ns) => route.target.clone().in_namespace(ns),
            None => route.target.clone(),
        };
        let i = uris.iter().position(|u| *u == uri).unwrap_or_else(|| {
            uris.push(uri);
            uris.len() - 1
        });
        of_route.push(i);
    }
    let discoveries = discovery::spawn_all(&uris, &options);
    let targets: Vec<Arc<Target>> = uris
        .iter()
        .zip(discoveries)
        .map(|(uri, found)| Target::spawn(uri, found, settings.clone(), metrics.clone()))
        .collect();
    let (mut indexed, mut table) = (Vec::new(), RouteTable::default());
    for (route, i) in routes.into_iter().zip(of_route) {
        table.insert(&route.service, targets[i].balancer.clone())?;
        indexed.push((route.service, i));
    }
    Ok((targets, indexed, table))
}

/// Warns about each service `--service-config` names that no route serves (and no `*` route catches): its policy
/// applies to no call, most often because of a typo in the name. Not an error: one config may serve sidecars
/// with different routes, and gRPC clients ignore such entries too.
fn warn_unrouted_policies(args: &SidecarArgs) {
    use crate::routes::ServiceMatch;
    let routes = args.all_routes();
    if routes.iter().any(|r| r.service == ServiceMatch::Any) {
        return;
    }
    let mut unrouted: Vec<&str> = args
        .service_config
        .iter()
        .flat_map(|c| c.services())
        .filter(|s| !routes.iter().any(|r| matches!(&r.service, ServiceMatch::Exact(e) if e == s)))
        .collect();
    unrouted.sort_unstable();
    for service in unrouted {
        warn!(service, "--service-config names a service no route serves: its policy applies to no call");
    }
}
