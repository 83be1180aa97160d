//! Workload identities: SPIFFE IDs, the expected identity of a backend, and the inbound allow list.
//!
//! A SPIFFE ID is `spiffe://TRUST_DOMAIN/PATH` (SPIFFE ID standard §2); on Kubernetes the path is
//! `/ns/NAMESPACE/sa/SERVICE_ACCOUNT` (the convention of Istio, linkerd and cert-manager's csi-driver-spiffe).

use std::{fmt, str::FromStr};

use rustls_pki_types::ServerName;

/// A syntactically valid SPIFFE ID, e.g. `spiffe://cluster.local/ns/shop/sa/checkout`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(String);

impl SpiffeId {
    /// The ID as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SpiffeId {
    type Err = String;

    /// Rules of the SPIFFE ID standard §2: scheme `spiffe`, a trust domain of `[a-z0-9.-_]`, a non-empty path of
    /// non-empty segments of `[a-zA-Z0-9.-_]`, none `.` or `..`; no query, fragment, port or user info.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("'{s}' is not a SPIFFE ID ({why}; e.g. spiffe://cluster.local/ns/NS/sa/SA)");
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| bad("must start with spiffe://"))?;
        let (domain, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        if domain.is_empty() || !domain.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')) {
            return Err(bad("the trust domain must be lowercase letters, digits, '.', '-' or '_'"));
        }
        for seg in path.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad("empty, '.' or '..' path segment"));
            }
            if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
                return Err(bad("path segments are letters, digits, '.', '-' or '_'"));
            }
        }
        Ok(SpiffeId(s.to_owned()))
    }
}

/// Who a backend must prove to be: a SPIFFE ID in its certificate's URI SAN, or a DNS name in its DNS SAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `spiffe://…`: matched exactly against the URI SANs of the leaf certificate.
    Spiffe(SpiffeId),
    /// A DNS name, checked as RFC 6125 says (wildcards in the certificate allowed); also sent as SNI.
    Dns(ServerName<'static>),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Spiffe(id) => id.fmt(f),
            Identity::Dns(name) => f.write_str(&name.to_str()),
        }
    }
}

impl FromStr for Identity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("spiffe://") {
            return s.parse().map(Identity::Spiffe);
        }
        match ServerName::try_from(s.to_owned()) {
            Ok(name @ ServerName::DnsName(_)) => Ok(Identity::Dns(name)),
            _ => Err(format!("'{s}' is neither a SPIFFE ID (spiffe://TRUST_DOMAIN/ns/NS/sa/SA) nor a DNS name")),
        }
    }
}

/// One `--allow` entry: a SPIFFE ID, or every service account of a namespace (`spiffe://TD/ns/NS/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Exactly `spiffe://TD/ns/NS/sa/SA` for any one segment `SA`; holds the prefix `spiffe://TD/ns/NS/sa/`.
    Namespace(String),
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(prefix) = s.strip_suffix("/*") {
            // The prefix must itself be `spiffe://TD/ns/NS`.
            let id: SpiffeId = prefix.parse()?;
            let path = id.as_str().trim_start_matches("spiffe://").split_once('/').map_or("", |(_, p)| p);
            let segs: Vec<&str> = path.split('/').collect();
            if segs.len() != 2 || segs[0] != "ns" {
                return Err(format!("'{s}': a wildcard covers one namespace: spiffe://TRUST_DOMAIN/ns/NAMESPACE/*"));
            }
            return Ok(AllowRule::Namespace(format!("{prefix}/sa/")));
        }
        s.parse().map(AllowRule::Exact)
    }
}

impl AllowRule {
    /// Whether `id` is allowed by this rule. A namespace rule admits `spiffe://TD/ns/NS/sa/SA` with `SA` one
    /// valid path segment (SPIFFE ID standard §2.2) and nothing deeper or differently shaped.
    pub fn allows(&self, id: &str) -> bool {
        match self {
            AllowRule::Exact(want) => want.as_str() == id,
            AllowRule::Namespace(prefix) => id.strip_prefix(prefix.as_str()).is_some_and(|sa| {
                !sa.is_empty()
                    && sa != "."
                    && sa != ".."
                    && sa.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            }),
        }
    }
}

/// The callers the inbound proxy lets through.
#[derive(Debug, Clone, Default)]
pub struct AllowList(pub Vec<AllowRule>);

impl AllowList {
    /// Whether `id` matches any rule.
    pub fn allows(&self, id: &str) -> bool {
        self.0.iter().any(|r| r.allows(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_follow_the_standard() {
        assert!("spiffe://cluster.local/ns/shop/sa/checkout".parse::<SpiffeId>().is_ok());
        for bad in [
            "http://x/ns/a",
            "spiffe://",
            "spiffe://td",
            "spiffe://TD/ns/a",
            "spiffe://td/ns//a",
            "spiffe://td/ns/../a",
            "spiffe://td/ns/a?x=1",
            "spiffe://td:443/ns/a",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn identities_are_spiffe_ids_or_dns_names() {
        assert!(matches!("spiffe://td/ns/a/sa/b".parse(), Ok(Identity::Spiffe(_))));
        assert!(matches!("backend.shop.svc".parse(), Ok(Identity::Dns(_))));
        assert!("10.0.0.1".parse::<Identity>().is_err());
        assert!("spiffe://td".parse::<Identity>().is_err());
    }

    #[test]
    fn allow_rules_match_exact_ids_and_whole_namespaces() {
        let list =
            AllowList(vec!["spiffe://td/ns/shop/*".parse().unwrap(), "spiffe://td/ns/ops/sa/admin".parse().unwrap()]);
        assert!(list.allows("spiffe://td/ns/shop/sa/checkout"));
        assert!(list.allows("spiffe://td/ns/ops/sa/admin"));
        assert!(!list.allows("spiffe://td/ns/ops/sa/other"));
        assert!(!list.allows("spiffe://td/ns/shopping/sa/x"));
        assert!(!list.allows("spiffe://other/ns/shop/sa/checkout"));
        assert!(!list.allows("spiffe://td/ns/shop/"));
        assert!("spiffe://td/*".parse::<AllowRule>().is_err());
        assert!("spiffe://td/ns/a/sa/*".parse::<AllowRule>().is_err());
        assert!("*".parse::<AllowRule>().is_err());
    }

    /// `spiffe://td/ns/shop/*` is "every service account of namespace shop" (README, `--allow`): it matches
    /// `…/ns/shop/sa/SA` and nothing deeper or differently shaped (review of issue 15).
    #[test]
    fn a_namespace_wildcard_matches_only_service_accounts_of_that_namespace() {
        let list = AllowList(vec!["spiffe://td/ns/shop/*".parse().unwrap()]);
        assert!(list.allows("spiffe://td/ns/shop/sa/checkout"));
        for not in [
            "spiffe://td/ns/shop/sa/x/extra",
            "spiffe://td/ns/shop/anything",
            "spiffe://td/ns/shop/sa/x/ns/ops/sa/admin",
            "spiffe://td/ns/shop/sa/",
            "spiffe://td/ns/shop/sa/..",
            "spiffe://td/ns/shop/x/checkout",
        ] {
            assert!(!list.allows(not), "{not} passed spiffe://td/ns/shop/*");
        }
    }
}
