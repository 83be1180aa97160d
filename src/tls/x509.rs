//! The two certificate fields webpki checks but does not expose in full: basicConstraints (RFC 5280 §4.2.1.9) of
//! a trust anchor, and every URI in the subjectAltName (RFC 5280 §4.2.1.6), read strictly from the DER.

use super::leaf::tlv;

/// basicConstraints, 2.5.29.19.
const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
/// subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The extnValue contents of extension `oid` (OID contents bytes): `Some(None)` when the certificate has no such
/// extension, `None` when it does not parse this far. Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { …,
/// `[3]` extensions SEQUENCE OF Extension { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING } } }.
fn extension<'a>(der: &'a [u8], oid: &[u8]) -> Option<Option<&'a [u8]>> {
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    while !tbs.is_empty() {
        let (tag, value, rest) = tlv(tbs)?;
        tbs = rest;
        if tag != 0xa3 {
            continue;
        }
        let (_, mut exts, _) = tlv(value)?;
        while !exts.is_empty() {
            let (_, ext, rest) = tlv(exts)?;
            exts = rest;
            let (_, id, ext) = tlv(ext)?;
            let (mut tag, mut value, rest) = tlv(ext)?;
            if tag == 0x01 {
                (tag, value, _) = tlv(rest)?; // past `critical`
            }
            if id == oid {
                return (tag == 0x04).then_some(Some(value));
            }
        }
    }
    Some(None)
}

/// Whether a DER certificate asserts `cA` TRUE in basicConstraints, as RFC 5280 §4.2.1.9 requires of any
/// certificate whose key verifies certificate signatures. `false` when absent or when it does not parse.
pub fn is_ca(der: &[u8]) -> bool {
    let Some(Some(bc)) = extension(der, BASIC_CONSTRAINTS) else { return false };
    match tlv(bc).and_then(|(_, seq, _)| tlv(seq)) {
        Some((0x01, value, _)) => value.iter().any(|b| *b != 0),
        _ => false,
    }
}

/// Every uniformResourceIdentifier of the subjectAltName, in order (empty without one), or `None` when a name does
/// not parse or a URI is not IA5 (ASCII): such a certificate names no one, rather than the names that did parse.
pub fn uri_sans(der: &[u8]) -> Option<Vec<String>> {
    let Some(san) = extension(der, SUBJECT_ALT_NAME)? else { return Some(Vec::new()) };
    let (tag, mut names, rest) = tlv(san)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let mut uris = Vec::new();
    while !names.is_empty() {
        let (tag, value, rest) = tlv(names)?;
        names = rest;
        if tag & 0x1f == 0x1f {
            return None; // a high tag number: not a GeneralName this reader knows to skip
        }
        if tag == 0x86 {
            uris.push(std::str::from_utf8(value).ok().filter(|u| u.is_ascii())?.to_owned());
        }
    }
    Some(uris)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CustomExtension, IsCa, KeyPair, SanType};

    use super::*;

    fn cert(f: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        f(&mut p);
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn only_a_certificate_asserting_ca_is_a_ca() {
        assert!(is_ca(&cert(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained))));
        assert!(!is_ca(&cert(|p| p.is_ca = IsCa::ExplicitNoCa)));
        assert!(!is_ca(&cert(|p| p.is_ca = IsCa::NoCa)));
        assert!(!is_ca(b"\x30\x03\x02\x01"));
    }

    #[test]
    fn every_uri_san_is_listed_and_one_that_does_not_parse_spoils_them_all() {
        let one = cert(|p| p.subject_alt_names = vec![SanType::URI("spiffe://td/ns/a/sa/b".try_into().unwrap())]);
        assert_eq!(uri_sans(&one), Some(vec!["spiffe://td/ns/a/sa/b".to_owned()]));
        assert_eq!(uri_sans(&cert(|_| {})), Some(vec![]));
        let raw = |san: &[u8]| {
            let mut ext = vec![0x30, san.len() as u8];
            ext.extend(san);
            cert(|p| {
                p.subject_alt_names.clear();
                p.custom_extensions = vec![CustomExtension::from_oid_content(&[2, 5, 29, 17], ext)];
            })
        };
        assert_eq!(uri_sans(&raw(b"\x86\x03a:b\x86\x02\xff\xfe")), None, "not ASCII");
        assert_eq!(uri_sans(&raw(b"\x86\x03a:b\x86\x7f\x00")), None, "truncated");
        assert_eq!(uri_sans(&raw(b"\x86\x03a:b\x82\x01x")), Some(vec!["a:b".to_owned()]));
    }
}
