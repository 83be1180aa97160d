//! Discovery against EndpointSlices and API answers that a real cluster produces but the happy path does not:
//! odd but legal slices, RBAC refusals, a Service scaled to zero. The real sidecar, the API stand-in, real pods.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{cluster::*, *};
use hello_sidecar::kube_standin::controller::Phase;
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};

async fn cluster_with(pods: usize) -> KubeCluster {
    let mut c = KubeCluster::new().await;
    for _ in 0..pods {
        c.add_pod(Phase::Ready);
    }
    c
}

/// A sidecar whose stderr (logs at `RUST_LOG=info`) is kept, line by line.
struct Logged {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    admin: std::net::SocketAddr,
}

impl Logged {
    fn start(target: &str, kubeconfig: &std::path::Path) -> Self {
        Self::start_logging(target, kubeconfig, "info")
    }

    /// [`Logged::start`] with `rust_log` as `RUST_LOG`.
    fn start_logging(target: &str, kubeconfig: &std::path::Path, rust_log: &str) -> Self {
        let ip = fresh_ip();
        let admin = std::net::SocketAddr::from((ip, 9901));
        let mut child = Command::new(BIN)
            .args(["sidecar", "--listen", &format!("{ip}:50051"), "--admin", &admin.to_string(), "--target", target])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the sidecar");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().expect("lock").push(line);
            }
        });
        wait_for("sidecar admin", Duration::from_secs(20), || http_get(admin, "/live"));
        Self { child, lines, admin }
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.lines.lock().expect("lock").iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubeconfig_for(c: &KubeCluster, tag: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("hello-sidecar-kc-{tag}-{}-{}", std::process::id(), c.api.addr().ip()));
    std::fs::write(&path, c.api.kubeconfig(NAMESPACE)).expect("write kubeconfig");
    path
}

/// RBAC missing: the operator reads one log line that says which Service's discovery fails and which rule is
/// missing, not one line per retry (kube's watcher logged every failed LIST at WARN, with no Service named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_api_is_one_log_line_naming_the_service_and_the_rbac_rule() {
    use hello_sidecar::kube_standin::Refusal;
    let c = cluster_with(1).await;
    c.api.refuse(Some(Refusal::Forbidden));
    let kubeconfig = kubeconfig_for(&c, "403");
    let sidecar = Logged::start(TARGET, &kubeconfig);
    wait_for("three refused LISTs", Duration::from_secs(30), || (c.api.lists() >= 3).then_some(()));
    std::thread::sleep(Duration::from_millis(200));
    let failing = sidecar.lines_with("discovery failing");
    assert_eq!(failing.len(), 1, "one line per change of state: {failing:#?}");
    let line = &failing[0];
    assert!(line.contains("service=hello") && line.contains("namespace=default"), "{line}");
    assert!(line.contains("\"list\", \"watch\"") && line.contains("RoleBinding"), "names the rule: {line}");
    let all_403 = sidecar.lines_with("403");
    assert_eq!(all_403.len(), 1, "no line per retry: {all_403:#?}");
    // The same words reach /ready.
    let (_, ready) = http_get_any(sidecar.admin, "/ready").expect("/ready");
    assert!(ready.contains("RoleBinding"), "{ready}");
    let _ = std::fs::remove_file(kubeconfig);
}

/// One call with a 5 s deadline: it must fail fast (UNAVAILABLE, not DEADLINE_EXCEEDED) and say why.
async fn no_endpoint_call(sidecar: &Sidecar) -> String {
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(5))).await;
    assert_eq!(o.code, tonic::Code::Unavailable, "{o:?}");
    o.message
}

/// A misspelt port name, a misspelt Service and a Service scaled to zero all leave an empty endpoint set. The
/// caller got a bare "no ready endpoints for hello.default:grpcc" for each (and `/ready` said ready): nothing told
/// the operator which it was. The API lists nothing for a Service that does not exist; it does not answer 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_endpoint_set_tells_the_caller_why() {
    let mut c = cluster_with(2).await;
    let kubeconfig = kubeconfig_for(&c, "empty");
    let kc = kubeconfig.to_string_lossy().into_owned();
    let env = [("KUBECONFIG", kc.as_str())];
    let wrong_port = Sidecar::start_env("kubernetes:///hello.default:grpcc", &[], &env);
    let wrong_service = Sidecar::start_env("kubernetes:///helo.default:grpc", &[], &env);
    let wrong_namespace = Sidecar::start_env("kubernetes:///hello.defualt:grpc", &[], &env);
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(2);
    for s in [&wrong_port, &wrong_service, &wrong_namespace] {
        wait_for("the first sync", Duration::from_secs(20), || http_get(s.admin, "/ready"));
    }
    let m = no_endpoint_call(&wrong_port).await;
    assert!(m.contains("no port of the Service is named \"grpcc\" (its ports: grpc)"), "{m}");
    for s in [&wrong_service, &wrong_namespace] {
        let m = no_endpoint_call(s).await;
        assert!(m.contains("the Service has no EndpointSlices"), "{m}");
    }

    // Scaled to zero: calls fail fast and say so; scaled up again: calls flow.
    for name in c.ready_names() {
        c.delete_pod(&name);
    }
    sidecar.wait_ready_endpoints(0);
    let m = no_endpoint_call(&sidecar).await;
    assert!(m.contains("the Service has no endpoints"), "{m}");
    let starting = c.add_pod(Phase::Starting);
    // The watch delivers the new slice soon, not at once: ask until the answer changes (a fail-fast call each).
    let mut m = String::new();
    for _ in 0..20 {
        m = no_endpoint_call(&sidecar).await;
        if !m.contains("the Service has no endpoints") {
            break;
        }
    }
    assert!(m.contains("none of its 1 endpoints is ready"), "{m}");
    c.set_phase(&starting, Phase::Ready);
    sidecar.wait_ready_endpoints(1);
    let o = hello_sidecar::client::call_once(&mut sidecar.client(), "x", Some(Duration::from_secs(5))).await;
    assert_eq!(o.code, tonic::Code::Ok, "{o:?}");
    let _ = std::fs::remove_file(kubeconfig);
}

/// A Role that grants `list` but forgets `watch`: the LIST gives the endpoints and calls flow on them, but no change
/// would ever arrive. Discovery must keep saying so (no false recovery from the LIST that works), name the missing
/// verb, and pick up changes once the Role is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_watch_is_reported_until_fixed() {
    use hello_sidecar::kube_standin::Refusal;
    let mut c = cluster_with(2).await;
    c.api.refuse(Some(Refusal::ForbiddenWatch));
    let kubeconfig = kubeconfig_for(&c, "nowatch");
    let sidecar = Logged::start(TARGET, &kubeconfig);
    let metrics = || http_get(sidecar.admin, "/metrics").unwrap_or_default();
    wait_for("the listed endpoints", Duration::from_secs(20), || {
        (metric(&metrics(), "hello_sidecar_endpoints{state=\"ready\"}") == 2).then_some(())
    });
    wait_for("discovery failing", Duration::from_secs(20), || {
        (metric_max(&metrics(), "hello_sidecar_discovery_failing") == 1).then_some(())
    });
    // Several refused WATCHes later, it still says so.
    let watches = c.api.watches();
    wait_for("three refused WATCHes", Duration::from_secs(30), || (c.api.watches() >= watches + 3).then_some(()));
    assert_eq!(metric_max(&metrics(), "hello_sidecar_discovery_failing"), 1);
    assert!(sidecar.lines_with("discovery recovered").is_empty(), "{:#?}", sidecar.lines_with("discovery"));
    let (code, ready) = http_get_any(sidecar.admin, "/ready").expect("/ready");
    assert_eq!(code, 200, "serving the listed endpoints: {ready}");
    assert!(ready.contains("cannot watch") && ready.contains("RoleBinding"), "{ready}");
    let client = hello_sidecar::client::connect(&format!("{}:50051", sidecar.admin.ip())).expect("client");
    let pods = by_pod(&calls(&client, 30, 2, None).await);
    assert_eq!(pods.len(), 2, "{pods:?}");
    // The Role fixed: the next WATCH works, and a new pod is seen through it.
    c.api.refuse(None);
    let new = c.add_pod(Phase::Ready);
    wait_for("the new pod through the watch", Duration::from_secs(60), || {
        (metric(&metrics(), "hello_sidecar_endpoints{state=\"ready\"}") == 3).then_some(())
    });
    wait_for("recovered", Duration::from_secs(20), || {
        (metric_max(&metrics(), "hello_sidecar_discovery_failing") == 0).then_some(())
    });
    let pods = by_pod(&calls(&client, 60, 3, None).await);
    assert!(pods.contains_key(&new), "{pods:?}");
    let _ = std::fs::remove_file(kubeconfig);
}

/// Odd but legal slices (KEP-1672, the API reference): conditions absent or all null (ready), an endpoint with two
/// addresses (the first is used), an unnamed port and a port whose number is null beside the named one, an FQDN
/// slice of the same Service (skipped), and another Service's slice in the namespace (not selected). Three pods,
/// three endpoints, all called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_legal_slices_give_one_endpoint_per_ready_pod() {
    let c = cluster_with(3).await;
    let mut s = c.api_slice_copy();
    let eps = s.endpoints.as_mut().expect("endpoints");
    let expected: Vec<String> = eps.iter().map(|e| format!("{}:{BACKEND_PORT}", e.addresses[0])).collect();
    eps[0].conditions = None;
    eps[1].conditions = Some(EndpointConditions { ready: None, serving: None, terminating: None });
    eps[2].addresses.push("127.99.99.99".into());
    let mut ports = vec![
        EndpointPort { name: None, port: Some(9999), ..Default::default() },
        EndpointPort { name: Some("metrics".into()), port: None, ..Default::default() },
    ];
    ports.extend(s.ports.take().unwrap_or_default());
    s.ports = Some(ports);
    c.api.put_slice(&s);
    let mut fqdn = c.api_slice_copy();
    fqdn.metadata.name = Some("hello-fqdn".into());
    fqdn.address_type = "FQDN".into();
    for ep in fqdn.endpoints.iter_mut().flatten() {
        ep.addresses = vec!["hello.example.com".into()];
    }
    c.api.put_slice(&fqdn);
    let mut other = c.api_slice_copy();
    other.metadata.name = Some("other-0".into());
    if let Some(labels) = other.metadata.labels.as_mut() {
        labels.insert("kubernetes.io/service-name".into(), "other".into());
    }
    for ep in other.endpoints.iter_mut().flatten() {
        ep.addresses = vec!["127.88.0.1".into()];
        ep.target_ref = None;
    }
    c.api.put_slice(&other);
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(3);
    let debug: serde_json::Value =
        serde_json::from_str(&http_get(sidecar.admin, "/debug/endpoints").expect("debug")).expect("json");
    let mut addrs: Vec<String> = debug["endpoints"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["address"].as_str().map(str::to_owned))
        .collect();
    addrs.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(addrs, expected, "{debug:#}");
    let pods = by_pod(&calls(&sidecar.client(), 60, 3, None).await);
    assert_eq!(pods.len(), 3, "{pods:?}");
}

/// A slice that is relabelled to another Service leaves this one (the API's watch says DELETED), and comes back
/// when relabelled again (ADDED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_relabelled_to_another_service_leaves_the_set() {
    let c = cluster_with(2).await;
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(2);
    let mut slice = c.api_slice_copy();
    let set_service = |slice: &mut k8s_openapi::api::discovery::v1::EndpointSlice, svc: &str| {
        if let Some(labels) = slice.metadata.labels.as_mut() {
            labels.insert("kubernetes.io/service-name".into(), svc.into());
        }
    };
    set_service(&mut slice, "other");
    c.api.put_slice(&slice);
    sidecar.wait_ready_endpoints(0);
    let m = no_endpoint_call(&sidecar).await;
    assert!(m.contains("the Service has no EndpointSlices"), "{m}");
    set_service(&mut slice, SERVICE);
    c.api.put_slice(&slice);
    sidecar.wait_ready_endpoints(2);
}

/// The slice is deleted while a call is in flight on its only endpoint: the call finishes (the endpoint drains),
/// and the next call fails fast, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_deleted_under_a_call_in_flight_lets_it_finish() {
    use hello_sidecar::kube_standin::controller::{Controller, Pod};
    let c = KubeCluster::new().await;
    let slow = Backend::start("slow-0", &["--delay", "1500ms"]);
    let mut controller = Controller::new(SERVICE, NAMESPACE, "grpc", BACKEND_PORT);
    controller.publish(&c.api, &[Pod { name: "slow-0".into(), ip: slow.addr.ip(), phase: Phase::Ready }]);
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(1);
    let mut client = sidecar.client();
    let in_flight =
        tokio::spawn(
            async move { hello_sidecar::client::call_once(&mut client, "x", Some(Duration::from_secs(10))).await },
        );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(c.api.delete_slice(NAMESPACE, "hello-0"));
    sidecar.wait_ready_endpoints(0);
    let o = in_flight.await.expect("the call task");
    assert_eq!(o.code, tonic::Code::Ok, "{o:?}");
    let m = no_endpoint_call(&sidecar).await;
    assert!(m.contains("the Service has no EndpointSlices"), "{m}");
}

/// An IPv6-only Service (`addressType: IPv6`): the pod is called on its bracketed address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_only_service_is_called_on_its_ipv6_address() {
    use hello_sidecar::kube_standin::controller::{Controller, Pod};
    let c = KubeCluster::new().await;
    let port = 20000 + (std::process::id() % 20000) as u16;
    let listen = format!("[::1]:{port}");
    let admin_ip = fresh_ip();
    let admin = std::net::SocketAddr::from((admin_ip, 9902));
    let _pod = Proc::spawn("v6-pod", &["server", "--listen", &listen, "--admin", &admin.to_string(), "--id", "v6-0"]);
    wait_for("the IPv6 pod", Duration::from_secs(20), || http_get(admin, "/ready"));
    let mut controller = Controller::new(SERVICE, NAMESPACE, "grpc", port);
    controller.publish(&c.api, &[Pod { name: "v6-0".into(), ip: "::1".parse().expect("ip"), phase: Phase::Ready }]);
    let sidecar = c.sidecar(&[]);
    sidecar.wait_ready_endpoints(1);
    let pods = by_pod(&calls(&sidecar.client(), 10, 2, None).await);
    assert_eq!(pods.get("v6-0"), Some(&10), "{pods:?}");
}

/// A port number names the pod's port (the EndpointSlice's), not the Service's: `hello.default:80` for a Service
/// that maps 80 to the pods' 8080 calls the pods on 80 and is refused. The caller got "connect refused" and no
/// hint of the mix-up; now the message says which ports the slices have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_number_no_slice_has_is_named_in_the_failure() {
    let c = cluster_with(1).await;
    let kubeconfig = kubeconfig_for(&c, "port80");
    let kc = kubeconfig.to_string_lossy().into_owned();
    let sidecar = Sidecar::start_env("kubernetes:///hello.default:80", &[], &[("KUBECONFIG", kc.as_str())]);
    wait_for("the first sync", Duration::from_secs(20), || http_get(sidecar.admin, "/ready"));
    let m = no_endpoint_call(&sidecar).await;
    assert!(m.contains("no port of the Service is 80 (its ports: grpc=8080)"), "{m}");
    assert!(m.contains("the pod's port, not the Service's"), "{m}");
    let _ = std::fs::remove_file(kubeconfig);
}

/// A load balancer in front of the API answers 502 with an HTML page (no `Status`): kube hands the whole page on
/// as the error message, and it went as is into the log, `/ready` and every failed call's `grpc-message`: kilobytes
/// of markup over many lines. The operator needs the status and the page's title, on one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_error_page_from_a_proxy_is_summed_up_on_one_line() {
    use hello_sidecar::kube_standin::Refusal;
    let c = cluster_with(1).await;
    c.api.refuse(Some(Refusal::BadGateway));
    let sidecar = c.sidecar(&[]);
    let ready = wait_for("a /ready body that names the 502", Duration::from_secs(20), || {
        let (code, body) = http_get_any(sidecar.admin, "/ready")?;
        (code == 503 && body.contains("502")).then_some(body)
    });
    assert_eq!(ready.trim_end().lines().count(), 1, "{ready}");
    assert!(ready.len() < 600, "{} bytes: {ready}", ready.len());
    assert!(ready.contains("Error 502 (Server Error)") && !ready.contains('<'), "{ready}");
    let m = no_endpoint_call(&sidecar).await;
    assert!(m.len() < 600 && m.contains("502") && !m.contains("<style>"), "{m}");
}

/// The API unreachable: one line says so, not one per retry (kube's client logged each failed connect at ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_one_log_line() {
    let c = cluster_with(1).await;
    c.api.down();
    let kubeconfig = kubeconfig_for(&c, "down");
    let sidecar = Logged::start(TARGET, &kubeconfig);
    wait_for("three failed connects", Duration::from_secs(30), || {
        let m = http_get(sidecar.admin, "/metrics")?;
        (metric_sum(&m, "hello_sidecar_discovery_errors_total", "status=\"connect\"") >= 3).then_some(())
    });
    let lines = sidecar.lines_with("onnect");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("discovery failing") && lines[0].contains("service=hello"), "{}", lines[0]);
    // Which API server it could not reach: a wrong address in the kubeconfig or the pod's environment shows here.
    let server = format!("API server http://{}/", c.api.addr());
    assert!(lines[0].contains(&server), "{}", lines[0]);
    let _ = std::fs::remove_file(kubeconfig);
}

/// kube's own lines are muted by default, "unless the filter names the crate": the crate an operator knows is
/// `kube` (the dependency's name), and `RUST_LOG=kube=debug` is how one asks for its lines. They stayed muted
/// (only `kube_client`/`kube_runtime` written out lifted the mute), so the one way to see kube's requests failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_naming_kube_shows_kubes_lines() {
    let c = cluster_with(1).await;
    c.api.down();
    let kubeconfig = kubeconfig_for(&c, "kubelog");
    let sidecar = Logged::start_logging(TARGET, &kubeconfig, "info,kube=debug");
    wait_for("kube's client's lines", Duration::from_secs(30), || {
        (!sidecar.lines_with("kube_client::client::builder").is_empty()).then_some(())
    });
    let _ = std::fs::remove_file(kubeconfig);
}

/// An "API server" (a proxy in front of it) that answers every request with HTTP `status` and `body`.
fn fake_api(status: u16, body: Vec<u8>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((fresh_ip(), 6443)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 8192];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 {status} Whatever\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    addr
}

fn kubeconfig_at(api: std::net::SocketAddr, tag: &str) -> std::path::PathBuf {
    kubeconfig_with_server(&format!("http://{api}"), api.ip(), tag)
}

fn kubeconfig_with_server(server: &str, ip: std::net::IpAddr, tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("hello-sidecar-kc-{tag}-{}-{ip}", std::process::id()));
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: p\n  cluster:\n    server: {server}\n\
         contexts:\n- name: p\n  context:\n    cluster: p\n    user: p\n    namespace: default\n\
         current-context: p\nusers:\n- name: p\n  user: {{}}\n"
    );
    std::fs::write(&path, kc).expect("write kubeconfig");
    path
}

/// The /ready body once discovery reports a failure.
fn failing_ready(body: Vec<u8>, tag: &str) -> String {
    failing_ready_with(502, body, tag)
}

/// [`failing_ready`] for an answer with HTTP `status`.
fn failing_ready_with(status: u16, body: Vec<u8>, tag: &str) -> String {
    let api = fake_api(status, body);
    let kubeconfig = kubeconfig_at(api, tag);
    let sidecar = Logged::start(TARGET, &kubeconfig);
    let ready = wait_for("a failing /ready", Duration::from_secs(20), || {
        let (code, body) = http_get_any(sidecar.admin, "/ready")?;
        (code == 503 && body.contains("API server")).then_some(body)
    });
    let _ = std::fs::remove_file(kubeconfig);
    ready
}

/// Hostile error pages from a proxy in front of the API: a title with control characters (a terminal escape, a
/// bell, NUL) must not reach `/ready` and the logs as they are; a huge title is cut; a page without a title is
/// summed up by its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_error_pages_from_a_proxy_are_summed_up_on_one_clean_line() {
    let control = b"<html><title>\x1b[31mBad\x07 Gate\x00way\r\nInjected: 1</title></html>".to_vec();
    let ready = failing_ready(control, "ctl");
    assert!(ready.contains("Bad Gate way Injected: 1"), "{ready:?}");
    assert!(!ready.trim_end().chars().any(char::is_control), "control characters: {ready:?}");

    let huge = format!("<title>{}</title>", "x".repeat(100_000)).into_bytes();
    let ready = failing_ready(huge, "huge");
    assert!(ready.len() < 1000 && ready.contains('…'), "{} bytes", ready.len());

    let untitled = b"<html><body><h1>502</h1>\n<p>upstream\n\tgone</p></body></html>".to_vec();
    let ready = failing_ready(untitled, "untitled");
    assert!(ready.contains("502 upstream gone") && ready.trim_end().lines().count() == 1, "{ready:?}");

    // A page in Latin-1 (old proxies' error pages): kube cannot read it as text and drops the HTTP status. The API
    // server was reached and answered: not a connect failure.
    let latin1 = b"<title>Dienst nicht verf\xfcgbar</title>".to_vec();
    let ready = failing_ready(latin1, "latin1");
    assert!(ready.contains("is not a Kubernetes answer") && ready.contains("UTF-8"), "{ready:?}");
    // Likewise a 200 that is no JSON: a proxy's login page.
    let ready = failing_ready_with(200, b"<html><title>Sign in</title></html>".to_vec(), "login");
    assert!(ready.contains("is not a Kubernetes answer"), "{ready:?}");
}

/// `--ip-family ipv6` on a cluster whose pods have IPv4 addresses only: every endpoint is ready and none is usable.
/// The caller is told the family is the cause, not that the endpoints are not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ip_family_is_named_in_the_failure() {
    let c = cluster_with(2).await;
    let kubeconfig = kubeconfig_for(&c, "family");
    let kc = kubeconfig.to_string_lossy().into_owned();
    let sidecar = Sidecar::start_env(TARGET, &["--ip-family", "ipv6"], &[("KUBECONFIG", kc.as_str())]);
    wait_for("the first sync", Duration::from_secs(20), || http_get(sidecar.admin, "/ready"));
    let m = no_endpoint_call(&sidecar).await;
    assert!(m.contains("none of its 2 ready endpoints has an address of the family --ip-family asks for"), "{m}");
    let _ = std::fs::remove_file(kubeconfig);
}

/// A server URL with credentials in it (`http://user:password@host`): naming the API server that cannot be reached
/// must not put the password into `/ready`, the log and every failed call's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_is_named_without_the_credentials_in_its_url() {
    let ip = fresh_ip();
    let kubeconfig = kubeconfig_with_server(&format!("http://admin:hunter2@{ip}:6443"), ip.into(), "userinfo");
    let sidecar = Logged::start(TARGET, &kubeconfig);
    let ready = wait_for("a failing /ready", Duration::from_secs(20), || {
        let (code, body) = http_get_any(sidecar.admin, "/ready")?;
        (code == 503 && body.contains("API server")).then_some(body)
    });
    assert!(ready.contains(&format!("API server http://{ip}:6443/")), "{ready}");
    assert!(!ready.contains("hunter2"), "{ready}");
    assert!(sidecar.lines_with("hunter2").is_empty(), "{:#?}", sidecar.lines_with("hunter2"));
    let _ = std::fs::remove_file(kubeconfig);
}
