//! The local test tier's harness: the real binary as backends and sidecar, each on its own loopback address.
//!
//! Every process gets a fresh 127.x.y.z address, so backends can all use the same port, as pods do, and test
//! binaries running in parallel never collide.

#![allow(dead_code)]

pub mod cluster;
pub mod echo;
pub mod h2peer;
pub mod kind;
pub mod raw_h2;
pub mod rawh2;
pub mod scenarios;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use hello_sidecar::{
    client::{self, Outcome},
    pb::hello_service_client::HelloServiceClient,
};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_hello-sidecar");
pub const BACKEND_PORT: u16 = 8080;

/// A loopback address no other process of this test run uses.
pub fn fresh_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(127, 1 + ((pid >> 8) % 250) as u8, (pid & 0xff) as u8, (n % 250 + 1) as u8)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        Self::spawn_env(name, args, &[])
    }

    pub fn spawn_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var("TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { child, name: name.to_owned() }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Kubernetes sends.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A backend pod: `server` on `ip:8080`, admin on `ip:9902`.
pub struct Backend {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub id: String,
}

impl Backend {
    pub fn start(id: &str, extra: &[&str]) -> Self {
        Self::start_at(fresh_ip(), id, extra)
    }

    pub fn start_at(ip: Ipv4Addr, id: &str, extra: &[&str]) -> Self {
        let addr = SocketAddr::from((ip, BACKEND_PORT));
        let admin = SocketAddr::from((ip, 9902));
        let (listen, admin_s) = (addr.to_string(), admin.to_string());
        let mut args = vec!["server", "--listen", &listen, "--admin", &admin_s, "--id", id];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(id, &args);
        wait_for(&format!("backend {id} at {addr}"), Duration::from_secs(20), || http_get(admin, "/ready"));
        Self { proc, addr, admin, id: id.to_owned() }
    }

    /// TCP connections the backend accepted (from its admin metrics).
    pub fn connections(&self) -> u64 {
        metric(&http_get(self.admin, "/metrics").unwrap_or_default(), "hello_server_connections_accepted_total")
    }
}

/// The sidecar on `ip:50051`, admin on `ip:9901`.
pub struct Sidecar {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Sidecar {
    pub fn start(target: &str, extra: &[&str]) -> Self {
        Self::start_env(target, extra, &[])
    }

    pub fn start_env(target: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let ip = fresh_ip();
        let addr = SocketAddr::from((ip, 50051));
        let admin = SocketAddr::from((ip, 9901));
        let (listen, admin_s) = (addr.to_string(), admin.to_string());
        let mut args = vec!["sidecar", "--listen", &listen, "--admin", &admin_s, "--target", target];
        args.extend_from_slice(extra);
        let proc = Proc::spawn_env("sidecar", &args, env);
        wait_for("sidecar admin", Duration::from_secs(20), || http_get(admin, "/live"));
        Self { proc, addr, admin }
    }

    pub fn static_target(backends: &[&Backend]) -> String {
        let list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
        format!("static:///{}", list.join(","))
    }

    /// Waits until `n` endpoints have an open connection.
    pub fn wait_ready_endpoints(&self, n: u64) {
        wait_for(&format!("{n} ready endpoints"), Duration::from_secs(20), || {
            let m = http_get(self.admin, "/metrics")?;
            (metric(&m, "hello_sidecar_endpoints{state=\"ready\"}") == n).then_some(())
        });
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap_or_default()
    }

    pub fn client(&self) -> HelloServiceClient<Channel> {
        client::connect(&self.addr.to_string()).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// One HTTP/1.1 GET; `Some(body)` on a 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// One HTTP/1.1 GET: the status code and body, whatever the status.
pub fn http_get_any(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// The value of one sample (`name` with its labels, exactly) in Prometheus text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The largest sample of metric `name` over all its labels (e.g. whether any target's discovery is failing), 0
/// when it has none.
pub fn metric_max(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{')?.split_once("} "))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .max()
        .unwrap_or(0)
}

/// The sum of every sample of metric `name` whose labels include `label` (e.g. `status="403"`), whatever its other
/// labels (such as `target`).
pub fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{')?.split_once("} "))
        .filter(|(labels, _)| labels.split(',').any(|l| l == label))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Makes `n` calls with `concurrency` in flight, returning every outcome.
pub async fn calls(
    client: &HelloServiceClient<Channel>,
    n: usize,
    concurrency: usize,
    timeout: Option<Duration>,
) -> Vec<Outcome> {
    let per = n.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut c = client.clone();
        let count = per.min(n.saturating_sub(w * per));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                out.push(client::call_once(&mut c, "world", timeout).await);
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    all
}

/// Counts successful calls by answering pod.
pub fn by_pod(outcomes: &[Outcome]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.code == tonic::Code::Ok) {
        *m.entry(o.pod.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    m
}

/// What a raw HTTP request got back.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl RawResponse {
    /// `grpc-status`, from trailers or (Trailers-Only) headers.
    pub fn grpc_status(&self) -> Option<i32> {
        let from = |h: &http::HeaderMap| h.get("grpc-status")?.to_str().ok()?.parse().ok();
        self.trailers.as_ref().and_then(from).or_else(|| from(&self.headers))
    }

    /// `grpc-message`, percent-decoded.
    pub fn grpc_message(&self) -> String {
        let from =
            |h: &http::HeaderMap| h.get("grpc-message").map(|v| hello_sidecar::grpc::decode_message(v.as_bytes()));
        self.trailers.as_ref().and_then(from).or_else(|| from(&self.headers)).unwrap_or_default()
    }
}

/// A gRPC frame around `payload` (no compression).
pub fn grpc_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend((payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The encoded `HelloRequest { name }`.
pub fn hello_request(name: &str) -> Vec<u8> {
    use prost::Message;
    hello_sidecar::pb::HelloRequest { name: name.to_owned() }.encode_to_vec()
}

/// Sends one request over a fresh HTTP/2 (or HTTP/1.1) connection, with any path, headers and body.
pub async fn raw_request(
    addr: SocketAddr,
    http2: bool,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> RawResponse {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut req = http::Request::post(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(bytes::Bytes::from(body))).unwrap_or_else(|e| panic!("{e}"));
    let res = if http2 {
        // As large as the sidecar's own limit, so the tests see what the sidecar sends (hyper's default is 16 KiB).
        let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(1 << 20)
            .handshake(TokioIo::new(tcp))
            .await
            .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
        tokio::spawn(conn);
        tx.send_request(req).await
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap_or_else(|e| panic!("h1 handshake: {e}"));
        tokio::spawn(conn);
        tx.send_request(req).await
    };
    let res = res.unwrap_or_else(|e| panic!("request: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let collected = res.into_body().collect().await.unwrap_or_else(|e| panic!("body: {e}"));
    let trailers = collected.trailers().cloned();
    RawResponse { status, headers, body: collected.to_bytes(), trailers }
}
