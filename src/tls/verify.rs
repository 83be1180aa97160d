//! Checking a peer's certificate: the chain by rustls' WebPki code, then the identity.
//!
//! rustls' own server verifier checks the chain and a DNS name or IP in one step; a SPIFFE certificate usually
//! has neither (its name is the URI SAN), so the backend verifier here runs the chain check alone and then
//! matches [`Identity`] itself. Client certificates are chain-checked by [`rustls::server::WebPkiClientVerifier`];
//! the caller's SPIFFE ID is read afterwards ([`spiffe_id`]) and judged per request by the allow list.

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    server::ParsedCertificate,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::Identity;

/// Verifies a backend: chain to one of `roots`, valid now, usable for server auth, and carrying `identity`.
#[derive(Debug)]
pub struct BackendVerifier {
    roots: Arc<RootCertStore>,
    identity: Identity,
    provider: Arc<CryptoProvider>,
}

impl BackendVerifier {
    /// A verifier for backends that must be `identity` under `roots`.
    pub fn new(roots: Arc<RootCertStore>, identity: Identity, provider: Arc<CryptoProvider>) -> Self {
        Self { roots, identity, provider }
    }
}

/// The presented certificate is valid but names someone else.
#[derive(Debug, thiserror::Error)]
#[error("certificate identity mismatch: expected {expected}, the certificate has {presented}")]
pub struct IdentityMismatch {
    /// The configured identity.
    pub expected: String,
    /// The SPIFFE IDs the certificate carries (or "no SPIFFE ID").
    pub presented: String,
}

impl ServerCertVerifier for BackendVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match &self.identity {
            Identity::Dns(name) => rustls::client::verify_server_name(&cert, name)?,
            Identity::Spiffe(want) => {
                let ids = uri_sans(end_entity);
                if !ids.iter().any(|id| id == want.as_str()) {
                    let presented = if ids.is_empty() { "no SPIFFE ID".to_owned() } else { ids.join(", ") };
                    let mismatch = IdentityMismatch { expected: want.to_string(), presented };
                    return Err(Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch)))));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The `spiffe://` URI SANs of a certificate (empty when it does not parse).
pub fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.valid_uri_names().filter(|u| u.starts_with("spiffe://")).map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// The SPIFFE ID of a verified peer certificate: its one `spiffe://` URI SAN (X509-SVID §2 allows exactly one).
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let mut ids = uri_sans(cert);
    if ids.len() == 1 { ids.pop() } else { None }
}

/// The serial number of a certificate in lowercase hex, for logs and `/debug` views.
pub fn serial_hex(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(ee.serial().iter().map(|b| format!("{b:02x}")).collect())
}
