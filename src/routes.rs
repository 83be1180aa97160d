//! Routes: which target serves a gRPC service (DESIGN §10).
//!
//! `--route SERVICE=TARGET` maps a fully qualified service name (`acme.orders.v1.OrderService`) or `*` (every
//! service without a route of its own) to a target URI (`kubernetes:///svc.ns:port`, `static:///host:port,…`).
//! Several routes may be given in one value, separated by whitespace or commas, as `HELLO_SIDECAR_ROUTE` holds
//! them; a comma inside a static target's host list stays with that target, since a `host:port` never has `=`.
//!
//! Per call, the service part of `:path` is looked up once in a hash map, borrowing from the path: no allocation.

use std::collections::{HashMap, hash_map::Entry};

use crate::discovery::Target;

/// The service a route matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceMatch {
    /// One fully qualified gRPC service name.
    Exact(String),
    /// `*`: every service without a route of its own.
    Any,
}

impl std::fmt::Display for ServiceMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceMatch::Exact(s) => f.write_str(s),
            ServiceMatch::Any => f.write_str("*"),
        }
    }
}

/// One `SERVICE=TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The service matched.
    pub service: ServiceMatch,
    /// Where its calls go.
    pub target: Target,
}

/// A route that does not parse, or a set of routes that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No `=` between service and target.
    #[error(
        "invalid route '{0}': expected SERVICE=TARGET, e.g. acme.orders.v1.OrderService=kubernetes:///orders.shop:grpc"
    )]
    NoEquals(String),
    /// The service is empty or not a full name.
    #[error(
        "invalid route '{0}': the service must be a gRPC service's full name (package.Service, or Service when its \
         proto has no package) or *"
    )]
    BadService(String),
    /// The target does not parse.
    #[error("invalid route '{route}': {error}")]
    BadTarget {
        /// The route as written.
        route: String,
        /// Why the target is wrong.
        error: crate::discovery::TargetError,
    },
    /// A service the sidecar answers itself (health, server reflection): a route for it would never be used.
    #[error(
        "invalid route '{0}': this service is answered by the sidecar itself (health, server reflection), never routed"
    )]
    AnsweredHere(String),
    /// The same service twice.
    #[error("service {0} is routed twice")]
    Duplicate(String),
    /// No route at all.
    #[error("no route: give --route SERVICE=TARGET (or --target URI for hello.v1.HelloService)")]
    Empty,
}

/// Parses one flag value: one or more routes separated by whitespace or commas.
pub fn parse_routes(value: &str) -> Result<Vec<Route>, RouteError> {
    let value = tight_equals(value);
    let mut raw: Vec<String> = Vec::new();
    for token in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()) {
        match raw.last_mut() {
            // `host:port` after a static target's comma belongs to that target.
            Some(last) if !token.contains('=') && last.contains("static:///") => {
                last.push(',');
                last.push_str(token);
            }
            _ => raw.push(token.to_owned()),
        }
    }
    raw.into_iter().map(|r| parse_route(&r)).collect()
}

/// `value` without the whitespace around each `=`: `a.B = static:///…` is one route, not three tokens (neither a
/// service name nor a target URI has `=` or whitespace of its own).
fn tight_equals(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, part) in value.split('=').enumerate() {
        if i > 0 {
            out.truncate(out.trim_end().len());
            out.push('=');
        }
        out.push_str(if i > 0 { part.trim_start() } else { part });
    }
    out
}

/// Services answered by the sidecar itself before any route is looked up (`proxy::route`): `grpc.health.v1`
/// health and gRPC server reflection in both versions.
pub const ANSWERED_HERE: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

fn parse_route(route: &str) -> Result<Route, RouteError> {
    let (service, target) = route.split_once('=').ok_or_else(|| RouteError::NoEquals(route.to_owned()))?;
    let service = match service.trim() {
        "*" => ServiceMatch::Any,
        s if ANSWERED_HERE.contains(&s) => return Err(RouteError::AnsweredHere(route.to_owned())),
        s if is_service_name(s) => ServiceMatch::Exact(s.to_owned()),
        _ => return Err(RouteError::BadService(route.to_owned())),
    };
    let target = target.trim().parse().map_err(|error| RouteError::BadTarget { route: route.to_owned(), error })?;
    Ok(Route { service, target })
}

/// A protobuf full name: dot-separated identifiers, `package.Service`, or one identifier for a service declared in
/// a `.proto` without a `package` (its `:path` is then `/Service/Method`).
fn is_service_name(s: &str) -> bool {
    let ident = |p: &str| {
        p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    s.split('.').all(ident)
}

/// Checks a whole set of routes: at least one, and no service routed twice.
pub fn check(routes: &[Route]) -> Result<(), RouteError> {
    if routes.is_empty() {
        return Err(RouteError::Empty);
    }
    let mut table = RouteTable::default();
    routes.iter().try_for_each(|r| table.insert(&r.service, ()))
}

/// Services mapped to values (targets, or their indices), looked up by `:path`.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: HashMap<Box<str>, T>,
    default: Option<T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self { exact: HashMap::new(), default: None }
    }
}

impl<T> RouteTable<T> {
    /// Adds a route; a service routed twice is an error.
    pub fn insert(&mut self, service: &ServiceMatch, value: T) -> Result<(), RouteError> {
        match service {
            ServiceMatch::Any if self.default.is_some() => Err(RouteError::Duplicate("*".into())),
            ServiceMatch::Any => {
                self.default = Some(value);
                Ok(())
            }
            ServiceMatch::Exact(s) => match self.exact.entry(s.as_str().into()) {
                Entry::Occupied(_) => Err(RouteError::Duplicate(s.clone())),
                Entry::Vacant(v) => {
                    v.insert(value);
                    Ok(())
                }
            },
        }
    }

    /// The value for a request path (`/package.Service/Method`): the service's own route, else `*`'s.
    pub fn get(&self, path: &str) -> Option<&T> {
        let service = path.strip_prefix('/').and_then(|p| p.split_once('/')).map(|(s, _)| s)?;
        self.get_service(service)
    }

    /// The value for a service name.
    pub fn get_service(&self, service: &str) -> Option<&T> {
        self.exact.get(service).or(self.default.as_ref())
    }

    /// Whether `service` has a route of its own (not through `*`).
    pub fn routes_by_name(&self, service: &str) -> bool {
        self.exact.contains_key(service)
    }

    /// The services routed by name (not `*`).
    pub fn services(&self) -> impl Iterator<Item = (&str, &T)> {
        self.exact.iter().map(|(k, v)| (&**k, v))
    }

    /// The `*` route's value.
    pub fn default_route(&self) -> Option<&T> {
        self.default.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_from_flags_and_env_lists() {
        let r = parse_routes("acme.orders.v1.OrderService=kubernetes:///orders.shop:grpc").expect("one route");
        assert_eq!(r[0].service, ServiceMatch::Exact("acme.orders.v1.OrderService".into()));
        let many = parse_routes(
            "hello.v1.HelloService=static:///10.0.0.1:8080,10.0.0.2:8080, echo.v1.Echo=static:///127.0.0.1:9000\n*=kubernetes:///rest:80",
        )
        .expect("three routes");
        assert_eq!(many.len(), 3);
        assert_eq!(many[0].target, Target::Static(vec!["10.0.0.1:8080".into(), "10.0.0.2:8080".into()]));
        assert_eq!(many[1].service, ServiceMatch::Exact("echo.v1.Echo".into()));
        assert_eq!(many[2].service, ServiceMatch::Any);
        // Whitespace around `=` does not split a route.
        let spaced = parse_routes(" a.B = static:///10.0.0.1:80 , * =kubernetes:///rest:80").expect("two routes");
        assert_eq!(spaced.len(), 2);
        assert_eq!(spaced[0].service, ServiceMatch::Exact("a.B".into()));
        assert_eq!(spaced[0].target, Target::Static(vec!["10.0.0.1:80".into()]));
        assert_eq!(spaced[1].service, ServiceMatch::Any);
        assert_eq!(tight_equals("=x"), "=x");
        assert_eq!(tight_equals("a =  b = c"), "a=b=c");
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        assert!(matches!(parse_routes("acme.X"), Err(RouteError::NoEquals(_))));
        assert!(matches!(parse_routes("=static:///a:1"), Err(RouteError::BadService(_))));
        for bad in ["Orders.=static:///a:1", ".Orders=static:///a:1", "a..B=static:///a:1", "1a.B=static:///a:1"] {
            assert!(matches!(parse_routes(bad), Err(RouteError::BadService(_))), "{bad}");
        }
        // A service of a proto without a package.
        let r = parse_routes("Orders=static:///a:1").expect("a one-part name");
        assert_eq!(r[0].service, ServiceMatch::Exact("Orders".into()));
        assert!(matches!(parse_routes("a.B=ftp:///x"), Err(RouteError::BadTarget { .. })));
        let health = parse_routes("grpc.health.v1.Health=static:///a:1");
        assert!(matches!(health, Err(RouteError::AnsweredHere(_))), "{health:?}");
        let msg = parse_routes("a.B=static:///nohost").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("invalid route 'a.B=static:///nohost': invalid target"), "{msg}");
    }

    #[test]
    fn lookup_takes_the_service_part_of_the_path() {
        let mut t = RouteTable::default();
        t.insert(&ServiceMatch::Exact("a.B".into()), 1).expect("first");
        assert_eq!(t.insert(&ServiceMatch::Exact("a.B".into()), 2), Err(RouteError::Duplicate("a.B".into())));
        assert_eq!(t.get("/a.B/Call"), Some(&1));
        assert_eq!(t.get("/a.C/Call"), None);
        t.insert(&ServiceMatch::Any, 9).expect("default");
        assert_eq!(t.get("/a.C/Call"), Some(&9));
        assert_eq!(t.get("/a.B/Call"), Some(&1));
        assert_eq!(t.get("no-slash"), None);
        assert_eq!(t.insert(&ServiceMatch::Any, 3), Err(RouteError::Duplicate("*".into())));
    }
}
