//! The opt-in access log (`--access-log stdout|stderr|PATH`): one JSON object per line for every call the
//! sidecar ends.
//!
//! Off the hot path: a call hands its [`Entry`] (plain fields and reference-counted handles, nothing formatted)
//! to a bounded channel with `try_send`, and one writer thread formats and writes the lines (a thread, not a
//! task: blocking writes to a slow disk or pipe never hold up the proxy's runtime). When the writer
//! falls behind and the channel is full, the line is dropped and counted
//! (`hello_sidecar_access_log_dropped_total`): a call never waits for the log. Lines the sink refuses (a full
//! disk, a closed pipe) are counted there too. A named pipe (FIFO) is opened by the writer thread, not at
//! start-up: opening one blocks until its reader (a log shipper) opens it too, which may be later than the sidecar.
//!
//! A line (fields always present; `target` and `endpoint` are null when no endpoint was tried):
//! `{"timestamp":"2026-11-30T04:41:49.123Z","method":"/hello.v1.HelloService/SayHello","target":"kubernetes:///hello.default:grpc","endpoint":"hello-7d9c-x2x4q","status":"OK","duration_seconds":0.0021,"retries":0,"request_bytes":12,"response_bytes":21}`
//! — `method` is the bounded metrics label of the path, `endpoint` the pod's name (else its address), `status`
//! the gRPC status name, the byte counts those of gRPC message frames (body, no headers).

use std::{
    io::{BufWriter, Write},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tonic::Code;

use crate::grpc::code_name;

/// Lines waiting for the writer at most; past this, lines are dropped and counted.
const QUEUE: usize = 4096;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// The process's standard output.
    Stdout,
    /// The process's standard error (shared with the logs).
    Stderr,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Stdout => f.write_str("stdout"),
            Sink::Stderr => f.write_str("stderr"),
            Sink::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Parses `--access-log`: `stdout`, `stderr`, or a file path.
pub fn parse_sink(s: &str) -> Result<Sink, String> {
    match s.trim() {
        "" => Err("empty: give stdout, stderr or a file path".into()),
        "stdout" => Ok(Sink::Stdout),
        "stderr" => Ok(Sink::Stderr),
        path => Ok(Sink::File(path.into())),
    }
}

/// Parses `--access-log` as given on the command line: a file name need not be UTF-8 (any Linux path).
pub fn parse_sink_os(s: std::ffi::OsString) -> Result<Sink, String> {
    match s.to_str() {
        Some(text) => parse_sink(text),
        None => Ok(Sink::File(s.into())),
    }
}

/// Whether `sink` can be opened for appending (a file is created if missing, as [`AccessLog::start`] would), so
/// that a path that cannot be is refused as a bad flag value before anything starts.
///
/// # Errors
/// The file cannot be opened: its directory is missing, it is a directory, permission is denied (for a FIFO,
/// which is not opened here: this process may not write it).
pub fn check(sink: &Sink) -> std::io::Result<()> {
    match sink {
        // Opening a FIFO would wait for its reader; whether this process may write it is asked instead.
        Sink::File(path) if is_fifo(path) => may_write(path),
        Sink::File(path) => open(path).map(drop),
        Sink::Stdout | Sink::Stderr => Ok(()),
    }
}

/// `path` opened for appending, created if missing.
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Whether `path` is a named pipe, whose `open` for writing blocks until a reader opens it (fifo(7)).
fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Whether this process (its effective user and groups) may write `path`, without opening it (faccessat(2) with
/// `AT_EACCESS`).
///
/// # Errors
/// `PermissionDenied` when it may not, or the file's lookup error.
fn may_write(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    accessat(CWD, path, Access::WRITE_OK, AtFlags::EACCESS).map_err(std::io::Error::from)
}

/// The sink of a FIFO that could not be opened: it refuses every line, so each is counted as dropped.
struct Refused;

impl Write for Refused {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

/// The endpoint a call went to, named when its line is written (not on the call's path).
pub trait Peer: Send + Sync {
    /// The target the endpoint belongs to, as the user wrote it.
    fn target(&self) -> &str;
    /// The endpoint's name: its pod's name when known, else its address.
    fn name(&self) -> String;
}

/// One finished call.
pub struct Entry {
    /// When it ended.
    pub at: SystemTime,
    /// The method's metrics label (bounded: see `Proxy::method_label`).
    pub method: Arc<str>,
    /// The endpoint of the last attempt, if one was tried.
    pub peer: Option<Arc<dyn Peer>>,
    /// The status the caller got.
    pub code: Code,
    /// From the call's arrival to its end.
    pub duration: Duration,
    /// Attempts after the first (transparent and policy retries).
    pub retries: u32,
    /// Request body bytes read from the caller.
    pub request_bytes: u64,
    /// Response body bytes passed to the caller.
    pub response_bytes: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    method: &'a str,
    target: Option<&'a str>,
    endpoint: Option<String>,
    status: &'static str,
    duration_seconds: f64,
    retries: u32,
    request_bytes: u64,
    response_bytes: u64,
}

/// The access log: a queue to its writer thread.
pub struct AccessLog {
    tx: mpsc::SyncSender<Entry>,
    /// Lines dropped: the queue was full, or the sink refused them (shared with the writer thread).
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `sink` and starts the writer thread.
    ///
    /// # Errors
    /// The file cannot be opened for appending, or the thread cannot start. A FIFO is opened by the writer
    /// thread: until its reader comes, lines queue, then are dropped and counted; if it cannot be opened, a warn
    /// line says why and every line is dropped and counted.
    pub fn start(sink: &Sink) -> std::io::Result<Arc<Self>> {
        let out: Option<Box<dyn Write + Send>> = match sink {
            Sink::Stdout => Some(Box::new(std::io::stdout())),
            Sink::Stderr => Some(Box::new(std::io::stderr())),
            Sink::File(path) if is_fifo(path) => None,
            Sink::File(path) => Some(Box::new(open(path)?)),
        };
        let fifo = match sink {
            Sink::File(path) => path.clone(),
            _ => PathBuf::new(),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let out = out.unwrap_or_else(|| match open(&fifo) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    tracing::warn!(path = %fifo.display(), error = %e, "cannot open the access log's pipe; its lines are dropped");
                    Box::new(Refused)
                }
            });
            write_lines(&rx, BufWriter::new(out), &lost);
        })?;
        Ok(Arc::new(Self { tx, dropped }))
    }

    /// Queues one line; drops and counts it when the writer is behind. Never waits.
    pub fn record(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Lines dropped because the queue was full or the sink refused them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// Writes lines until every sender is gone. Flushes whenever the queue is empty: bursts go out in large writes,
/// and a quiet log is never held back. A failing sink (a full disk, a closed pipe) loses lines, not calls: the
/// lines of a batch that did not make it out are counted in `lost` (all of the batch when its flush fails, since
/// a buffered writer cannot say how much of it went out; what it still holds is then thrown away, so a line
/// counted as lost is never written later).
fn write_lines(rx: &mpsc::Receiver<Entry>, mut out: BufWriter<Box<dyn Write + Send>>, lost: &AtomicU64) {
    let mut buf = Vec::with_capacity(512);
    while let Ok(mut entry) = rx.recv() {
        let (mut batch, mut failed) = (0, 0);
        loop {
            buf.clear();
            format_line(&entry, &mut buf);
            drop(entry);
            batch += 1;
            if out.write_all(&buf).is_err() {
                failed += 1;
            }
            match rx.try_recv() {
                Ok(next) => entry = next,
                Err(_) => break,
            }
        }
        if out.flush().is_err() {
            failed = batch;
            // What the writer still holds is counted as lost: it must not reach the sink later (a FIFO's next
            // reader), and a line the broken pipe tore must not either.
            let (inner, _lost) = out.into_parts();
            out = BufWriter::new(inner);
        }
        if failed > 0 {
            lost.fetch_add(failed, Relaxed);
        }
    }
}

/// Appends `entry` as one JSON line to `buf`.
fn format_line(entry: &Entry, buf: &mut Vec<u8>) {
    let line = Line {
        timestamp: rfc3339_millis(entry.at),
        method: &entry.method,
        target: entry.peer.as_deref().map(Peer::target),
        endpoint: entry.peer.as_deref().map(Peer::name),
        status: code_name(entry.code),
        duration_seconds: entry.duration.as_secs_f64(),
        retries: entry.retries,
        request_bytes: entry.request_bytes,
        response_bytes: entry.response_bytes,
    };
    if serde_json::to_writer(&mut *buf, &line).is_ok() {
        buf.push(b'\n');
    }
}

/// `t` in UTC as RFC 3339 with milliseconds, e.g. `2026-11-30T04:41:49.123Z` (days to civil date: Howard
/// Hinnant's `civil_from_days`, proleptic Gregorian calendar).
fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests;
