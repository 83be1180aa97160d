//! Discovery cost, measured through the real sidecar process and the API stand-in:
//!
//! - time from an EndpointSlice change (a new ready pod) to the first call answered by that pod, over 50 changes;
//! - full sync of 1000 endpoints over 10 slices: time until the sidecar lists them all, and its RSS growth.
//!
//! `cargo bench --bench discovery` (add `-- --smoke` for a quick pass). Prints a table; asserts nothing.
//! `cargo bench --bench discovery -- --sync-only --endpoints 10000` measures only the full sync, of that many
//! endpoints (100 per slice, as the controller cuts them): the scale curve's row (`bench/scale.py`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hello_sidecar::{
    cli::ServerArgs,
    client,
    kube_standin::{
        StandIn,
        controller::{Controller, Phase, Pod},
    },
    server,
};

const BIN: &str = env!("CARGO_BIN_EXE_hello-sidecar");
const PORT: u16 = 18181;

struct Sidecar {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sidecar(api: &StandIn, ip: Ipv4Addr) -> Sidecar {
    let kubeconfig = std::env::temp_dir().join(format!("hello-bench-{}-{ip}.kubeconfig", std::process::id()));
    std::fs::write(&kubeconfig, api.kubeconfig("bench")).expect("kubeconfig");
    let (listen, admin) = (SocketAddr::from((ip, 50051)), SocketAddr::from((ip, 9901)));
    let child = Command::new(BIN)
        .args(["sidecar", "--target", "kubernetes:///hello.bench:grpc", "--connect-timeout", "200ms"])
        .args(["--listen", &listen.to_string(), "--admin", &admin.to_string()])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("sidecar");
    Sidecar { child, listen, admin }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn endpoints(admin: SocketAddr) -> u64 {
    let m = http_get(admin, "/metrics").unwrap_or_default();
    m.lines()
        .filter(|l| l.starts_with("hello_sidecar_endpoints{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn start_pod(name: &str, ip: Ipv4Addr) -> tokio::sync::oneshot::Sender<()> {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: ServerArgs,
    }
    let listen = SocketAddr::from((ip, PORT)).to_string();
    let flags = Flags::try_parse_from(["server", "--listen", &listen, "--id", name]).expect("flags");
    let (bound, ready) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::run(
        flags.args,
        async move {
            let _ = stopped.await;
        },
        Some(bound),
    ));
    ready.await.expect("pod up");
    stop
}

async fn new_endpoint_latency(changes: usize) -> Vec<Duration> {
    let api = StandIn::start(([127, 0, 21, 1], 0).into()).await.expect("stand-in");
    let mut controller = Controller::new("hello", "bench", "grpc", PORT);
    let first = Ipv4Addr::new(127, 0, 21, 10);
    let mut stops = vec![start_pod("pod-0", first).await];
    let mut pods = vec![Pod { name: "pod-0".into(), ip: IpAddr::V4(first), phase: Phase::Ready }];
    controller.publish(&api, &pods);
    let sc = sidecar(&api, Ipv4Addr::new(127, 0, 21, 2));
    let mut c = client::connect(&sc.listen.to_string()).expect("client");
    while client::call_once(&mut c, "x", Some(Duration::from_secs(1))).await.code != tonic::Code::Ok {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut samples = Vec::new();
    for i in 1..=changes {
        let name = format!("pod-{i}");
        let ip = Ipv4Addr::new(127, 0, 21 + (10 + i as u32 / 200) as u8, (10 + i % 200) as u8);
        stops.push(start_pod(&name, ip).await);
        pods.push(Pod { name: name.clone(), ip: IpAddr::V4(ip), phase: Phase::Ready });
        let t0 = Instant::now();
        controller.publish(&api, &pods);
        loop {
            let o = client::call_once(&mut c, "x", Some(Duration::from_secs(1))).await;
            if o.pod.as_deref() == Some(name.as_str()) {
                samples.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                eprintln!("{name} got no call within 10 s");
                break;
            }
        }
    }
    drop(stops);
    samples
}

async fn full_sync(n: usize, slices: usize) -> (Duration, u64, u64) {
    let api = StandIn::start(([127, 0, 22, 1], 0).into()).await.expect("stand-in");
    let sc = sidecar(&api, Ipv4Addr::new(127, 0, 22, 2));
    while http_get(sc.admin, "/live").is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(sc.child.id());
    // 1000 pods → 10 slices of 100, as the real controller cuts them.
    assert_eq!(n.div_ceil(hello_sidecar::kube_standin::controller::MAX_PER_SLICE), slices);
    let pods: Vec<Pod> = (0..n)
        .map(|i| Pod {
            name: format!("p{i}"),
            ip: IpAddr::V4(Ipv4Addr::new(127, 0, 23 + (i / 250) as u8, (i % 250 + 1) as u8)),
            phase: Phase::Ready,
        })
        .collect();
    let t0 = Instant::now();
    Controller::new("hello", "bench", "grpc", PORT).publish(&api, &pods);
    while endpoints(sc.admin) < n as u64 {
        if t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    (took, before, rss_kib(sc.child.id()))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let sync_only = args.iter().any(|a| a == "--sync-only");
    let n: usize =
        args.iter().position(|a| a == "--endpoints").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(1000);
    let slices = n.div_ceil(hello_sidecar::kube_standin::controller::MAX_PER_SLICE);
    let changes = if smoke { 5 } else { 50 };
    let mut lat = if sync_only { Vec::new() } else { new_endpoint_latency(changes).await };
    lat.sort();
    let (sync, before, after) = full_sync(n, slices).await;
    println!("\n| discovery | result |\n|---|---|");
    if !lat.is_empty() {
        println!(
            "| slice change → first call on the new pod ({} changes) | p50 {:.1} ms, p99 {:.1} ms |",
            lat.len(),
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
    }
    println!("| full sync, {n} endpoints over {slices} slices | {:.1} ms |", sync.as_secs_f64() * 1e3);
    println!(
        "| sidecar RSS before → after the {n}-endpoint sync | {:.1} → {:.1} MiB |",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
}
