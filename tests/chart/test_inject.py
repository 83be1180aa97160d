"""`hello-sidecar inject` through the built binary: every workload kind, idempotence, the uninject round trip,
--rbac, streams and Lists, bad input; every output checked with kubernetes-validate --strict."""

import copy

import pytest
import yaml
from chartlib import CHART, find, hello_sidecar, init_container, kubernetes_validate

TARGET = "kubernetes:///hello.shop:grpc"
POD_SPEC = {
    "serviceAccountName": "my-app",
    "containers": [{"name": "app", "image": "registry.example.com/app:1", "ports": [{"containerPort": 8080}]}],
}
TEMPLATE = {"metadata": {"labels": {"app": "my-app"}}, "spec": POD_SPEC}
SELECTOR = {"matchLabels": {"app": "my-app"}}


def meta(name):
    return {"name": name, "namespace": "web"}


WORKLOADS = {
    "Deployment": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("d"), "spec": {"replicas": 2, "selector": SELECTOR, "template": TEMPLATE}},
    "StatefulSet": {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("s"), "spec": {"serviceName": "s", "selector": SELECTOR, "template": TEMPLATE}},
    "DaemonSet": {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("ds"), "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "ReplicaSet": {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta("rs"), "spec": {"selector": SELECTOR, "template": TEMPLATE}},
    "Job": {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta("j"), "spec": {"template": {"spec": {**POD_SPEC, "restartPolicy": "Never"}}}},
    "CronJob": {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": meta("cj"),
        "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {**POD_SPEC, "restartPolicy": "OnFailure"}}}}},
    },
    "Pod": {"apiVersion": "v1", "kind": "Pod", "metadata": meta("p"), "spec": POD_SPEC},
}
POD_SPEC_PATH = {"Pod": ["spec"], "CronJob": ["spec", "jobTemplate", "spec", "template", "spec"]}


def pod_spec(obj):
    node = obj
    for key in POD_SPEC_PATH.get(obj["kind"], ["spec", "template", "spec"]):
        node = node[key]
    return node


def inject(text, *args):
    out = hello_sidecar("inject", *args, stdin=text)
    assert out.returncode == 0, out.stderr
    return out


def valid(text, tmp_path, name="out.yaml"):
    path = tmp_path / name
    path.write_text(text)
    kv = kubernetes_validate(path)
    assert kv.returncode == 0, kv.stdout + kv.stderr + text


@pytest.mark.parametrize("kind", WORKLOADS)
def test_each_workload_kind_gets_a_valid_native_sidecar(kind, tmp_path):
    original = WORKLOADS[kind]
    valid(yaml.safe_dump(original), tmp_path, "in.yaml")
    out = inject(yaml.safe_dump(original), "--target", TARGET)
    valid(out.stdout, tmp_path)
    (obj,) = yaml.safe_load_all(out.stdout)
    spec = pod_spec(obj)
    sidecar = spec["initContainers"][0]
    assert sidecar == init_container(spec)
    assert sidecar["restartPolicy"] == "Always"
    assert f"--target={TARGET}" in sidecar["args"] and sidecar["args"][0] == "sidecar"
    admin = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert admin == {"admin": 9901} and "--admin=0.0.0.0:9901" in sidecar["args"]
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "admin"}, probe
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(sidecar["resources"]) == {"requests", "limits"}
    # Everything else is as it was.
    rest = copy.deepcopy(obj)
    del pod_spec(rest)["initContainers"]
    assert rest == original
    assert f"{kind}/{original['metadata']['name']} injected" in out.stderr


def test_inject_twice_equals_once_and_uninject_gives_the_input_back(tmp_path):
    text = "# my workloads\n" + "---\n".join(yaml.safe_dump(w, sort_keys=False) for w in WORKLOADS.values())
    once = inject(text, "--target", TARGET, "--route", "acme.Orders=kubernetes:///orders.billing:grpc").stdout
    twice = inject(once, "--target", TARGET, "--route", "acme.Orders=kubernetes:///orders.billing:grpc").stdout
    assert twice == once
    back = inject(once, "--uninject").stdout
    assert list(yaml.safe_load_all(back)) == list(yaml.safe_load_all(text))
    assert back.startswith("# my workloads\n"), "the heading comment is kept"
    # Key order is kept too: the re-written text is what the input would be, written the same way.
    assert inject(back, "--uninject").stdout == back
    valid(once, tmp_path)


def test_other_init_containers_stay_and_run_after_the_sidecar():
    w = copy.deepcopy(WORKLOADS["Deployment"])
    w["spec"]["template"]["spec"]["initContainers"] = [{"name": "migrate", "image": "m:1"}]
    out = inject(yaml.safe_dump(w), "--target", TARGET).stdout
    names = [c["name"] for c in pod_spec(yaml.safe_load(out))["initContainers"]]
    assert names == ["hello-sidecar", "migrate"]
    back = yaml.safe_load(inject(out, "--uninject").stdout)
    assert back == w


def test_streams_and_lists_pass_other_kinds_through_untouched(tmp_path):
    service = "apiVersion: v1\nkind: Service   # keep me\nmetadata: {name: web, namespace: web}\nspec:\n  ports: [{port: 80}]\n"
    lst = {"apiVersion": "v1", "kind": "List", "items": [WORKLOADS["Pod"], {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("c"), "data": {"a": "b"}}]}
    text = f"---\n{yaml.safe_dump(WORKLOADS['Deployment'])}---\n{service}---\n{yaml.safe_dump(lst)}"
    out = inject(text, "--target", TARGET)
    docs = out.stdout.split("---\n")
    assert docs[1] == service, "a document that is not changed is written back byte for byte"
    parsed = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in parsed] == ["Deployment", "Service", "List"]
    assert init_container(pod_spec(parsed[2]["items"][0]))["restartPolicy"] == "Always"
    assert "initContainers" not in str(parsed[2]["items"][1])
    assert "Service/web runs no pods; left as is" in out.stderr
    assert "item 2: ConfigMap/c runs no pods; left as is" in out.stderr
    valid(out.stdout, tmp_path)


def test_rbac_grants_list_and_watch_in_each_target_namespace(tmp_path):
    text = yaml.safe_dump(WORKLOADS["Deployment"]) + "---\n" + yaml.safe_dump({**WORKLOADS["Pod"], "metadata": {"name": "p"}})
    out = inject(text, "--rbac", "--target", TARGET, "--route", "acme.Local=kubernetes:///local:grpc", "-n", "apps")
    valid(out.stdout, tmp_path)
    docs = list(yaml.safe_load_all(out.stdout))
    assert find(docs, "ClusterRole") == [] and find(docs, "ClusterRoleBinding") == []
    roles = sorted(r["metadata"]["namespace"] for r in find(docs, "Role"))
    # shop for both pods; local:grpc is in each pod's own namespace (web, and apps for the Pod that names none).
    assert roles == ["apps", "shop", "web"]
    for r in find(docs, "Role"):
        assert r["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]
    bindings = {(b["metadata"]["namespace"], b["subjects"][0]["namespace"], b["subjects"][0]["name"]) for b in find(docs, "RoleBinding")}
    assert bindings == {("shop", "web", "my-app"), ("web", "web", "my-app"), ("shop", "apps", "my-app"), ("apps", "apps", "my-app")}
    assert {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in find(docs, "ServiceAccount")} == {("web", "my-app"), ("apps", "my-app")}


def test_the_default_image_is_the_one_the_chart_names():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    out = inject(yaml.safe_dump(WORKLOADS["Pod"]), "--target", TARGET).stdout
    assert init_container(pod_spec(yaml.safe_load(out)))["image"] == f"{values['image']['repository']}:{app_version}"


@pytest.mark.parametrize(
    "text, args, says",
    [
        ("kind: Pod\nspec: {containers: [{name: a, image: b}]}\n---\nkind: Pod\nspec: [1, 2\n", [], "stdin: document 2 (from line 4): line 5 "),
        ("kind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: 3}}}\n", [], "Deployment/d: not a valid pod spec"),
        ("kind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n", [], "Deployment/d has no spec.template.spec"),
        ("a: 1\na: 2\n", [], "duplicate"),
        ("kind: Pod\nspec: {containers: []}\n", ["--target", "http://x"], "--target"),
        ("kind: Pod\nspec: {containers: []}\n", ["--route", "acme.Orders"], "--route"),
        ("kind: Pod\nspec: {containers: []}\n", ["/no/such/file.yaml"], "cannot read /no/such/file.yaml"),
        # Values the kubelet or the API server would refuse once applied.
        ("kind: Pod\nspec: {containers: []}\n", ["--target", TARGET, "--image="], "--image"),
        ("kind: Pod\nspec: {containers: []}\n", ["--target", TARGET, "--namespace=Shop"], "--namespace"),
        ("kind: Pod\nspec: {containers: []}\n", ["--target", TARGET, "-n", ""], "--namespace"),
    ],
)
def test_bad_input_stops_with_one_line_and_exit_2(text, args, says):
    out = hello_sidecar("inject", *(args if args and args[0].startswith("--") else ["--target", TARGET, *args]), stdin=text)
    assert out.returncode == 2, out
    assert out.stdout == "", "nothing is written when the input is bad"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], out.stderr


def test_a_file_argument_reads_the_file(tmp_path):
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(WORKLOADS["Pod"]))
    out = hello_sidecar("inject", str(path), "--target", TARGET)
    assert out.returncode == 0 and "hello-sidecar" in out.stdout, out.stderr
