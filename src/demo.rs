//! The `demo` role: a whole cluster on one machine, so a newcomer can watch the product work.
//!
//! In one process: the Kubernetes API stand-in, backend "pods" (real `server`s on 127.0.10.x, all on the same
//! port, as pods are), an EndpointSlice controller that publishes them as the real one does, the sidecar watching
//! the stand-in, and an app driving calls through the sidecar. It prints calls per pod every second while it
//! scales 3 → 5 → 2, restarts a pod and takes the API away for a while, then a summary.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use tokio::time::Instant;

use crate::{
    cli::{DemoArgs, ServerArgs, SidecarArgs},
    client::{self, Outcome},
    grpc::code_name,
    kube_standin::{
        StandIn,
        controller::{Controller, Phase, Pod},
    },
    server, sidecar,
};

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A pod could not start.
    #[error("pod: {0}")]
    Server(#[from] server::StartError),
    /// The sidecar could not start.
    #[error("sidecar: {0}")]
    Sidecar(#[from] sidecar::StartError),
    /// Something of the simulated cluster could not start.
    #[error("{0}")]
    Setup(String),
}

const PORT: u16 = 18080;
const NAMESPACE: &str = "demo";

#[derive(Parser)]
struct SidecarFlags {
    #[command(flatten)]
    args: SidecarArgs,
}

#[derive(Parser)]
struct ServerFlags {
    #[command(flatten)]
    args: ServerArgs,
}

struct Cluster {
    api: StandIn,
    controller: Controller,
    pods: Vec<(Pod, oneshot::Sender<()>)>,
    next: u8,
}

impl Cluster {
    async fn add_pod(&mut self) -> Result<String, DemoError> {
        let (i, name) = (self.next, format!("hello-{}", self.next));
        self.next = self.next.wrapping_add(1);
        let ip = Ipv4Addr::new(127, 0, 10, 10 + i);
        let listen = SocketAddr::from((ip, PORT)).to_string();
        let flags =
            ServerFlags::try_parse_from(["server", "--listen", &listen, "--id", &name, "--delay-jitter", "2ms"])
                .map_err(|e| DemoError::Setup(e.to_string()))?;
        let (bound_tx, bound) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let pod = tokio::spawn(server::run(flags.args, stopped, Some(bound_tx)));
        if bound.await.is_err() {
            // The pod ended before it listened: say why (most often its address is taken by another demo).
            let why = match pod.await {
                Ok(Err(e)) => e.to_string(),
                _ => "it stopped".into(),
            };
            return Err(DemoError::Setup(format!("pod {name} did not start on {listen}: {why}")));
        }
        self.pods.push((Pod { name: name.clone(), ip: IpAddr::V4(ip), phase: Phase::Starting }, stop));
        self.publish();
        Ok(name)
    }

    fn set(&mut self, name: &str, phase: Phase) {
        self.pods.iter_mut().filter(|(p, _)| p.name == name).for_each(|(p, _)| p.phase = phase);
        self.publish();
    }

    /// Pod deletion as Kubernetes does it: terminating in the slice and SIGTERM together; gone after the drain.
    fn delete(&mut self, name: &str) {
        self.set(name, Phase::Terminating);
        if let Some(i) = self.pods.iter().position(|(p, _)| p.name == name) {
            let (_, stop) = self.pods.remove(i);
            let _ = stop.send(());
        }
    }

    fn forget_terminated(&mut self) {
        self.publish();
    }

    fn publish(&mut self) {
        let pods: Vec<Pod> = self.pods.iter().map(|(p, _)| p.clone()).collect();
        self.controller.publish(&self.api, &pods);
    }

    fn ready(&self) -> Vec<String> {
        self.pods.iter().filter(|(p, _)| p.phase == Phase::Ready).map(|(p, _)| p.name.clone()).collect()
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let api = StandIn::start(SocketAddr::from(([127, 0, 10, 1], 0)))
        .await
        .map_err(|e| DemoError::Setup(format!("API stand-in: {e}")))?;
    let kubeconfig = std::env::temp_dir().join(format!("hello-sidecar-demo-{}.kubeconfig", std::process::id()));
    std::fs::write(&kubeconfig, api.kubeconfig(NAMESPACE)).map_err(|e| DemoError::Setup(format!("kubeconfig: {e}")))?;
    let mut cluster =
        Cluster { api, controller: Controller::new("hello", NAMESPACE, "grpc", PORT), pods: Vec::new(), next: 0 };

    emit("hello-sidecar demo: a simulated cluster on this machine");
    emit(&format!("  API stand-in   http://{}  (EndpointSlices for Service hello.{NAMESPACE})", cluster.api.addr()));
    for _ in 0..args.pods {
        let name = cluster.add_pod().await?;
        cluster.set(&name, Phase::Ready);
    }
    emit(&format!("  pods           {} on 127.0.10.x:{PORT}", cluster.ready().join(", ")));

    let kubeconfig_s = kubeconfig.to_string_lossy().into_owned();
    let flags = SidecarFlags::try_parse_from([
        "sidecar",
        "--listen",
        "127.0.10.2:0",
        "--admin",
        "127.0.10.2:0",
        "--target",
        &format!("kubernetes:///hello.{NAMESPACE}:grpc"),
        "--kubeconfig",
        &kubeconfig_s,
    ])
    .map_err(|e| DemoError::Setup(e.to_string()))?;
    let (stop_sidecar, sidecar_stopped) = oneshot::channel::<()>();
    let running = sidecar::start(flags.args, async move {
        let _ = sidecar_stopped.await;
    })
    .await?;
    emit(&format!("  sidecar        {}  (admin http://{}/debug/endpoints)", running.listen, running.admin));
    emit("  app            4 callers → sidecar, SayHello with a 2 s deadline\n");

    let client = client::connect(&running.listen.to_string()).map_err(|e| DemoError::Setup(e.to_string()))?;
    let outcomes: Arc<Mutex<Vec<(Instant, Outcome)>>> = Arc::default();
    let stop_traffic = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for w in 0..4 {
        let (mut c, out, stop) = (client.clone(), outcomes.clone(), stop_traffic.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = client::call_once(&mut c, &format!("app-{w}"), Some(Duration::from_secs(2))).await;
                out.lock().push((Instant::now(), o));
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }));
    }

    let start = Instant::now();
    let total = args.duration.max(Duration::from_secs(6));
    let at = |f: f64| total.mul_f64(f);
    let mut script: Vec<(Duration, Step)> = vec![
        (at(0.17), Step::ScaleTo(5)),
        (at(0.37), Step::ScaleTo(2)),
        (at(0.40), Step::Forget),
        (at(0.53), Step::Restart),
        (at(0.70), Step::ApiDown),
        (at(0.84), Step::ApiUp),
    ];
    script.reverse();
    let mut second = 0u32;
    let mut seen = 0usize;
    while start.elapsed() < total {
        second += 1;
        let tick = start + Duration::from_secs(u64::from(second));
        while let Some((when, _)) = script.last() {
            let due = start + *when;
            if due > tick {
                break;
            }
            tokio::time::sleep_until(due).await;
            if let Some((_, step)) = script.pop() {
                run_step(&mut cluster, step).await?;
            }
        }
        tokio::time::sleep_until(tick).await;
        let all = outcomes.lock();
        report(second, &all[seen..]);
        seen = all.len();
    }
    stop_traffic.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in callers {
        let _ = c.await;
    }
    let all: Vec<Outcome> = outcomes.lock().iter().map(|(_, o)| o.clone()).collect();
    let summary = client::summarize(&all, start.elapsed());
    emit(&format!("\n== summary ==\n{summary}"));
    let failed = summary.calls - summary.by_status.get("OK").copied().unwrap_or(0);
    if failed == 0 {
        emit("Every call succeeded through scale-up, scale-down, the rolling restart and the API outage.");
    } else {
        emit(&format!("{failed} calls failed: see the status counts above."));
    }
    let _ = stop_sidecar.send(());
    let _ = running.done.await;
    for (_, stop) in cluster.pods.drain(..) {
        let _ = stop.send(());
    }
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}

#[derive(Debug)]
enum Step {
    ScaleTo(usize),
    Forget,
    Restart,
    ApiDown,
    ApiUp,
}

async fn run_step(cluster: &mut Cluster, step: Step) -> Result<(), DemoError> {
    match step {
        Step::ScaleTo(n) => {
            let ready = cluster.ready();
            if n > ready.len() {
                let mut new = Vec::new();
                for _ in ready.len()..n {
                    new.push(cluster.add_pod().await?);
                }
                emit(&format!("  >> scale up {} → {n}: {} created (not ready yet)", ready.len(), new.join(", ")));
                tokio::time::sleep(Duration::from_millis(300)).await;
                for name in &new {
                    cluster.set(name, Phase::Ready);
                }
                emit("  >> new pods passed readiness: their EndpointSlice entries turn ready");
            } else {
                let doomed: Vec<String> = ready.into_iter().skip(n).collect();
                emit(&format!("  >> scale down to {n}: {} terminating (SIGTERM, drain)", doomed.join(", ")));
                for name in &doomed {
                    cluster.delete(name);
                }
            }
        }
        Step::Forget => {
            cluster.forget_terminated();
            emit("  >> terminated pods removed from the EndpointSlice");
        }
        Step::Restart => {
            if let Some(old) = cluster.ready().first().cloned() {
                let new = cluster.add_pod().await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                cluster.set(&new, Phase::Ready);
                cluster.delete(&old);
                emit(&format!("  >> rolling restart: {new} ready, then {old} terminating"));
                tokio::time::sleep(Duration::from_millis(300)).await;
                cluster.forget_terminated();
            }
        }
        Step::ApiDown => {
            cluster.api.down();
            emit("  >> API server DOWN: the sidecar keeps the last known endpoints");
        }
        Step::ApiUp => {
            cluster.api.up().await.map_err(|e| DemoError::Setup(format!("API stand-in: {e}")))?;
            emit("  >> API server back: the watch resumes");
        }
    }
    Ok(())
}

fn report(second: u32, outcomes: &[(Instant, Outcome)]) {
    let mut by_pod: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, o) in outcomes {
        if o.code == tonic::Code::Ok {
            *by_pod.entry(o.pod.clone().unwrap_or_default()).or_default() += 1;
        } else {
            *errors.entry(code_name(o.code)).or_default() += 1;
        }
    }
    let pods: Vec<String> = by_pod.iter().map(|(p, n)| format!("{p}:{n:>4}")).collect();
    let errs: Vec<String> = errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
    let errs = if errs.is_empty() { "0".to_owned() } else { errs.join(" ") };
    emit(&format!("t={second:>3}s  errors: {errs:<6} calls per pod  {}", pods.join("  ")));
}

/// The demo's output goes to stdout: it is what the user asked to see.
fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
