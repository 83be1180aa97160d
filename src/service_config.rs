//! Per-method call policy from the standard gRPC service config, the JSON that grpc-go and grpc-java clients
//! already read (grpc/doc/service_config.md; gRFC A6 for `retryPolicy` and `hedgingPolicy`).
//!
//! ```json
//! {"methodConfig": [{
//!   "name": [{"service": "acme.orders.v1.OrderService", "method": "Get"}],
//!   "timeout": "1.5s", "waitForReady": true,
//!   "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
//!                   "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
//! }]}
//! ```
//!
//! A name with a service and a method applies to that method; with only a service, to every method of it; an
//! empty name (`{}`) is the default for every call. The most specific one wins. Unknown fields are ignored, as
//! gRPC clients ignore them; a malformed config is an error that names its JSON path.

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde::Deserialize;
use serde_json::Value;
use tonic::Code;

use crate::grpc::parse_code;

/// A service config that does not parse or breaks a rule of the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Where in the JSON, e.g. `methodConfig[0].retryPolicy.maxAttempts`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The policy of one method.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodPolicy {
    /// Deadline for calls that carry none (`timeout`).
    pub timeout: Option<Duration>,
    /// Wait for a usable endpoint up to the call's deadline instead of failing fast (`waitForReady`).
    pub wait_for_ready: Option<bool>,
    /// Retries on the statuses the method declares safe (`retryPolicy`).
    pub retry: Option<RetryPolicy>,
    /// Parallel attempts for a method marked safe to run more than once (`hedgingPolicy`).
    pub hedging: Option<HedgingPolicy>,
}

/// gRFC A6 `retryPolicy`: retry a call whose status is in `retryable`, with exponential backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts at most, the first included (2..=5; larger values are treated as 5, as gRPC clients do).
    pub max_attempts: u32,
    /// Backoff before the first retry; each next one is multiplied by `backoff_multiplier` up to `max_backoff`,
    /// and the actual wait is uniform in `[0, backoff]`.
    pub initial_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
    /// Growth of the backoff per retry (> 0).
    pub backoff_multiplier: f64,
    /// The statuses that make a call retryable.
    pub retryable: CodeSet,
}

/// gRFC A6 `hedgingPolicy`: send up to `max_attempts` copies, `delay` apart; the first answer whose status is not
/// in `non_fatal` (or the last one) wins, and the others are cancelled.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgingPolicy {
    /// Copies at most, the first included (2..=5).
    pub max_attempts: u32,
    /// Time between copies; zero sends them all at once.
    pub delay: Duration,
    /// Statuses after which the other copies keep going.
    pub non_fatal: CodeSet,
}

/// A set of gRPC status codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeSet(u32);

impl CodeSet {
    /// Whether `code` is in the set.
    pub fn contains(self, code: Code) -> bool {
        self.0 & (1 << (code as u32)) != 0
    }

    fn insert(&mut self, code: Code) {
        self.0 |= 1 << (code as u32);
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The parsed config: policies by service and method, looked up per call without allocating.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    services: HashMap<String, ServicePolicies>,
    default: Option<Arc<MethodPolicy>>,
}

#[derive(Debug, Clone, Default)]
struct ServicePolicies {
    all_methods: Option<Arc<MethodPolicy>>,
    methods: HashMap<String, Arc<MethodPolicy>>,
}

/// gRPC clients cap `maxAttempts` at 5 (gRFC A6).
const MAX_ATTEMPTS_CAP: u32 = 5;

impl ServiceConfig {
    /// Parses a service config from JSON text.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(json);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError {
            path: if e.path().to_string() == "." { "$".into() } else { e.path().to_string() },
            message: e.inner().to_string(),
        })?;
        // Anything after the config (a second one, a stray paste) would be ignored: refuse it.
        de.end().map_err(|e| err("$".into(), &e.to_string()))?;
        let mut config = ServiceConfig::default();
        for (i, mc) in raw.method_config.into_iter().enumerate() {
            let at = |field: &str| format!("methodConfig[{i}]{field}");
            let policy = Arc::new(mc.policy(&at)?);
            for (j, name) in mc.name.iter().enumerate() {
                let here = at(&format!(".name[{j}]"));
                let slot = match (name.service.as_str(), name.method.as_str()) {
                    ("", "") => &mut config.default,
                    ("", _) => return Err(err(here, "a method needs its service")),
                    (service, "") => &mut config.services.entry(service.to_owned()).or_default().all_methods,
                    (service, method) => {
                        let methods = &mut config.services.entry(service.to_owned()).or_default().methods;
                        if methods.insert(method.to_owned(), policy.clone()).is_some() {
                            return Err(err(here, "this name appears twice"));
                        }
                        continue;
                    }
                };
                if slot.replace(policy.clone()).is_some() {
                    return Err(err(here, "this name appears twice"));
                }
            }
        }
        Ok(config)
    }

    /// The policy for a call to `path` (`/package.Service/Method`): the method's own, else its service's, else
    /// the default.
    pub fn lookup(&self, path: &str) -> Option<&Arc<MethodPolicy>> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        match self.services.get(service) {
            Some(s) => s.methods.get(method).or(s.all_methods.as_ref()).or(self.default.as_ref()),
            None => self.default.as_ref(),
        }
    }

    /// The services the config names (`methodConfig[].name[].service`), in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// Whether no method has a policy.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.default.is_none()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    method_config: Vec<RawMethodConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMethodConfig {
    #[serde(default)]
    name: Vec<RawName>,
    timeout: Option<String>,
    wait_for_ready: Option<bool>,
    retry_policy: Option<RawRetry>,
    hedging_policy: Option<RawHedging>,
}

#[derive(Deserialize)]
struct RawName {
    #[serde(default)]
    service: String,
    #[serde(default)]
    method: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRetry {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
    backoff_multiplier: Option<f64>,
    #[serde(default)]
    retryable_status_codes: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHedging {
    max_attempts: Option<u32>,
    hedging_delay: Option<String>,
    #[serde(default)]
    non_fatal_status_codes: Vec<Value>,
}

fn err(path: String, message: &str) -> ConfigError {
    ConfigError { path, message: message.to_owned() }
}

impl RawMethodConfig {
    fn policy(&self, at: &dyn Fn(&str) -> String) -> Result<MethodPolicy, ConfigError> {
        if self.retry_policy.is_some() && self.hedging_policy.is_some() {
            return Err(err(at(""), "retryPolicy and hedgingPolicy exclude each other (gRFC A6)"));
        }
        let timeout = match &self.timeout {
            Some(t) => Some(positive(t, &at(".timeout"))?),
            None => None,
        };
        let retry = match &self.retry_policy {
            Some(r) => {
                let at = |f: &str| at(&format!(".retryPolicy.{f}"));
                let multiplier = r.backoff_multiplier.ok_or_else(|| err(at("backoffMultiplier"), "required"))?;
                if !(multiplier > 0.0 && multiplier.is_finite()) {
                    return Err(err(at("backoffMultiplier"), "must be greater than 0"));
                }
                let retryable = codes(&r.retryable_status_codes, &at("retryableStatusCodes"))?;
                if retryable.is_empty() {
                    return Err(err(at("retryableStatusCodes"), "must name at least one status code"));
                }
                Some(RetryPolicy {
                    max_attempts: attempts(r.max_attempts, &at("maxAttempts"))?,
                    initial_backoff: positive(
                        required(&r.initial_backoff, &at("initialBackoff"))?,
                        &at("initialBackoff"),
                    )?,
                    max_backoff: positive(required(&r.max_backoff, &at("maxBackoff"))?, &at("maxBackoff"))?,
                    backoff_multiplier: multiplier,
                    retryable,
                })
            }
            None => None,
        };
        let hedging = match &self.hedging_policy {
            Some(h) => {
                let at = |f: &str| at(&format!(".hedgingPolicy.{f}"));
                let delay = match &h.hedging_delay {
                    Some(d) => duration(d).ok_or_else(|| err(at("hedgingDelay"), DURATION_FORMAT))?,
                    None => Duration::ZERO,
                };
                Some(HedgingPolicy {
                    max_attempts: attempts(h.max_attempts, &at("maxAttempts"))?,
                    delay,
                    non_fatal: codes(&h.non_fatal_status_codes, &at("nonFatalStatusCodes"))?,
                })
            }
            None => None,
        };
        Ok(MethodPolicy { timeout, wait_for_ready: self.wait_for_ready, retry, hedging })
    }
}

const DURATION_FORMAT: &str =
    "must be a JSON duration such as \"1.5s\" (seconds, up to 9 decimals, then 's'; at most 315576000000s)";

/// The largest `google.protobuf.Duration` (about 10,000 years, `duration.proto`): larger values are not durations,
/// and would overflow a deadline (`Instant` + timeout) if accepted.
const MAX_DURATION_SECS: u64 = 315_576_000_000;

fn required<'a>(v: &'a Option<String>, path: &str) -> Result<&'a str, ConfigError> {
    v.as_deref().ok_or_else(|| err(path.to_owned(), "required"))
}

fn positive(v: &str, path: &str) -> Result<Duration, ConfigError> {
    match duration(v) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err(err(path.to_owned(), "must be greater than 0")),
        None => Err(err(path.to_owned(), DURATION_FORMAT)),
    }
}

fn attempts(v: Option<u32>, path: &str) -> Result<u32, ConfigError> {
    match v {
        None => Err(err(path.to_owned(), "required")),
        Some(n) if n < 2 => Err(err(path.to_owned(), "must be at least 2")),
        Some(n) => Ok(n.min(MAX_ATTEMPTS_CAP)),
    }
}

fn codes(values: &[Value], path: &str) -> Result<CodeSet, ConfigError> {
    let mut set = CodeSet::default();
    for (i, v) in values.iter().enumerate() {
        let code = match v {
            Value::String(s) => parse_code(s),
            Value::Number(n) => n.as_u64().and_then(|n| parse_code(&n.to_string())),
            _ => None,
        };
        let code = code.ok_or_else(|| err(format!("{path}[{i}]"), "not a gRPC status code (e.g. \"UNAVAILABLE\")"))?;
        // As grpc-java's parser: a call that ended OK is never run again.
        if code == Code::Ok {
            return Err(err(format!("{path}[{i}]"), "must not be OK"));
        }
        set.insert(code);
    }
    Ok(set)
}

/// The protobuf JSON form of `google.protobuf.Duration`: decimal seconds with at most 9 fractional digits and an
/// `s` suffix (`"1s"`, `"0.25s"`), at most 315,576,000,000 s (protobuf Duration's range); negative durations
/// are not meaningful here.
pub fn duration(s: &str) -> Option<Duration> {
    let digits = s.strip_suffix('s')?;
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) || (digits.contains('.') && frac.is_empty()) {
        return None;
    }
    let secs: u64 = whole.parse().ok().filter(|s| *s <= MAX_DURATION_SECS)?;
    let nanos: u32 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests;
