//! The sidecar's TLS to one target: client certificate presented, backend verified, ALPN `h2`.

use std::{fmt, net::SocketAddr, sync::Arc};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{net::TcpStream, sync::watch};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{
    ALPN_H2, Identity, TlsError, TlsSettings, parse_certs, parse_key,
    reload::{POLL_INTERVAL, Reloading},
    verify::BackendVerifier,
};

/// The live client config of a target; rebuilt when its files change.
pub struct ClientTls {
    config: Arc<Reloading<ClientConfig>>,
    identity: Identity,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Loads the files of `settings` and starts following them. Must run inside a Tokio runtime.
    ///
    /// Errors: a file that cannot be read or parsed (naming its flag), or a key that does not match the
    /// certificate.
    pub fn new(settings: &TlsSettings) -> Result<Arc<Self>, TlsError> {
        let files = vec![
            ("--tls-cert", settings.cert.clone()),
            ("--tls-key", settings.key.clone()),
            ("--tls-ca", settings.ca.clone()),
        ];
        let s = settings.clone();
        let identity = settings.server_identity.clone();
        let build = move |c: &[Vec<u8>]| build(&s, &c[0], &c[1], &c[2]);
        let config = Reloading::spawn(files, build, POLL_INTERVAL)?;
        Ok(Arc::new(Self { config, identity }))
    }

    /// Reads and builds `settings` once, without following the files (a start-up check of the flags, no runtime
    /// needed). Errors as [`ClientTls::new`].
    pub fn check(settings: &TlsSettings) -> Result<(), TlsError> {
        let read = |flag, path| super::read(flag, path);
        let (cert, key, ca) =
            (read("--tls-cert", &settings.cert)?, read("--tls-key", &settings.key)?, read("--tls-ca", &settings.ca)?);
        build(settings, &cert, &key, &ca).map(drop)
    }

    /// Who the backend must be.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Changes whenever reloaded certificates are in place; connections made before are then replaced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.config.subscribe()
    }

    /// Runs the TLS handshake over `tcp` to endpoint `addr`. The SNI is the DNS identity when there is one;
    /// for a SPIFFE identity none is sent (the endpoint's IP stands in as the name, which rustls never sends).
    pub async fn connect(&self, addr: SocketAddr, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match &self.identity {
            Identity::Dns(name) => name.clone(),
            Identity::Spiffe(_) => ServerName::IpAddress(addr.ip().into()),
        };
        let tls = TlsConnector::from(self.config.current()).connect(name, tcp).await.map_err(readable)?;
        check_alpn(tls.get_ref().1.alpn_protocol())?;
        Ok(tls)
    }
}

/// gRPC runs on HTTP/2 only, so the backend must pick `h2` by ALPN (RFC 7301 §3.2; gRPC's PROTOCOL-HTTP2 doc).
/// rustls accepts a server that ignores ALPN; this refuses it rather than speak HTTP/2 to an HTTP/1.1 server.
/// Errors: `InvalidData`, naming ALPN and what the server chose.
fn check_alpn(chosen: Option<&[u8]>) -> std::io::Result<()> {
    if chosen == Some(ALPN_H2) {
        return Ok(());
    }
    let chosen = match chosen {
        None => "none".to_owned(),
        Some(p) => format!("'{}'", String::from_utf8_lossy(p)),
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("ALPN: the server did not negotiate h2 (chose {chosen}); gRPC needs HTTP/2"),
    ))
}

/// rustls prints a custom certificate error with `Debug`; this says it in words (`invalid peer certificate:
/// certificate identity mismatch: expected …`).
fn readable(e: std::io::Error) -> std::io::Error {
    let text = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            format!("invalid peer certificate: {other}")
        }
        _ => return e,
    };
    std::io::Error::new(e.kind(), text)
}

fn build(s: &TlsSettings, cert: &[u8], key: &[u8], ca: &[u8]) -> Result<ClientConfig, TlsError> {
    let chain = parse_certs("--tls-cert", &s.cert, cert)?;
    let key = parse_key("--tls-key", &s.key, key)?;
    let roots = super::roots("--tls-ca", &s.ca, ca)?;
    let provider = super::provider();
    let verifier = BackendVerifier::new(Arc::new(roots), s.server_identity.clone(), provider.clone());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| super::pair_error(e, &s.cert, &s.key))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_h2_passes_the_alpn_check() {
        assert!(check_alpn(Some(b"h2")).is_ok());
        for (chosen, named) in [(None, "chose none"), (Some(&b"http/1.1"[..]), "chose 'http/1.1'")] {
            let e = check_alpn(chosen).unwrap_err().to_string();
            assert!(e.contains("ALPN") && e.contains(named), "{e}");
        }
    }
}
