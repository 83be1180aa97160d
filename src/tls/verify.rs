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
    /// The URI SANs the certificate carries (or "no URI SAN").
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
                // X509-SVID §2: exactly one URI SAN, so a certificate naming two workloads is no SVID at all.
                let presented = match uri_sans(end_entity) {
                    Some(ids) if ids.len() == 1 && ids[0] == want.as_str() => None,
                    Some(ids) if ids.is_empty() => Some("no URI SAN".to_owned()),
                    Some(ids) if ids.len() == 1 => Some(ids.join(", ")),
                    Some(ids) => Some(format!("{} URI SANs ({}; an SVID has exactly one)", ids.len(), ids.join(", "))),
                    None => Some("a subjectAltName that does not parse (or a URI that is not ASCII)".to_owned()),
                };
                if let Some(presented) = presented {
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

/// All URI SANs of a certificate, of any scheme; `None` when its subjectAltName does not parse or holds a URI that
/// is not ASCII. Not webpki's `valid_uri_names`: it skips such a URI and stops at a name that does not parse, so a
/// certificate could hide a second URI SAN from the one-URI rule of X509-SVID §2 ([`super::x509::uri_sans`]).
pub fn uri_sans(cert: &CertificateDer<'_>) -> Option<Vec<String>> {
    super::x509::uri_sans(cert)
}

/// The SPIFFE ID of a verified peer certificate: its only URI SAN, when that is a valid `spiffe://` ID. X509-SVID
/// §2 allows exactly one URI SAN of any scheme, so a second URI (even `https://…`) means no SPIFFE ID; the
/// outbound [`BackendVerifier`] applies the same rule.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let mut ids = uri_sans(cert)?;
    if ids.len() != 1 {
        return None;
    }
    let id = ids.pop()?;
    id.parse::<super::SpiffeId>().ok().map(|_| id)
}

/// The serial number of a certificate in lowercase hex, for logs and `/debug` views.
pub fn serial_hex(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(ee.serial().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

    use super::*;

    /// A CA and a leaf it signed carrying `uris` as URI SANs.
    fn ca_and_leaf(uris: &[&str]) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "verify test CA");
        let ca_der = ca.self_signed(&ca_key).unwrap().der().clone();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
        let leaf_der = leaf.signed_by(&key, &issuer).unwrap().der().clone();
        (ca_der, leaf_der)
    }

    fn verify_backend(uris: &[&str], want: &str) -> Result<(), Error> {
        let (ca, leaf) = ca_and_leaf(uris);
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let v = BackendVerifier::new(Arc::new(roots), want.parse::<Identity>().unwrap(), super::super::provider());
        let name = ServerName::try_from("127.0.0.1").unwrap();
        v.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    /// X509-SVID §2: an SVID carries exactly one URI SAN; a server certificate naming two workloads is refused
    /// even when one of them is the expected one (review of issue 15).
    #[test]
    fn a_backend_certificate_with_two_uri_sans_is_not_an_svid() {
        let want = "spiffe://td/ns/shop/sa/backend";
        assert!(verify_backend(&[want], want).is_ok());
        for extra in ["spiffe://td/ns/shop/sa/evil", "https://evil.example/"] {
            let err = verify_backend(&[extra, want], want).expect_err("two URI SANs passed as an SVID");
            assert!(err.to_string().contains("2 URI SANs"), "{err}");
            assert!(verify_backend(&[want, extra], want).is_err());
        }
    }

    /// X509-SVID §2 again: exactly one URI SAN, of any scheme, on the caller's side as on the backend's.
    #[test]
    fn a_caller_certificate_with_a_spiffe_id_and_another_uri_is_not_an_svid() {
        let (_, leaf) = ca_and_leaf(&["spiffe://td/ns/shop/sa/checkout", "https://evil.example/"]);
        assert_eq!(spiffe_id(&leaf), None);
        let (_, leaf) = ca_and_leaf(&["https://evil.example/"]);
        assert_eq!(spiffe_id(&leaf), None);
        let (_, leaf) = ca_and_leaf(&["spiffe://td/ns/shop/sa/checkout"]);
        assert_eq!(spiffe_id(&leaf).as_deref(), Some("spiffe://td/ns/shop/sa/checkout"));
    }
}
