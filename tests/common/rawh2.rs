//! HTTP/2 written frame by frame over a plain TCP socket (RFC 9113 §4), for what no well-behaved library sends:
//! header blocks split into many CONTINUATION frames, and floods (rapid reset, CONTINUATION, PING, SETTINGS).

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block of literal fields without indexing, new names, no Huffman (RFC 7541 §6.2.2).
pub fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        hpack_integer(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_integer(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// An HPACK string length: an integer with a 7-bit prefix, Huffman bit clear (RFC 7541 §5.1).
fn hpack_integer(out: &mut Vec<u8>, mut v: usize) {
    if v < 127 {
        out.push(v as u8);
        return;
    }
    out.push(127);
    v -= 127;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Reads one frame: (type, flags, stream id, payload).
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((head[3], head[4], stream, payload))
}

/// How the raw backend sends its response headers.
#[derive(Debug, Clone, Copy)]
pub enum HeaderShape {
    /// One header block split over a HEADERS frame and this many CONTINUATION frames.
    Split(usize),
    /// HEADERS without END_HEADERS, then this many empty CONTINUATION frames (a CONTINUATION flood).
    Flood(usize),
    /// 4 MiB of DATA at once, whatever the stream window: the receiving HTTP/2 stack resets the stream itself
    /// (RST_STREAM FLOW_CONTROL_ERROR sent by the sidecar's h2, not by the backend; RFC 9113 §6.9.1).
    Overflow,
}

/// A raw backend on `ip:8080`: answers each call with OK and one `HelloResponse`, its response headers shaped by
/// `shape` for the first `shaped` calls (counted over all connections) and in one HEADERS frame after that.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
}

impl RawBackend {
    pub fn start(shape: HeaderShape, shaped: usize) -> Self {
        let addr = SocketAddr::from((super::fresh_ip(), super::BACKEND_PORT));
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = serve(tcp, shape, shaped, &counter);
                });
            }
        });
        Self { addr, calls }
    }
}

fn serve(mut s: TcpStream, shape: HeaderShape, shaped: usize, calls: &AtomicUsize) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    s.read_exact(&mut preface)?;
    s.write_all(&frame(SETTINGS, 0, 0, &[]))?;
    loop {
        let (kind, flags, stream, payload) = read_frame(&mut s)?;
        match kind {
            SETTINGS if flags & ACK == 0 => s.write_all(&frame(SETTINGS, ACK, 0, &[]))?,
            PING if flags & ACK == 0 => s.write_all(&frame(PING, ACK, 0, &payload))?,
            HEADERS | DATA if flags & END_STREAM != 0 => {
                let n = calls.fetch_add(1, Relaxed);
                respond(&mut s, stream, if n < shaped { Some(shape) } else { None })?;
            }
            _ => {}
        }
    }
}

fn respond(s: &mut TcpStream, stream: u32, shape: Option<HeaderShape>) -> std::io::Result<()> {
    // `:status: 200` is entry 8 of the static table (RFC 7541 Appendix A).
    let mut block = vec![0x88];
    let pad: Vec<(String, String)> = (0..20).map(|i| (format!("x-meta-{i}"), format!("value-{i}"))).collect();
    let mut fields: Vec<(&str, &str)> = vec![("content-type", "application/grpc")];
    fields.extend(pad.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    block.extend(hpack(&fields));
    let mut out = Vec::new();
    match shape {
        None => out.extend(frame(HEADERS, END_HEADERS, stream, &block)),
        Some(HeaderShape::Split(n)) => {
            let size = block.len().div_ceil(n + 1);
            let mut pieces = block.chunks(size).collect::<Vec<_>>().into_iter();
            out.extend(frame(HEADERS, 0, stream, pieces.next().unwrap_or_default()));
            let rest: Vec<_> = pieces.collect();
            for (i, p) in rest.iter().enumerate() {
                let flags = if i + 1 == rest.len() { END_HEADERS } else { 0 };
                out.extend(frame(CONTINUATION, flags, stream, p));
            }
        }
        Some(HeaderShape::Overflow) => {
            out.extend(frame(HEADERS, END_HEADERS, stream, &block));
            let chunk = vec![0u8; 16_384];
            for _ in 0..256 {
                out.extend(frame(DATA, 0, stream, &chunk));
            }
            return s.write_all(&out);
        }
        Some(HeaderShape::Flood(n)) => {
            out.extend(frame(HEADERS, 0, stream, &block));
            for _ in 0..n {
                out.extend(frame(CONTINUATION, 0, stream, &[]));
            }
            // The peer has closed the connection by now, or this block never ends: either way nothing follows.
            return s.write_all(&out);
        }
    }
    let reply = super::h2peer::hello_reply("Hello, raw!");
    out.extend(frame(DATA, 0, stream, &reply));
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &hpack(&[("grpc-status", "0")])));
    s.write_all(&out)
}

/// A raw client connection to `addr` that has sent the preface and an empty SETTINGS frame, and a reader thread
/// that answers nothing but records the GOAWAY error code the server sends, if any.
pub struct RawClient {
    pub tcp: TcpStream,
    goaway: Arc<AtomicUsize>,
}

/// No GOAWAY seen (yet).
pub const NO_GOAWAY: usize = usize::MAX;

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        tcp.set_nodelay(true).ok();
        tcp.write_all(PREFACE).expect("preface");
        tcp.write_all(&frame(SETTINGS, 0, 0, &[])).expect("settings");
        let goaway = Arc::new(AtomicUsize::new(NO_GOAWAY));
        let seen = goaway.clone();
        let mut reader = tcp.try_clone().expect("clone socket");
        std::thread::spawn(move || {
            while let Ok((kind, _, _, payload)) = read_frame(&mut reader) {
                if kind == GOAWAY && payload.len() >= 8 {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    seen.store(code as usize, Relaxed);
                }
            }
        });
        Self { tcp, goaway }
    }

    /// Writes `bytes`; false once the server has closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.tcp.set_write_timeout(Some(Duration::from_secs(5))).ok();
        self.tcp.write_all(bytes).is_ok()
    }

    /// The GOAWAY error code the server sent, waiting up to `wait` for it.
    pub fn goaway(&self, wait: Duration) -> Option<u32> {
        let start = std::time::Instant::now();
        loop {
            let code = self.goaway.load(Relaxed);
            if code != NO_GOAWAY {
                return Some(code as u32);
            }
            if start.elapsed() > wait {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The header block of a gRPC call to HelloService/SayHello on `authority`.
    pub fn call_headers(authority: &str) -> Vec<u8> {
        // :method POST (static 3), :scheme http (static 6), then literal :path and :authority.
        let mut block = vec![0x83, 0x86];
        block.extend(hpack(&[
            (":path", "/hello.v1.HelloService/SayHello"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]));
        block
    }
}
