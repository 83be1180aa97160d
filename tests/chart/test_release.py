"""The release workflow publishes the image the chart, manifests/ and `inject` name; the kind workflow builds the
image from the checkout."""

import re
import subprocess
import sys

import yaml
from chartlib import CHART, ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def release_check(tag):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "release_check.py"), tag], capture_output=True, text=True)


def test_the_chart_manifests_and_cargo_agree_on_the_version_to_publish():
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    ok = release_check(f"v{app_version}")
    assert ok.returncode == 0, ok.stderr
    bad = release_check("v99.0.0")
    assert bad.returncode == 1 and "appVersion is" in bad.stderr and "Cargo.toml version" in bad.stderr


def workflow(name):
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    return wf, wf.get("on", wf.get(True))  # PyYAML reads the key `on` as True


def steps_using(job, action):
    return [s for s in job["steps"] if s.get("uses", "").startswith(action)]


def test_tags_publish_a_multi_arch_image_with_sbom_and_provenance_where_the_chart_points():
    wf, on = workflow("release.yml")
    assert on["push"]["tags"] == ["v*.*.*"]
    check = wf["jobs"]["check"]
    assert any("scripts/release_check.py" in s.get("run", "") for s in check["steps"])
    build = wf["jobs"]["build"]
    assert build["needs"] == "check"
    platforms = sorted(m["platform"] for m in build["strategy"]["matrix"]["include"])
    assert platforms == ["linux/amd64", "linux/arm64"]
    (push,) = steps_using(build, "docker/build-push-action")
    assert push["with"]["provenance"] == "mode=max" and push["with"]["sbom"] is True
    assert push["with"]["file"] == "Dockerfile" and push["with"]["context"] == "."
    assert build["permissions"]["packages"] == "write"
    image_lines = [s["run"] for s in build["steps"] if "IMAGE=" in s.get("run", "")]
    image = re.search(r"IMAGE=(\S+)\"", image_lines[0]).group(1)
    assert image == "ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/hello-sidecar"
    # The chart names ghcr.io/<the owner of its home repository>/hello-sidecar, tag = appVersion.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    owner = re.fullmatch(r"https://github\.com/([^/]+)/[^/]+", chart["home"]).group(1)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == image.replace("${GITHUB_REPOSITORY_OWNER,,}", owner.lower())
    publish = wf["jobs"]["publish"]
    (meta,) = steps_using(publish, "docker/metadata-action")
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"], "v0.1.0 is published as 0.1.0 = appVersion"
    assert any("imagetools create" in s.get("run", "") for s in publish["steps"])


def test_the_kind_workflow_builds_the_image_from_the_checkout():
    wf, _ = workflow("e2e-kind.yml")
    steps = wf["jobs"]["kind"]["steps"]
    assert steps[0]["uses"].startswith("actions/checkout")
    assert any(s.get("run") == "e2e/run.sh" for s in steps)
    run_sh = (ROOT / "e2e" / "run.sh").read_text()
    assert re.search(r'^docker build -t "\$image" "\$root"$', run_sh, re.M), "e2e/run.sh builds the checkout's Dockerfile"
    assert "--set image.pullPolicy=Never" in run_sh, "and installs exactly that image"
