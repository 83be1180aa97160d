"""Every example in examples/ against the real sidecar and real backends: a success, INVALID_ARGUMENT
"name is required", and a deadline; and the Go server as a backend behind the sidecar."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, ROOT, Procs, fresh_ip, wait_http

EXAMPLES = ROOT / "examples"


def run(cmd, cwd=None, timeout=30, env=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def python_stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pystubs")
    from grpc_tools import protoc

    assert protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}", "hello/v1/hello.proto"]) == 0
    return out


def python_client(stubs, *args):
    env = {**os.environ, "PYTHONPATH": str(stubs)}
    return run([sys.executable, str(EXAMPLES / "python" / "client.py"), *args], env=env)


def test_python_example(cluster, python_stubs):
    ok = python_client(python_stubs, "--addr", cluster["sidecar"], "--name", "py")
    assert ok.returncode == 0 and "Hello, py! (code 200, pod py-" in ok.stdout, ok
    bad = python_client(python_stubs, "--addr", cluster["sidecar"], "--name", "")
    assert bad.returncode == 1 and "INVALID_ARGUMENT (bad request): name is required" in bad.stdout, bad
    slow = python_client(python_stubs, "--addr", cluster["hung_sidecar"], "--timeout", "1")
    assert slow.returncode == 1 and "DEADLINE_EXCEEDED" in slow.stdout, slow


def test_curl_example(cluster):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    out = run([str(EXAMPLES / "curl" / "call.sh"), cluster["sidecar"], "curl"])
    assert out.returncode == 0, out
    assert '{"message":"Hello, curl!","code":200}' in out.stdout, out.stdout
    assert '"code":"invalid_argument","message":"name is required"' in out.stdout and "HTTP 400" in out.stdout, out.stdout
    assert "Hello, curl!" in out.stdout.split("grpc-web")[-1] and "grpc-status: 0" in out.stdout, out.stdout
    slow = run([str(EXAMPLES / "curl" / "call.sh"), cluster["hung_sidecar"], "curl"])
    assert '"code":"deadline_exceeded"' in slow.stdout and "HTTP 504" in slow.stdout, slow.stdout


def test_curl_example_output_survives_a_redirect_to_a_file(cluster, tmp_path):
    """`call.sh > out.log 2>&1` keeps every section: no step reopens the caller's stderr (that truncated the file)."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    log = tmp_path / "out.log"
    with open(log, "w") as f:
        out = subprocess.run([str(EXAMPLES / "curl" / "call.sh"), cluster["sidecar"], "curl"], stdout=f, stderr=subprocess.STDOUT, timeout=30)
    text = log.read_text(errors="replace")
    assert out.returncode == 0, text
    assert "== Connect, JSON" in text and '{"message":"Hello, curl!","code":200}' in text, text
    assert '"name is required"} HTTP 400' in text, text


@pytest.fixture(scope="session")
def node_example():
    if not shutil.which("npm"):
        pytest.skip("node/npm is not installed")
    node = EXAMPLES / "node"
    if not (node / "node_modules" / "@grpc" / "grpc-js").exists():
        r = run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node, timeout=300)
        assert r.returncode == 0, r.stderr
    return node


def test_node_example(cluster, node_example):
    ok = run(["node", "client.js", cluster["sidecar"], "node"], cwd=node_example)
    assert ok.returncode == 0, ok
    assert "grpc: Hello, node! (code 200)" in ok.stdout, ok.stdout
    assert "connect: Hello, node! (code 200)" in ok.stdout, ok.stdout
    assert "grpc-web: Hello, node!" in ok.stdout, ok.stdout
    bad = run(["node", "client.js", cluster["sidecar"], ""], cwd=node_example)
    assert "grpc: INVALID_ARGUMENT (bad request): name is required" in bad.stdout, bad.stdout
    assert "connect: InvalidArgument: name is required" in bad.stdout, bad.stdout
    assert "grpc-web: InvalidArgument: name is required" in bad.stdout, bad.stdout
    assert bad.returncode == 1, "a failed call makes the example exit non-zero"
    slow = run(["node", "client.js", cluster["hung_sidecar"], "node"], cwd=node_example)
    assert "grpc: DEADLINE_EXCEEDED (too slow)" in slow.stdout, slow.stdout
    assert "connect: DeadlineExceeded" in slow.stdout and "grpc-web: DeadlineExceeded" in slow.stdout, slow.stdout


def test_go_client_example(cluster, go_binaries):
    client = str(go_binaries / "hello-client")
    ok = run([client, "-addr", cluster["sidecar"], "-name", "go", "-n", "5"])
    assert ok.returncode == 0 and ok.stdout.count("Hello, go! (code 200") == 5, ok
    bad = run([client, "-addr", cluster["sidecar"], "-name", ""])
    assert bad.returncode == 1 and "InvalidArgument (bad request): name is required" in bad.stdout, bad
    slow = run([client, "-addr", cluster["hung_sidecar"], "-timeout", "1s"])
    assert slow.returncode == 1 and "DeadlineExceeded" in slow.stdout, slow


def test_go_server_example_behind_the_sidecar(go_binaries):
    procs = Procs()
    try:
        ip = fresh_ip()
        procs.procs.append(subprocess.Popen([str(go_binaries / "hello-server"), "-listen", f"{ip}:8080", "-id", "go-pod"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sidecar_ip = fresh_ip()
        procs.start("sidecar", "--listen", f"{sidecar_ip}:50051", "--admin", f"{sidecar_ip}:9901", "--target", f"static:///{ip}:8080")
        wait_http(f"http://{sidecar_ip}:9901/ready")
        ok = run([BIN, "call", "--addr", f"{sidecar_ip}:50051", "--name", "gopher", "-n", "20", "--expect-message", "Hello, gopher!"])
        assert ok.returncode == 0 and "go-pod" in ok.stdout, ok
        bad = run([BIN, "call", "--addr", f"{sidecar_ip}:50051", "--name", ""])
        assert "INVALID_ARGUMENT: name is required (pod go-pod)" in bad.stdout, bad
    finally:
        procs.stop()
