//! hello-sidecar: a Kubernetes-native gRPC sidecar that spreads every call over the ready backend pods.
//!
//! HTTP/2 keeps one long-lived connection, so kube-proxy balances connections, not calls. The sidecar runs next to
//! the app, takes its calls on loopback, and spreads each one over a pool of HTTP/2 connections to the backend
//! pods it discovers itself.
//!
//! # Where a call goes
//!
//! listener → route → target → balancer → endpoint → connection:
//!
//! - [`proxy`]: the inbound HTTP/2 listener and the per-call policy — find the route, apply the deadline and the
//!   method's [`service_config`] policy, pick an endpoint, forward frames untouched, retry only what is safe, and
//!   turn every failure into a gRPC status ([`proxy::error`] is the one place that does that). grpc-web and
//!   Connect callers are translated to gRPC on the way in and back ([`proxy::web`], [`proxy::connect`]).
//! - [`routes`]: `--route SERVICE=TARGET` and the table that maps a call's service to its target.
//! - [`target`]: one discovery source with its balancer, shared by the routes that name it.
//! - [`balance`]: the set of endpoints and the choice among them (power of two choices over Peak-EWMA latency),
//!   with failure accrual (ejection).
//! - [`pool`]: one multiplexed HTTP/2 connection per endpoint (more only at the peer's stream limit), kept up
//!   with backoff and keepalive, drained on removal; requests go out on h2's client directly (`pool/client.rs`),
//!   each connection is driven by `pool/driver.rs` and reconnected by `pool/maintain.rs`.
//! - [`proxy::reflection`]: gRPC server reflection for every routed service (answered here or forwarded to the
//!   route's backends, v1 and v1alpha), and the schemas Connect JSON learns through it. Part of the proxy: it
//!   answers calls and uses the route table and balancers as the call path does.
//! - [`discovery`]: the control path. A stream of endpoint sets from a `static:///` list or from the Kubernetes
//!   EndpointSlice watcher; the balancer diffs each set against what it has.
//!
//! # Around it
//!
//! Product (what runs in a pod):
//!
//! - [`tls`]: pod-to-pod mTLS: certificates that reload, SPIFFE identities, the backend verifier; used by the
//!   [`pool`] per target and by [`inbound`], the server-side half that terminates mTLS in front of an app.
//! - [`admin`]: `/live`, `/ready`, `/metrics`, `/debug/endpoints`; [`telemetry`]: logs and Prometheus metrics.
//! - [`cli`]: flags, env vars and their parsing; [`grpc`]: small wire helpers; [`listen`]: the one listener bind;
//!   [`sidecar`]: wiring of the sidecar role (routes, targets, health per service, admin state);
//!   [`shutdown`]: SIGTERM handling; [`service_config`]: gRPC service config (timeouts, retry policies).
//!
//! Fixtures, not product (kept in the binary because the README's first command, the demo, needs them; nothing
//! in the product modules above imports them):
//!
//! - [`server`]: the backend `HelloService` with fault-injection knobs: the test fixture and the demo's pods.
//! - [`kube_standin`]: a Kubernetes API stand-in (EndpointSlice list/watch) and a small EndpointSlice controller,
//!   so tests and [`demo`] can run a cluster on one machine.
//! - [`demo`]: the whole picture on one machine (stand-in API, pods, sidecar, load, a pod restart).
//! - [`client`]: the `call` subcommand, a load-generating gRPC client.
//!
//! Tooling:
//!
//! - [`inject`]: the `inject` subcommand — adds the sidecar to Kubernetes workload YAML.
// std's clock and locks are banned in the library (clippy.toml says why and what to use instead).
#![warn(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod admin;
pub mod backoff;
pub mod balance;
pub mod cli;
pub mod client;
pub mod demo;
pub mod discovery;
pub mod grpc;
pub mod inbound;
pub mod inject;
pub mod kube_standin;
pub mod listen;
pub mod pool;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod service_config;
pub mod shutdown;
pub mod sidecar;
pub mod target;
pub mod telemetry;
pub mod tls;

/// Generated HelloService types (package `hello.v1`).
pub mod pb {
    tonic::include_proto!("hello.v1");

    /// The encoded descriptor set of every compiled `.proto`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hello_descriptor");
}

/// The boxed error type used where any error may appear (bodies, services).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error with its sources, e.g. `http2 error: connection reset by peer`: hyper's top-level messages alone
/// ("http2 error") do not say what happened.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}
