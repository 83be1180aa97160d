use super::*;

struct Pod;

impl Peer for Pod {
    fn target(&self) -> &str {
        "kubernetes:///hello.default:grpc"
    }
    fn name(&self) -> String {
        "hello-0".into()
    }
}

#[test]
fn timestamps_are_rfc3339_utc() {
    assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    // 2024-02-29T23:59:59.5Z: a leap day.
    assert_eq!(rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_709_251_199_500)), "2024-02-29T23:59:59.500Z");
    assert_eq!(rfc3339_millis(UNIX_EPOCH + Duration::from_secs(1_796_013_706)), "2026-11-30T04:41:46.000Z");
}

#[test]
fn a_line_has_every_field() {
    let mut buf = Vec::new();
    let entry = Entry {
        at: UNIX_EPOCH,
        method: Arc::from("/hello.v1.HelloService/SayHello"),
        peer: Some(Arc::new(Pod)),
        code: Code::DeadlineExceeded,
        duration: Duration::from_millis(250),
        retries: 2,
        request_bytes: 12,
        response_bytes: 0,
    };
    format_line(&entry, &mut buf);
    assert_eq!(buf.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&buf).expect("JSON");
    assert_eq!(v["status"], "DEADLINE_EXCEEDED");
    assert_eq!(v["endpoint"], "hello-0");
    assert_eq!(v["target"], "kubernetes:///hello.default:grpc");
    assert_eq!(v["duration_seconds"], 0.25);
    assert_eq!(v["retries"], 2);
    assert_eq!(v["request_bytes"], 12);
    let none = Entry { peer: None, ..entry };
    buf.clear();
    format_line(&none, &mut buf);
    let v: serde_json::Value = serde_json::from_slice(&buf).expect("JSON");
    assert!(v["endpoint"].is_null() && v["target"].is_null());
}

#[test]
fn sinks_parse() {
    assert_eq!(parse_sink("stdout"), Ok(Sink::Stdout));
    assert_eq!(parse_sink("stderr"), Ok(Sink::Stderr));
    assert_eq!(parse_sink("/var/log/a.jsonl"), Ok(Sink::File("/var/log/a.jsonl".into())));
    assert!(parse_sink(" ").is_err());
}

#[test]
#[allow(clippy::disallowed_types, clippy::disallowed_methods)] // a real device and a real writer thread
fn lines_the_sink_refuses_are_counted_as_dropped() {
    // /dev/full refuses every write with ENOSPC: a full disk.
    let log = AccessLog::start(&Sink::File("/dev/full".into())).expect("/dev/full opens");
    for _ in 0..3 {
        log.record(entry("m"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.dropped() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(log.dropped(), 3, "every line the disk refused is counted");
}

#[test]
fn a_full_queue_drops_and_counts_and_never_waits() {
    let (tx, _rx) = mpsc::sync_channel(1);
    let log = AccessLog { tx, dropped: Arc::new(AtomicU64::new(0)) };
    for _ in 0..3 {
        log.record(entry("m"));
    }
    assert_eq!(log.dropped(), 2);
}

#[test]
fn a_fifo_without_a_reader_holds_up_neither_the_check_nor_start_up() {
    let dir = std::env::temp_dir().join(format!("hello-sidecar-access-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("access.pipe");
    let _ = std::fs::remove_file(&path);
    let made = std::process::Command::new("mkfifo").arg(&path).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());

    // Both would block in open(2) until a reader came, were the pipe opened on this thread.
    let sink = Sink::File(path.clone());
    let (started_tx, started_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = started_tx.send(check(&sink).and_then(|()| AccessLog::start(&sink)));
    });
    let log = started_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("start-up waited for the pipe's reader")
        .expect("a FIFO is a valid --access-log");
    log.record(entry("/hello.v1.HelloService/SayHello"));
    drop(log);

    // The reader comes later and gets the line queued before it came; EOF once the writer thread ends.
    let (read_tx, read_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = read_tx.send(std::fs::read_to_string(&path));
    });
    let text = read_rx.recv_timeout(Duration::from_secs(20)).expect("the writer wrote and closed").expect("read");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(r#""method":"/hello.v1.HelloService/SayHello""#), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn entry(method: &str) -> Entry {
    Entry {
        at: UNIX_EPOCH,
        method: Arc::from(method),
        peer: None,
        code: Code::Ok,
        duration: Duration::ZERO,
        retries: 0,
        request_bytes: 0,
        response_bytes: 0,
    }
}

#[test]
#[allow(clippy::disallowed_types, clippy::disallowed_methods)] // a real pipe, a real writer thread, real readers
fn a_line_counted_as_dropped_is_never_written_later() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("hello-sidecar-access-log-gone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("access.pipe");
    let _ = std::fs::remove_file(&path);
    let made = std::process::Command::new("mkfifo").arg(&path).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // A log shipper reads one line, then goes away (it restarts, say).
    let log = AccessLog::start(&Sink::File(path.clone())).expect("a FIFO is a valid sink");
    let (opened_tx, opened_rx) = mpsc::channel();
    let first = path.clone();
    std::thread::spawn(move || {
        let _ = opened_tx.send(std::fs::File::open(&first));
    });
    let first = opened_rx.recv_timeout(Duration::from_secs(20)).expect("the writer opens the pipe").expect("open");
    log.record(entry("first"));
    let mut line = String::new();
    std::io::BufReader::new(first).read_line(&mut line).expect("read");
    assert!(line.contains(r#""method":"first""#), "{line}");
    // Now it has closed its end: these lines meet a broken pipe and are counted as dropped.
    for _ in 0..3 {
        log.record(entry("while nobody reads"));
    }
    wait_for("the lines the closed pipe refused are counted", &|| log.dropped() >= 3);
    assert_eq!(log.dropped(), 3);

    // The shipper is back: it gets the lines made from now on, and none of the ones counted as lost.
    let (read_tx, read_rx) = mpsc::channel();
    let (second_tx, second_rx) = mpsc::channel();
    let again = path.clone();
    std::thread::spawn(move || {
        let reader = std::fs::File::open(&again);
        let _ = second_tx.send(());
        let _ = read_tx.send(reader.and_then(std::io::read_to_string));
    });
    second_rx.recv_timeout(Duration::from_secs(20)).expect("the second reader opens the pipe");
    log.record(entry("after"));
    drop(log);
    let text = read_rx.recv_timeout(Duration::from_secs(20)).expect("the writer wrote and closed").expect("read");
    assert!(text.contains(r#""method":"after""#), "{text}");
    assert!(!text.contains("while nobody reads"), "a line counted as dropped was written after all:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
