#!/usr/bin/env python3
"""Render charts/hello-sidecar with default values into manifests/hello-sidecar.yaml (plain YAML for kubectl).

    .test-tools/venv/bin/python scripts/render_manifests.py          # write manifests/
    .test-tools/venv/bin/python scripts/render_manifests.py --check  # exit 1 if manifests/ drifted

Needs helm-python-sdk (installed by scripts/test into .test-tools/venv).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "hello-sidecar"
OUT = ROOT / "manifests" / "hello-sidecar.yaml"
RELEASE, NAMESPACE = "hello-sidecar", "default"
HEADER = (
    "# Generated from charts/hello-sidecar with default values (release hello-sidecar, namespace default)\n"
    "# by scripts/render_manifests.py. Do not edit: change the chart and re-render.\n"
    "# Apply with: kubectl apply -f manifests/\n"
)


def render(values=None, name=RELEASE, namespace=NAMESPACE, include_tests=False) -> str:
    """The chart's rendered resources as one multi-document YAML string, in a stable order."""
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    files = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs = []
    for path in sorted(files):
        if path.endswith("NOTES.txt") or (not include_tests and "/templates/tests/" in path):
            continue
        body = files[path].strip()
        if body:
            docs.append(f"# Source: {path}\n{body}\n")
    return "---\n".join(docs)


def main() -> int:
    text = HEADER + "---\n" + render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} differs from the chart: run scripts/render_manifests.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
