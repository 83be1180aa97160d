#!/usr/bin/env python3
"""Checks that a release tag and the files that name the published image agree, before anything is pushed.

    scripts/release_check.py v0.1.0     # exit 1, one line per disagreement, if they do not

A tag vX.Y.Z publishes ghcr.io/<owner>/hello-sidecar:X.Y.Z (.github/workflows/release.yml). For a user who
installs the chart or applies manifests/ to get that image, these must all say the same: Cargo.toml's version,
Chart.yaml's appVersion, values.yaml's image (repository ghcr.io/<owner>/hello-sidecar, tag empty = appVersion)
and every image in manifests/. <owner> is $GITHUB_REPOSITORY_OWNER when set (as in the workflow, which pushes
there: a fork's tag must not publish a chart that names the upstream image), else the GitHub owner in
Chart.yaml's `home`; lower-cased, as GHCR wants. Needs PyYAML.
"""

import os
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "hello-sidecar"


def expected_image() -> tuple[str, str]:
    """(repository, tag) that the chart and manifests/ must name."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    owner = os.environ.get("GITHUB_REPOSITORY_OWNER", "").strip()
    if not owner:
        from_home = re.fullmatch(r"https://github\.com/([^/]+)/[^/]+/?", chart["home"])
        if not from_home:
            raise SystemExit(f"Chart.yaml home {chart['home']!r} is not a GitHub repository URL")
        owner = from_home.group(1)
    return f"ghcr.io/{owner.lower()}/hello-sidecar", str(chart["appVersion"])


def problems(tag: str) -> list[str]:
    out = []
    version = tag.removeprefix("v")
    if not re.fullmatch(r"v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", tag):
        out.append(f"tag {tag!r} is not vX.Y.Z")
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    repository, app_version = expected_image()
    if cargo != version:
        out.append(f"Cargo.toml version is {cargo}, the tag says {version}")
    if app_version != version:
        out.append(f"Chart.yaml appVersion is {app_version}, the tag says {version}")
    image = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    if image["repository"] != repository:
        out.append(f"values.yaml image.repository is {image['repository']}, the workflow pushes {repository}")
    if image.get("tag"):
        out.append(f"values.yaml image.tag is {image['tag']!r}: leave it empty so it follows appVersion")
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "hello-sidecar.yaml").read_text()) if d]
    images = {m for d in docs for m in re.findall(r"'image': '([^']+)'", repr(d))}
    if images != {f"{repository}:{version}"}:
        out.append(f"manifests/ name {sorted(images)}, the workflow pushes {repository}:{version}")
    return out


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: scripts/release_check.py vX.Y.Z", file=sys.stderr)
        return 2
    found = problems(sys.argv[1])
    for p in found:
        print(f"release check: {p}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
