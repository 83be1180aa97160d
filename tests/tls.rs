//! Pod-to-pod mTLS through real sockets and the real binary: sidecar (outbound TLS) → `inbound` → app.
//! Certificates are made here with rcgen, as cert-manager would issue them: SPIFFE IDs in the URI SAN.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Backend, Proc, Sidecar, cluster::Load, fresh_ip, http_get, metric, wait_for};
use hello_sidecar::pb::HelloRequest;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, SerialNumber, date_time_ymd};
use tonic::Code;

const BACKEND_ID: &str = "spiffe://td.test/ns/shop/sa/backend";
const CHECKOUT_ID: &str = "spiffe://td.test/ns/shop/sa/checkout";

/// A test CA that issues workload certificates into a directory.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// Issues a certificate for `san` (a spiffe:// URI or a DNS name) and installs `NAME.crt`/`NAME.key` in
    /// `dir`. `expired` backdates it to 2020.
    fn issue(&self, dir: &Path, name: &str, san: &str, serial: u64, expired: bool) -> (PathBuf, PathBuf) {
        let (cert, key) = self.make(san, serial, expired);
        let (crt, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        install(&crt, &cert);
        install(&k, &key);
        (crt, k)
    }

    /// A certificate and its key, as PEM.
    fn make(&self, san: &str, serial: u64, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![if san.starts_with("spiffe://") {
            SanType::URI(san.try_into().unwrap())
        } else {
            SanType::DnsName(san.try_into().unwrap())
        }];
        params.serial_number = Some(SerialNumber::from(serial));
        if expired {
            params.not_before = date_time_ymd(2019, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

/// Replaces `path` by write-then-rename, as Kubernetes swaps a secret volume.
fn install(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hello-sidecar-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `inbound` proxy on `ip:8443` (admin `ip:9903`) in front of `app`.
struct Inbound {
    _proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Inbound {
    fn start(app: SocketAddr, cert: &Path, key: &Path, ca: &Path, allow: &[&str]) -> Self {
        let ip = fresh_ip();
        let (addr, admin) = (SocketAddr::from((ip, 8443)), SocketAddr::from((ip, 9903)));
        let (l, a, f) = (addr.to_string(), admin.to_string(), app.to_string());
        let mut args = vec!["inbound", "--listen", &l, "--admin", &a, "--forward", &f];
        args.extend(["--tls-cert", s(cert), "--tls-key", s(key), "--tls-ca", s(ca)]);
        for rule in allow {
            args.extend(["--allow", rule]);
        }
        let proc = Proc::spawn("inbound", &args);
        wait_for("inbound admin", Duration::from_secs(20), || http_get(admin, "/ready"));
        Self { _proc: proc, addr, admin }
    }

    fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap_or_default()
    }
}

fn tls_flags<'a>(cert: &'a Path, key: &'a Path, ca: &'a Path, identity: &'a str) -> Vec<&'a str> {
    vec!["--tls-cert", s(cert), "--tls-key", s(key), "--tls-ca", s(ca), "--tls-server-identity", identity]
}

/// A backend app behind an inbound proxy whose certificate is `BACKEND_ID`, letting the `shop` namespace in.
fn backend_behind_inbound(dir: &Path, ca: &Ca) -> (Backend, Inbound) {
    let app = Backend::start("app-0", &[]);
    let (crt, key) = ca.issue(dir, "backend", BACKEND_ID, 1, false);
    let ca_file = ca.write(dir, "ca");
    let inbound = Inbound::start(app.addr, &crt, &key, &ca_file, &["spiffe://td.test/ns/shop/*"]);
    (app, inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_end_to_end_gives_the_app_the_verified_caller() {
    let dir = temp_dir("e2e");
    let ca = Ca::new("test CA");
    let (_app, inbound) = backend_behind_inbound(&dir, &ca);
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 10, false);
    let ca_file = ca.write(&dir, "ca");
    let target = format!("static:///{}", inbound.addr);
    let sidecar = Sidecar::start(&target, &tls_flags(&crt, &key, &ca_file, BACKEND_ID));
    sidecar.wait_ready_endpoints(1);

    let mut client = sidecar.client();
    for spoof in [None, Some("spiffe://td.test/ns/shop/sa/admin")] {
        let mut req = tonic::Request::new(HelloRequest { name: "mtls".into() });
        if let Some(v) = spoof {
            // A caller claiming an identity by header gets its header replaced by the verified one.
            req.metadata_mut().insert("x-hello-sidecar-client-id", v.parse().unwrap());
        }
        let res = client.say_hello(req).await.expect("call over mTLS");
        let seen = res.metadata().get("x-hello-client-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(seen.as_deref(), Some(CHECKOUT_ID), "spoof {spoof:?}");
        assert_eq!(res.into_inner().message, "Hello, mtls!");
    }
    let m = inbound.metrics();
    let series = format!("hello_inbound_requests_total{{client_id=\"{CHECKOUT_ID}\",outcome=\"forwarded\"}}");
    assert_eq!(metric(&m, &series), 2, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_off_the_allow_list_or_without_an_id_are_refused_with_a_status() {
    let dir = temp_dir("deny");
    let ca = Ca::new("test CA");
    let (_app, inbound) = backend_behind_inbound(&dir, &ca);
    let ca_file = ca.write(&dir, "ca");
    let target = format!("static:///{}", inbound.addr);
    let cases = [
        ("spiffe://td.test/ns/other/sa/intruder", Code::PermissionDenied, "not allowed"),
        ("intruder.example.com", Code::Unauthenticated, "no valid SPIFFE ID"),
        // Not a valid SPIFFE ID, so no identity, though it starts like one the namespace wildcard allows.
        ("spiffe://td.test/ns/shop/../other/sa/x", Code::Unauthenticated, "no valid SPIFFE ID"),
    ];
    for (i, (san, code, text)) in cases.into_iter().enumerate() {
        let (crt, key) = ca.issue(&dir, &format!("caller{i}"), san, 20 + i as u64, false);
        let sidecar = Sidecar::start(&target, &tls_flags(&crt, &key, &ca_file, BACKEND_ID));
        sidecar.wait_ready_endpoints(1);
        let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(5))).await;
        assert_eq!(o.code, code, "{san}: {o:?}");
        assert!(o.message.contains(text), "{san}: {o:?}");
        assert_eq!(o.pod, None, "{san}: the app must not have seen the call");
    }
}

/// A sidecar whose stderr is kept, to check the log line a TLS failure leaves.
fn sidecar_logging(target: &str, flags: &[&str], log: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let ip = fresh_ip();
    let (addr, admin) = (SocketAddr::from((ip, 50051)), SocketAddr::from((ip, 9901)));
    let child = Command::new(common::BIN)
        .args(["sidecar", "--listen", &addr.to_string(), "--admin", &admin.to_string(), "--target", target])
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    wait_for("sidecar admin", Duration::from_secs(20), || http_get(admin, "/live"));
    (Proc { child, name: "sidecar".into() }, addr, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backend_certificates_give_unavailable_with_the_tls_reason_and_back_off() {
    let dir = temp_dir("bad");
    let ca = Ca::new("test CA");
    let other_ca = Ca::new("someone else's CA");
    let app = Backend::start("app-0", &[]);
    let ca_file = ca.write(&dir, "ca");
    let other_ca_file = other_ca.write(&dir, "other-ca");
    let (good_crt, good_key) = ca.issue(&dir, "backend", BACKEND_ID, 1, false);
    let (old_crt, old_key) = ca.issue(&dir, "expired", BACKEND_ID, 2, true);
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 10, false);
    let allow = ["spiffe://td.test/ns/shop/*"];
    let cases = [
        ("wrong CA", &good_crt, &good_key, &other_ca_file, BACKEND_ID, "UnknownIssuer"),
        ("wrong identity", &good_crt, &good_key, &ca_file, "spiffe://td.test/ns/shop/sa/db", "identity mismatch"),
        ("wrong DNS name", &good_crt, &good_key, &ca_file, "db.shop.svc", "not valid for name"),
        ("expired", &old_crt, &old_key, &ca_file, BACKEND_ID, "xpired"),
    ];
    for (case, server_crt, server_key, client_ca, identity, reason) in cases {
        let inbound = Inbound::start(app.addr, server_crt, server_key, &ca_file, &allow);
        let log = dir.join(format!("{}.log", case.replace(' ', "-")));
        let target = format!("static:///{}", inbound.addr);
        let (mut proc, addr, _admin) = sidecar_logging(&target, &tls_flags(&crt, &key, client_ca, identity), &log);
        let mut client = hello_sidecar::client::connect(&addr.to_string()).unwrap();
        let started = Instant::now();
        let mut named = Vec::new();
        while started.elapsed() < Duration::from_secs(3) {
            let o = hello_sidecar::client::call_once(&mut client, "x", Some(Duration::from_secs(2))).await;
            assert_eq!(o.code, Code::Unavailable, "{case}: {o:?}");
            // The reason shows while the endpoint is in backoff (not in the instant it reconnects).
            named.push(o.message.contains("tls handshake") && o.message.contains(reason));
            if !named.last().unwrap() {
                assert!(o.message.contains("no ready endpoints"), "{case}: {o:?}");
            }
        }
        assert!(named.iter().any(|n| *n), "{case}: no call named the TLS reason");
        let failures = metric(&inbound.metrics(), "hello_inbound_tls_handshake_failures_total");
        // Backoff from 50 ms doubling: about 7 attempts in 3 s; a busy loop would make thousands.
        assert!((1..=20).contains(&failures), "{case}: {failures} handshakes in 3s");
        assert!(proc.is_running(), "{case}: the sidecar must not die");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.lines().any(|l| l.contains("connect failed") && l.contains(reason)), "{case}: {text}");
    }
}

#[test]
fn plaintext_callers_are_refused_at_once() {
    use std::io::{Read, Write};
    let dir = temp_dir("plain");
    let ca = Ca::new("test CA");
    let (_app, inbound) = backend_behind_inbound(&dir, &ca);
    let mut tcp = std::net::TcpStream::connect(inbound.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    // Closed (EOF) well before the 5 s read timeout; at most a TLS alert (record type 0x15) comes back.
    tcp.read_to_end(&mut got).expect("the connection is closed, not left hanging");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    wait_for("the failed handshake counted", Duration::from_secs(5), || {
        (metric(&inbound.metrics(), "hello_inbound_tls_handshake_failures_total") == 1).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_on_disk_under_load_fail_no_call() {
    let dir = temp_dir("rotate");
    let ca = Ca::new("test CA");
    let (_app, inbound) = backend_behind_inbound(&dir, &ca);
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 0x100, false);
    let ca_file = ca.write(&dir, "ca");
    let target = format!("static:///{}", inbound.addr);
    let sidecar = Sidecar::start(&target, &tls_flags(&crt, &key, &ca_file, BACKEND_ID));
    sidecar.wait_ready_endpoints(1);
    let serials = || http_get(inbound.admin, "/debug/endpoints").unwrap_or_default();
    // The sidecar counts the connection up when its side of the handshake is done; the inbound proxy a moment later.
    wait_for("the first client certificate in use", Duration::from_secs(10), || {
        serials().contains("\"serial\": \"0100\"").then_some(())
    });

    let load = Load::start(&sidecar.addr.to_string(), 8);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Both sides rotate: the inbound proxy's server certificate, and the sidecar's client certificate in two
    // steps, the certificate a few polls before its key: the half-written pair must keep the old one in use.
    ca.issue(&dir, "backend", BACKEND_ID, 0x300, false);
    let (new_cert, new_key) = ca.make(CHECKOUT_ID, 0x200, false);
    install(&crt, &new_cert);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!serials().contains("\"serial\": \"0200\""), "a certificate without its key must not be used");
    install(&key, &new_key);
    wait_for("the new client certificate in use", Duration::from_secs(20), || {
        serials().contains("\"serial\": \"0200\"").then_some(())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.stop().await;
    let failed = common::cluster::failures(&outcomes);
    assert!(outcomes.len() > 100, "{} calls", outcomes.len());
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
}

/// Make-before-break holds when the new certificate does not work: a sidecar certificate rotated to one the
/// backend refuses (another CA) keeps the old connection serving, warns, backs off and retries the new files, and
/// a good certificate after it is taken up (review of issue 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_the_backend_refuses_keeps_the_old_connection_serving() {
    let dir = temp_dir("rotate-bad");
    let ca = Ca::new("test CA");
    let other_ca = Ca::new("someone else's CA");
    let (_app, inbound) = backend_behind_inbound(&dir, &ca);
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 0x100, false);
    let ca_file = ca.write(&dir, "ca");
    let target = format!("static:///{}", inbound.addr);
    let log = dir.join("sidecar.log");
    let (mut proc, addr, _admin) = sidecar_logging(&target, &tls_flags(&crt, &key, &ca_file, BACKEND_ID), &log);
    let serials = || http_get(inbound.admin, "/debug/endpoints").unwrap_or_default();
    wait_for("the first client certificate in use", Duration::from_secs(10), || {
        serials().contains("\"serial\": \"0100\"").then_some(())
    });
    let load = Load::start(&addr.to_string(), 8);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A certificate from a CA the backend does not trust: key first, so the pair is never half-new for long.
    let (bad_cert, bad_key) = other_ca.make(CHECKOUT_ID, 0x200, false);
    install(&key, &bad_key);
    install(&crt, &bad_cert);
    wait_for("the new certificate tried and refused", Duration::from_secs(20), || {
        (metric(&inbound.metrics(), "hello_inbound_tls_handshake_failures_total") >= 2).then_some(())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = metric(&inbound.metrics(), "hello_inbound_tls_handshake_failures_total");
    assert!(failures <= 30, "{failures} refused handshakes: the endpoint is hammered, not backed off");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("WARN") && l.contains("previous connection keeps serving")),
        "no WARN line for the failed new connect: {text}"
    );
    // The reload names the new certificate's serial and expiry.
    assert!(
        text.lines()
            .any(|l| l.contains("certificates reloaded") && l.contains("serial=0200") && l.contains("not_after=")),
        "{text}"
    );

    // A good certificate again: taken up, and no call failed throughout.
    let (good_cert, good_key) = ca.make(CHECKOUT_ID, 0x300, false);
    install(&key, &good_key);
    install(&crt, &good_cert);
    wait_for("the good new client certificate in use", Duration::from_secs(20), || {
        serials().contains("\"serial\": \"0300\"").then_some(())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.stop().await;
    let failed = common::cluster::failures(&outcomes);
    assert!(outcomes.len() > 100, "{} calls", outcomes.len());
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(proc.is_running());
}

#[test]
fn bad_tls_flags_stop_with_one_line_naming_the_flag() {
    let dir = temp_dir("flags");
    let ca = Ca::new("test CA");
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 1, false);
    let ca_file = ca.write(&dir, "ca");
    let missing = dir.join("missing.crt");
    // A key of another certificate, and a CA file whose CERTIFICATE block is not DER X.509.
    let (_, other_key) = ca.issue(&dir, "other", CHECKOUT_ID, 2, false);
    let bad_ca = dir.join("bad-ca.pem");
    std::fs::write(&bad_ca, "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n").unwrap();
    let sidecar =
        ["sidecar", "--target", "static:///127.0.0.1:8443", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let inbound = ["inbound", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        ([&sidecar[..], &tls_flags(&missing, &key, &ca_file, BACKEND_ID)].concat(), "--tls-cert"),
        ([&sidecar[..], &tls_flags(&crt, &crt, &ca_file, BACKEND_ID)].concat(), "--tls-key"),
        ([&sidecar[..], &tls_flags(&crt, &key, &ca_file, "spiffe://TD/x")].concat(), "--tls-server-identity"),
        ([&sidecar[..], &["--tls-cert", s(&crt)]].concat(), "--tls-key"),
        (
            [&inbound[..], &["--tls-cert", s(&crt), "--tls-key", s(&key), "--tls-ca", s(&ca_file)]]
                .concat()
                .into_iter()
                .chain(["--allow", "spiffe://td/ns/a/*", "--handshake-timeout", "0s"])
                .collect(),
            "--handshake-timeout",
        ),
        ([&sidecar[..], &tls_flags(&crt, &other_key, &ca_file, BACKEND_ID)].concat(), "--tls-key"),
        ([&sidecar[..], &tls_flags(&crt, &key, &bad_ca, BACKEND_ID)].concat(), "not a valid certificate"),
        (
            [
                &inbound[..],
                &[
                    "--tls-cert",
                    s(&crt),
                    "--tls-key",
                    s(&other_key),
                    "--tls-ca",
                    s(&ca_file),
                    "--allow",
                    "spiffe://td/ns/a/*",
                ],
            ]
            .concat(),
            "--tls-key",
        ),
        (
            [
                &inbound[..],
                &["--tls-cert", s(&crt), "--tls-key", s(&key), "--tls-ca", s(&bad_ca), "--allow", "spiffe://td/ns/a/*"],
            ]
            .concat(),
            "--tls-ca",
        ),
        ([&inbound[..], &["--tls-cert", s(&crt), "--tls-key", s(&key), "--tls-ca", s(&ca_file)]].concat(), "--allow"),
        (
            [&inbound[..], &["--tls-cert", s(&crt), "--tls-key", s(&key), "--tls-ca", s(&ca_file)]]
                .concat()
                .into_iter()
                .chain(["--allow", "spiffe://td/*"])
                .collect(),
            "--allow",
        ),
        (
            // Forwarding to its own listener (an address this machine does not have, so no hang were it taken).
            [
                &["inbound", "--listen", "192.0.2.1:8443", "--admin", "192.0.2.1:9903", "--forward", "192.0.2.1:8443"]
                    [..],
            ]
            .concat()
            .into_iter()
            .chain(["--tls-cert", s(&crt), "--tls-key", s(&key), "--tls-ca", s(&ca_file)])
            .chain(["--allow", "spiffe://td/ns/a/*"])
            .collect(),
            "--forward",
        ),
    ];
    for (args, flag) in cases {
        let out = Command::new(common::BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} should name {flag}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_identity_is_checked_against_the_dns_san() {
    let dir = temp_dir("dns");
    let ca = Ca::new("test CA");
    let app = Backend::start("app-0", &[]);
    let ca_file = ca.write(&dir, "ca");
    let (server_crt, server_key) = ca.issue(&dir, "backend", "backend.shop.svc", 1, false);
    let inbound = Inbound::start(app.addr, &server_crt, &server_key, &ca_file, &["spiffe://td.test/ns/shop/*"]);
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 10, false);
    let target = format!("static:///{}", inbound.addr);
    let sidecar = Sidecar::start(&target, &tls_flags(&crt, &key, &ca_file, "backend.shop.svc"));
    sidecar.wait_ready_endpoints(1);
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "dns", Some(Duration::from_secs(5))).await;
    assert_eq!((o.code, o.message.as_str()), (Code::Ok, "Hello, dns!"), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_proxy_refuses_untrusted_and_expired_client_certificates_in_the_handshake() {
    let dir = temp_dir("client-certs");
    let ca = Ca::new("test CA");
    let stranger_ca = Ca::new("stranger CA");
    let (_app, inbound) = backend_behind_inbound(&dir, &ca);
    let ca_file = ca.write(&dir, "ca");
    let target = format!("static:///{}", inbound.addr);
    let cases = [
        ("untrusted", stranger_ca.issue(&dir, "stranger", CHECKOUT_ID, 30, false)),
        ("expired", ca.issue(&dir, "old", CHECKOUT_ID, 31, true)),
    ];
    for (case, (crt, key)) in cases {
        let before = metric(&inbound.metrics(), "hello_inbound_tls_handshake_failures_total");
        let sidecar = Sidecar::start(&target, &tls_flags(&crt, &key, &ca_file, BACKEND_ID));
        // TLS 1.3: the server judges the client certificate after the client's handshake is done, so the sidecar
        // sees the connection close (an alert or a broken pipe) right after it, and backs off. Every call is
        // UNAVAILABLE; the reason shows while the endpoint is in backoff (not in the instant it reconnects).
        let mut client = sidecar.client();
        let started = Instant::now();
        loop {
            let o = hello_sidecar::client::call_once(&mut client, "x", Some(Duration::from_secs(5))).await;
            assert_eq!(o.code, Code::Unavailable, "{case}: {o:?}");
            assert_eq!(o.pod, None, "{case}: the app must not have seen the call");
            if o.message.contains("after the TLS handshake (client certificate refused?)") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{case}: {o:?}");
        }
        let after = metric(&inbound.metrics(), "hello_inbound_tls_handshake_failures_total");
        assert!(after > before, "{case}: the inbound proxy counts the refused handshake");
        // No reconnect loop: the pool backs off (from 50 ms, doubling) as for a refused connect.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = metric(&inbound.metrics(), "hello_inbound_tls_handshake_failures_total");
        let secs = started.elapsed().as_secs() + 1;
        assert!(later - before <= 8 * secs, "{case}: {} handshakes in about {secs} s", later - before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_fixture_can_terminate_mtls_itself() {
    let dir = temp_dir("fixture");
    let ca = Ca::new("test CA");
    let ca_file = ca.write(&dir, "ca");
    let (server_crt, server_key) = ca.issue(&dir, "backend", BACKEND_ID, 1, false);
    let tls = ["--tls-cert", s(&server_crt), "--tls-key", s(&server_key), "--tls-ca", s(&ca_file)];
    let backend = Backend::start("tls-0", &tls);
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 10, false);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &tls_flags(&crt, &key, &ca_file, BACKEND_ID));
    sidecar.wait_ready_endpoints(1);
    let outcomes = common::calls(&sidecar.client(), 20, 4, Some(Duration::from_secs(5))).await;
    assert!(common::cluster::failures(&outcomes).is_empty(), "{outcomes:?}");
    assert_eq!(common::by_pod(&outcomes).get("tls-0"), Some(&20));
    assert_eq!(backend.connections(), 1, "one pooled TLS connection carried every call");
    // A plaintext sidecar gets no further than the handshake.
    let plain = Sidecar::start(&Sidecar::static_target(&[&backend]), &[]);
    let o = hello_sidecar::client::call_once(&mut plain.client(), "x", Some(Duration::from_secs(5))).await;
    assert_eq!(o.code, Code::Unavailable, "{o:?}");
}

/// RFC 9113 §8.3.1: `:scheme` is the scheme of the target URI, so a request the sidecar sends over TLS says
/// `https` (a backend that routes or authorizes by scheme sees the truth), and one over h2c says `http`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_forwarded_over_tls_carry_scheme_https() {
    let dir = temp_dir("scheme");
    let ca = Ca::new("test CA");
    let ca_file = ca.write(&dir, "ca");
    let (server_crt, server_key) = ca.issue(&dir, "backend", BACKEND_ID, 1, false);
    let tls = ["--tls-cert", s(&server_crt), "--tls-key", s(&server_key), "--tls-ca", s(&ca_file)];
    let backend = Backend::start("scheme-tls", &tls);
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 10, false);
    let sidecar = Sidecar::start(&Sidecar::static_target(&[&backend]), &tls_flags(&crt, &key, &ca_file, BACKEND_ID));
    let plain_backend = Backend::start("scheme-plain", &[]);
    let plain = Sidecar::start(&Sidecar::static_target(&[&plain_backend]), &[]);
    sidecar.wait_ready_endpoints(1);
    plain.wait_ready_endpoints(1);
    for (sidecar, want) in [(&sidecar, "https"), (&plain, "http")] {
        let res = sidecar
            .client()
            .say_hello(HelloRequest { name: "scheme".into() })
            .await
            .unwrap_or_else(|e| panic!("{want}: {e}"));
        let seen = res.metadata().get("x-hello-scheme").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(seen.as_deref(), Some(want));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_down_behind_the_inbound_proxy_is_unavailable() {
    let dir = temp_dir("app-down");
    let ca = Ca::new("test CA");
    let ca_file = ca.write(&dir, "ca");
    let (server_crt, server_key) = ca.issue(&dir, "backend", BACKEND_ID, 1, false);
    let nothing = SocketAddr::from((fresh_ip(), 8080));
    let inbound = Inbound::start(nothing, &server_crt, &server_key, &ca_file, &["spiffe://td.test/ns/shop/*"]);
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 10, false);
    let sidecar = Sidecar::start(&format!("static:///{}", inbound.addr), &tls_flags(&crt, &key, &ca_file, BACKEND_ID));
    sidecar.wait_ready_endpoints(1);
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(5))).await;
    assert_eq!(o.code, Code::Unavailable, "{o:?}");
    // (The sidecar retries an UNAVAILABLE that carried no body elsewhere; with one endpoint its own message wins.)
    let m = inbound.metrics();
    let series = format!("hello_inbound_requests_total{{client_id=\"{CHECKOUT_ID}\",outcome=\"unavailable\"}}");
    assert!(metric(&m, &series) >= 1, "{m}");
}

/// An h2c app that answers each request, after reading its body and trailers, with the
/// `x-hello-sidecar-client-id` values it saw in the request trailers (`x-trailer-client-id`, "none" if absent).
async fn trailer_echo_app(listener: tokio::net::TcpListener) {
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
                    let seen: Vec<&str> =
                        trailers.get_all("x-hello-sidecar-client-id").iter().map(|v| v.to_str().unwrap()).collect();
                    let seen = if seen.is_empty() { "none".to_owned() } else { seen.join(",") };
                    let res = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .header("x-trailer-client-id", seen)
                        .body(())
                        .unwrap();
                    let _ = respond.send_response(res, true);
                });
            }
        });
    }
}

/// README: "a caller's own copy is removed". HTTP/2 request trailers reach apps that read them (Go's
/// `r.Trailer`), so an allowed caller putting someone else's identity there must not get it through
/// (review of issue 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_identity_header_in_request_trailers_does_not_reach_the_app() {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let dir = temp_dir("trailers");
    let ca = Ca::new("test CA");
    let app = SocketAddr::from((fresh_ip(), 8080));
    tokio::spawn(trailer_echo_app(tokio::net::TcpListener::bind(app).await.unwrap()));
    let (crt, key) = ca.issue(&dir, "backend", "backend.test", 1, false);
    let inbound = Inbound::start(app, &crt, &key, &ca.write(&dir, "ca"), &["spiffe://td.test/ns/shop/*"]);

    // A caller with a valid certificate, over TLS + h2, with an identity claim in its trailers.
    let (cli_crt, cli_key) = ca.make(CHECKOUT_ID, 2, false);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(cli_crt.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(cli_key.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(hello_sidecar::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(inbound.addr).await.unwrap();
    let name = ServerName::try_from("backend.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    let (mut tx, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("https://{}/hello.v1.HelloService/SayHello", inbound.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (res, mut body) = tx.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"\x00\x00\x00\x00\x03\x0a\x01x"), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-hello-sidecar-client-id", "spiffe://td.test/ns/ops/sa/admin".parse().unwrap());
    body.send_trailers(trailers).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), res).await.unwrap().unwrap();
    let seen = res.headers().get("x-trailer-client-id").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(seen.as_deref(), Some("none"), "the app received the caller's own identity claim in the trailers");
}

/// Handshakes pending at once are capped (`--max-pending-handshakes`): idle connections that never start TLS hold
/// the slots, a connection beyond them is closed at once and counted, and a slot freed serves the next caller.
#[test]
fn connections_beyond_the_pending_handshake_cap_are_closed_at_once_and_counted() {
    use std::io::Read;
    let dir = temp_dir("pending");
    let ca = Ca::new("test CA");
    let (crt, key) = ca.issue(&dir, "backend", BACKEND_ID, 1, false);
    let ca_file = ca.write(&dir, "ca");
    let ip = fresh_ip();
    let (addr, admin) = (SocketAddr::from((ip, 8443)), SocketAddr::from((ip, 9903)));
    let (l, a) = (addr.to_string(), admin.to_string());
    let mut args = vec!["inbound", "--listen", &l, "--admin", &a, "--forward", "127.0.0.1:9"];
    args.extend(["--tls-cert", s(&crt), "--tls-key", s(&key), "--tls-ca", s(&ca_file)]);
    args.extend([
        "--allow",
        "spiffe://td.test/ns/shop/*",
        "--max-pending-handshakes",
        "2",
        "--handshake-timeout",
        "60s",
    ]);
    let _proc = Proc::spawn("inbound", &args);
    wait_for("inbound admin", Duration::from_secs(20), || http_get(admin, "/ready"));
    let metrics = || http_get(admin, "/metrics").unwrap_or_default();

    let idle: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    // The accept loop takes the two idle connections' slots; the third connection is closed at once.
    wait_for("the third connection shed", Duration::from_secs(10), || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let closed = matches!(tcp.read(&mut buf), Ok(0) | Err(_)) && started.elapsed() < Duration::from_secs(4);
        (closed && metric(&metrics(), "hello_inbound_handshakes_shed_total") >= 1).then_some(())
    });
    assert_eq!(metric(&metrics(), "hello_inbound_tls_handshake_failures_total"), 0);
    drop(idle);
    // Slots freed (the idle connections' handshakes fail at EOF): a new connection gets a handshake again.
    wait_for("the slots freed", Duration::from_secs(10), || {
        (metric(&metrics(), "hello_inbound_tls_handshake_failures_total") == 2).then_some(())
    });
    let shed = metric(&metrics(), "hello_inbound_handshakes_shed_total");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut tcp, b"not a TLS ClientHello\r\n").unwrap();
    wait_for("the next connection handshaken", Duration::from_secs(10), || {
        (metric(&metrics(), "hello_inbound_tls_handshake_failures_total") == 3).then_some(())
    });
    assert_eq!(metric(&metrics(), "hello_inbound_handshakes_shed_total"), shed);
}

/// The sidecar warns at start when its own certificate has expired (peers will refuse it), naming serial and expiry.
#[test]
fn an_expired_own_certificate_is_a_warning_at_start() {
    let dir = temp_dir("own-expired");
    let ca = Ca::new("test CA");
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 0x42, true);
    let ca_file = ca.write(&dir, "ca");
    let log = dir.join("sidecar.log");
    let (_proc, _addr, _admin) =
        sidecar_logging("static:///127.0.0.1:9", &tls_flags(&crt, &key, &ca_file, BACKEND_ID), &log);
    wait_for("the expiry warning", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .any(|l| {
                l.contains("WARN") && l.contains("has expired") && l.contains("serial=42") && l.contains("2020-01-01")
            })
            .then_some(())
    });
}

/// A TLS backend that does not choose `h2` by ALPN (an HTTP/1.1-only server, say) is refused after the handshake:
/// UNAVAILABLE naming ALPN, and reconnects back off (review of issue 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_negotiate_h2_is_unavailable_naming_alpn() {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let dir = temp_dir("alpn");
    let ca = Ca::new("test CA");
    let (srv_crt, srv_key) = ca.make(BACKEND_ID, 1, false);
    let chain = vec![CertificateDer::from_pem_slice(srv_crt.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(srv_key.as_bytes()).unwrap();
    // No alpn_protocols: the server answers without choosing one.
    let config = rustls::ServerConfig::builder_with_provider(hello_sidecar::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let backend = SocketAddr::from((fresh_ip(), 8443));
    let listener = tokio::net::TcpListener::bind(backend).await.unwrap();
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(tls);
                }
            });
        }
    });
    let (crt, key) = ca.issue(&dir, "checkout", CHECKOUT_ID, 10, false);
    let ca_file = ca.write(&dir, "ca");
    let sidecar = Sidecar::start(&format!("static:///{backend}"), &tls_flags(&crt, &key, &ca_file, BACKEND_ID));
    let mut client = sidecar.client();
    let started = Instant::now();
    let mut named = false;
    while started.elapsed() < Duration::from_secs(3) {
        let o = hello_sidecar::client::call_once(&mut client, "x", Some(Duration::from_secs(2))).await;
        assert_eq!(o.code, Code::Unavailable, "{o:?}");
        named |= o.message.contains("ALPN") && o.message.contains("h2");
    }
    assert!(named, "no call named ALPN");
    let n = handshakes.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=20).contains(&n), "{n} handshakes in 3 s: not backed off");
}
