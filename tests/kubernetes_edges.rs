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
        let ip = fresh_ip();
        let admin = std::net::SocketAddr::from((ip, 9901));
        let mut child = Command::new(BIN)
            .args(["sidecar", "--listen", &format!("{ip}:50051"), "--admin", &admin.to_string(), "--target", target])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
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
