//! Probing pod-to-pod mTLS as an attacker would, through real sockets and the real binary: certificates that
//! should not pass (non-CA issuers, names that hide, not yet valid), each against the `inbound` proxy (a caller)
//! and the sidecar (a backend). Certificates are made with rcgen, as in `tests/tls.rs`.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{Backend, Proc, Sidecar, fresh_ip, http_get, wait_for};
use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair, SanType};
use tonic::Code;

const BACKEND_ID: &str = "spiffe://td.test/ns/shop/sa/backend";
const CHECKOUT_ID: &str = "spiffe://td.test/ns/shop/sa/checkout";
const ADMIN_ID: &str = "spiffe://td.test/ns/ops/sa/admin";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hello-sidecar-tls-attacks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A self-signed CA.
fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (Issuer::new(params, key), pem)
}

/// Leaf params with `uri` as the only URI SAN (a workload's SVID, `CA:FALSE` as rcgen writes by default).
fn svid(uri: &str, cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.distinguished_name.push(DnType::CommonName, cn);
    params
}

/// Writes `NAME.crt`/`NAME.key` for `params` signed by `issuer`; returns them and the leaf as an issuer.
fn issue(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> (PathBuf, PathBuf, String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let crt = write(dir, &format!("{name}.crt"), &cert.pem());
    let k = write(dir, &format!("{name}.key"), &key.serialize_pem());
    (crt, k, cert.pem(), Issuer::new(params, key))
}

/// The `inbound` proxy in front of `app`, or its exit when it refuses to start.
fn inbound(app: SocketAddr, crt: &Path, key: &Path, ca: &Path, allow: &[&str]) -> (Proc, SocketAddr, SocketAddr) {
    let ip = fresh_ip();
    let (addr, admin) = (SocketAddr::from((ip, 8443)), SocketAddr::from((ip, 9903)));
    let (l, a, f) = (addr.to_string(), admin.to_string(), app.to_string());
    let mut args = vec!["inbound", "--listen", &l, "--admin", &a, "--forward", &f];
    args.extend(["--tls-cert", s(crt), "--tls-key", s(key), "--tls-ca", s(ca)]);
    for rule in allow {
        args.extend(["--allow", rule]);
    }
    let proc = Proc::spawn("inbound", &args);
    wait_for("inbound admin", Duration::from_secs(20), || http_get(admin, "/ready"));
    (proc, addr, admin)
}

fn tls_flags<'a>(cert: &'a Path, key: &'a Path, ca: &'a Path, identity: &'a str) -> Vec<&'a str> {
    vec!["--tls-cert", s(cert), "--tls-key", s(key), "--tls-ca", s(ca), "--tls-server-identity", identity]
}

/// One call through a fresh sidecar with `flags` to `target`: (code, message, the pod that answered).
async fn call(target: &str, flags: &[&str]) -> (Code, String, Option<String>) {
    let sidecar = Sidecar::start(target, flags);
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(3))).await;
    (o.code, o.message, o.pod)
}

/// A SAN extension (RFC 5280 §4.2.1.6) of raw GeneralName entries: (context tag, bytes), short forms only.
fn raw_san(names: &[(u8, &[u8])]) -> CustomExtension {
    let mut san = Vec::new();
    for (tag, v) in names {
        san.push(*tag);
        san.push(u8::try_from(v.len()).unwrap());
        san.extend_from_slice(v);
    }
    let mut ext = vec![0x30, u8::try_from(san.len()).unwrap()];
    ext.extend(san);
    CustomExtension::from_oid_content(&[2, 5, 29, 17], ext)
}

/// A certificate whose SAN is `ADMIN_ID` or `BACKEND_ID` followed by a second URI webpki skips: not UTF-8, or a
/// GeneralName whose length runs past the end (webpki's name iterator stops at it, yielding no error to callers
/// of `valid_uri_names`).
fn hidden_second_uri(id: &'static str) -> [(&'static str, CertificateParams); 2] {
    let mut not_utf8 = CertificateParams::new(Vec::<String>::new()).unwrap();
    not_utf8.custom_extensions = vec![raw_san(&[(0x86, id.as_bytes()), (0x86, b"spiffe://td.test/ns/x/sa/\xff\xfe")])];
    // After the ID, a second URI SAN claiming 127 bytes and holding one.
    let mut truncated = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut san = vec![0x86, u8::try_from(id.len()).unwrap()];
    san.extend(id.as_bytes());
    san.extend([0x86, 0x7f, 0x00]);
    let mut ext = vec![0x30, u8::try_from(san.len()).unwrap()];
    ext.extend(san);
    truncated.custom_extensions = vec![CustomExtension::from_oid_content(&[2, 5, 29, 17], ext)];
    [("a second URI SAN that is not UTF-8", not_utf8), ("a truncated second GeneralName", truncated)]
}

/// Runs the binary with `args`: its exit code and stderr, or `None` when it still runs after `limit` (then killed).
fn exit_within(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let err = std::env::temp_dir().join(format!("hello-sidecar-tls-attacks-{}-stderr", std::process::id()));
    let mut child = std::process::Command::new(common::BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(&err).unwrap_or_default())
}

/// RFC 5280 §4.2.1.9: a certificate without `cA` TRUE in basicConstraints must not verify signatures. webpki takes
/// any certificate in the bundle as a trust anchor, so a workload's own certificate in `--tls-ca` (a
/// `cat tls.crt ca.crt` slip) would let that workload's key mint every identity. Both roles refuse such a bundle at
/// start, naming `--tls-ca`.
#[test]
fn a_certificate_that_is_not_a_ca_in_the_ca_bundle_is_refused_at_start() {
    let dir = temp_dir("non-ca-anchor");
    let (ca_issuer, ca_pem) = ca("test CA");
    let (crt, key, leaf_pem, _) = issue(&dir, "checkout", svid(CHECKOUT_ID, "checkout"), &ca_issuer);
    let bundle = write(&dir, "bundle.pem", &format!("{ca_pem}{leaf_pem}"));
    let sidecar =
        ["sidecar", "--target", "static:///127.0.0.1:8443", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let inbound =
        ["inbound", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--allow", "spiffe://td.test/ns/a/*"];
    let tls = ["--tls-cert", s(&crt), "--tls-key", s(&key), "--tls-ca", s(&bundle)];
    for args in [
        [&sidecar[..], &tls[..], &["--tls-server-identity", BACKEND_ID][..]].concat(),
        [&inbound[..], &tls[..]].concat(),
    ] {
        let (code, err) = exit_within(&args, Duration::from_secs(20));
        assert_eq!(code, Some(2), "{}: a leaf in --tls-ca was taken as a CA: {err}", args[0]);
        assert!(err.contains("--tls-ca") && err.contains("not a CA"), "{}: {err}", args[0]);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// X509-SVID §2: exactly one URI SAN. A caller certificate naming an allowed ID plus a second URI webpki does not
/// list (not UTF-8, or a GeneralName that does not parse) has no SPIFFE ID: `UNAUTHENTICATED`, and the app never
/// sees the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_hiding_a_second_uri_san_has_no_identity() {
    let dir = temp_dir("hidden-caller");
    let (ca_issuer, ca_pem) = ca("test CA");
    let app = Backend::start("app-0", &[]);
    let ca_file = write(&dir, "ca.pem", &ca_pem);
    let (b_crt, b_key, _, _) = issue(&dir, "backend", svid(BACKEND_ID, "backend"), &ca_issuer);
    let (_inbound, addr, _) = inbound(app.addr, &b_crt, &b_key, &ca_file, &[ADMIN_ID]);
    let target = format!("static:///{addr}");
    for (i, (case, params)) in hidden_second_uri(ADMIN_ID).into_iter().enumerate() {
        let (crt, key, _, _) = issue(&dir, &format!("caller{i}"), params, &ca_issuer);
        let (code, message, pod) = call(&target, &tls_flags(&crt, &key, &ca_file, BACKEND_ID)).await;
        assert_eq!(code, Code::Unauthenticated, "{case}: {message}");
        assert_eq!(pod, None, "{case}: the app saw the call");
    }
}

/// The same rule for a backend: one with the expected ID and a hidden second URI SAN is no SVID, so the sidecar
/// refuses it (`UNAVAILABLE`, naming the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_hiding_a_second_uri_san_is_refused() {
    let dir = temp_dir("hidden-backend");
    let (ca_issuer, ca_pem) = ca("test CA");
    let app = Backend::start("app-0", &[]);
    let ca_file = write(&dir, "ca.pem", &ca_pem);
    let (c_crt, c_key, _, _) = issue(&dir, "checkout", svid(CHECKOUT_ID, "checkout"), &ca_issuer);
    for (i, (case, params)) in hidden_second_uri(BACKEND_ID).into_iter().enumerate() {
        let (b_crt, b_key, _, _) = issue(&dir, &format!("backend{i}"), params, &ca_issuer);
        let (_inbound, addr, _) = inbound(app.addr, &b_crt, &b_key, &ca_file, &["spiffe://td.test/ns/shop/*"]);
        let target = format!("static:///{addr}");
        let (code, message, pod) = call(&target, &tls_flags(&c_crt, &c_key, &ca_file, BACKEND_ID)).await;
        assert_eq!(code, Code::Unavailable, "{case}: {message}");
        assert!(message.contains("invalid peer certificate"), "{case}: {message}");
        assert_eq!(pod, None, "{case}: the app saw the call");
    }
}
