//! Command-line flags for every role. Each flag also reads an environment variable (`HELLO_SIDECAR_…`), as a
//! container wants; a bad value stops the process with one line naming the flag and exit code 2.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, builder::TypedValueParser};

pub use crate::telemetry::LogFormat;
use crate::{discovery::Target, routes::Route, service_config::ServiceConfig};

mod addrs;
mod inject;
mod tls;
mod values;
pub use self::addrs::check as check_addrs;
pub use self::inject::{DEFAULT_IMAGE, InjectArgs};
pub use self::tls::{InboundArgs, ServerTlsArgs, TlsArgs, check as check_tls};
use self::values::{
    parse_code, parse_keepalive, parse_positive_duration, parse_routes, parse_service_config, parse_target,
    parse_threads,
};
pub use self::values::{parse_duration, parse_ratio};

/// A Kubernetes-native gRPC sidecar that spreads every call over the ready backend pods.
#[derive(Debug, Parser)]
#[command(name = "hello-sidecar", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "HELLO_SIDECAR_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command-line parser: clap's, with one setting more in every role. A negative number after a flag
    /// (`--max-concurrent-calls -1`, `--default-timeout -1`) is that flag's value: it reaches the flag's own parser,
    /// whose error names the flag, where clap would take it for an unknown flag and name none. Other values that
    /// start with `-` are still flags, so a missing value (`--target --listen …`, an empty variable in a pod spec)
    /// is still "a value is required for '--target'".
    pub fn parser() -> clap::Command {
        <Self as clap::CommandFactory>::command()
            .allow_negative_numbers(true)
            .mut_subcommands(|s| s.allow_negative_numbers(true))
    }

    /// Parses a command line (program name first) with [`Cli::parser`].
    ///
    /// # Errors
    /// clap's error for a bad flag or value (and for `--help` and `--version`, which are not failures).
    pub fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut matches = Self::parser().try_get_matches_from(args)?;
        <Self as clap::FromArgMatches>::from_arg_matches_mut(&mut matches)
    }
}

/// The roles of the one binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar proxy: take gRPC calls on loopback and spread them over the target's endpoints.
    Sidecar(Box<SidecarArgs>),
    /// Run the backend HelloService (the test fixture and the demo's pods).
    Server(ServerArgs),
    /// Call HelloService once or many times and print the outcome.
    Call(CallArgs),
    /// Simulate a whole cluster on this machine: API stand-in, pods, sidecar and traffic.
    Demo(DemoArgs),
    /// Add the sidecar to Kubernetes workloads in YAML (file or stdin) and print them; `--rbac` adds the RBAC.
    Inject(InjectArgs),
    /// Run the mTLS inbound proxy in front of an app: verify callers' certificates and identities, forward to
    /// the app on loopback.
    Inbound(InboundArgs),
}

/// Flags of `sidecar`.
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// Address the app calls (loopback only by default).
    #[arg(long, env = "HELLO_SIDECAR_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Admin address: /live, /ready, /metrics, /debug/endpoints.
    #[arg(long, env = "HELLO_SIDECAR_ADMIN", default_value = "0.0.0.0:9901")]
    pub admin: SocketAddr,
    /// Where HelloService's backends are: `kubernetes:///svc.ns:port` or `static:///host:port,host:port`; the
    /// same as `--route hello.v1.HelloService=URI`.
    #[arg(long, env = "HELLO_SIDECAR_TARGET", value_parser = parse_target, required_unless_present = "routes")]
    pub target: Option<Target>,
    /// A route, SERVICE=TARGET: calls to the gRPC service SERVICE (fully qualified, or * for every service without
    /// a route of its own) go to TARGET. Repeatable; one value (and HELLO_SIDECAR_ROUTE) may hold several,
    /// separated by commas or whitespace.
    #[arg(long = "route", env = "HELLO_SIDECAR_ROUTE", value_parser = parse_routes, value_name = "SERVICE=TARGET")]
    pub routes: Vec<Vec<Route>>,
    /// Per-method policy in the standard gRPC service config format (methodConfig: timeout, waitForReady,
    /// retryPolicy, hedgingPolicy): a file, or the JSON itself.
    #[arg(long, env = "HELLO_SIDECAR_SERVICE_CONFIG", value_name = "FILE|JSON",
          value_parser = clap::builder::OsStringValueParser::new().try_map(parse_service_config))]
    pub service_config: Option<ServiceConfig>,
    /// Message types for Connect JSON (and reflection) of routed services: a FileDescriptorSet as `protoc -o` or
    /// `buf build -o` writes it. Repeatable; HELLO_SIDECAR_DESCRIPTOR_SET may list several, comma-separated.
    /// Without one, the sidecar learns a routed service's types from its backends' gRPC server reflection.
    #[arg(long = "descriptor-set", env = "HELLO_SIDECAR_DESCRIPTOR_SET", value_name = "FILE", value_delimiter = ',')]
    pub descriptor_sets: Vec<std::path::PathBuf>,
    /// Kubeconfig for `kubernetes:///` targets; without it: in-cluster service account, else KUBECONFIG or
    /// ~/.kube/config.
    #[arg(long, env = "HELLO_SIDECAR_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Deadline applied to (and forwarded with) a call that carries no grpc-timeout.
    #[arg(long, env = "HELLO_SIDECAR_DEFAULT_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub default_timeout: Duration,
    /// How long a call waits for a usable endpoint before UNAVAILABLE (never longer than its deadline).
    #[arg(long, env = "HELLO_SIDECAR_FAILFAST_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub failfast_timeout: Duration,
    /// Timeout of one TCP connect + HTTP/2 handshake to a backend.
    #[arg(long, env = "HELLO_SIDECAR_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,
    /// Calls in flight at once; more are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "HELLO_SIDECAR_MAX_CONCURRENT_CALLS", default_value = "1024", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_calls: u32,
    /// Largest request message, in bytes; larger ones get RESOURCE_EXHAUSTED. Also the largest reply the sidecar
    /// collects to translate for a Connect caller (a larger one: RESOURCE_EXHAUSTED, the backend's stream reset).
    #[arg(long, env = "HELLO_SIDECAR_MAX_MESSAGE_BYTES", default_value = "4194304", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_message_bytes: u64,
    /// Retries allowed as a fraction of calls (≈20% extra load at most), on top of a small floor.
    #[arg(long, env = "HELLO_SIDECAR_RETRY_BUDGET", default_value = "0.2", value_parser = parse_ratio)]
    pub retry_budget: f64,
    /// Consecutive failures (connects or calls) after which an endpoint is ejected for a while.
    #[arg(long, env = "HELLO_SIDECAR_EJECT_AFTER", default_value = "5", value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after: u32,
    /// How long a shutdown waits for calls in flight before closing.
    #[arg(long, env = "HELLO_SIDECAR_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Worker threads of the proxy: 1 keeps every hop of a call on one thread (lowest latency); 0 means one per
    /// core (most throughput under heavy concurrency).
    #[arg(long, env = "HELLO_SIDECAR_THREADS", default_value = "1", value_parser = parse_threads)]
    pub threads: usize,
    /// Largest header or trailer block passed through, in bytes as HTTP/2 counts them (name + value + 32 per
    /// field); a larger one ends the call with RESOURCE_EXHAUSTED naming the size. Envoy's default is 60 KiB.
    #[arg(long, env = "HELLO_SIDECAR_MAX_HEADER_BYTES", default_value = "65536", value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_header_bytes: u32,
    /// Silence on a backend connection with calls open after which an HTTP/2 PING checks the peer. Never sent
    /// while no call is open; doubled after a GOAWAY too_many_pings. Stock gRPC servers accept one per 5 minutes; 0 turns PINGs off.
    #[arg(long, env = "HELLO_SIDECAR_KEEPALIVE_INTERVAL", default_value = "5m", value_parser = parse_keepalive)]
    pub keepalive_interval: Duration,
    /// How fast an endpoint's Peak-EWMA latency estimate forgets a slow answer (e-folding time). 1 s rather than
    /// linkerd's 10 s: a hung pod is caught by its silence and the breaker, not by the estimate's memory, so the
    /// decay only sets how long one slow answer (beyond the 5 ms noise floor) keeps an otherwise good pod avoided.
    #[arg(long, env = "HELLO_SIDECAR_EWMA_DECAY", default_value = "1s", value_parser = parse_duration)]
    pub ewma_decay: Duration,
    /// Access log, off unless given: one JSON line per call (method, target, endpoint, status, duration, retries,
    /// bytes) to stdout, stderr or a file (appended to). Lines the writer cannot keep up with are dropped and counted
    /// (hello_sidecar_access_log_dropped_total), never waited for.
    #[arg(long, env = "HELLO_SIDECAR_ACCESS_LOG", value_name = "stdout|stderr|PATH",
          value_parser = clap::builder::OsStringValueParser::new().try_map(crate::telemetry::access_log::parse_sink_os))]
    pub access_log: Option<crate::telemetry::access_log::Sink>,
    /// Address family to call a dual-stack pod on: auto (IPv4 when the pod has one), ipv4 or ipv6.
    #[arg(long, env = "HELLO_SIDECAR_IP_FAMILY", value_enum, default_value = "auto")]
    pub ip_family: crate::discovery::IpFamily,
    /// mTLS to the target (--tls-cert, --tls-key, --tls-ca, --tls-server-identity).
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Flags of `server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address HelloService listens on.
    #[arg(long, env = "HELLO_SIDECAR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Optional admin address (/live, /ready, /metrics with accepted-connection counts).
    #[arg(long, env = "HELLO_SIDECAR_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// Name reported in the `x-hello-pod` response header (defaults to $POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    pub id: Option<String>,
    /// Fault: delay every call by this much.
    #[arg(long, env = "HELLO_SIDECAR_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Fault: add a random extra delay, uniform between 0 and this.
    #[arg(long, env = "HELLO_SIDECAR_DELAY_JITTER", default_value = "0s", value_parser = parse_duration)]
    pub delay_jitter: Duration,
    /// Fault: fraction of calls (0 to 1) answered with --error-code.
    #[arg(long, env = "HELLO_SIDECAR_ERROR_RATE", default_value = "0", value_parser = parse_ratio)]
    pub error_rate: f64,
    /// Fault: the status injected by --error-rate (name or number).
    #[arg(long, env = "HELLO_SIDECAR_ERROR_CODE", default_value = "UNAVAILABLE", value_parser = parse_code)]
    pub error_code: tonic::Code,
    /// How long SIGTERM waits for calls in flight before closing.
    #[arg(long, env = "HELLO_SIDECAR_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// HTTP/2 streams a client may have open on one connection (unlimited when unset).
    #[arg(long, env = "HELLO_SIDECAR_MAX_CONCURRENT_STREAMS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: Option<u32>,
    /// Optional mTLS terminated by the server itself (--tls-cert, --tls-key, --tls-ca).
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// Flags of `call`.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Where to call, `host:port` (or a URI such as `http://host:port`): the sidecar (default) or a backend.
    #[arg(long, env = "HELLO_SIDECAR_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// The name to greet.
    #[arg(long, default_value = "world")]
    pub name: String,
    /// Number of calls.
    #[arg(short = 'n', long, default_value = "1", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Calls in flight at once.
    #[arg(short = 'c', long, default_value = "1", value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
    /// Deadline of each call (sent as grpc-timeout); none means the sidecar's default applies.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print one JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    /// Call one at a time with this pause in between, printing each outcome as it comes (an app's loop); `-n`
    /// still sets how many calls (1 unless given).
    #[arg(long, value_parser = parse_duration, conflicts_with = "json")]
    pub interval: Option<Duration>,
    /// Fail (exit 1) if any successful reply's message differs from this (e.g. `Hello, world!`).
    #[arg(long)]
    pub expect_message: Option<String>,
}

/// Flags of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Backend pods at the start.
    #[arg(long, default_value = "3", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub pods: u32,
    /// How long the demo runs.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
}

impl SidecarArgs {
    /// Every route: `--target` as HelloService's, then each `--route`, in order.
    pub fn all_routes(&self) -> Vec<Route> {
        let hello = self.target.iter().map(|t| Route {
            service: crate::routes::ServiceMatch::Exact(crate::proxy::route::HELLO_SERVICE.to_owned()),
            target: t.clone(),
        });
        hello.chain(self.routes.iter().flatten().cloned()).collect()
    }

    /// Every `--descriptor-set` file read into one descriptor pool, or `None` without any. Errors name the file:
    /// unreadable, not a `FileDescriptorSet`, or a file that contradicts another set's.
    pub fn descriptor_pool(&self) -> Result<Option<prost_reflect::DescriptorPool>, String> {
        if self.descriptor_sets.is_empty() {
            return Ok(None);
        }
        let mut pool = prost_reflect::DescriptorPool::new();
        for path in &self.descriptor_sets {
            let shown = path.display();
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
            let invalid = |e: &dyn std::fmt::Display| {
                let e = e.to_string().replace('\n', " ");
                format!("{shown} is not a valid FileDescriptorSet (as protoc -o or buf build -o write): {e}")
            };
            let set = <prost_reflect::prost_types::FileDescriptorSet as prost::Message>::decode(bytes.as_slice())
                .map_err(|e| invalid(&e))?;
            if set.file.is_empty() {
                return Err(invalid(&"it holds no files"));
            }
            // `protoc -o` leaves imports out unless told: name the fix, not only the missing file.
            let has = |name: &str| set.file.iter().any(|f| f.name() == name) || pool.get_file_by_name(name).is_some();
            let deps = set.file.iter().flat_map(|f| f.dependency.iter());
            if let Some(missing) = deps.into_iter().find(|d| !has(d)) {
                let why = format!(
                    "it imports {missing} but does not hold it (protoc: add --include_imports; buf build includes \
                     imports; or give the set that holds it first)"
                );
                return Err(invalid(&why));
            }
            pool.add_file_descriptor_set(set).map_err(|e| invalid(&e))?;
        }
        Ok(Some(pool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_into_a_sidecar_config() {
        let cli = Cli::try_parse_from(["hello-sidecar", "sidecar", "--target", "static:///127.0.0.1:8080"]);
        let Ok(Cli { command: Command::Sidecar(args), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!(args.default_timeout, Duration::from_secs(5));
        assert_eq!(args.listen, "127.0.0.1:50051".parse::<SocketAddr>().unwrap());
        let bad = Cli::try_parse_from([
            "hello-sidecar",
            "sidecar",
            "--target",
            "static:///127.0.0.1:8080",
            "--default-timeout",
            "banana",
        ]);
        let msg = bad.expect_err("banana is no duration").to_string();
        assert!(msg.lines().next().unwrap_or("").contains("--default-timeout"), "{msg}");
    }
}
