//! Flags of `inject`. Unlike the long-running roles, they read no environment variables: `inject` is a
//! command a person or a CI step runs, and a stray `HELLO_SIDECAR_TARGET` must not change its output.

use std::path::PathBuf;

use clap::Args;

use crate::discovery::Target;

/// The image `inject` puts in the pod unless `--image` names another: this build's version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/hello-sidecar/hello-sidecar:", env!("CARGO_PKG_VERSION"));

/// Flags of `inject`.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// Kubernetes YAML to read (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, Pod, List;
    /// multi-document streams); `-` is stdin.
    #[arg(default_value = "-")]
    pub file: PathBuf,
    /// The sidecar's `--target` (`kubernetes:///svc.ns:port` or `static:///host:port,…`).
    #[arg(long, value_parser = check_target, required_unless_present_any = ["route", "uninject"])]
    pub target: Option<String>,
    /// A sidecar `--route SERVICE=URI` (repeatable); its target gets RBAC like `--target`'s.
    #[arg(long, value_parser = check_route)]
    pub route: Vec<String>,
    /// Image of the sidecar.
    #[arg(long, default_value = DEFAULT_IMAGE, value_parser = check_image)]
    pub image: String,
    /// Where the app calls the sidecar.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: std::net::SocketAddr,
    /// Admin port of the sidecar (probes, /metrics).
    #[arg(long, default_value = "9901", value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port: u16,
    /// One more sidecar flag, as given (repeatable), e.g. `--sidecar-arg=--retry-budget=0.1`.
    #[arg(long, allow_hyphen_values = true)]
    pub sidecar_arg: Vec<String>,
    /// Remove the sidecar instead: gives back the meaning of what `inject` was given, not its bytes (an injected
    /// document was re-written, so its comments and flow style are gone; documents without a sidecar are
    /// written back byte for byte).
    #[arg(long, conflicts_with_all = ["target", "route", "rbac"])]
    pub uninject: bool,
    /// Also print the ServiceAccount, Role and RoleBinding each injected workload needs.
    #[arg(long)]
    pub rbac: bool,
    /// Namespace of objects that name none (where `kubectl apply` would put them).
    #[arg(short, long, default_value = "default", value_parser = check_namespace)]
    pub namespace: String,
}

impl InjectArgs {
    /// Every target the sidecar will watch: `--target` and each route's.
    pub fn targets(&self) -> Vec<Target> {
        let routes = self.route.iter().filter_map(|r| r.split_once('=')).map(|(_, uri)| uri);
        self.target.iter().map(String::as_str).chain(routes).filter_map(|uri| uri.parse().ok()).collect()
    }
}

/// A container image reference: not empty, no whitespace (the kubelet cannot pull `''` or `a b`).
fn check_image(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(format!("'{s}' is not an image reference (e.g. {DEFAULT_IMAGE})"));
    }
    Ok(s.to_owned())
}

/// A namespace name: an RFC 1123 label (lower-case alphanumerics and '-', at most 63, alphanumeric at both ends),
/// as the API server requires.
fn check_namespace(s: &str) -> Result<String, String> {
    let label = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !label {
        return Err(format!("'{s}' is not a namespace name (lower-case letters, digits and '-', at most 63)"));
    }
    Ok(s.to_owned())
}

fn check_target(s: &str) -> Result<String, String> {
    s.parse::<Target>().map(|_| s.to_owned()).map_err(|e| e.to_string())
}

fn check_route(s: &str) -> Result<String, String> {
    let (service, uri) = s.split_once('=').ok_or_else(|| format!("'{s}' is not SERVICE=URI"))?;
    if service.is_empty() {
        return Err(format!("'{s}' names no service (use * for a default route)"));
    }
    check_target(uri).map(|_| s.to_owned())
}
