//! What the logs say about a certificate in use: its serial and its expiry (RFC 5280 §4.1), read straight from
//! the DER without an X.509 library (webpki checks validity but does not expose it).

use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;

/// The serial and expiry of a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// notAfter as RFC 3339 UTC (`2026-12-01T00:00:00Z`).
    pub not_after: String,
    /// notAfter in seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl LeafInfo {
    /// Whether the certificate's notAfter is before `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        self.not_after_unix < now
    }
}

/// Serial and notAfter of the first certificate of a PEM chain; `None` if it does not parse.
pub fn leaf_info_pem(pem: &[u8]) -> Option<LeafInfo> {
    use rustls_pki_types::pem::PemObject;
    leaf_info(&CertificateDer::pem_slice_iter(pem).next()?.ok()?)
}

/// Serial and notAfter of a DER certificate: Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { `[0]` version
/// OPTIONAL, serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE, validity SEQUENCE { notBefore, notAfter },
/// … } … }.
pub fn leaf_info(der: &CertificateDer<'_>) -> Option<LeafInfo> {
    let (_, cert, _) = tlv(der.as_ref())?;
    let (_, mut tbs, _) = tlv(cert)?;
    let (mut tag, mut value, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, value, rest) = tlv(rest)?;
    }
    if tag != 0x02 {
        return None;
    }
    let serial = value.iter().skip_while(|b| **b == 0).map(|b| format!("{b:02x}")).collect::<String>();
    tbs = rest;
    let (_, _, rest) = tlv(tbs)?; // signature
    let (_, _, rest) = tlv(rest)?; // issuer
    let (_, validity, _) = tlv(rest)?;
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?;
    let (not_after, not_after_unix) = parse_time(tag, std::str::from_utf8(time).ok()?)?;
    Some(LeafInfo { serial: if serial.is_empty() { "00".into() } else { serial }, not_after, not_after_unix })
}

/// One DER TLV: (tag, contents, what follows). Definite lengths only, as DER requires.
pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, 0x17; years 50-99 are 19xx, RFC 5280 §4.1.2.5.1) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`, 0x18) to (RFC 3339 text, Unix seconds).
fn parse_time(tag: u8, s: &str) -> Option<(String, i64)> {
    let digits = s.strip_suffix('Z')?;
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, h, m, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    let text = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}Z");
    Some((text, days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SerialNumber, date_time_ymd};

    use super::*;

    #[test]
    fn serial_and_expiry_are_read_from_the_der() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        p.serial_number = Some(SerialNumber::from(0x0203u64));
        p.not_before = date_time_ymd(2019, 1, 1);
        p.not_after = date_time_ymd(2020, 2, 29);
        let der = p.self_signed(&key).unwrap().der().clone();
        let info = leaf_info(&der).unwrap();
        assert_eq!(info.serial, "0203");
        assert_eq!(info.not_after, "2020-02-29T00:00:00Z");
        assert_eq!(info.not_after_unix, 1_582_934_400);
        assert!(info.expired_at(SystemTime::now()));
        p.not_after = date_time_ymd(2051, 6, 1); // GeneralizedTime from 2050 on
        let info = leaf_info(&p.self_signed(&key).unwrap().der().clone()).unwrap();
        assert_eq!(info.not_after, "2051-06-01T00:00:00Z");
        assert!(!info.expired_at(SystemTime::now()));
        assert_eq!(leaf_info(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])), None);
    }
}
