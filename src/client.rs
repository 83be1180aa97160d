//! The `call` role: call HelloService once or many times over one reused connection and summarise the outcome.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

use crate::{
    cli::CallArgs,
    grpc::code_name,
    pb::{HelloRequest, hello_service_client::HelloServiceClient},
};

/// The outcome of one call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The status code.
    pub code: Code,
    /// The reply message, or the status message.
    pub message: String,
    /// Which pod answered (`x-hello-pod`), if any did.
    pub pod: Option<String>,
    /// How long the call took.
    pub latency: Duration,
}

/// The outcome of many calls.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Calls made.
    pub calls: u64,
    /// Calls by status name.
    pub by_status: BTreeMap<String, u64>,
    /// Calls by answering pod (`-` when no pod answered).
    pub by_pod: BTreeMap<String, u64>,
    /// Latency percentiles in milliseconds.
    pub latency_ms: BTreeMap<String, f64>,
    /// Calls per second over the run.
    pub rate: f64,
    /// Successful replies whose message was not the expected one (`--expect-message`).
    pub unexpected_replies: u64,
    /// The first call's outcome, as text (what a single call prints).
    #[serde(skip)]
    pub first: Option<String>,
}

impl Summary {
    /// Whether every call succeeded with the expected reply.
    pub fn all_ok(&self) -> bool {
        self.by_status.get("OK").copied().unwrap_or(0) == self.calls && self.unexpected_replies == 0
    }
}

/// One line for one outcome, as the `--interval` loop prints it.
pub fn outcome_line(o: &Outcome) -> String {
    format!(
        "{:<18} pod={:<24} latency={:.3}ms {}",
        code_name(o.code),
        o.pod.as_deref().unwrap_or("-"),
        o.latency.as_secs_f64() * 1000.0,
        o.message
    )
}

/// A bad `--addr`.
#[derive(Debug, thiserror::Error)]
#[error("--addr {0:?} is not a valid address (try 127.0.0.1:50051 or http://localhost:50051)")]
pub struct BadAddr(String);

/// A client over one lazily connected channel to `addr` (`host:port`, or a URI such as `http://host:port`).
/// Errors: [`BadAddr`] for a port that is missing (without a scheme), 0, or past 65535, or an unparsable URI.
pub fn connect(addr: &str) -> Result<HelloServiceClient<Channel>, BadAddr> {
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    // A port no server can listen on (0, or past 65535, which `Uri` accepts) is a bad address, not UNAVAILABLE.
    let parsed = uri.parse::<http::Uri>().ok();
    let port = parsed.as_ref().and_then(|u| u.authority()?.as_str().rsplit_once(':')).map(|(_, p)| p);
    if port.is_some_and(|p| !p.contains(']') && p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(BadAddr(addr.to_owned()));
    }
    // `host` alone is a forgotten port, not port 80: dialling 80 failed as UNAVAILABLE, naming no flag.
    if !addr.contains("://") && parsed.as_ref().is_some_and(|u| u.port_u16().is_none()) {
        return Err(BadAddr(addr.to_owned()));
    }
    let endpoint = Channel::from_shared(uri).map_err(|_| BadAddr(addr.to_owned()))?;
    Ok(HelloServiceClient::new(endpoint.connect_lazy()))
}

/// Makes one call.
pub async fn call_once(client: &mut HelloServiceClient<Channel>, name: &str, timeout: Option<Duration>) -> Outcome {
    let mut req = tonic::Request::new(HelloRequest { name: name.to_owned() });
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    let start = Instant::now();
    let res = client.say_hello(req).await;
    let latency = start.elapsed();
    let pod_of =
        |md: &tonic::metadata::MetadataMap| md.get("x-hello-pod").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match res {
        Ok(r) => Outcome { code: Code::Ok, pod: pod_of(r.metadata()), message: r.into_inner().message, latency },
        // tonic enforces the request's own timeout and reports it as `CANCELLED: Timeout expired`; gRPC clients
        // report a deadline of their own as DEADLINE_EXCEEDED (gRPC status codes doc), and so does `call`.
        Err(s) if s.code() == Code::Cancelled && timeout.is_some_and(|t| latency >= t) => Outcome {
            code: Code::DeadlineExceeded,
            pod: pod_of(s.metadata()),
            message: format!(
                "deadline exceeded after {latency:?} (the client's deadline of {:?})",
                timeout.unwrap_or_default()
            ),
            latency,
        },
        Err(s) => Outcome { code: s.code(), pod: pod_of(s.metadata()), message: s.message().to_owned(), latency },
    }
}

/// Runs `call` as the flags say.
pub async fn run(args: &CallArgs) -> Result<Summary, BadAddr> {
    let client = connect(&args.addr)?;
    let remaining = Arc::new(AtomicU64::new(args.count));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.min(args.count) {
        let mut client = client.clone();
        let remaining = remaining.clone();
        let (name, timeout) = (args.name.clone(), args.timeout);
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while remaining.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok() {
                outcomes.push(call_once(&mut client, &name, timeout).await);
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::with_capacity(args.count.min(1 << 20) as usize);
    for w in workers {
        outcomes.extend(w.await.unwrap_or_default());
    }
    let mut summary = summarize(&outcomes, start.elapsed());
    if let Some(expected) = &args.expect_message {
        summary.unexpected_replies =
            outcomes.iter().filter(|o| o.code == Code::Ok && &o.message != expected).count() as u64;
    }
    Ok(summary)
}

/// The `--interval` loop: one call at a time, each outcome handed to `each` as it comes, nothing kept.
/// Returns whether every call succeeded with the expected reply.
pub async fn run_loop(args: &CallArgs, interval: Duration, mut each: impl FnMut(&Outcome)) -> Result<bool, BadAddr> {
    let mut client = connect(&args.addr)?;
    let mut all_ok = true;
    for i in 0..args.count {
        let o = call_once(&mut client, &args.name, args.timeout).await;
        all_ok &= o.code == Code::Ok && args.expect_message.as_ref().is_none_or(|m| *m == o.message);
        each(&o);
        if i + 1 < args.count {
            tokio::time::sleep(interval).await;
        }
    }
    Ok(all_ok)
}

/// Counts outcomes by status and pod, with latency percentiles.
pub fn summarize(outcomes: &[Outcome], elapsed: Duration) -> Summary {
    let mut by_status = BTreeMap::new();
    let mut by_pod = BTreeMap::new();
    for o in outcomes {
        *by_status.entry(code_name(o.code).to_owned()).or_insert(0) += 1;
        *by_pod.entry(o.pod.clone().unwrap_or_else(|| "-".into())).or_insert(0) += 1;
    }
    let mut lat: Vec<f64> = outcomes.iter().map(|o| o.latency.as_secs_f64() * 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    let mut latency_ms = BTreeMap::new();
    if !lat.is_empty() {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
            latency_ms.insert(name.to_owned(), (lat[i] * 1000.0).round() / 1000.0);
        }
    }
    let first = outcomes.first().map(|o| match o.code {
        Code::Ok => format!("{} (pod {})", o.message, o.pod.as_deref().unwrap_or("-")),
        code => format!("{}: {} (pod {})", code_name(code), o.message, o.pod.as_deref().unwrap_or("-")),
    });
    Summary {
        calls: outcomes.len() as u64,
        by_status,
        by_pod,
        latency_ms,
        rate: outcomes.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        unexpected_replies: 0,
        first,
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.calls == 1 {
            writeln!(f, "{}", self.first.as_deref().unwrap_or(""))?;
            if self.unexpected_replies > 0 {
                writeln!(f, "unexpected reply (see --expect-message)")?;
            }
            return Ok(());
        }
        writeln!(f, "calls: {}  ({:.0}/s)", self.calls, self.rate)?;
        let statuses: Vec<String> = self.by_status.iter().map(|(s, n)| format!("{s}={n}")).collect();
        writeln!(f, "status: {}", statuses.join(" "))?;
        writeln!(f, "by pod:")?;
        for (pod, n) in &self.by_pod {
            writeln!(f, "  {pod:<24} {n:>8}  {:5.1}%", *n as f64 * 100.0 / self.calls.max(1) as f64)?;
        }
        let lat: Vec<String> = self.latency_ms.iter().map(|(k, v)| format!("{k}={v:.3}ms")).collect();
        writeln!(f, "latency: {}", lat.join(" "))?;
        if self.unexpected_replies > 0 {
            writeln!(f, "unexpected replies: {}", self.unexpected_replies)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_clients_own_deadline_is_deadline_exceeded() {
        // A peer that accepts TCP and never speaks (a frozen pod): only the client's deadline ends the call.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.push(s);
            }
        });
        let mut client = connect(&addr.to_string()).expect("client");
        let o = call_once(&mut client, "x", Some(Duration::from_millis(200))).await;
        assert_eq!(o.code, Code::DeadlineExceeded, "{o:?}");
        assert!(o.message.contains("deadline"), "{}", o.message);
        assert!(o.latency >= Duration::from_millis(200));
    }
}
