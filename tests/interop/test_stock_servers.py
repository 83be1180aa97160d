"""Stock servers that manage their connections their own way, behind the sidecar.

nginx ends every HTTP/2 connection after `keepalive_requests` requests with a GOAWAY: calls past its
last-stream-id never reached it, and must be retried transparently (RFC 9113 §8.7, gRFC A6), never failed.

HTTP/2 keepalive against a stock grpc-go server and its ping policy (gRFC A8):
grpc-go allows one PING per `MinTime` (5 minutes by default) and none while no stream is open; after more than
two early PINGs it sends GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and closes the connection with its streams.
The Go example server is stock grpc-go; `-keepalive-min-time` shortens its policy so the tests take seconds.
"""

import json
import re
import shutil
import subprocess
import time
import urllib.request

import grpc
import pytest

from conftest import BIN, Procs, fresh_ip, wait_http


def metric(admin: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def go_backend(go_binaries):
    procs = Procs()

    def start(*flags: str) -> tuple[str, str]:
        ip = fresh_ip()
        procs.procs.append(subprocess.Popen([str(go_binaries / "hello-server"), "-listen", f"{ip}:8080", "-id", "go", *flags],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        side = fresh_ip()
        procs.start("sidecar", "--listen", f"{side}:50051", "--admin", f"{side}:9901", "--target", f"static:///{ip}:8080",
                    *sidecar_flags)
        wait_http(f"http://{side}:9901/ready")
        return f"{side}:50051", f"{side}:9901"

    sidecar_flags: list[str] = []
    start.sidecar_flags = sidecar_flags  # type: ignore[attr-defined]
    yield start
    procs.stop()


def call(stubs, addr: str, delay: str | None = None, timeout: float = 30):
    pb2, pb2_grpc = stubs
    with grpc.insecure_channel(addr) as channel:
        md = [("x-hello-delay", delay)] if delay else []
        return pb2_grpc.HelloServiceStub(channel).SayHello(pb2.HelloRequest(name="ka"), timeout=timeout, metadata=md)


CONNECTS = 'hello_sidecar_connects_total{result="ok"}'
GOAWAYS = "hello_sidecar_keepalive_goaways_total"


def test_no_pings_on_an_idle_connection_under_grpc_gos_default_policy(go_backend, stubs):
    # Even with an eager interval, an idle connection is never pinged: the stock policy (no pings without
    # streams) would otherwise close it after three.
    go_backend.sidecar_flags.extend(["--keepalive-interval", "1s"])
    addr, admin = go_backend()
    assert call(stubs, addr).message == "Hello, ka!"
    time.sleep(6)
    assert call(stubs, addr).message == "Hello, ka!"
    assert metric(admin, CONNECTS) == 1, "the connection lived through the idle time"
    assert metric(admin, GOAWAYS) == 0


def test_a_quiet_call_outlives_pings_the_server_accepts(go_backend, stubs):
    go_backend.sidecar_flags.extend(["--keepalive-interval", "2s"])
    addr, admin = go_backend("-keepalive-min-time", "1s")
    assert call(stubs, addr, delay="7s").message == "Hello, ka!"
    assert metric(admin, CONNECTS) == 1
    assert metric(admin, GOAWAYS) == 0


def test_too_many_pings_doubles_the_interval(go_backend, stubs):
    # A 1 s interval against a 3 s policy: the first quiet call is lost to the GOAWAY (the operator's interval
    # was too eager), and the sidecar doubles it, as grpc-go's client does.
    go_backend.sidecar_flags.extend(["--keepalive-interval", "1s"])
    addr, admin = go_backend("-keepalive-min-time", "3s")
    with pytest.raises(grpc.RpcError) as lost:
        call(stubs, addr, delay="8s")
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    deadline = time.monotonic() + 10
    while metric(admin, GOAWAYS) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(admin, GOAWAYS) == 1
    # At 2 s, a 5 s quiet call sees one accepted PING and one strike: it completes.
    assert call(stubs, addr, delay="5s").message == "Hello, ka!"
    assert metric(admin, GOAWAYS) == 1


# 8 in flight, and 64: more than 20% of the streams land past a GOAWAY's last-stream-id, which must not matter.
@pytest.mark.parametrize("concurrency", [8, 64])
def test_nginx_goaway_every_100_requests_costs_no_call(tmp_path, concurrency):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if shutil.os.path.exists("/usr/sbin/nginx") else None)
    if not nginx:
        pytest.skip("nginx is not installed (scripts/install-test-deps)")
    procs = Procs()
    try:
        backend, front, side = fresh_ip(), fresh_ip(), fresh_ip()
        procs.start("server", "--listen", f"{backend}:8080", "--admin", f"{backend}:9902", "--id", "behind-nginx")
        wait_http(f"http://{backend}:9902/ready")
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""
user nobody nogroup;
worker_processes 1;
daemon off;
pid {tmp_path}/nginx.pid;
error_log stderr error;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy; fastcgi_temp_path {tmp_path}/fcgi;
  uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
  upstream backend {{ server {backend}:8080; keepalive 64; }}
  server {{
    listen {front}:8080 http2;
    keepalive_requests 100;  # a GOAWAY every 100 requests on the sidecar's connection
    location / {{ grpc_pass grpc://backend; }}
  }}
}}
""")
        procs.procs.append(subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.start("sidecar", "--listen", f"{side}:50051", "--admin", f"{side}:9901",
                    "--target", f"static:///{front}:8080")
        wait_http(f"http://{side}:9901/ready")
        deadline = time.monotonic() + 20
        while metric(f"{side}:9901", 'hello_sidecar_endpoints{state="ready"}') < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        out = subprocess.run([BIN, "call", "--addr", f"{side}:50051", "-n", "2000", "-c", str(concurrency), "--json"],
                             capture_output=True, text=True, timeout=120)
        summary = json.loads(out.stdout)
        assert summary["calls"] == 2000, summary
        assert summary.get("by_status") == {"OK": 2000}, summary
        assert metric(f"{side}:9901", CONNECTS) >= 20, "nginx really did close a connection every 100 requests"
    finally:
        # SIGTERM first and wait: a SIGKILLed nginx master leaves its worker holding the port.
        for p in procs.procs:
            p.terminate()
        for p in procs.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        procs.stop()
