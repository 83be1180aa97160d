//! The `demo` role: a small cluster on one machine — backend pods on distinct loopback addresses, the sidecar in
//! front of them, and traffic through it — printing calls per pod as it goes.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::{
    cli::{DemoArgs, ServerArgs, SidecarArgs},
    client::{self, Outcome},
    discovery::Target,
    grpc::code_name,
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
    /// A pod did not report its address.
    #[error("a pod did not start")]
    PodStart,
}

const DEMO_PORT: u16 = 18080;

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let mut pods = Vec::new();
    for i in 0..args.pods {
        let ip = Ipv4Addr::new(127, 0, 10, 10 + i as u8);
        let (tx, rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let server_args = ServerArgs {
            listen: SocketAddr::from((ip, DEMO_PORT)),
            admin: None,
            id: Some(format!("hello-{i}")),
            delay: Duration::from_micros(200),
            delay_jitter: Duration::from_millis(1),
            error_rate: 0.0,
            error_code: tonic::Code::Unavailable,
            drain_timeout: Duration::from_secs(5),
        };
        tokio::spawn(server::run(
            server_args,
            async move {
                let _ = stopped.await;
            },
            Some(tx),
        ));
        let addr = rx.await.map_err(|_| DemoError::PodStart)?;
        pods.push((addr, stop));
    }
    let target = Target::Static(pods.iter().map(|(a, _)| a.to_string()).collect());
    let (stop_sidecar, sidecar_stopped) = oneshot::channel::<()>();
    let sidecar_args = SidecarArgs {
        listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        admin: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        target,
        default_timeout: Duration::from_secs(5),
        failfast_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        max_concurrent_calls: 1024,
        max_message_bytes: 4 << 20,
        retry_budget: 0.2,
        eject_after: 5,
        drain_timeout: Duration::from_secs(5),
        ewma_decay: Duration::from_secs(1),
    };
    let running = sidecar::start(sidecar_args, async move {
        let _ = sidecar_stopped.await;
    })
    .await?;
    tracing::info!(listen = %running.listen, admin = %running.admin, "demo sidecar up");

    let Ok(client) = client::connect(&running.listen.to_string()) else {
        return Err(DemoError::PodStart);
    };
    let start = Instant::now();
    let mut all: Vec<Outcome> = Vec::new();
    let mut second = 0;
    while start.elapsed() < args.duration {
        second += 1;
        let tick = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..8 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                while tick.elapsed() < Duration::from_secs(1) {
                    out.push(client::call_once(&mut c, &format!("demo-{w}"), Some(Duration::from_secs(2))).await);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                out
            }));
        }
        let mut this: Vec<Outcome> = Vec::new();
        for t in tasks {
            this.extend(t.await.unwrap_or_default());
        }
        report(second, &this);
        all.extend(this);
    }
    let summary = client::summarize(&all, start.elapsed());
    emit(&format!("\n== summary ==\n{summary}"));
    let _ = stop_sidecar.send(());
    let _ = running.done.await;
    for (_, stop) in pods {
        let _ = stop.send(());
    }
    Ok(())
}

fn report(second: u32, outcomes: &[Outcome]) {
    let mut by_pod: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for o in outcomes {
        if o.code == tonic::Code::Ok {
            *by_pod.entry(o.pod.clone().unwrap_or_default()).or_default() += 1;
        } else {
            *errors.entry(code_name(o.code)).or_default() += 1;
        }
    }
    let pods: Vec<String> = by_pod.iter().map(|(p, n)| format!("{p}:{n:>4}")).collect();
    let errs: Vec<String> = errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
    emit(&format!(
        "t={second:>3}s  {}  errors: {}",
        pods.join("  "),
        if errs.is_empty() { "0".into() } else { errs.join(" ") }
    ));
}

/// The demo's output goes to stdout: it is what the user asked to see.
fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
