//! Flags of mTLS: the sidecar's TLS to its target, and the `inbound` role.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::parse_duration;
use crate::tls::{self, AllowList, Identity, TlsSettings, identity::AllowRule};

/// The sidecar's TLS to its target's endpoints: all four flags or none.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// mTLS to backends: PEM certificate chain presented to them (leaf first). Needs --tls-key, --tls-ca and
    /// --tls-server-identity; reloaded when the file changes.
    #[arg(long, env = "HELLO_SIDECAR_TLS_CERT", value_parser = tls::cert_file,
          requires_all = ["tls_key", "tls_ca", "tls_server_identity"])]
    pub tls_cert: Option<PathBuf>,
    /// mTLS: PEM private key of --tls-cert.
    #[arg(long, env = "HELLO_SIDECAR_TLS_KEY", value_parser = tls::key_file, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// mTLS: PEM bundle of the CA(s) a backend's certificate must chain to.
    #[arg(long, env = "HELLO_SIDECAR_TLS_CA", value_parser = tls::ca_file, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// mTLS: who the backends must be: a SPIFFE ID (spiffe://TRUST_DOMAIN/ns/NS/sa/SA, matched against the
    /// certificate's URI SAN) or a DNS name (matched against its DNS SAN, and sent as SNI).
    #[arg(long, env = "HELLO_SIDECAR_TLS_SERVER_IDENTITY", value_parser = parse_identity, requires = "tls_cert")]
    pub tls_server_identity: Option<Identity>,
}

impl TlsArgs {
    /// The target's TLS settings, if TLS is on (clap has checked that all four flags came together).
    pub fn settings(&self) -> Option<TlsSettings> {
        Some(TlsSettings {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
            server_identity: self.tls_server_identity.clone()?,
        })
    }
}

/// The `server` fixture's optional mTLS: all three flags or none.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerTlsArgs {
    /// Terminate mTLS: PEM certificate chain presented to callers. Needs --tls-key and --tls-ca.
    #[arg(long, env = "HELLO_SIDECAR_TLS_CERT", value_parser = tls::cert_file, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// mTLS: PEM private key of --tls-cert.
    #[arg(long, env = "HELLO_SIDECAR_TLS_KEY", value_parser = tls::key_file, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// mTLS: PEM CA bundle callers' client certificates must chain to (client certificates are required).
    #[arg(long, env = "HELLO_SIDECAR_TLS_CA", value_parser = tls::ca_file, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// (cert, key, ca) when TLS is on.
    pub fn files(&self) -> Option<(PathBuf, PathBuf, PathBuf)> {
        Some((self.tls_cert.clone()?, self.tls_key.clone()?, self.tls_ca.clone()?))
    }
}

/// Flags of `inbound`.
#[derive(Debug, Clone, Args)]
pub struct InboundArgs {
    /// Address the TLS listener binds (the pod's port other pods call).
    #[arg(long, env = "HELLO_SIDECAR_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Admin address: /live, /ready, /metrics (calls by caller identity), /debug/endpoints (recent callers).
    #[arg(long, env = "HELLO_SIDECAR_ADMIN", default_value = "0.0.0.0:9903")]
    pub admin: SocketAddr,
    /// The app, on loopback: verified calls are forwarded here over h2c, frames untouched.
    #[arg(long, env = "HELLO_SIDECAR_FORWARD", default_value = "127.0.0.1:8080")]
    pub forward: SocketAddr,
    /// PEM certificate chain presented to callers (leaf first); reloaded when the file changes.
    #[arg(long, env = "HELLO_SIDECAR_TLS_CERT", value_parser = tls::cert_file)]
    pub tls_cert: PathBuf,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HELLO_SIDECAR_TLS_KEY", value_parser = tls::key_file)]
    pub tls_key: PathBuf,
    /// PEM bundle of the CA(s) a caller's client certificate must chain to (client certificates are required).
    #[arg(long, env = "HELLO_SIDECAR_TLS_CA", value_parser = tls::ca_file)]
    pub tls_ca: PathBuf,
    /// Callers let through, by SPIFFE ID: `spiffe://TD/ns/NS/sa/SA`, or `spiffe://TD/ns/NS/*` for a whole
    /// namespace. Repeatable (comma-separated in the env var). Others get PERMISSION_DENIED.
    #[arg(long = "allow", env = "HELLO_SIDECAR_ALLOW", value_delimiter = ',', required = true, value_parser = parse_allow)]
    pub allow: Vec<AllowRule>,
    /// Timeout of a TLS handshake with a caller (more than 0).
    #[arg(long, env = "HELLO_SIDECAR_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_handshake_timeout)]
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once, at most; a connection beyond it is closed at once and counted
    /// (`hello_inbound_handshakes_shed_total`), so slow or idle callers cannot pile up handshakes.
    #[arg(long, env = "HELLO_SIDECAR_MAX_PENDING_HANDSHAKES", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_handshakes: u32,
    /// How long SIGTERM waits for calls in flight before closing.
    #[arg(long, env = "HELLO_SIDECAR_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl InboundArgs {
    /// The allow list.
    pub fn allow_list(&self) -> AllowList {
        AllowList(self.allow.clone())
    }
}

/// Checks what the flags of `command` name together and one flag's parser cannot: that `--tls-key` matches
/// `--tls-cert`, and that the whole TLS config builds. Run before starting, so a bad pair is a bad flag (one line
/// naming it, exit 2) rather than a start-up failure. Errors: [`tls::TlsError`], naming the flag.
pub fn check(command: &super::Command) -> Result<(), tls::TlsError> {
    match command {
        super::Command::Sidecar(args) => args.tls.settings().map_or(Ok(()), |s| tls::ClientTls::check(&s)),
        super::Command::Server(args) => {
            args.tls.files().map_or(Ok(()), |(cert, key, ca)| tls::ServerTls::check(&cert, &key, &ca))
        }
        super::Command::Inbound(args) => tls::ServerTls::check(&args.tls_cert, &args.tls_key, &args.tls_ca),
        _ => Ok(()),
    }
}

fn parse_handshake_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0 (a TLS handshake takes a round trip or two)".to_owned()),
        d => Ok(d),
    }
}

fn parse_identity(s: &str) -> Result<Identity, String> {
    s.parse()
}

fn parse_allow(s: &str) -> Result<AllowRule, String> {
    s.trim().parse()
}
