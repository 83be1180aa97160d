#!/usr/bin/env python3
"""The scale curve: what a call costs as routes/targets and endpoints grow, and what a large target costs to hold.

    python3 bench/scale.py                  # release build; the whole table (~15 minutes on the 2-core VM)
    python3 bench/scale.py --smoke          # debug build, small sizes, no callgrind: proves the harness works
    python3 bench/scale.py --no-sync        # skip the 10,000-endpoint sync (it builds the discovery bench)

Rows:
- 1, 10 and 100 routes, each to its own static target of 3 endpoints; the calls all go to one of them
  (HelloService): what the other routes and targets cost a call that does not use them.
- 3, 100 and 1000 endpoints in one static target, every one a distinct loopback address that answers.
- For each: instructions per call under callgrind ((Ir(N2) - Ir(N1)) / (N2 - N1) at one stream, after the same
  warm-up of 2 x endpoints calls in both runs, so every connection's first-call costs cancel out too), p50 and
  p99 at one stream without valgrind (h2load, a few seconds, each reply checked), and the sidecar's RSS idle
  before the load.
- Sync of 10,000 endpoints over 100 EndpointSlices through the Kubernetes API stand-in (`cargo bench --bench
  discovery -- --sync-only --endpoints 10000`): time until the sidecar holds them all, and its RSS.

Every endpoint answers: one `hello-sidecar server` listens on 0.0.0.0:PORT, so each of 127.x.y.z:PORT is a real
endpoint with its own HTTP/2 connection (nothing outside loopback is ever called). Wall-clock columns are noisy on
a shared machine; the instruction counts are the yardstick.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import rss_kib  # noqa: E402
from callgrind import BODY, PATH, RESPONSE_BYTES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PORT = 18390
SIDECAR, ADMIN = "127.0.0.80:50051", "127.0.0.80:9901"


def addrs(group: int, n: int):
    """`n` distinct loopback endpoints of one target, 127.<group>.<i / 250>.<i % 250 + 1>:PORT."""
    return [f"127.{group}.{i // 250}.{i % 250 + 1}:{PORT}" for i in range(n)]


def static(endpoints):
    return "static:///" + ",".join(endpoints)


def routes_args(targets: int):
    """HelloService's target plus `targets - 1` other routes, each with its own 3 endpoints."""
    args = ["--target", static(addrs(10, 3))]
    for k in range(1, targets):
        args += ["--route", f"bench{k}.v1.Svc=" + static([f"127.11.{k}.{j}:{PORT}" for j in (1, 2, 3)])]
    return args, 3 * targets


def ready(expect: int):
    try:
        with urllib.request.urlopen(f"http://{ADMIN}/metrics", timeout=2) as r:
            m = re.search(r'^hello_sidecar_endpoints\{state="ready"\} (\d+)', r.read().decode(), re.M)
    except OSError:
        return False
    return m is not None and int(m.group(1)) == expect


def wait(what, check, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def h2load(n=None, seconds=None, tmp: Path = Path("/tmp")):
    """One h2load connection, one stream: `n` calls or `seconds` of them. Checks every reply; returns latencies."""
    body = tmp / "body.bin"
    body.write_bytes(BODY)
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)
    amount = ["-n", str(n)] if n else ["-D", str(max(1, round(seconds)))]
    out = subprocess.run(["h2load", *amount, "-c", "1", "-m", "1", "-t", "1", "-d", str(body), "--log-file", str(log),
                          "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{SIDECAR}{PATH}"],
                         capture_output=True, text=True, check=True).stdout
    succeeded = data = 0.0
    for line in out.splitlines():
        if line.startswith("requests:"):
            succeeded = float(line.split(",")[3].split()[0])
        elif line.startswith("traffic:"):
            data = float(line.split("(")[-1].split(")")[0])
    if not succeeded or (n and succeeded != n) or abs(data / succeeded - RESPONSE_BYTES) > 0.5:
        sys.exit(f"h2load: {succeeded:.0f} calls succeeded, {data / max(succeeded, 1):.1f} bytes per reply")
    # start, status, duration in µs; a request still in flight at the end has no duration.
    fields = (l.split("\t") for l in log.read_text().splitlines())
    return sorted(int(f[2]) for f in fields if len(f) == 3 and f[2].isdigit())


def in_use(addr: str) -> bool:
    """Whether another process listens on `addr` (host:port): the sidecar could not bind it, and `ready` would read
    that process's /metrics instead, waiting for ever or measuring someone else's proxy."""
    host, port = addr.rsplit(":", 1)
    with socket.socket() as s:
        # As the sidecar binds (tokio sets SO_REUSEADDR): else the last case's closed connections, in TIME_WAIT on
        # the admin port, look like a listener and the next case stops.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return True
    return False


def start(binary: Path, args, under=()):
    for addr in (SIDECAR, ADMIN):
        if in_use(addr):
            sys.exit(f"{addr} is in use by another process; bench/scale.py needs it for the sidecar it measures")
    return subprocess.Popen([*under, str(binary), "sidecar", "--listen", SIDECAR, "--admin", ADMIN, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})


def stop(p):
    p.terminate()
    p.wait(timeout=300)


def wall(binary: Path, args, expect: int, seconds: float, tmp: Path):
    """p50, p99 (µs) at one stream and idle RSS (KiB), without valgrind."""
    p = start(binary, args)
    try:
        wait(f"{expect} ready endpoints", lambda: ready(expect))
        time.sleep(1.0)
        idle = rss_kib([p.pid])
        h2load(n=200, tmp=tmp)  # warm-up
        lat = h2load(seconds=seconds, tmp=tmp)
    finally:
        stop(p)
    pct = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))]
    return pct(0.5), pct(0.99), idle


def instructions(binary: Path, args, expect: int, n1: int, n2: int, warm: int, tmp: Path, tag: str):
    totals = []
    for n in (n1, n2):
        out = tmp / f"callgrind.{tag}.{n}.out"
        p = start(binary, args, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"])
        try:
            wait(f"{expect} ready endpoints under valgrind", lambda: ready(expect), timeout=900)
            if warm:
                h2load(n=warm, tmp=tmp)
            h2load(n=n, tmp=tmp)
        finally:
            stop(p)
        m = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(errors="replace"), re.M)
        if not m:
            sys.exit(f"no instruction total in {out}")
        totals.append(int(m.group(1)))
    return (totals[1] - totals[0]) / (n2 - n1)


def sync(endpoints: int):
    out = subprocess.run(["cargo", "bench", "--quiet", "--manifest-path", str(ROOT / "Cargo.toml"), "--bench",
                          "discovery", "--", "--sync-only", "--endpoints", str(endpoints)],
                         capture_output=True, text=True, check=True).stdout
    return [l for l in out.splitlines() if l.startswith("| full sync") or l.startswith("| sidecar RSS")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="debug build, small sizes, no callgrind, no sync")
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--n1", type=int, default=1000)
    ap.add_argument("--n2", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", help="run only rows whose name contains this")
    ap.add_argument("--binary", type=Path, help="measure this hello-sidecar binary instead of building one")
    args = ap.parse_args()
    profile = "debug" if args.smoke else "release"
    if args.smoke:
        args.seconds = 1.0
    if not args.binary:
        subprocess.run(["cargo", "build", "--quiet", *([] if args.smoke else ["--release"]),
                        "--manifest-path", str(ROOT / "Cargo.toml")], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="hello-scale-"))
    # A copy: `cargo bench` (the sync row) relinks target/release/hello-sidecar with the dev-dependencies' features.
    binary = tmp / "hello-sidecar"
    shutil.copy2(args.binary or TARGET / profile / "hello-sidecar", binary)
    rows = [(f"{t} route{'s' if t > 1 else ''} / targets (3 endpoints each)", *routes_args(t))
            for t in ((1, 10) if args.smoke else (1, 10, 100))]
    rows += [(f"{e} endpoints in one target", ["--target", static(addrs(20, e))], e)
             for e in ((3, 100) if args.smoke else (3, 100, 1000))]
    if args.only:
        rows = [r for r in rows if args.only in r[0]]
    # One backend answers on every loopback address: each endpoint is real and has its own connection.
    server = subprocess.Popen([str(binary), "server", "--listen", f"0.0.0.0:{PORT}", "--id", "scale"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [f"Scale curve ({profile} build; instructions per call = (Ir({args.n2}) - Ir({args.n1})) / "
             f"{args.n2 - args.n1} at one stream under callgrind; p50/p99 at one stream, {args.seconds:g} s):", "",
             "| case | instructions per call | p50 µs | p99 µs | RSS idle MiB |", "|---|---:|---:|---:|---:|"]
    try:
        wait("the backend", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=0.5).close() is None,
             timeout=60)
        for name, sargs, expect in rows:
            p50, p99, idle = wall(binary, sargs, expect, args.seconds, tmp)
            ir = "—"
            if not (args.smoke or args.no_callgrind):
                ir = f"{instructions(binary, sargs, expect, args.n1, args.n2, 2 * expect, tmp, str(expect)):,.0f}"
            lines.append(f"| {name} | {ir} | {p50} | {p99} | {idle / 1024:.1f} |")
            print(lines[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    if not (args.smoke or args.no_sync):
        lines += ["", "| discovery | result |", "|---|---|", *sync(10_000)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
