//! Pod-to-pod mTLS with workload identity: the sidecar's TLS to a target, and the `inbound` proxy's TLS listener.
//!
//! - [`TlsSettings`]: what one target's TLS needs (client certificate, key, CA bundle, the backend's expected
//!   [`Identity`]); held per target, so a cluster can move to mTLS one service at a time.
//! - [`ClientTls`] (`client`): the live client config of a target; [`ServerTls`] (`server`): the inbound
//!   listener's. Both reload their files when their contents change ([`reload`]), as cert-manager and the CSI
//!   driver rotate certificates in place (Kubernetes swaps a symlink, so contents are compared, not mtimes).
//! - [`verify`]: chain validation by rustls' WebPki code, then the identity: a SPIFFE ID in the URI SAN
//!   (SPIFFE X509-SVID §2, <https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md>) or a DNS name.
//!
//! One crypto provider, ring (kube brings it); ALPN `h2` both ways (RFC 7540 §3.3).

pub mod client;
pub mod identity;
pub mod leaf;
pub mod reload;
pub mod server;
pub mod stream;
pub mod verify;
pub mod x509;

use std::{path::PathBuf, sync::Arc};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

pub use self::{
    client::ClientTls,
    identity::{AllowList, Identity, SpiffeId},
    server::ServerTls,
    stream::Stream,
};

/// The ALPN protocol both sides offer: HTTP/2 only (gRPC needs it).
pub const ALPN_H2: &[u8] = b"h2";

/// The files and expected peer identity of one target's TLS (`--tls-cert`, `--tls-key`, `--tls-ca`,
/// `--tls-server-identity`). A future route table holds one of these per route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain presented to the peer, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CA certificates the peer's chain must lead to.
    pub ca: PathBuf,
    /// Who the backend must be.
    pub server_identity: Identity,
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{flag} {path}: {source}")]
    Read {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{flag} {path}: {reason}")]
    Pem {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the certificate, an unusable CA…).
    #[error("tls config: {0}")]
    Config(String),
}

/// The one crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain (at least one `CERTIFICATE` block). `flag` and `path` name it in errors.
pub fn parse_certs(
    flag: &'static str,
    path: &std::path::Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        flag,
        path: path.to_owned(),
        reason: format!("bad PEM: {e}"),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { flag, path: path.to_owned(), reason: "no CERTIFICATE block".into() });
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, PKCS#1 or SEC1; the first one found).
pub fn parse_key(flag: &'static str, path: &std::path::Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        flag,
        path: path.to_owned(),
        reason: format!("no usable PRIVATE KEY block: {e}"),
    })
}

/// Reads a file, naming `flag` in the error.
pub fn read(flag: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.to_owned(), source })
}

/// The trust anchors of a PEM CA bundle (`--tls-ca`). Errors name `flag` and `path`: a block that is not a valid
/// X.509 certificate, one that is not a CA (basicConstraints `cA` TRUE), or one webpki cannot use as a trust anchor.
pub fn roots(flag: &'static str, path: &std::path::Path, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in parse_certs(flag, path, pem)?.into_iter().enumerate() {
        let der = cert.clone();
        roots.add(cert).map_err(|e| TlsError::Pem {
            flag,
            path: path.to_owned(),
            reason: match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding) => {
                    "not a valid certificate (a CERTIFICATE block that is not DER X.509)".to_owned()
                }
                e => format!("not a usable CA certificate: {e}"),
            },
        })?;
        // webpki trusts any certificate given as an anchor; one that is not a CA (a workload's own certificate in
        // the bundle) would let its key sign every identity (RFC 5280 §4.2.1.9).
        if !x509::is_ca(&der) {
            return Err(TlsError::Pem {
                flag,
                path: path.to_owned(),
                reason: format!(
                    "certificate {} is not a CA (basicConstraints cA is not TRUE; RFC 5280 §4.2.1.9): a workload's \
                     certificate here would let its key sign any identity",
                    i + 1
                ),
            });
        }
    }
    Ok(roots)
}

/// Turns rustls' refusal of a certificate and key pair into an error naming the flag: a key that does not match
/// the certificate names `--tls-key`.
pub fn pair_error(e: rustls::Error, cert: &std::path::Path, key: &std::path::Path) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Pem {
            flag: "--tls-key",
            path: key.to_owned(),
            reason: format!("the private key does not match the certificate in --tls-cert {}", cert.display()),
        },
        e => TlsError::Config(format!("--tls-cert/--tls-key: {e}")),
    }
}

/// A clap value parser for a PEM CA bundle: the path, once every block in it is a usable trust anchor.
pub fn ca_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read {s}: {e}"))?;
    roots("", &path, &pem).map_err(|e| e.to_string().trim_start().to_owned())?;
    Ok(path)
}

/// A clap value parser for a PEM certificate file: the path, once it reads and holds a certificate.
pub fn cert_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read {s}: {e}"))?;
    parse_certs("", &path, &pem).map_err(|e| e.to_string().trim_start().to_owned())?;
    Ok(path)
}

/// A clap value parser for a PEM private key file.
pub fn key_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read {s}: {e}"))?;
    parse_key("", &path, &pem).map_err(|e| e.to_string().trim_start().to_owned())?;
    Ok(path)
}
