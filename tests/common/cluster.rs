//! A Kubernetes cluster for the local tier: the API stand-in, an EndpointSlice controller, and pods that are real
//! `server` processes on their own loopback addresses. The kind tier drives the same scenarios with kubectl.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hello_sidecar::{
    client::{self, Outcome},
    kube_standin::{
        StandIn,
        controller::{Controller, Phase, Pod},
    },
    pb::hello_service_client::HelloServiceClient,
};
use tonic::transport::Channel;

use super::{BACKEND_PORT, Backend, Sidecar, fresh_ip};

pub const SERVICE: &str = "hello";
pub const NAMESPACE: &str = "default";
pub const TARGET: &str = "kubernetes:///hello.default:grpc";

pub struct KubeCluster {
    pub api: StandIn,
    controller: Controller,
    pub pods: Vec<(Pod, Option<Backend>)>,
    kubeconfig: PathBuf,
    next: usize,
}

impl KubeCluster {
    pub async fn new() -> Self {
        let api = StandIn::start((fresh_ip(), 6443).into()).await.expect("stand-in starts");
        let kubeconfig =
            std::env::temp_dir().join(format!("hello-sidecar-kubeconfig-{}-{}", std::process::id(), api.addr().ip()));
        std::fs::write(&kubeconfig, api.kubeconfig(NAMESPACE)).expect("write kubeconfig");
        let controller = Controller::new(SERVICE, NAMESPACE, "grpc", BACKEND_PORT);
        Self { api, controller, pods: Vec::new(), kubeconfig, next: 0 }
    }

    /// Starts a pod process and lists it in `phase`; returns its name.
    pub fn add_pod(&mut self, phase: Phase) -> String {
        let name = format!("hello-{}", self.next);
        self.next += 1;
        let backend = Backend::start(&name, &[]);
        let pod = Pod { name: name.clone(), ip: backend.addr.ip(), phase };
        self.pods.push((pod, Some(backend)));
        self.publish();
        name
    }

    /// Lists a pod that has no process (for scale tests of discovery alone).
    pub fn add_phantom(&mut self, ip: std::net::IpAddr) {
        let name = format!("phantom-{}", self.next);
        self.next += 1;
        self.pods.push((Pod { name, ip, phase: Phase::Ready }, None));
    }

    pub fn set_phase(&mut self, name: &str, phase: Phase) {
        for (p, _) in &mut self.pods {
            if p.name == name {
                p.phase = phase;
            }
        }
        self.publish();
    }

    /// Deletes a pod as Kubernetes does: terminating in the slice and SIGTERM at once; gone from the slice once
    /// the process has exited.
    pub fn delete_pod(&mut self, name: &str) {
        self.set_phase(name, Phase::Terminating);
        let idx = self.pods.iter().position(|(p, _)| p.name == name).expect("pod exists");
        if let Some(b) = self.pods[idx].1.as_mut() {
            b.proc.terminate();
            let proc = &mut b.proc;
            super::wait_for(&format!("{name} to exit"), Duration::from_secs(20), || (!proc.is_running()).then_some(()));
        }
        self.pods.remove(idx);
        self.publish();
    }

    pub fn publish(&mut self) {
        let pods: Vec<Pod> = self.pods.iter().map(|(p, _)| p.clone()).collect();
        self.controller.publish(&self.api, &pods);
    }

    /// The first slice as published (to build overlapping copies).
    pub fn api_slice_copy(&self) -> k8s_openapi::api::discovery::v1::EndpointSlice {
        let pods: Vec<Pod> = self.pods.iter().map(|(p, _)| p.clone()).collect();
        self.controller.slices(&pods).remove(0)
    }

    pub fn ready_names(&self) -> Vec<String> {
        self.pods.iter().filter(|(p, _)| p.phase == Phase::Ready).map(|(p, _)| p.name.clone()).collect()
    }

    pub fn sidecar(&self, extra: &[&str]) -> Sidecar {
        self.sidecar_for(TARGET, extra)
    }

    /// A sidecar watching this cluster with `--target target`.
    pub fn sidecar_for(&self, target: &str, extra: &[&str]) -> Sidecar {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        Sidecar::start_env(target, extra, &[("KUBECONFIG", kubeconfig.as_str())])
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Steady traffic through the sidecar until stopped, every outcome kept with its finish time.
///
/// The calls run on a runtime of their own, on their own thread, with a client made there. Tests block their own
/// thread while they wait (`wait_for`, `http_get`); load on the test's runtime froze with it, and a call whose
/// HEADERS had left but whose DATA had not ended at the sidecar as DEADLINE_EXCEEDED, a failure the proxy never
/// caused (seen in `tls.rs` on a loaded CI machine).
pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<(Instant, Outcome)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    /// Starts `concurrency` call loops against the sidecar's gRPC address `addr` (`host:port`).
    pub fn start(addr: &str, concurrency: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let run = {
            let (stop, outcomes, addr) = (stop.clone(), outcomes.clone(), addr.to_owned());
            move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("load runtime");
                rt.block_on(async move {
                    let client = client::connect(&addr).expect("load client");
                    let tasks: Vec<_> = (0..concurrency)
                        .map(|_| {
                            let (mut c, stop, outcomes) = (client.clone(), stop.clone(), outcomes.clone());
                            tokio::spawn(async move {
                                while !stop.load(Ordering::Relaxed) {
                                    let o = client::call_once(&mut c, "load", Some(Duration::from_secs(5))).await;
                                    outcomes.lock().expect("lock").push((Instant::now(), o));
                                    tokio::time::sleep(Duration::from_millis(2)).await;
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                })
            }
        };
        let thread = std::thread::Builder::new().name("load".into()).spawn(run).expect("load thread");
        Self { stop, outcomes, thread }
    }

    /// Outcomes finished after `since`.
    pub fn since(&self, since: Instant) -> Vec<Outcome> {
        self.outcomes.lock().expect("lock").iter().filter(|(t, _)| *t >= since).map(|(_, o)| o.clone()).collect()
    }

    /// Stops the loops (each finishes its call in flight) and returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        let all = self.outcomes.lock().expect("lock");
        all.iter().map(|(_, o)| o.clone()).collect()
    }
}

/// The failed outcomes, for assertion messages.
pub fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.code != tonic::Code::Ok).collect()
}

/// What a scenario needs from a cluster. The local tier (stand-in + processes) and the kind tier (a real
/// cluster through kubectl) implement it, so every scenario is written once.
pub trait Cluster {
    /// A client of the sidecar (the app's view).
    fn client(&self) -> HelloServiceClient<Channel>;
    /// The sidecar's gRPC address as the app sees it (`host:port`).
    fn grpc_addr(&self) -> String;
    /// Backend pods that are ready, by name.
    fn ready_pods(&self) -> Vec<String>;
    /// Waits until the sidecar has `n` endpoints with an open connection.
    fn wait_sidecar_endpoints(&self, n: usize);
    /// Scales the backend to `n` pods and returns once they are ready (and removed ones are gone).
    fn scale(&mut self, n: usize);
    /// Deletes one pod; its replacement comes up as a ReplicaSet would bring it.
    fn delete_pod(&mut self, name: &str);
    /// Replaces every pod, one at a time: new pod ready, then the old one terminating, then gone.
    fn rolling_restart(&mut self);
}

/// The local tier: the API stand-in, pods as processes, the real sidecar.
pub struct LocalCluster {
    pub kube: KubeCluster,
    pub sidecar: Sidecar,
}

impl LocalCluster {
    pub async fn start(pods: usize) -> Self {
        let mut kube = KubeCluster::new().await;
        for _ in 0..pods {
            kube.add_pod(Phase::Ready);
        }
        let sidecar = kube.sidecar(&[]);
        Self { kube, sidecar }
    }

    fn add_ready_pod(&mut self) -> String {
        let name = self.kube.add_pod(Phase::Starting);
        std::thread::sleep(Duration::from_millis(100));
        self.kube.set_phase(&name, Phase::Ready);
        name
    }
}

impl Cluster for LocalCluster {
    fn client(&self) -> HelloServiceClient<Channel> {
        self.sidecar.client()
    }

    fn grpc_addr(&self) -> String {
        self.sidecar.addr.to_string()
    }

    fn ready_pods(&self) -> Vec<String> {
        self.kube.ready_names()
    }

    fn wait_sidecar_endpoints(&self, n: usize) {
        self.sidecar.wait_ready_endpoints(n as u64);
    }

    fn scale(&mut self, n: usize) {
        while self.kube.ready_names().len() < n {
            self.add_ready_pod();
        }
        while self.kube.ready_names().len() > n {
            let last = self.kube.ready_names().pop().unwrap_or_default();
            self.kube.delete_pod(&last);
        }
    }

    fn delete_pod(&mut self, name: &str) {
        self.kube.delete_pod(name);
        self.add_ready_pod();
    }

    fn rolling_restart(&mut self) {
        for old in self.kube.ready_names() {
            self.add_ready_pod();
            std::thread::sleep(Duration::from_millis(200));
            self.kube.delete_pod(&old);
        }
    }
}
