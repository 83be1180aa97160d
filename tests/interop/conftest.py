"""Fixtures for the interop tests: the real hello-sidecar binary as backends and sidecar on loopback."""

import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("HELLO_SIDECAR_BIN", str(ROOT / "target" / "debug" / "hello-sidecar"))


def fresh_ip() -> str:
    """A loopback address of its own, so every process can use the same port, as pods do."""
    return f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.{random.randint(1, 250)}"


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s")
        time.sleep(0.05)


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """hello_pb2 / hello_pb2_grpc generated from the project's proto, as a Python user would."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    rc = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}", "hello/v1/hello.proto"]
    )
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    from hello.v1 import hello_pb2, hello_pb2_grpc  # noqa: E402

    return hello_pb2, hello_pb2_grpc


@pytest.fixture(scope="session")
def cluster():
    """Two backends, one hung backend, and a sidecar for each: returns the sidecar addresses."""
    procs = Procs()
    try:
        backends = []
        for i in range(2):
            ip = fresh_ip()
            procs.start("server", "--listen", f"{ip}:8080", "--admin", f"{ip}:9902", "--id", f"py-{i}")
            wait_http(f"http://{ip}:9902/ready")
            backends.append(f"{ip}:8080")
        hung_ip = fresh_ip()
        procs.start("server", "--listen", f"{hung_ip}:8080", "--admin", f"{hung_ip}:9902", "--delay", "1h")
        wait_http(f"http://{hung_ip}:9902/ready")

        def sidecar(target: str) -> str:
            ip = fresh_ip()
            procs.start("sidecar", "--listen", f"{ip}:50051", "--admin", f"{ip}:9901", "--target", target)
            wait_http(f"http://{ip}:9901/ready")
            return f"{ip}:50051"

        yield {
            "sidecar": sidecar("static:///" + ",".join(backends)),
            "hung_sidecar": sidecar(f"static:///{hung_ip}:8080"),
        }
    finally:
        procs.stop()


@pytest.fixture(scope="session")
def go_binaries():
    """The Go example client and server (stock grpc-go), built offline from Debian's packages."""
    if not shutil.which("go") or not shutil.which("protoc"):
        pytest.skip("Go toolchain or protoc is not installed (scripts/install-test-deps)")
    r = subprocess.run([str(ROOT / "examples" / "go" / "build.sh")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return ROOT / "examples" / "go" / "bin"
