//! A scripted HTTP/2 backend written with raw frames (RFC 9113), for the peer behaviours no stock server does on
//! demand: refuse a stream, send GOAWAY with a last-stream-id below the stream it just received, or answer with a
//! trailer block spread over CONTINUATION frames.
//!
//! It speaks just enough HTTP/2 for the sidecar's client: SETTINGS (and their ACK), PING ACKs, and per request
//! HEADERS the [`Action`] chosen by the script. Request headers are not decoded (HPACK needs no state to skip).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the backend does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer `HelloResponse { message: "Hello, raw!" }` with OK trailers padded by this many bytes
    /// (`x-raw-padding`), and `grpc-status` as given.
    Answer { status: u8, trailer_padding: usize },
    /// RST_STREAM `REFUSED_STREAM` (RFC 9113 §8.7: not processed).
    Refuse,
    /// GOAWAY with last-stream-id 0, i.e. below this stream, then close the connection.
    GoAwayBelow,
    /// Never answer (the stream stays open).
    Stall,
    /// A Trailers-Only `INVALID_ARGUMENT` whose `grpc-message` holds a control character (0x01): an invalid
    /// field value (RFC 9110 §5.5), which RFC 9113 §8.2.1 makes a malformed response, a stream error.
    ControlCharMessage,
}

/// A running scripted backend. `script(connection index, request index)` picks each request's action.
pub struct RawBackend {
    pub addr: SocketAddr,
    /// Requests received (HEADERS frames opening a stream).
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl RawBackend {
    pub async fn start(script: fn(usize, usize) -> Action) -> Self {
        let addr = SocketAddr::from((super::fresh_ip(), super::BACKEND_PORT));
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let (requests, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (r, c) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let index = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, index, script, r.clone()));
            }
        });
        Self { addr, requests, connections }
    }
}

use super::rawh2::{
    ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS, frame, hpack,
};

const MAX_FRAME: usize = 16_384;

async fn serve(mut tcp: TcpStream, conn: usize, script: fn(usize, usize) -> Action, requests: Arc<AtomicUsize>) {
    let mut preface = [0u8; 24];
    if tcp.read_exact(&mut preface).await.is_err() {
        return;
    }
    let mut out = frame(SETTINGS, 0, 0, &[]);
    let mut on_conn = 0;
    loop {
        if !out.is_empty() && tcp.write_all(&std::mem::take(&mut out)).await.is_err() {
            return;
        }
        let mut head = [0u8; 9];
        if tcp.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            return;
        }
        match kind {
            SETTINGS if flags & ACK == 0 => out = frame(SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => out = frame(PING, ACK, 0, &payload),
            HEADERS => {
                requests.fetch_add(1, Ordering::SeqCst);
                let action = script(conn, on_conn);
                on_conn += 1;
                match action {
                    Action::Refuse => out = frame(RST_STREAM, 0, stream, &7u32.to_be_bytes()),
                    Action::GoAwayBelow => {
                        let mut p = 0u32.to_be_bytes().to_vec();
                        p.extend(0u32.to_be_bytes());
                        let _ = tcp.write_all(&frame(GOAWAY, 0, 0, &p)).await;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        return;
                    }
                    Action::Answer { status, trailer_padding } => out = answer(stream, status, trailer_padding),
                    Action::Stall => {}
                    Action::ControlCharMessage => {
                        let mut block = vec![0x88]; // :status 200
                        block.extend(hpack(&[
                            ("content-type", "application/grpc"),
                            ("grpc-status", "3"),
                            ("grpc-message", "bad\u{1}message"),
                        ]));
                        out = frame(HEADERS, END_HEADERS | END_STREAM, stream, &block);
                    }
                }
            }
            _ => {}
        }
    }
}

fn answer(stream: u32, status: u8, padding: usize) -> Vec<u8> {
    let mut headers = vec![0x88]; // :status 200, static table index 8
    headers.extend(hpack(&[("content-type", "application/grpc")]));
    let mut out = frame(HEADERS, END_HEADERS, stream, &headers);
    let message = {
        use prost::Message;
        hello_sidecar::pb::HelloResponse { message: "Hello, raw!".into(), code: 200 }.encode_to_vec()
    };
    out.extend(frame(DATA, 0, stream, &super::grpc_frame(&message)));
    let (status, padding) = (status.to_string(), "p".repeat(padding));
    let mut fields = vec![("grpc-status", status.as_str())];
    if !padding.is_empty() {
        fields.push(("x-raw-padding", padding.as_str()));
    }
    let trailers = hpack(&fields);
    let mut chunks = trailers.chunks(MAX_FRAME).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let (kind, mut flags) = if first { (HEADERS, END_STREAM) } else { (CONTINUATION, 0) };
        if last {
            flags |= END_HEADERS;
        }
        out.extend(frame(kind, flags, stream, chunk));
        first = false;
    }
    out
}
