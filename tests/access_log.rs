//! `--access-log`: one JSON line per call, written by the real sidecar to a file.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use tonic::Code;

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_one_json_line_with_its_endpoint_status_and_bytes() {
    let ok = Backend::start("log-ok", &[]);
    let failing = Backend::start("log-failing", &["--error-rate", "1", "--error-code", "INTERNAL"]);
    let target = Sidecar::static_target(&[&ok, &failing]);
    let dir = std::env::temp_dir().join(format!("hello-access-log-{}-{}", std::process::id(), fresh_ip()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("access.jsonl");
    let path_arg = path.to_string_lossy().into_owned();
    let sidecar = Sidecar::start(&target, &["--access-log", &path_arg]);
    sidecar.wait_ready_endpoints(2);

    let outcomes = calls(&sidecar.client(), 40, 2, None).await;
    let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &outcomes {
        *by_code.entry(hello_sidecar::grpc::code_name(o.code)).or_default() += 1;
    }
    assert_eq!(by_code.values().sum::<usize>(), 40);
    assert!(
        by_code.get("OK").is_some_and(|n| *n > 0) && by_code.get("INTERNAL").is_some_and(|n| *n > 0),
        "{by_code:?}"
    );

    let logged = wait_for("40 access log lines", Duration::from_secs(20), || {
        let l = lines(&path);
        (l.len() >= 40).then_some(l)
    });
    assert_eq!(logged.len(), 40, "one line per call");
    let mut logged_codes: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &logged {
        let status = l["status"].as_str().expect("status");
        *logged_codes.entry(if status == "OK" { "OK" } else { "INTERNAL" }).or_default() += 1;
        assert_eq!(l["method"], "/hello.v1.HelloService/SayHello", "{l}");
        assert_eq!(l["target"], target.as_str(), "{l}");
        let endpoint = l["endpoint"].as_str().expect("endpoint");
        let want = if status == "OK" { ok.addr } else { failing.addr };
        assert_eq!(endpoint, want.to_string(), "the endpoint that answered: {l}");
        assert_eq!(l["retries"], 0, "{l}");
        // HelloRequest{name: "world"}: a 5-byte frame header and 7 bytes of message.
        assert_eq!(l["request_bytes"], 12, "{l}");
        let response = l["response_bytes"].as_u64().expect("response_bytes");
        if status == "OK" {
            assert!(response > 5, "a reply frame: {l}");
        } else {
            assert_eq!(response, 0, "Trailers-Only: no body: {l}");
        }
        let secs = l["duration_seconds"].as_f64().expect("duration_seconds");
        assert!(secs > 0.0 && secs < 20.0, "{l}");
        let ts = l["timestamp"].as_str().expect("timestamp");
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.starts_with("20"), "{ts}");
    }
    assert_eq!(logged_codes, by_code, "the log says what the callers saw");
    let m = sidecar.metrics();
    assert_eq!(metric(&m, "hello_sidecar_access_log_dropped_total"), 0, "{m}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_off_by_default_and_a_bad_path_is_refused() {
    let b = Backend::start("log-off", &[]);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&b]), &[]);
    sidecar.wait_ready_endpoints(1);
    let outcomes = calls(&sidecar.client(), 3, 1, None).await;
    assert!(outcomes.iter().all(|o| o.code == Code::Ok));
    assert!(!sidecar.metrics().contains("hello_sidecar_access_log_dropped_total"), "no access log, no counter");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hello-sidecar"))
        .args(["sidecar", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--target", "static:///127.0.0.1:1"])
        .args(["--access-log", "/nonexistent-dir/access.jsonl"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Like a listener that cannot bind: the sidecar does not start, and says which flag and file.
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--access-log /nonexistent-dir/access.jsonl: No such file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_calls_the_sidecar_refuses_itself_are_logged_and_counted() {
    let b = Backend::start("log-connect", &[]);
    let target = Sidecar::static_target(&[&b]);
    let dir = std::env::temp_dir().join(format!("hello-access-log-{}-{}", std::process::id(), fresh_ip()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("access.jsonl");
    let path_arg = path.to_string_lossy().into_owned();
    let sidecar = Sidecar::start(&target, &["--access-log", &path_arg]);
    sidecar.wait_ready_endpoints(1);

    let json = [("content-type", "application/json")];
    let say_hello = "/hello.v1.HelloService/SayHello";
    // Answered by the backend: logged as any call.
    let ok = raw_request(sidecar.addr, false, say_hello, &json, br#"{"name":"Ada"}"#.to_vec()).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    // Answered by the sidecar before any endpoint: malformed JSON, a malformed connect-timeout-ms.
    let bad_json = raw_request(sidecar.addr, false, say_hello, &json, br#"{"nam"#.to_vec()).await;
    assert_eq!(bad_json.status, 400, "{bad_json:?}");
    let timeout = [("content-type", "application/json"), ("connect-timeout-ms", "soon")];
    let bad_timeout = raw_request(sidecar.addr, false, say_hello, &timeout, b"{}".to_vec()).await;
    assert_eq!(bad_timeout.status, 400, "{bad_timeout:?}");

    let logged = wait_for("three access log lines", Duration::from_secs(10), || {
        let l = lines(&path);
        (l.len() >= 3).then_some(l)
    });
    let statuses: Vec<&str> = logged.iter().map(|l| l["status"].as_str().unwrap_or("?")).collect();
    assert_eq!(statuses, ["OK", "INVALID_ARGUMENT", "INVALID_ARGUMENT"], "one line per call: {logged:?}");
    for l in &logged[1..] {
        assert_eq!(l["method"], say_hello, "{l}");
        assert!(l["endpoint"].is_null(), "no endpoint was tried: {l}");
    }
    let m = sidecar.metrics();
    let invalid = format!("hello_sidecar_requests_total{{method=\"{say_hello}\",grpc_status=\"INVALID_ARGUMENT\"}}");
    assert_eq!(metric(&m, &invalid), 2, "{m}");
    let _ = std::fs::remove_dir_all(&dir);
}
