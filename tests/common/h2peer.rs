//! A scripted HTTP/2 backend and client built on the `h2` crate, for peer behaviour a stock server or client will
//! not show on demand: resets mid-response, unread streams, floods of tiny DATA frames, status details.
//!
//! The backend picks what to do from the request's `x-peer-scenario` header (see [`Scenario`]), so one backend
//! serves every case, on `ip:8080` like a pod. Server reflection requests are held unanswered, as by a backend
//! whose reflection hangs.

#![allow(dead_code)]

use std::{
    future::poll_fn,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::net::{TcpListener, TcpStream};

/// What the backend does with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// Reads the request, answers one `HelloResponse` and OK (and `x-seen-authority` in the headers).
    Hello,
    /// Streams 16 KiB chunks for as long as flow control lets it; counts them in [`H2Backend::streamed`].
    Endless,
    /// Never reads the request body and never answers.
    Stall,
    /// Waits a second, then reads the whole request and answers OK with the byte count in `x-received-bytes`.
    SlowCollect,
    /// Streams this many ten-byte messages, each in its own DATA frame, then OK.
    Tiny(u32),
    /// Sends headers and one message, then resets the stream with this HTTP/2 error code.
    ResetAfterMessage(u32),
    /// Reads the request, then resets the stream with this HTTP/2 error code before any response header.
    ResetBeforeHeaders(u32),
    /// Sends headers and one message, then ends the stream without trailers.
    NoStatus,
    /// Sends headers and one message, then trailers without `grpc-status`.
    BareTrailers,
    /// A Trailers-Only `INVALID_ARGUMENT` with this `grpc-status-details-bin` value.
    Details(String),
    /// A gRPC content-type and this HTTP status, no `grpc-status` and no body (what a proxy in front of a dead
    /// app, or a misrouted call, looks like).
    Http(u16),
    /// One `HelloResponse`, then trailers with these `grpc-status` values, in order (a repeated or malformed one).
    Statuses(Vec<String>),
    /// This HTTP status with an HTML error page that ends the stream (END_STREAM on DATA): no trailers at all.
    HttpPage(u16),
    /// One message of this many bytes (zeros), its gRPC frame cut into this many DATA frames, then OK.
    Sized(usize, usize),
    /// This HTTP status with the start of an HTML error page, then nothing (the stream held open until reset).
    HttpPageStall(u16),
}

impl Scenario {
    fn parse(v: &str) -> Self {
        let (name, arg) = v.split_once(':').unwrap_or((v, ""));
        match name {
            "endless" => Scenario::Endless,
            "stall" => Scenario::Stall,
            "slow-collect" => Scenario::SlowCollect,
            "tiny" => Scenario::Tiny(arg.parse().unwrap_or(1)),
            "reset" => Scenario::ResetAfterMessage(arg.parse().unwrap_or(0)),
            "reset-early" => Scenario::ResetBeforeHeaders(arg.parse().unwrap_or(0)),
            "no-status" => Scenario::NoStatus,
            "bare-trailers" => Scenario::BareTrailers,
            "details" => Scenario::Details(arg.to_owned()),
            "http" => Scenario::Http(arg.parse().unwrap_or(503)),
            "statuses" => Scenario::Statuses(arg.split(',').map(str::to_owned).collect()),
            "http-page" => Scenario::HttpPage(arg.parse().unwrap_or(503)),
            "http-page-stall" => Scenario::HttpPageStall(arg.parse().unwrap_or(503)),
            "sized" => {
                let (n, k) = arg.split_once(':').unwrap_or((arg, "1"));
                Scenario::Sized(n.parse().unwrap_or(0), k.parse().unwrap_or(1).max(1))
            }
            _ => Scenario::Hello,
        }
    }
}

/// The backend: accepts connections until dropped.
pub struct H2Backend {
    pub addr: SocketAddr,
    /// Bytes sent by [`Scenario::Endless`] streams so far.
    pub streamed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Backend {
    /// Starts the backend on a fresh loopback address, port 8080.
    pub async fn start() -> Self {
        let addr = SocketAddr::from((super::fresh_ip(), super::BACKEND_PORT));
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let streamed = Arc::new(AtomicU64::new(0));
        let counter = streamed.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_connection(tcp, counter.clone()));
            }
        });
        Self { addr, streamed, task }
    }
}

async fn serve_connection(tcp: TcpStream, streamed: Arc<AtomicU64>) {
    // A large connection window: a stalled stream here must not block the backend's other streams, so that any
    // stall a test sees is the sidecar's.
    let mut builder = h2::server::Builder::new();
    builder.initial_connection_window_size(1 << 30);
    let Ok(mut conn) = builder.handshake(tcp).await else { return };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(handle(req, respond, streamed.clone()));
    }
}

fn grpc_headers() -> Response<()> {
    let mut res = Response::new(());
    res.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    res
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

/// A `HelloResponse` in a gRPC frame.
pub fn hello_reply(message: &str) -> Bytes {
    use prost::Message;
    let msg = hello_sidecar::pb::HelloResponse { message: message.to_owned(), code: 200 }.encode_to_vec();
    Bytes::from(super::grpc_frame(&msg))
}

async fn read_all(body: &mut h2::RecvStream) -> u64 {
    let mut n = 0;
    while let Some(Ok(chunk)) = body.data().await {
        n += chunk.len() as u64;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    n
}

async fn handle(req: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>, streamed: Arc<AtomicU64>) {
    let scenario =
        req.headers().get("x-peer-scenario").and_then(|v| v.to_str().ok()).map_or(Scenario::Hello, Scenario::parse);
    let scenario = if req.uri().path().contains("ServerReflection") { Scenario::Stall } else { scenario };
    let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    let mut body = req.into_body();
    match scenario {
        Scenario::Hello => {
            read_all(&mut body).await;
            let mut res = grpc_headers();
            if let Ok(v) = HeaderValue::from_str(&authority) {
                res.headers_mut().insert("x-seen-authority", v);
            }
            let Ok(mut tx) = respond.send_response(res, false) else { return };
            let _ = tx.send_data(hello_reply("Hello, peer!"), false);
            let _ = tx.send_trailers(ok_trailers());
        }
        Scenario::Endless => {
            let Ok(mut tx) = respond.send_response(grpc_headers(), false) else { return };
            loop {
                tx.reserve_capacity(16 * 1024);
                match poll_fn(|cx| tx.poll_capacity(cx)).await {
                    Some(Ok(n)) if n > 0 => {
                        if tx.send_data(Bytes::from(vec![0u8; n]), false).is_err() {
                            return;
                        }
                        streamed.fetch_add(n as u64, Relaxed);
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
        Scenario::Stall => {
            // Hold the stream (and its unread body) until the peer resets it or the test ends.
            let _ = poll_fn(|cx| respond.poll_reset(cx)).await;
            drop(body);
        }
        Scenario::SlowCollect => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = read_all(&mut body).await;
            let mut res = grpc_headers();
            res.headers_mut().insert("x-received-bytes", HeaderValue::from(n));
            let Ok(mut tx) = respond.send_response(res, false) else { return };
            let _ = tx.send_data(hello_reply("collected"), false);
            let _ = tx.send_trailers(ok_trailers());
        }
        Scenario::HttpPageStall(status) => {
            read_all(&mut body).await;
            let mut res = Response::new(());
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            res.headers_mut().insert("content-type", HeaderValue::from_static("text/html"));
            let Ok(mut tx) = respond.send_response(res, false) else { return };
            let _ = tx.send_data(Bytes::from_static(b"<html><body>upstream connect error"), false);
            let _ = poll_fn(|cx| tx.poll_reset(cx)).await;
        }
        Scenario::Sized(n, k) => {
            read_all(&mut body).await;
            let Ok(mut tx) = respond.send_response(grpc_headers(), false) else { return };
            let frame = Bytes::from(super::grpc_frame(&vec![0u8; n]));
            let step = frame.len().div_ceil(k);
            for chunk in frame.chunks(step) {
                tx.reserve_capacity(chunk.len());
                while tx.capacity() < chunk.len() {
                    match poll_fn(|cx| tx.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        _ => return,
                    }
                }
                if tx.send_data(Bytes::copy_from_slice(chunk), false).is_err() {
                    return;
                }
            }
            let _ = tx.send_trailers(ok_trailers());
        }
        Scenario::Tiny(n) => {
            read_all(&mut body).await;
            let Ok(mut tx) = respond.send_response(grpc_headers(), false) else { return };
            let frame = Bytes::from(super::grpc_frame(b"0123456789"));
            for _ in 0..n {
                // h2 sends each send_data as its own DATA frame (it never merges them).
                if tx.send_data(frame.clone(), false).is_err() {
                    return;
                }
            }
            let _ = tx.send_trailers(ok_trailers());
        }
        Scenario::ResetAfterMessage(code) => {
            read_all(&mut body).await;
            let Ok(mut tx) = respond.send_response(grpc_headers(), false) else { return };
            let _ = tx.send_data(hello_reply("partial"), false);
            // Let the message go out before the reset.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_reset(h2::Reason::from(code));
        }
        Scenario::ResetBeforeHeaders(code) => {
            read_all(&mut body).await;
            respond.send_reset(h2::Reason::from(code));
        }
        Scenario::NoStatus => {
            read_all(&mut body).await;
            let Ok(mut tx) = respond.send_response(grpc_headers(), false) else { return };
            let _ = tx.send_data(hello_reply("no status follows"), true);
        }
        Scenario::BareTrailers => {
            read_all(&mut body).await;
            let Ok(mut tx) = respond.send_response(grpc_headers(), false) else { return };
            let _ = tx.send_data(hello_reply("trailers follow"), false);
            let mut t = http::HeaderMap::new();
            t.insert("x-trailer", HeaderValue::from_static("no status"));
            let _ = tx.send_trailers(t);
        }
        Scenario::Details(bin) => {
            read_all(&mut body).await;
            let mut res = grpc_headers();
            let h = res.headers_mut();
            h.insert("grpc-status", HeaderValue::from_static("3"));
            h.insert("grpc-message", HeaderValue::from_static("name is required"));
            if let Ok(v) = HeaderValue::from_str(&bin) {
                h.insert("grpc-status-details-bin", v);
            }
            let _ = respond.send_response(res, true);
        }
        Scenario::Http(status) => {
            read_all(&mut body).await;
            let mut res = grpc_headers();
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            let _ = respond.send_response(res, true);
        }
        Scenario::Statuses(values) => {
            read_all(&mut body).await;
            let Ok(mut tx) = respond.send_response(grpc_headers(), false) else { return };
            let _ = tx.send_data(hello_reply("statuses follow"), false);
            let mut t = HeaderMap::new();
            for v in values {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    t.append("grpc-status", v);
                }
            }
            let _ = tx.send_trailers(t);
        }
        Scenario::HttpPage(status) => {
            read_all(&mut body).await;
            let mut res = Response::new(());
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            res.headers_mut().insert("content-type", HeaderValue::from_static("text/html"));
            let Ok(mut tx) = respond.send_response(res, false) else { return };
            let _ = tx.send_data(Bytes::from_static(b"<html><body>upstream connect error</body></html>"), true);
        }
    }
}

/// An HTTP/2 client connection (the `h2` crate's, so the test controls reading and flow control).
pub async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    h2_client_task(addr).await.0
}

/// [`h2_client`] and its connection task, which the test can abort (closing the socket without any reset or
/// GOAWAY: the app went away).
pub async fn h2_client_task(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // h2's small-DATA-frame budget is half the connection window: give this client room to pause, as hyper's
    // client (5 MiB) and grpc-go have.
    let (tx, conn) = h2::client::Builder::new()
        .initial_connection_window_size(64 << 20)
        .handshake(tcp)
        .await
        .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (tx, task)
}

/// A gRPC request for `method` of HelloService with `scenario`.
pub fn grpc_request(addr: SocketAddr, method: &str, scenario: &str) -> Request<()> {
    Request::post(format!("http://{addr}/hello.v1.HelloService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-peer-scenario", scenario)
        .body(())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What a response brought: status, data bytes, gRPC status (trailers or Trailers-Only headers) and message.
#[derive(Debug)]
pub struct Reply {
    pub headers: HeaderMap,
    pub data: Vec<u8>,
    pub grpc_status: Option<i32>,
    pub grpc_message: String,
}

/// Reads a whole response.
pub async fn read_reply(res: h2::client::ResponseFuture) -> Result<Reply, h2::Error> {
    let res = res.await?;
    let headers = res.headers().clone();
    let mut body = res.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    let status_of = |h: &HeaderMap| h.get("grpc-status")?.to_str().ok()?.parse().ok();
    let grpc_status = status_of(&trailers).or_else(|| status_of(&headers));
    let raw = trailers.get("grpc-message").or_else(|| headers.get("grpc-message"));
    let grpc_message = raw.map(|v| hello_sidecar::grpc::decode_message(v.as_bytes())).unwrap_or_default();
    Ok(Reply { headers, data, grpc_status, grpc_message })
}

/// One unary call on `tx` with a `HelloRequest`, read to the end.
pub async fn unary(tx: &mut h2::client::SendRequest<Bytes>, addr: SocketAddr, scenario: &str) -> Reply {
    let ready = tx.clone().ready().await.unwrap_or_else(|e| panic!("connection not ready: {e}"));
    *tx = ready;
    let (res, mut body) =
        tx.send_request(grpc_request(addr, "SayHello", scenario), false).unwrap_or_else(|e| panic!("send: {e}"));
    body.send_data(Bytes::from(super::grpc_frame(&super::hello_request("peer"))), true)
        .unwrap_or_else(|e| panic!("send body: {e}"));
    read_reply(res).await.unwrap_or_else(|e| panic!("response: {e}"))
}

/// Resident memory of a process, in KiB (`VmRSS` in /proc).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time a process has used (user + system), from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// One HTTP/1.1 POST in origin-form (as browsers and curl send it), with the `Host` header given in `headers`.
pub async fn http1_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, HeaderMap, Bytes) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let tcp = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap_or_else(|e| panic!("h1: {e}"));
    tokio::spawn(conn);
    let mut req = Request::post(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap_or_else(|e| panic!("{e}"));
    let res = tx.send_request(req).await.unwrap_or_else(|e| panic!("request: {e}"));
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap_or_else(|e| panic!("body: {e}")).to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}
