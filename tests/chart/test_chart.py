"""Chart checks: Helm lint (strict) and render through the real Helm v4 SDK, schema rejections, Kubernetes schema
validation (strict) of everything rendered and of manifests/, yamllint, and manifests/ kept in step."""

import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hello-sidecar"
KUBE_VERSION = "1.32.0"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "scripts"))
import render_manifests  # noqa: E402

SCENARIOS = {"default": {}} | {
    p.stem: helm.values_from_yaml(p.read_text()) for p in sorted((CHART / "ci").glob("*-values.yaml"))
}


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "kubernetes-validate"), "-k", KUBE_VERSION, "--strict", "--quiet", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


def yamllint(path: Path) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "yamllint"), "-c", str(ROOT / "tests" / "chart" / "yamllint.yaml"), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_is_clean_in_strict_mode(scenario):
    result = helm.lint(str(CHART), SCENARIOS[scenario], strict=True, kube_version=KUBE_VERSION)
    problems = [m for m in result["messages"] if m["severity"] >= 2] + result["errors"]
    assert not problems, problems


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_output_is_valid_kubernetes_and_valid_yaml(scenario, tmp_path):
    text = render_manifests.render(SCENARIOS[scenario], name="release", namespace="ns", include_tests=True)
    out = tmp_path / f"{scenario}.yaml"
    out.write_text(text)
    kv = kubernetes_validate(out)
    assert kv.returncode == 0, kv.stdout + kv.stderr
    yl = yamllint(out)
    assert yl.returncode == 0, yl.stdout + yl.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dry_run_install_succeeds(scenario):
    release = helm.Config(storage_driver="memory").install(str(CHART), "dry", SCENARIOS[scenario], namespace="ns", dry_run="client")
    assert release is not None


def test_default_render_has_the_promised_shape():
    text = render_manifests.render({}, include_tests=True)
    # RBAC: list and watch on endpointslices, nothing else.
    assert 'resources: ["endpointslices"]' in text and 'verbs: ["list", "watch"]' in text
    kinds = [line.removeprefix("kind: ") for line in text.splitlines() if line.startswith("kind: ")]
    assert kinds.count("Role") == 1 and "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds, kinds
    # The sidecar targets the backend Service by port name; the Service port is named grpc.
    assert "kubernetes:///hello-sidecar-backend.default:grpc" in text
    assert "- name: grpc" in text
    # Hardened containers, a helm test hook, probes on the admin port.
    assert text.count("readOnlyRootFilesystem: true") >= 3 and text.count("runAsNonRoot: true") >= 3
    assert "helm.sh/hook: test" in text and "--expect-message=Hello, helm-test!" in text
    assert "path: /ready, port: admin" in text
    # Grace periods cover the drains (10 s + 5 s).
    assert text.count("terminationGracePeriodSeconds: 15") == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"backend": {"replicas": -1}},
        {"logFormat": "xml"},
        {"unknownKey": True},
        {"sidecar": {"listen": "10.0.0.1:50051"}},
        {"sidecar": {"retryBudget": 2}},
        {"sidecar": {"defaultTimeout": "banana"}},
        {"sidecar": {"target": "http://hello:8080"}},
        {"backend": {"drainTimeout": "1m"}},
        {"backend": {"faults": {"errorRate": 1.5}}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"tests": {"calls": 0}},
    ],
)
def test_the_schema_rejects_bad_values(bad):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema(bad)
        chart.render(bad, name="x", namespace="ns", is_install=True)


def test_the_schema_accepts_the_documented_values():
    chart = helm.Chart.load(str(CHART))
    for values in SCENARIOS.values():
        chart.validate_schema(values)


def test_manifests_match_the_chart():
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_manifests.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_manifests_are_valid_kubernetes_and_valid_yaml():
    path = ROOT / "manifests" / "hello-sidecar.yaml"
    kv = kubernetes_validate(path)
    assert kv.returncode == 0, kv.stdout + kv.stderr
    yl = yamllint(path)
    assert yl.returncode == 0, yl.stdout + yl.stderr


def test_the_validators_do_reject_broken_output(tmp_path):
    """The checks above could pass vacuously; prove each tool fails on what it is here to catch."""
    unknown_field = tmp_path / "unknown.yaml"
    unknown_field.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n")
    assert kubernetes_validate(unknown_field).returncode != 0
    duplicate_key = tmp_path / "dup.yaml"
    duplicate_key.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  name: y\n")
    assert yamllint(duplicate_key).returncode != 0


def test_the_charts_plain_yaml_files_lint_clean():
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]
    for f in files:
        yl = yamllint(f)
        assert yl.returncode == 0, f"{f}: {yl.stdout}{yl.stderr}"
