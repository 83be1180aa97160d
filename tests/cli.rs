//! Bad configuration: one line naming the flag, exit code 2.

mod common;

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(common::BIN).args(args).envs(env.iter().copied()).output().expect("run the binary");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_values_exit_2_with_one_line_naming_the_flag() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (&["sidecar", "--target", "static:///127.0.0.1:1", "--default-timeout", "banana"], &[], "--default-timeout"),
        (&["sidecar", "--target", "nope://x"], &[], "--target"),
        (&["sidecar", "--target", "static:///127.0.0.1:1", "--listen", "localhost"], &[], "--listen"),
        (&["sidecar"], &[], "--target"),
        (&["sidecar", "--target", "static:///127.0.0.1:1"], &[("HELLO_SIDECAR_RETRY_BUDGET", "3")], "--retry-budget"),
        (&["server", "--error-rate", "2"], &[], "--error-rate"),
        (&["server", "--error-code", "TEAPOT"], &[], "--error-code"),
        (&["call", "-n", "0"], &[], "--count"),
        (&["sidecar", "--target", "static:///127.0.0.1:1", "--log-format", "xml"], &[], "--log-format"),
        (&["sidecar", "--route", "acme.v1.Orders"], &[], "--route"),
        (&["sidecar", "--route", "=static:///127.0.0.1:1"], &[], "--route"),
        (&["sidecar", "--route", "acme.v1.Orders=ftp:///x"], &[], "--route"),
        (
            &["sidecar", "--route", "acme.v1.Orders=static:///a:1", "--route", "acme.v1.Orders=static:///b:1"],
            &[],
            "--route",
        ),
        (&["sidecar", "--target", "static:///a:1", "--route", "hello.v1.HelloService=static:///b:1"], &[], "--route"),
        (&["sidecar"], &[("HELLO_SIDECAR_ROUTE", "a.B=static:///a:1,a.B=static:///b:1")], "--route"),
        (
            &["sidecar", "--route", "a.B=static:///a:1", "--service-config", "{\"methodConfig\": [{\"timeout\": 5}]}"],
            &[],
            "--service-config",
        ),
        (
            &["sidecar", "--route", "a.B=static:///a:1", "--service-config", "/nonexistent/config.json"],
            &[],
            "--service-config",
        ),
        (
            &["sidecar", "--route", "a.B=static:///a:1", "--descriptor-set", "/nonexistent/echo.pb"],
            &[],
            "--descriptor-set",
        ),
        (
            &["sidecar", "--route", "a.B=static:///a:1"],
            &[("HELLO_SIDECAR_DESCRIPTOR_SET", "/nonexistent/a.pb")],
            "--descriptor-set",
        ),
    ];
    for (args, env, flag) in cases {
        let (code, stderr) = run(args, env);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} printed more than one line: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr:?} does not name {flag}");
    }
}

#[test]
fn help_and_version_exit_0() {
    for args in [&["--help"][..], &["--version"], &["sidecar", "--help"]] {
        let (code, _) = run(args, &[]);
        assert_eq!(code, Some(0), "{args:?}");
    }
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let (code, stderr) =
        run(&["sidecar", "--target", "static:///127.0.0.1:1", "--listen", &addr, "--admin", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--listen") && stderr.contains(&addr), "{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let ip = common::fresh_ip();
    let mut child = Command::new(common::BIN)
        .args(["--log-format", "json", "server", "--listen", &format!("{ip}:8080"), "--id", "json-pod"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("server");
    let stderr = child.stderr.take().expect("stderr");
    let line = BufReader::new(stderr).lines().map_while(Result::ok).find(|l| l.contains("listening"));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a 'server listening' log line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["pod"], "json-pod", "structured fields are flattened: {v}");
    assert_eq!(v["addr"], format!("{ip}:8080"), "{v}");
}

#[test]
fn a_descriptor_set_that_does_not_decode_is_a_bad_flag_value() {
    let dir = std::env::temp_dir().join(format!("hello-sidecar-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (garbage, empty) = (dir.join("garbage.pb"), dir.join("empty.pb"));
    std::fs::write(&garbage, b"syntax = \"proto3\";\nmessage X {}\n").expect("write");
    std::fs::write(&empty, b"").expect("write");
    for (file, why) in [(&garbage, "is not a valid FileDescriptorSet"), (&empty, "holds no files")] {
        let path = file.to_str().expect("utf-8 path");
        let (code, stderr) = run(&["sidecar", "--route", "a.B=static:///a:1", "--descriptor-set", path], &[]);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("--descriptor-set") && stderr.contains(path) && stderr.contains(why), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn service_config_errors_name_the_json_path() {
    let (code, stderr) = run(
        &["sidecar", "--route", "a.B=static:///a:1", "--service-config", "{\"methodConfig\": [{\"timeout\": \"x\"}]}"],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("methodConfig[0].timeout"), "{stderr}");
}

#[test]
fn a_descriptor_set_without_its_imports_says_how_to_build_one_with_them() {
    use prost::Message;
    use prost_reflect::prost_types::{FileDescriptorProto, FileDescriptorSet};
    // As `protoc -o set.pb orders.proto` writes it without --include_imports.
    let set = FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("acme/orders/v1/orders.proto".into()),
            package: Some("acme.orders.v1".into()),
            dependency: vec!["acme/common/v1/money.proto".into()],
            syntax: Some("proto3".into()),
            ..Default::default()
        }],
    };
    let path = std::env::temp_dir().join(format!("hello-sidecar-cli-noimports-{}.pb", std::process::id()));
    std::fs::write(&path, set.encode_to_vec()).expect("write");
    let shown = path.to_str().expect("utf-8 path");
    let (code, stderr) = run(&["sidecar", "--route", "a.B=static:///a:1", "--descriptor-set", shown], &[]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for words in ["--descriptor-set", "acme/common/v1/money.proto", "--include_imports"] {
        assert!(stderr.contains(words), "{words}: {stderr}");
    }
}

/// `--target URI` is HelloService's route: a `--route` for HelloService next to it names both flags, since the
/// user wrote HelloService only once.
#[test]
fn a_hello_service_route_next_to_target_names_both_flags() {
    let args = ["sidecar", "--target", "static:///127.0.0.1:1", "--route", "hello.v1.HelloService=static:///b:1"];
    let (code, stderr) = run(&args, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--route") && stderr.contains("--target"), "{stderr}");
}

/// Health and server reflection are answered by the sidecar itself (README), so a route for one of them would
/// never be used: refused at start rather than silently ignored.
#[test]
fn a_route_for_a_service_the_sidecar_answers_itself_is_refused() {
    for service in
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
    {
        let route = format!("{service}=static:///127.0.0.1:1");
        // Addresses this machine does not have: were the route accepted, the sidecar would stop at once anyway.
        let addrs = ["--listen", "192.0.2.1:50051", "--admin", "192.0.2.1:9901"];
        let args = [&["sidecar", "--target", "static:///127.0.0.1:2", "--route", &route][..], &addrs[..]].concat();
        let (code, stderr) = run(&args, &[]);
        assert_eq!(code, Some(2), "{service}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--route") && stderr.contains("answered by the sidecar"), "{stderr}");
    }
}

#[test]
fn an_access_log_file_that_cannot_be_opened_is_a_bad_flag_value() {
    for env in [&[][..], &[("HELLO_SIDECAR_ACCESS_LOG", "/nonexistent-dir/access.jsonl")]] {
        let mut args = vec!["sidecar", "--target", "static:///127.0.0.1:1", "--listen", "127.0.0.1:0"];
        args.extend(["--admin", "127.0.0.1:0"]);
        if env.is_empty() {
            args.extend(["--access-log", "/nonexistent-dir/access.jsonl"]);
        }
        let (code, stderr) = run(&args, env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{env:?}: one line: {stderr}");
        assert!(stderr.contains("--access-log /nonexistent-dir/access.jsonl: No such file"), "{stderr}");
    }
}

#[test]
fn call_into_a_closed_pipe_does_not_panic() {
    // `hello-sidecar call … | head -1`: the reader is gone before the summary is written.
    let b = common::Backend::start("pipe-pod", &[]);
    let mut child = Command::new(common::BIN)
        .args(["call", "--addr", &b.addr.to_string(), "-n", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("call");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("call ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn a_fifo_the_sidecar_may_not_write_is_a_bad_flag_value() {
    // As a file without write permission is: one line, exit 2, rather than a sidecar that runs and drops every
    // line of its access log. Root writes whatever the mode says, so as root the sidecar runs as nobody.
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("hello-sidecar-ro-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.join("access.pipe");
    let made = Command::new("mkfifo").args(["-m", "0444"]).arg(&path).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    let mut cmd = if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", common::BIN]);
        c
    } else {
        Command::new(common::BIN)
    };
    let mut child = cmd
        .args(["sidecar", "--target", "static:///127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--access-log")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the binary");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "the sidecar started with an unwritable pipe: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--access-log") && stderr.contains("Permission denied"), "{stderr}");
}

/// Values a sweep of every role's flags found taken, ending in a crash or in a process that runs and fails later:
/// each is a bad flag value, one line naming the flag, exit 2. The sidecar's addresses are ones this machine does
/// not have, so a sidecar that wrongly starts stops at once.
#[test]
fn malformed_values_found_by_a_flag_sweep_exit_2_naming_the_flag() {
    let away = ["--listen", "192.0.2.1:50051", "--admin", "192.0.2.1:9901"];
    let sidecar =
        |extra: &[&'static str]| [&["sidecar", "--target", "static:///127.0.0.1:1"][..], &away, extra].concat();
    let target = |uri: &'static str| [&["sidecar", "--target", uri][..], &away].concat();
    let two_configs = "{\"methodConfig\": []} {\"methodConfig\": [{\"timeout\": \"x\"}]}";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // A thread count the runtime cannot allocate: aborted with a backtrace.
        (sidecar(&["--threads", "4294967296"]), "--threads"),
        // JSON after the config (two configs in one file, a stray paste): silently ignored.
        (sidecar(&["--service-config", two_configs]), "--service-config"),
        // A negative number: clap took it for a flag and named none.
        (sidecar(&["--default-timeout", "-1"]), "--default-timeout"),
        (sidecar(&["--max-concurrent-calls", "-1"]), "--max-concurrent-calls"),
        // A zero deadline ends every call at once; a zero connect timeout fails every connect.
        (sidecar(&["--default-timeout", "0s"]), "--default-timeout"),
        (sidecar(&["--connect-timeout", "0"]), "--connect-timeout"),
        // A missing value (an empty variable in a pod spec) is still named as missing, not taken from the next flag.
        (vec!["sidecar", "--target", "--listen", "192.0.2.1:50051"], "--target"),
        // The app's port is the admin port: the admin bind failed (exit 1) once the listener was up.
        (
            vec![
                "sidecar",
                "--target",
                "static:///127.0.0.1:1",
                "--listen",
                "192.0.2.1:7000",
                "--admin",
                "192.0.2.1:7000",
            ],
            "--admin",
        ),
        (
            vec![
                "sidecar",
                "--target",
                "static:///127.0.0.1:1",
                "--listen",
                "0.0.0.0:7001",
                "--admin",
                "192.0.2.1:7001",
            ],
            "--admin",
        ),
        (vec!["server", "--listen", "192.0.2.1:7002", "--admin", "192.0.2.1:7002"], "--admin"),
        // A number out of range is no port name (IANA_SVC_NAME needs a letter): it matched no port, ever.
        (target("kubernetes:///svc.ns:65536"), "--target"),
        (target("kubernetes:///svc.ns:1-2"), "--target"),
        // Static hosts that can never resolve: the sidecar ran, retrying discovery for ever.
        (target("static:///::1"), "--target"),
        (target("static:///a b:80"), "--target"),
        (target("static:///a:+80"), "--target"),
        (target("static:///[::1:80"), "--target"),
        // A port no server listens on: `call` connected, failed and exited 1 with UNAVAILABLE.
        (vec!["call", "--addr", "127.0.0.1:65536"], "--addr"),
        (vec!["call", "--addr", "127.0.0.1:0"], "--addr"),
        // No port: `call` dialled port 80 and exited 1 with "UNAVAILABLE: tcp connect error", naming no flag.
        (vec!["call", "--addr", "127.0.0.1"], "--addr"),
        (vec!["call", "--addr", "[::1]"], "--addr"),
        (vec!["call", "--addr", "localhost"], "--addr"),
    ];
    // Every case is run, and every one that fails is named.
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|(args, flag)| {
            let (code, stderr) = run(args, &[]);
            let ok = code == Some(2) && stderr.trim_end().lines().count() == 1 && stderr.contains(flag);
            (!ok).then(|| format!("{args:?}: exit {code:?}, not one line naming {flag}: {stderr}"))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_path_that_is_not_utf8_is_a_path() {
    // Linux file names are bytes: a name that is not UTF-8 is read (or refused) as a file, naming the flag, not
    // refused as "invalid UTF-8 was detected" with no flag named.
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(b"/nonexistent-\xff/config.json");
    let out = Command::new(common::BIN)
        .args(["sidecar", "--target", "static:///127.0.0.1:1", "--listen", "192.0.2.1:50051", "--service-config"])
        .arg(name)
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--service-config") && stderr.contains("cannot read"), "{stderr}");

    let out = Command::new(common::BIN)
        .args(["sidecar", "--target", "static:///127.0.0.1:1", "--listen", "192.0.2.1:50051", "--access-log"])
        .arg(std::ffi::OsStr::from_bytes(b"/nonexistent-\xff/access.log"))
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--access-log"), "{stderr}");
}

#[test]
fn a_service_config_for_a_service_no_route_serves_is_a_warning() {
    // `hello.v1.HelloServce` (a typo) matched no call, and nothing said so: the policy silently did nothing.
    use std::io::{BufRead, BufReader};
    let config = r#"{"methodConfig":[{"name":[{"service":"hello.v1.HelloServce"}],"timeout":"1s"},
                                     {"name":[{"service":"hello.v1.HelloService"}],"timeout":"2s"}]}"#;
    let mut child = Command::new(common::BIN)
        .args(["sidecar", "--target", "static:///127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--service-config", config])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the binary");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) {
        let started = line.contains("sidecar listening");
        seen.push(line);
        if started {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let warned: Vec<_> = seen.iter().filter(|l| l.contains("WARN") && l.contains("--service-config")).collect();
    assert_eq!(warned.len(), 1, "one warning, for the typo only: {seen:#?}");
    assert!(warned[0].contains("hello.v1.HelloServce"), "{seen:#?}");
}
