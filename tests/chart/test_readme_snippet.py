"""The chart README's "Add the sidecar to your own Deployment" block is complete: it validates, its RBAC is what
`inject --rbac` says for its target, its sidecar is what `inject` and the chart render."""

import copy
import re

import yaml
from chartlib import CHART, find, hello_sidecar, init_container, kubernetes_validate, render_docs, yamllint


def snippet() -> str:
    readme = (CHART / "README.md").read_text()
    section = readme.split("## Add the sidecar to your own Deployment", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "one yaml block in the section"
    return blocks[0]


def docs():
    return list(yaml.safe_load_all(snippet()))


def without_labels(obj):
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("labels", None)
    return obj


def test_the_snippet_is_valid_kubernetes_and_yaml(tmp_path):
    path = tmp_path / "snippet.yaml"
    path.write_text(snippet())
    kv = kubernetes_validate(path)
    assert kv.returncode == 0, kv.stdout + kv.stderr
    yl = yamllint(path)
    assert yl.returncode == 0, yl.stdout + yl.stderr


def test_the_snippet_is_what_inject_writes():
    ours = docs()
    (deployment,) = find(ours, "Deployment")
    target = next(a.split("=", 1)[1] for a in init_container(deployment["spec"]["template"]["spec"])["args"] if a.startswith("--target="))
    bare = hello_sidecar("inject", "--uninject", stdin=yaml.safe_dump(deployment))
    assert bare.returncode == 0, bare.stderr
    assert "initContainers" not in bare.stdout
    injected = hello_sidecar("inject", "--target", target, "--rbac", stdin=bare.stdout)
    assert injected.returncode == 0, injected.stderr
    theirs = list(yaml.safe_load_all(injected.stdout))
    # The same Deployment, sidecar included, and the same ServiceAccount, Role and RoleBinding (labels aside).
    assert find(theirs, "Deployment") == [deployment]
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert [without_labels(o) for o in find(theirs, kind)] == find(ours, kind), kind
    # The Role is in the target's namespace and binds the Deployment's service account from its own namespace.
    (binding,) = find(ours, "RoleBinding")
    assert binding["metadata"]["namespace"] == target.split(".", 1)[1].split(":")[0]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": deployment["spec"]["template"]["spec"]["serviceAccountName"], "namespace": deployment["metadata"]["namespace"]}
    ]


def test_the_snippet_sidecar_matches_the_charts():
    (deployment,) = find(docs(), "Deployment")
    ours = init_container(deployment["spec"]["template"]["spec"])
    client = find(render_docs({}), "Deployment", "release-hello-sidecar-client")[0]
    charts = init_container(client["spec"]["template"]["spec"])
    for key in ("restartPolicy", "startupProbe", "readinessProbe", "livenessProbe", "resources", "securityContext", "ports"):
        assert ours[key] == charts[key], key
