#!/usr/bin/env python3
"""Instructions per proxied unary call: the sidecar's CPU price, measured so noise cannot move it.

    python3 bench/callgrind.py                  # release build; 1 and 32 streams; prints the figure and top functions
    python3 bench/callgrind.py --smoke          # debug build, few calls: proves the harness works (scripts/test)
    python3 bench/callgrind.py --n1 2000 --n2 6000 --top 30
    python3 bench/callgrind.py --mtls           # the mTLS path: the sidecar speaks TLS to `inbound` proxies

The release sidecar runs under `valgrind --tool=callgrind` with a static target to 3 `hello-sidecar server`
backends. h2load sends exactly N1 unary calls in one run and N2 in another (each reply checked: 23 bytes, the
HelloResponse frame); the sidecar stops after each and callgrind counts every instruction it ran, start-up and
shutdown included. Instructions per call = (Ir(N2) - Ir(N1)) / (N2 - N1): start-up and shutdown cancel out.
Wall-clock figures on this shared machine are noisy; instruction counts are repeatable, so they are the yardstick
(bench/bench.py's side-by-side run is the confirmation).

With --mtls the sidecar's target is three `hello-sidecar inbound` proxies (one in front of each backend, not under
valgrind) and it speaks mTLS to them with certificates from bench.py's `make_certs`: the figure is the sidecar's
own instructions per call on the TLS path (pooled connections, so handshakes are start-up and cancel out).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BODY = b"\x00\x00\x00\x00\x07\x0a\x05world"  # HelloRequest{name: "world"} in a gRPC frame
RESPONSE_BYTES = 23
PATH = "/hello.v1.HelloService/SayHello"
BACKENDS = ["127.0.0.71:8080", "127.0.0.72:8080", "127.0.0.73:8080"]
SIDECAR, ADMIN = "127.0.0.70:50051", "127.0.0.70:9901"
INBOUNDS = ["127.0.0.74:8443", "127.0.0.75:8443", "127.0.0.76:8443"]
# Extra sidecar flags and its target's endpoints: set by --mtls.
TARGET_ENDPOINTS, EXTRA_FLAGS = BACKENDS, []
LOADS = [("1 stream", 1), ("32 streams", 32)]


def wait(what, check, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def ready_endpoints():
    with urllib.request.urlopen(f"http://{ADMIN}/metrics", timeout=2) as r:
        m = re.search(r'^hello_sidecar_endpoints\{state="ready"\} (\d+)', r.read().decode(), re.M)
    return m is not None and int(m.group(1)) == len(TARGET_ENDPOINTS)


def h2load(n, streams, tmp: Path):
    body = tmp / "body.bin"
    body.write_bytes(BODY)
    out = subprocess.run(["h2load", "-n", str(n), "-c", "1", "-m", str(streams), "-t", "1", "-d", str(body),
                          "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{SIDECAR}{PATH}"],
                         capture_output=True, text=True, check=True).stdout
    succeeded = data = 0.0
    for line in out.splitlines():
        if line.startswith("requests:"):
            succeeded = float(line.split(",")[3].split()[0])
        elif line.startswith("traffic:"):
            data = float(line.split("(")[-1].split(")")[0])
    if succeeded != n or abs(data / max(succeeded, 1) - RESPONSE_BYTES) > 0.5:
        sys.exit(f"h2load: {succeeded:.0f} of {n} calls succeeded, {data / max(succeeded, 1):.1f} bytes per reply")


def measure(binary: Path, n, streams, tmp: Path, tag: str):
    """Total instructions of one sidecar process that served exactly `n` calls; the callgrind output file."""
    out = tmp / f"callgrind.{tag}.out"
    sidecar = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
                                str(binary), "sidecar", "--listen", SIDECAR, "--admin", ADMIN,
                                "--target", "static:///" + ",".join(TARGET_ENDPOINTS), *EXTRA_FLAGS],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait("the sidecar under valgrind", ready_endpoints)
        h2load(n, streams, tmp)
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=120)
    text = out.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if not m:
        sys.exit(f"no instruction total in {out}")
    return int(m.group(1)), out


def top_functions(out: Path, top: int):
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)], capture_output=True, text=True).stdout
    rows = [l for l in ann.splitlines() if re.match(r"^\s*[\d,]+ \(", l) and "PROGRAM TOTALS" not in l]
    return rows[:top]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="debug build, few calls")
    ap.add_argument("--n1", type=int, default=1000)
    ap.add_argument("--n2", type=int, default=3000)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--mtls", action="store_true", help="sidecar --mTLS--> inbound proxies --h2c--> backends")
    ap.add_argument("--binary", type=Path, help="measure this hello-sidecar binary (e.g. a saved copy, for A/B) "
                                                "instead of building one")
    args = ap.parse_args()
    if args.smoke:
        args.n1, args.n2, args.top = 20, 60, 5
    profile = "debug" if args.smoke else "release"
    if args.binary is None:
        subprocess.run(["cargo", "build", "--quiet", *([] if args.smoke else ["--release"]),
                        "--manifest-path", str(ROOT / "Cargo.toml")], check=True)
    binary = args.binary or TARGET / profile / "hello-sidecar"
    tmp = Path(tempfile.mkdtemp(prefix="hello-callgrind-"))
    backends = [subprocess.Popen([str(binary), "server", "--listen", b, "--id", f"cg-{i}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, b in enumerate(BACKENDS)]
    if args.mtls:
        global TARGET_ENDPOINTS, EXTRA_FLAGS
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench import TRUST_DOMAIN, make_certs
        pki = make_certs(tmp)
        for inbound, backend in zip(INBOUNDS, BACKENDS):
            admin = inbound.rsplit(":", 1)[0] + ":9903"
            backends.append(subprocess.Popen(
                [str(binary), "inbound", "--listen", inbound, "--admin", admin, "--forward", backend,
                 "--tls-cert", str(pki / "backend.crt"), "--tls-key", str(pki / "backend.key"),
                 "--tls-ca", str(pki / "ca.crt"), "--allow", f"{TRUST_DOMAIN}/ns/bench/*"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"}))
        TARGET_ENDPOINTS = INBOUNDS
        EXTRA_FLAGS = ["--tls-cert", str(pki / "client.crt"), "--tls-key", str(pki / "client.key"),
                       "--tls-ca", str(pki / "ca.crt"), "--tls-server-identity", f"{TRUST_DOMAIN}/ns/bench/sa/backend"]
    lines = [f"Instructions per proxied unary call ({profile} build, callgrind, "
             f"(Ir({args.n2}) - Ir({args.n1})) / {args.n2 - args.n1}, one h2load connection"
             f"{', mTLS to inbound proxies' if args.mtls else ''}):", "",
             "| load | instructions per call |", "|---|---:|"]
    try:
        import socket
        for b in BACKENDS + (INBOUNDS if args.mtls else []):
            host, port = b.rsplit(":", 1)
            wait(b, lambda: socket.create_connection((host, int(port)), timeout=0.5).close() is None)
        profiles = {}
        for load, streams in LOADS:
            ir1, _ = measure(binary, args.n1, streams, tmp, f"{streams}.n1")
            ir2, out2 = measure(binary, args.n2, streams, tmp, f"{streams}.n2")
            per_call = (ir2 - ir1) / (args.n2 - args.n1)
            lines.append(f"| {load} | {per_call:,.0f} |")
            profiles[load] = out2
            print(f"  {load}: Ir({args.n1}) = {ir1:,}, Ir({args.n2}) = {ir2:,}", flush=True)
        lines += ["", f"Top functions (self instructions, {LOADS[0][0]}, {args.n2} calls incl. start-up):", "```"]
        lines += top_functions(profiles[LOADS[0][0]], args.top) + ["```"]
        print("\n".join(lines))
    finally:
        for p in backends:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
