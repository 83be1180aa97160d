//! The `--target` URI: `static:///host:port,host:port` or `kubernetes:///service[.namespace]:port`.

use std::fmt;

/// Where the backends are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fixed list of `host:port`.
    Static(Vec<String>),
    /// A Kubernetes Service's EndpointSlices.
    Kubernetes {
        /// Service name.
        service: String,
        /// Namespace; `None` means the pod's own.
        namespace: Option<String>,
        /// The Service port, by name or number.
        port: PortRef,
    },
}

/// A port given by name (resolved per EndpointSlice) or number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// The port named so in the EndpointSlice (e.g. `grpc`).
    Name(String),
    /// The port number.
    Number(u16),
}

/// A `--target` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target '{uri}': {why} (expected kubernetes:///svc.ns:port or static:///host:port,host:port)")]
pub struct TargetError {
    uri: String,
    why: &'static str,
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let err = |why| TargetError { uri: uri.to_owned(), why };
        if let Some(rest) = uri.strip_prefix("static:///") {
            let hosts: Vec<String> = rest.split(',').map(str::trim).map(str::to_owned).collect();
            for h in &hosts {
                let (host, port) = h.rsplit_once(':').ok_or_else(|| err("each host needs a :port"))?;
                if host.is_empty() || !is_port_number(port) {
                    return Err(err("each entry must be host:port with a port from 1 to 65535"));
                }
                check_static_host(host).map_err(err)?;
            }
            return Ok(Target::Static(hosts));
        }
        if let Some(rest) = uri.strip_prefix("kubernetes:///") {
            let (name, port) = rest.rsplit_once(':').ok_or_else(|| err("a port (name or number) is required"))?;
            let (service, namespace) = match name.split_once('.') {
                Some((s, ns)) => (s, Some(ns)),
                None => (name, None),
            };
            if !is_dns_label(service) || namespace.is_some_and(|ns| !is_dns_label(ns)) {
                return Err(err("service and namespace must be DNS labels"));
            }
            let port = match port.parse::<u16>() {
                Ok(0) => return Err(err("port 0 is not a port")),
                Ok(n) => PortRef::Number(n),
                Err(_) if is_port_name(port) => PortRef::Name(port.to_owned()),
                Err(_) => return Err(err("the port must be a number or a port name")),
            };
            return Ok(Target::Kubernetes {
                service: service.to_owned(),
                namespace: namespace.map(str::to_owned),
                port,
            });
        }
        Err(err("unknown scheme"))
    }
}

impl Target {
    /// Whether this names a Kubernetes Service without its namespace (meaning the pod's own).
    pub fn lacks_namespace(&self) -> bool {
        matches!(self, Target::Kubernetes { namespace: None, .. })
    }

    /// This target with `namespace` filled in where the URI left it out: `hello:grpc` in the pod's namespace
    /// `default` is `hello.default:grpc`, so both spellings are one target (issue 12). Others are unchanged.
    pub fn in_namespace(self, namespace: &str) -> Self {
        match self {
            Target::Kubernetes { service, namespace: None, port } => {
                Target::Kubernetes { service, namespace: Some(namespace.to_owned()), port }
            }
            other => other,
        }
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Name(n) => f.write_str(n),
            PortRef::Number(n) => write!(f, "{n}"),
        }
    }
}

impl fmt::Display for Target {
    /// The name used in messages and as the `target` label: `hello.default:grpc`, `hello:grpc` for the pod's own
    /// namespace (unknown here, and not always `default`), or the static list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Static(hosts) => write!(f, "static:///{}", hosts.join(",")),
            Target::Kubernetes { service, namespace: Some(ns), port } => write!(f, "{service}.{ns}:{port}"),
            Target::Kubernetes { service, namespace: None, port } => write!(f, "{service}:{port}"),
        }
    }
}

/// A port number as written in a URI (RFC 3986 §3.2.3: digits only), 1 to 65535.
fn is_port_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok_and(|p| p != 0)
}

/// A Kubernetes port name (IANA_SVC_NAME, `validation.IsValidPortName`): at most 15 lower-case alphanumerics or
/// '-', at least one letter, no "--", not starting or ending with '-'. Without the letter rule `65536` or `1-2`
/// would be taken for a name that no EndpointSlice port ever has.
fn is_port_name(s: &str) -> bool {
    is_dns_label(s) && s.len() <= 15 && s.bytes().any(|b| b.is_ascii_lowercase()) && !s.contains("--")
}

/// A static host that can resolve: `[IPv6]`, or an IPv4 address or DNS name (letters, digits, '-', '.', '_').
/// An unbracketed IPv6 address is refused: `::1:80` would split as host `::1`, port 80 or as host `::`, port 1.
fn check_static_host(host: &str) -> Result<(), &'static str> {
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<std::net::Ipv6Addr>) {
            Some(Ok(_)) => Ok(()),
            _ => Err("a bracketed host must be an IPv6 address, e.g. [::1]:8080"),
        };
    }
    if host.contains(':') {
        return Err("an IPv6 address goes in brackets, e.g. [::1]:8080");
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return Err("a host is an IPv4 address, a DNS name or a bracketed IPv6 address");
    }
    Ok(())
}

/// RFC 1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, at most 63.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        assert_eq!(
            "kubernetes:///hello.default:grpc".parse(),
            Ok(Target::Kubernetes {
                service: "hello".into(),
                namespace: Some("default".into()),
                port: PortRef::Name("grpc".into())
            })
        );
        assert_eq!(
            "kubernetes:///hello:8080".parse(),
            Ok(Target::Kubernetes { service: "hello".into(), namespace: None, port: PortRef::Number(8080) })
        );
        assert_eq!(
            "static:///127.0.0.1:8080,localhost:9090".parse(),
            Ok(Target::Static(vec!["127.0.0.1:8080".into(), "localhost:9090".into()]))
        );
        assert_eq!("static:///[::1]:8080".parse(), Ok(Target::Static(vec!["[::1]:8080".into()])));
    }

    #[test]
    fn rejects_what_cannot_work() {
        for bad in [
            "http://x:1",
            "static:///",
            "static:///host",
            "static:///host:0",
            "static:///host:99999",
            "kubernetes:///hello",
            "kubernetes:///Hello.default:grpc",
            "kubernetes:///hello.default:0",
            "kubernetes:///hello.default:a-very-long-port-name",
            "kubernetes:///hello.default:65536",
            "kubernetes:///hello.default:1-2",
            "kubernetes:///hello.default:g--rpc",
            "static:///::1",
            "static:///::1:8080",
            "static:///[::1:8080",
            "static:///[zz]:8080",
            "static:///a b:8080",
            "static:///host:+80",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_the_service_name_used_in_errors() {
        let t: Target = "kubernetes:///hello.default:grpc".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.to_string(), "hello.default:grpc");
        // Without a namespace the pod's own is meant, which may not be `default`: the name does not invent one.
        let t: Target = "kubernetes:///hello:grpc".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.to_string(), "hello:grpc");
        // Once the pod's namespace is known, the two spellings are one target.
        let explicit: Target = "kubernetes:///hello.default:grpc".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(t.lacks_namespace() && !explicit.lacks_namespace());
        assert_eq!(t.in_namespace("default"), explicit);
        assert_eq!(explicit.clone().in_namespace("shop"), explicit, "a namespace given stays");
    }
}
