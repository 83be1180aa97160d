#!/usr/bin/env python3
"""Side-by-side benchmark: direct to a backend, through hello-sidecar (h2c, and mTLS through `inbound` proxies),
and through nginx grpc_pass.

    python3 bench/bench.py                 # full run: 3 loads x 3 targets, median of 3 runs of 5 s each
    python3 bench/bench.py --smoke         # seconds; proves the harness works (run by scripts/test)
    python3 bench/bench.py --runs 5 --seconds 10

It installs h2load (Debian nghttp2-client) and nginx if missing, builds the release binary, starts 3
`hello-sidecar server` backends on loopback, and alternates the targets within each repetition so machine noise
hits all of them alike. h2load cannot see grpc-status, so every run also checks that each response carried the
23-byte HelloResponse frame, and samples the target with a real gRPC client: an error storm never counts as
throughput. The mTLS path is sidecar --TLS--> `hello-sidecar inbound` (one per backend) --h2c--> backend, with
certificates made by the openssl CLI; pooled connections amortise the handshakes, so it measures the record layer
and the extra hop. Results: a table on stdout and in bench/results.md.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = TARGET / "release" / "hello-sidecar"
BODY = b"\x00\x00\x00\x00\x07\x0a\x05world"  # HelloRequest{name: "world"} in a gRPC frame
RESPONSE_BYTES = 23  # HelloResponse{"Hello, world!", 200} in a gRPC frame
PATH = "/hello.v1.HelloService/SayHello"
LOADS = [("1 stream", 1, 1), ("32 streams", 1, 32), ("16 conns x 32 streams", 16, 32)]
BACKENDS = ["127.0.0.61:8080", "127.0.0.62:8080", "127.0.0.63:8080"]
SIDECAR, SIDECAR_ADMIN, NGINX = "127.0.0.60:50051", "127.0.0.60:9901", "127.0.0.60:50052"
TLS_SIDECAR, TLS_SIDECAR_ADMIN = "127.0.0.60:50053", "127.0.0.60:9904"
INBOUNDS = ["127.0.0.64:8443", "127.0.0.65:8443", "127.0.0.66:8443"]
TRUST_DOMAIN = "spiffe://bench.local"


def make_certs(tmp: Path) -> Path:
    """A CA, the backends' certificate (SPIFFE ID .../sa/backend) and the sidecar's (.../sa/client), by openssl."""
    d = tmp / "pki"
    d.mkdir()
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    run("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=bench CA", "-days", "1",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", "-out", "ca.crt")
    for name, eku in (("backend", "serverAuth"), ("client", "clientAuth")):
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")
        run("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(f"subjectAltName=URI:{TRUST_DOMAIN}/ns/bench/sa/{name}\n"
                                       f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={eku}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return d


def ensure_tools(smoke: bool):
    missing = [pkg for tool, pkg in (("h2load", "nghttp2-client"), ("nginx", "nginx")) if not shutil.which(tool)
               and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    # The smoke run only proves the harness works: the debug build the tests already made will do.
    profile = [] if smoke else ["--release"]
    subprocess.run(["cargo", "build", *profile, "--quiet", "--manifest-path", str(ROOT / "Cargo.toml")], check=True)


def wait_port(addr, timeout=20.0):
    import socket
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(addr)


def nginx_conf(tmp: Path) -> Path:
    servers = "\n".join(f"    server {b};" for b in BACKENDS)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
user nobody nogroup;
worker_processes auto;
daemon off;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream backends {{
{servers}
    keepalive 1024;   # nginx does not multiplex upstream: one connection per call in flight
    keepalive_requests 1000000;
  }}
  server {{
    listen {NGINX} http2;
    keepalive_requests 1000000;  # the default (1000) ends a benchmark connection with GOAWAY
    location / {{ grpc_pass grpc://backends; }}
  }}
}}
""")
    return conf


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def h2load(addr, conns, streams, seconds, tmp: Path):
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to an existing log
    body = tmp / "body.bin"
    body.write_bytes(BODY)
    cmd = ["h2load", "-D", str(seconds), "-c", str(conns), "-m", str(streams), "-t",
           "1", "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file",
           str(log), f"http://{addr}{PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = succeeded = data = 0.0
    for line in out.splitlines():
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            succeeded = float(line.split(",")[3].split()[0])
        elif line.startswith("traffic:"):
            data = float(line.split("(")[-1].split(")")[0])
    # One line per request: start, status, duration in µs. A request still in flight when the run ends has no
    # duration (under heavy machine load h2load logs such lines): it has no latency to count.
    fields = (l.split("\t") for l in log.read_text().splitlines())
    lat = sorted(int(f[2]) for f in fields if len(f) == 3 and f[2].isdigit())
    pct = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] / 1000.0 if lat else float("nan")
    per_response = data / succeeded if succeeded else 0
    return {"rps": rps, "p50": pct(0.5), "p99": pct(0.99), "calls": succeeded, "bytes_per_response": per_response}


def sample_with_client(addr):
    """A real gRPC client reads grpc-status, which h2load cannot."""
    r = subprocess.run([str(BIN), "call", "--addr", addr, "-n", "20", "-c", "2", "--expect-message", "Hello, world!"],
                       capture_output=True, text=True)
    return r.returncode == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="one short run of each target and load")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--plot", action="store_true", help="also draw bench/results.png (gnuplot, installed if missing)")
    args = ap.parse_args()
    global BIN
    if args.smoke:
        args.runs, args.seconds = 1, 1
        BIN = TARGET / "debug" / "hello-sidecar"
    ensure_tools(args.smoke)
    procs = []
    tmp = Path(tempfile.mkdtemp(prefix="hello-bench-"))
    try:
        for i, b in enumerate(BACKENDS):
            procs.append(subprocess.Popen([str(BIN), "server", "--listen", b, "--id", f"bench-{i}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for b in BACKENDS:
            wait_port(b)
        sidecar = subprocess.Popen([str(BIN), "sidecar", "--listen", SIDECAR, "--admin", SIDECAR_ADMIN,
                                    "--target", "static:///" + ",".join(BACKENDS)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(sidecar)
        nginx = subprocess.Popen(["nginx", "-c", str(nginx_conf(tmp)), "-p", str(tmp)], stdout=subprocess.DEVNULL)
        procs.append(nginx)
        pki = make_certs(tmp)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": {**os.environ, "RUST_LOG": "warn"}}
        inbounds = []
        for inbound, backend in zip(INBOUNDS, BACKENDS):
            admin = inbound.rsplit(":", 1)[0] + ":9903"
            inbounds.append(subprocess.Popen(
                [str(BIN), "inbound", "--listen", inbound, "--admin", admin, "--forward", backend,
                 "--tls-cert", str(pki / "backend.crt"), "--tls-key", str(pki / "backend.key"),
                 "--tls-ca", str(pki / "ca.crt"), "--allow", f"{TRUST_DOMAIN}/ns/bench/*"], **quiet))
        procs.extend(inbounds)
        tls_sidecar = subprocess.Popen(
            [str(BIN), "sidecar", "--listen", TLS_SIDECAR, "--admin", TLS_SIDECAR_ADMIN,
             "--target", "static:///" + ",".join(INBOUNDS), "--tls-cert", str(pki / "client.crt"),
             "--tls-key", str(pki / "client.key"), "--tls-ca", str(pki / "ca.crt"),
             "--tls-server-identity", f"{TRUST_DOMAIN}/ns/bench/sa/backend"], **quiet)
        procs.append(tls_sidecar)
        wait_port(SIDECAR)
        wait_port(NGINX)
        wait_port(TLS_SIDECAR)
        for i in INBOUNDS:
            wait_port(i)
        time.sleep(0.5)
        idle_rss = rss_kib([sidecar.pid])
        idle_rss_tls = rss_kib([tls_sidecar.pid])

        targets = {"direct": (BACKENDS[0], lambda: []), "sidecar": (SIDECAR, lambda: [sidecar.pid]),
                   "nginx": (NGINX, lambda: [nginx.pid, *children(nginx.pid)]),
                   # CPU of both halves of the mTLS path: the sidecar and the inbound proxies.
                   "sidecar-mtls": (TLS_SIDECAR, lambda: [tls_sidecar.pid, *(p.pid for p in inbounds)])}
        for name, (addr, _) in targets.items():
            if not sample_with_client(addr):
                sys.exit(f"{name} at {addr} does not answer HelloService correctly")
        results = {(load, t): [] for load, _, _ in LOADS for t in targets}
        peak_rss = idle_rss
        peak_rss_tls = idle_rss_tls
        # The sidecar process whose RSS is sampled under each target's load (the mTLS one's, not its inbounds').
        rss_of = {"sidecar": sidecar.pid, "sidecar-mtls": tls_sidecar.pid}
        order = list(targets)
        for run in range(args.runs):
            for load, conns, streams in LOADS:
                for name in order[run % len(order):] + order[:run % len(order)]:
                    addr, pids = targets[name]
                    cpu0 = cpu_seconds(pids())
                    sampling, peak = True, [0]

                    def sample():
                        while sampling:
                            peak[0] = max(peak[0], rss_kib([rss_of[name]]))
                            time.sleep(0.1)

                    sampler = threading.Thread(target=sample)
                    if name in rss_of:
                        sampler.start()
                    r = h2load(addr, conns, streams, args.seconds, tmp)
                    sampling = False
                    if name in rss_of:
                        sampler.join()
                    if name == "sidecar":
                        peak_rss = max(peak_rss, peak[0])
                    elif name == "sidecar-mtls":
                        peak_rss_tls = max(peak_rss_tls, peak[0])
                    r["cpu_per_10k"] = (cpu_seconds(pids()) - cpu0) / max(r["calls"], 1) * 10_000 if name != "direct" else None
                    if abs(r["bytes_per_response"] - RESPONSE_BYTES) > 0.5:
                        sys.exit(f"{name} {load}: {r['bytes_per_response']:.1f} bytes per response, not {RESPONSE_BYTES}: errors")
                    results[(load, name)].append(r)
                    print(f"  run {run + 1} {load:<22} {name:<8} {r['rps']:>10.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms", flush=True)
        for name, (addr, _) in targets.items():
            if not sample_with_client(addr):
                sys.exit(f"{name} stopped answering correctly during the run")
        report(results, list(targets), (idle_rss, peak_rss, idle_rss_tls, peak_rss_tls), args)
    finally:
        for p in procs:
            # SIGTERM, not SIGKILL: a killed nginx master leaves its workers holding the port.
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def report(results, targets, rss, args):
    idle_rss, peak_rss, idle_rss_tls, peak_rss_tls = rss
    med = lambda rs, k: statistics.median(r[k] for r in rs) if rs and rs[0][k] is not None else None
    lines = [f"Runs: median of {args.runs} x {args.seconds} s, h2load -t1, unary SayHello, 3 backends on loopback.", "",
             "| load | target | req/s | p50 ms | p99 ms | proxy CPU s / 10k calls |", "|---|---|---:|---:|---:|---:|"]
    for load, _, _ in LOADS:
        for t in targets:
            rs = results[(load, t)]
            cpu = med(rs, "cpu_per_10k")
            lines.append(f"| {load} | {t} | {med(rs, 'rps'):.0f} | {med(rs, 'p50'):.3f} | {med(rs, 'p99'):.3f} | "
                         f"{'-' if cpu is None else f'{cpu:.3f}'} |")
    lines += ["", "| ratio | " + " | ".join(l for l, _, _ in LOADS) + " |", "|---|" + "---:|" * len(LOADS)]
    for a, b in (("sidecar", "direct"), ("sidecar", "nginx"), ("sidecar-mtls", "sidecar")):
        cells = [f"{med(results[(l, a)], 'rps') / med(results[(l, b)], 'rps'):.2f}x" for l, _, _ in LOADS]
        lines.append(f"| throughput {a}/{b} | " + " | ".join(cells) + " |")
    one = LOADS[0][0]
    lines += ["", f"Latency at 1 stream: sidecar p50 - direct p50 = "
              f"{(med(results[(one, 'sidecar')], 'p50') - med(results[(one, 'direct')], 'p50')) * 1000:.0f} us, "
              f"p99 - p99 = {(med(results[(one, 'sidecar')], 'p99') - med(results[(one, 'direct')], 'p99')) * 1000:.0f} us.",
              f"Sidecar RSS: {idle_rss / 1024:.1f} MiB idle, {peak_rss / 1024:.1f} MiB peak under load; "
              f"mTLS sidecar: {idle_rss_tls / 1024:.1f} MiB idle, {peak_rss_tls / 1024:.1f} MiB peak."]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.smoke:
        stamp = time.strftime("%Y-%m-%d")
        (ROOT / "bench" / "results.md").write_text(f"# Latest results ({stamp}, {os.cpu_count()} cores)\n\n{text}\n")
    if args.plot:
        plot(results, targets, med, ROOT / "bench" / ("smoke.png" if args.smoke else "results.png"))


def plot(results, targets, med, out: Path):
    """Grouped bars of req/s per load and target, drawn by gnuplot."""
    if not shutil.which("gnuplot"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "gnuplot-nox"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    data = out.with_suffix(".dat")
    rows = ["load " + " ".join(targets)]
    for load, _, _ in LOADS:
        rows.append('"' + load + '" ' + " ".join(f"{med(results[(load, t)], 'rps'):.0f}" for t in targets))
    data.write_text("\n".join(rows) + "\n")
    script = f"""
set terminal png size 900,500 noenhanced
set output '{out}'
set title 'hello-sidecar vs direct vs nginx grpc_pass (requests/s, higher is better)'
set style data histograms
set style histogram clustered gap 1
set style fill solid border -1
set key top left autotitle columnhead
set ylabel 'requests/s'
set grid ytics
plot for [i=2:{len(targets) + 1}] '{data}' using i:xtic(1)
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    data.unlink()
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
