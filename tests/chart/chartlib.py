"""Shared helpers of the chart and inject tests: rendering, parsing, the validators and the built binary."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hello-sidecar"
KUBE_VERSION = "1.32.0"
TOOLS = Path(sys.executable).parent
HELLO_SIDECAR = os.environ.get("HELLO_SIDECAR_BIN", str(ROOT / "target" / "debug" / "hello-sidecar"))
sys.path.insert(0, str(ROOT / "scripts"))
import render_manifests  # noqa: E402


def render_docs(values: dict, namespace: str = "ns") -> list[dict]:
    """The chart rendered (tests included) as parsed documents."""
    text = render_manifests.render(values, name="release", namespace=namespace, include_tests=True)
    return [d for d in yaml.safe_load_all(text) if d]


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess:
    cmd = [str(TOOLS / "kubernetes-validate"), "-k", KUBE_VERSION, "--strict", "--quiet", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


def yamllint(path: Path) -> subprocess.CompletedProcess:
    cmd = [str(TOOLS / "yamllint"), "-c", str(ROOT / "tests" / "chart" / "yamllint.yaml"), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


def hello_sidecar(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Runs the built binary."""
    return subprocess.run([HELLO_SIDECAR, *args], input=stdin, capture_output=True, text=True, timeout=60)


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def init_container(pod_spec: dict, name: str = "hello-sidecar") -> dict:
    found = [c for c in pod_spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, pod_spec
    return found[0]
