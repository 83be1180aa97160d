//! The inbound proxy's TLS listener config: client certificates required and chain-checked, ALPN `h2`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ServerConfig, server::WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

use super::{
    ALPN_H2, TlsError, parse_certs, parse_key,
    reload::{POLL_INTERVAL, Reloading},
};

/// The live server config; rebuilt when its files change (new handshakes use the new one).
pub struct ServerTls {
    config: Arc<Reloading<ServerConfig>>,
}

impl ServerTls {
    /// Loads `cert`/`key` (presented to callers) and `ca` (callers' certificates must lead to it) and starts
    /// following them. Must run inside a Tokio runtime. Errors name the flag (`--tls-cert`, `--tls-key`,
    /// `--tls-ca`).
    pub fn new(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Result<Arc<Self>, TlsError> {
        let files = vec![("--tls-cert", cert.clone()), ("--tls-key", key.clone()), ("--tls-ca", ca.clone())];
        let build = move |c: &[Vec<u8>]| build(&cert, &key, &ca, c);
        Ok(Arc::new(Self { config: Reloading::spawn(files, build, POLL_INTERVAL)? }))
    }

    /// Reads and builds the files once, without following them (a start-up check of the flags, no runtime
    /// needed). Errors as [`ServerTls::new`].
    pub fn check(cert: &Path, key: &Path, ca: &Path) -> Result<(), TlsError> {
        let c = [super::read("--tls-cert", cert)?, super::read("--tls-key", key)?, super::read("--tls-ca", ca)?];
        build(cert, key, ca, &c).map(drop)
    }

    /// An acceptor with the config in use now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.current())
    }
}

fn build(cert: &Path, key_path: &Path, ca: &Path, c: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let chain = parse_certs("--tls-cert", cert, &c[0])?;
    let key = parse_key("--tls-key", key_path, &c[1])?;
    let roots = super::roots("--tls-ca", ca, &c[2])?;
    let provider = super::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("--tls-ca: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| super::pair_error(e, cert, key_path))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
