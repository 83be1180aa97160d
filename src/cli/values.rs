//! Flag values: what each parser accepts and the one-line error it gives for anything else (clap prints it after
//! the flag's name, and the process exits 2).

use std::time::Duration;

use crate::{discovery::Target, routes::Route, service_config::ServiceConfig};

/// Most proxy worker threads: far more than any node has cores, and few enough that the runtime's per-thread
/// allocations cannot abort the process (4294967296 asked for 32 GiB at once).
const MAX_THREADS: usize = 1024;

pub(super) fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_THREADS => Ok(n),
        _ => Err(format!("'{s}' is not a thread count from 0 (one per core) to {MAX_THREADS}")),
    }
}

/// A keepalive interval: `0` (off) or at least one second (PINGs faster than that only draw GOAWAYs; grpc-go's
/// client clamps its own to 10 s).
pub(super) fn parse_keepalive(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() || d >= Duration::from_secs(1) => Ok(d),
        _ => Err("must be 0 (off) or at least 1s".into()),
    }
}

/// A duration that must not be zero: a zero default deadline would end every call that carries none at once, and a
/// zero connect timeout would fail every connect (`--failfast-timeout 0`, not waiting for an endpoint, is a choice).
pub(super) fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// Parses `5s`, `100ms`, `250us`, `1m`, `1h`, `1500ns`, `1.5s` or a sum such as `1m30s`: Go's `time.ParseDuration`
/// syntax, which Kubernetes manifests and grpc-go users write.
///
/// Not `humantime` (issue 11.2 asked for it): humantime 2 rejects fractions (`1.5s`), which these flags and the
/// server fixture's `x-hello-delay` accept today, and it accepts forms Go does not (`2 days`, `1year`), so the
/// same value would mean different things in a manifest here and in a Go sidecar next to it. This parser is 30
/// lines, has no dependency, and its unit test pins the syntax.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("'{s}' is not a duration (try 5s, 250ms, 1m30s)");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| err())?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        let secs = value * scale;
        if !secs.is_finite() || secs > 1e9 {
            return Err(err());
        }
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

/// Parses a fraction between 0 and 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number between 0 and 1")),
    }
}

pub(super) fn parse_routes(s: &str) -> Result<Vec<Route>, String> {
    crate::routes::parse_routes(s).map_err(|e| e.to_string())
}

/// `--service-config`: inline JSON, or a file to read (its name need not be UTF-8, as any Linux path).
pub(super) fn parse_service_config(s: std::ffi::OsString) -> Result<ServiceConfig, String> {
    let json = match s.to_str() {
        Some(text) if text.trim_start().starts_with('{') => text.to_owned(),
        _ => {
            let path = std::path::Path::new(&s);
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
    };
    ServiceConfig::parse(&json).map_err(|e| e.to_string())
}

pub(super) fn parse_target(s: &str) -> Result<Target, String> {
    s.parse::<Target>().map_err(|e| e.to_string())
}

pub(super) fn parse_code(s: &str) -> Result<tonic::Code, String> {
    crate::grpc::parse_code(s).ok_or_else(|| format!("'{s}' is not a gRPC status code (name or 0-16)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_units_and_sums() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "banana", "5", "5x", "s", "-1s", "1e99h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ratios_stay_between_zero_and_one() {
        assert_eq!(parse_ratio("0.2"), Ok(0.2));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("NaN").is_err());
    }
}
