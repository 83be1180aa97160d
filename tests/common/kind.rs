//! The kind tier's [`Cluster`]: a real cluster driven through kubectl, the sidecar reached by port-forward.
//! `e2e/run.sh` installs the chart and then runs `tests/kind.rs` with the namespace and release in the
//! environment.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use hello_sidecar::{client, pb::hello_service_client::HelloServiceClient};
use tonic::transport::Channel;

use super::{cluster::Cluster, http_get, metric, wait_for};

/// How long a rollout may take on a laptop.
const ROLLOUT: Duration = Duration::from_secs(180);

pub struct KindCluster {
    namespace: String,
    release: String,
    forward: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
}

/// Runs kubectl, returning stdout; panics with stderr on failure.
pub fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl").args(args).output().unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl KindCluster {
    /// Connects to the release `e2e/run.sh` installed (E2E_KIND_NAMESPACE, E2E_KIND_RELEASE).
    pub fn from_env() -> Self {
        let namespace = std::env::var("E2E_KIND_NAMESPACE").expect("E2E_KIND_NAMESPACE is set by e2e/run.sh");
        let release = std::env::var("E2E_KIND_RELEASE").unwrap_or_else(|_| "hello-sidecar".into());
        let client = format!("deploy/{release}-client");
        let mut forward = Command::new("kubectl")
            .args(["-n", &namespace, "port-forward", &client, ":50051", ":9901"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kubectl port-forward");
        let stdout = forward.stdout.take().expect("port-forward stdout");
        let (mut grpc, mut admin) = (None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // "Forwarding from 127.0.0.1:41231 -> 50051"
            let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") else { continue };
            let (port, target) = rest.split_once(" -> ").expect("port-forward line");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("port");
            match target.trim() {
                "50051" => grpc = Some(addr),
                "9901" => admin = Some(addr),
                _ => {}
            }
            if grpc.is_some() && admin.is_some() {
                break;
            }
        }
        let (Some(grpc), Some(admin)) = (grpc, admin) else { panic!("port-forward did not report both ports") };
        Self { namespace, release, forward, grpc, admin }
    }

    fn backend(&self) -> String {
        format!("deploy/{}-backend", self.release)
    }

    fn wait_ready_count(&self, n: usize) {
        wait_for(&format!("{n} ready backend pods"), ROLLOUT, || (self.ready_pods().len() == n).then_some(()));
    }
}

impl Cluster for KindCluster {
    fn client(&self) -> HelloServiceClient<Channel> {
        client::connect(&self.grpc.to_string()).expect("client")
    }

    fn grpc_addr(&self) -> String {
        self.grpc.to_string()
    }

    fn ready_pods(&self) -> Vec<String> {
        let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/component=backend", self.release);
        let jsonpath = r#"{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.metadata.deletionTimestamp}{"\n"}{end}"#;
        let out =
            kubectl(&["-n", &self.namespace, "get", "pods", "-l", &selector, "-o", &format!("jsonpath={jsonpath}")]);
        let mut names: Vec<String> = out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (name, ready, deleting) = (f.next()?, f.next()?, f.next());
                (ready == "True" && deleting.is_none()).then(|| name.to_owned())
            })
            .collect();
        names.sort();
        names
    }

    fn wait_sidecar_endpoints(&self, n: usize) {
        wait_for(&format!("the sidecar to see {n} endpoints"), ROLLOUT, || {
            let m = http_get(self.admin, "/metrics")?;
            (metric(&m, "hello_sidecar_endpoints{state=\"ready\"}") == n as u64).then_some(())
        });
    }

    fn scale(&mut self, n: usize) {
        kubectl(&["-n", &self.namespace, "scale", &self.backend(), &format!("--replicas={n}")]);
        kubectl(&["-n", &self.namespace, "rollout", "status", &self.backend(), "--timeout=180s"]);
        self.wait_ready_count(n);
    }

    fn delete_pod(&mut self, name: &str) {
        let n = self.ready_pods().len();
        kubectl(&["-n", &self.namespace, "delete", "pod", name, "--wait=true"]);
        self.wait_ready_count(n);
    }

    fn rolling_restart(&mut self) {
        let n = self.ready_pods().len();
        kubectl(&["-n", &self.namespace, "rollout", "restart", &self.backend()]);
        kubectl(&["-n", &self.namespace, "rollout", "status", &self.backend(), "--timeout=180s"]);
        self.wait_ready_count(n);
    }
}

impl Drop for KindCluster {
    fn drop(&mut self) {
        let _ = self.forward.kill();
        let _ = self.forward.wait();
    }
}
