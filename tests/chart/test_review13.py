"""Review of issue 13 (branch review13): inputs that break the shipped image check, `inject` and the chart.

Each test here FAILS on fbb437c and names the finding of the review report it reproduces. Run them with
    HELLO_SIDECAR_BIN=$PWD/target/debug/hello-sidecar .test-tools/venv/bin/python -m pytest -q tests/chart/test_review13.py
"""

import json
import shutil
import subprocess
import sys

import helm_python as helm
import yaml
from chartlib import CHART, HELLO_SIDECAR, ROOT, find, hello_sidecar, init_container, kubernetes_validate, render_docs

TARGET = "kubernetes:///hello.shop:grpc"
POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: web}\nspec:\n  containers: [{name: app, image: a}]\n"


def sidecar_args(injected: str) -> list[str]:
    (pod,) = [d for d in yaml.safe_load_all(injected) if d]
    args = init_container(pod["spec"])["args"]
    assert args[0] == "sidecar"
    return args[1:]


# --- chart as a dependency (README: "A chart that depends on this one can render the same container") -----------


def parent_chart(tmp_path, template: str):
    parent = tmp_path / "my-app"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "hello-sidecar")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: my-app\nversion: 1.0.0\nappVersion: '2.3.1'\n"
        "dependencies:\n  - {name: hello-sidecar, version: 0.1.0}\n"
    )
    (parent / "values.yaml").write_text(
        "hello-sidecar:\n  backend: {enabled: false}\n  client: {enabled: false}\n  tests: {enabled: false}\n"
        "  sidecar: {target: 'kubernetes:///hello.shop:grpc'}\n"
    )
    (parent / "templates" / "deploy.yaml").write_text(template)
    return helm.Chart.load(str(parent))


def test_the_chart_installs_as_a_dependency(tmp_path):
    """Helm gives every subchart a `global` value; values.schema.json (additionalProperties: false) refuses it."""
    chart = parent_chart(tmp_path, "")
    files = chart.render({}, name="rel", namespace="web", is_install=True)
    rbac = [f for f in files if f.endswith("hello-sidecar/templates/rbac.yaml")]
    assert rbac and "namespace: shop" in files[rbac[0]]


def test_a_dependent_chart_renders_the_sidecar_with_the_documented_include(tmp_path):
    """charts/hello-sidecar/README.md: `{{ include "hello-sidecar.sidecarContainer" . }}` from a chart that depends
    on this one. With `.` the parent's context, .Values.image/.Values.sidecar/.Chart.AppVersion are the parent's."""
    template = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: my-app}\nspec:\n"
        "  selector: {matchLabels: {app: my-app}}\n  template:\n    metadata: {labels: {app: my-app}}\n"
        "    spec:\n      initContainers:\n"
        '        {{- include "hello-sidecar.sidecarContainer" . | nindent 8 }}\n'
        "      containers: [{name: app, image: 'my-app:1'}]\n"
    )
    chart = parent_chart(tmp_path, template)
    # Work around the `global` finding so this test shows the second problem on its own.
    schema = tmp_path / "my-app" / "charts" / "hello-sidecar" / "values.schema.json"
    s = json.loads(schema.read_text())
    s["properties"]["global"] = {"type": "object"}
    schema.write_text(json.dumps(s))
    chart = helm.Chart.load(str(tmp_path / "my-app"))
    files = chart.render({}, name="rel", namespace="web", is_install=True)
    deploy = yaml.safe_load(files["my-app/templates/deploy.yaml"])
    sidecar = init_container(deploy["spec"]["template"]["spec"])
    assert sidecar["image"].endswith(":0.1.0"), sidecar["image"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["HELLO_SIDECAR_TARGET"] == TARGET, env


def test_an_aliased_dependency_renders_the_sidecar_too(tmp_path):
    """The include finds this chart in .Subcharts by its chart name, so `alias:` in the parent's dependencies works."""
    template = 'sidecar:\n{{- include "hello-sidecar.sidecarContainer" . | nindent 2 }}\n'
    parent_chart(tmp_path, template)
    chart_yaml = tmp_path / "my-app" / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("version: 0.1.0}", "version: 0.1.0, alias: mesh}"))
    values = tmp_path / "my-app" / "values.yaml"
    values.write_text(values.read_text().replace("hello-sidecar:", "mesh:"))
    files = helm.Chart.load(str(tmp_path / "my-app")).render({}, name="rel", namespace="web", is_install=True)
    (sidecar,) = yaml.safe_load(files["my-app/templates/deploy.yaml"])["sidecar"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert sidecar["image"].endswith(":0.1.0") and env["HELLO_SIDECAR_TARGET"] == TARGET, sidecar


# --- inject: the sidecar's command line must be one the sidecar accepts ----------------------------------------


def test_inject_route_gives_a_sidecar_that_starts():
    """`inject --route` writes `--route=...`, which `hello-sidecar sidecar` does not have: CrashLoopBackOff."""
    out = hello_sidecar("inject", "--target", TARGET, "--route", "acme.Orders=kubernetes:///orders.billing:grpc", stdin=POD)
    if out.returncode == 2:
        return  # refused up front: fine
    check = hello_sidecar("sidecar", *sidecar_args(out.stdout), "--help")
    assert check.returncode == 0, check.stderr


def test_inject_sidecar_arg_is_checked_against_the_sidecar_parser():
    """`--sidecar-arg=--listen=…` duplicates --listen; `--sidecar-arg=--bogus` is unknown: both pods crash-loop."""
    for extra in ("--sidecar-arg=--listen=0.0.0.0:50051", "--sidecar-arg=--bogus"):
        out = hello_sidecar("inject", "--target", TARGET, extra, stdin=POD)
        if out.returncode == 2:
            continue
        check = hello_sidecar("sidecar", *sidecar_args(out.stdout), "--help")
        assert check.returncode == 0, (extra, check.stderr)


def test_inject_refuses_a_sidecar_command_line_the_sidecar_would_refuse():
    """Checked with the sidecar's own parser: one line naming the problem, exit 2, nothing on stdout."""
    for extra, says in [
        (["--sidecar-arg=--bogus"], "--bogus"),
        (["--sidecar-arg=--listen=0.0.0.0:50051"], "--listen"),
        (["--admin-port", "50051"], "admin port 50051"),
    ]:
        out = hello_sidecar("inject", "--target", TARGET, *extra, stdin=POD)
        assert out.returncode == 2 and out.stdout == "", (extra, out)
        assert says in out.stderr and out.stderr.count("\n") == 1, (extra, out.stderr)


def test_inject_refuses_a_pod_whose_app_already_uses_the_sidecars_ports():
    """Containers of a pod share one network namespace: the sidecar cannot bind 9901 if the app does."""
    pod = POD.replace("image: a}", "image: a, ports: [{containerPort: 9901, name: admin}]}")
    out = hello_sidecar("inject", "--target", TARGET, stdin=pod)
    assert out.returncode == 2 or "9901" in out.stderr, out.stderr
    assert "container 'app' already uses port 9901" in out.stderr and out.stdout == "", out


def test_inject_warns_on_host_network_and_keeps_crlf():
    """hostNetwork: the sidecar's ports are the node's. CRLF input (a file from Windows) stays CRLF."""
    out = hello_sidecar("inject", "--target", TARGET, stdin=POD.replace("spec:\n", "spec:\n  hostNetwork: true\n"))
    assert out.returncode == 0 and "warning" in out.stderr and "hostNetwork" in out.stderr, out.stderr
    crlf = (POD + "---\n" + POD.replace("name: p,", "name: q,")).replace("\n", "\r\n").encode()
    raw = subprocess.run([HELLO_SIDECAR, "inject", "--target", TARGET], input=crlf, capture_output=True, timeout=60)
    assert raw.returncode == 0 and raw.stdout.count(b"\n") == raw.stdout.count(b"\r\n") > 10, raw


def test_inject_refuses_a_pod_without_containers(tmp_path):
    """`spec: {}` is injected and the output fails kubernetes-validate --strict ('containers' is required)."""
    out = hello_sidecar("inject", "--target", TARGET, stdin=POD.replace("  containers: [{name: app, image: a}]\n", "  {}\n").replace("spec:\n  {}", "spec: {}"))
    if out.returncode == 2:
        return
    path = tmp_path / "out.yaml"
    path.write_text(out.stdout)
    kv = kubernetes_validate(path)
    assert kv.returncode == 0, kv.stdout + kv.stderr


def test_a_custom_resource_of_kind_job_passes_through():
    """Issue 13: unknown kinds pass through with a note. A Volcano Job (batch.volcano.sh) stops the whole stream."""
    volcano = (
        "apiVersion: batch.volcano.sh/v1alpha1\nkind: Job\nmetadata: {name: vj}\n"
        "spec:\n  tasks:\n  - name: t\n    template:\n      spec:\n        containers: [{name: c, image: i}]\n"
    )
    out = hello_sidecar("inject", "--target", TARGET, stdin=volcano + "---\n" + POD)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(volcano)
    assert "Job/vj is not a Kubernetes workload (apiVersion 'batch.volcano.sh/v1alpha1'); left as is" in out.stderr


def test_a_list_of_a_few_thousand_deployments_injects():
    """`kubectl get deploy -A -o yaml | hello-sidecar inject`: one List document; serde-saphyr's default node budget
    (250,000) refuses it with 'budget breached: Nodes { nodes: 250001 }'."""
    item = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "web", "labels": {"a": "b", "c": "d"}},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "app", "image": "i", "env": [{"name": f"E{i}", "value": "v"} for i in range(20)]}]},
            },
        },
    }
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [item] * 3000})
    out = hello_sidecar("inject", "--target", TARGET, stdin=text)
    assert out.returncode == 0, out.stderr
    # PyYAML wrote one anchor and 2999 aliases; kubectl writes every item out in full.

    class NoAliases(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
        def ignore_aliases(self, data):
            return True

    text = yaml.dump({"apiVersion": "v1", "kind": "List", "items": [item] * 3000}, Dumper=NoAliases)
    assert "*id" not in text
    out = hello_sidecar("inject", "--target", TARGET, stdin=text)
    assert out.returncode == 0, out.stderr
    # (Counted in the text: PyYAML would take longer to read 7 MB back than inject takes to write it.)
    assert out.stdout.count("name: hello-sidecar\n") == 3000


def test_rbac_binding_names_are_unique_per_service_account():
    """hello-sidecar-{ns}-{sa}: (shop-web, api) and (shop, web-api) get the same RoleBinding name in the target's
    namespace, so `kubectl apply` keeps only one and the other pod's sidecar gets 403."""
    a = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: shop-web}\nspec:\n  serviceAccountName: api\n  containers: [{name: app, image: a}]\n"
    b = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: shop}\nspec:\n  serviceAccountName: web-api\n  containers: [{name: app, image: a}]\n"
    out = hello_sidecar("inject", "--target", "kubernetes:///hello.backend:grpc", "--rbac", stdin=a + "---\n" + b)
    assert out.returncode == 0, out.stderr
    names = [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in find(list(yaml.safe_load_all(out.stdout)), "RoleBinding")]
    assert len(names) == len(set(names)) == 2, names


def test_uninject_gives_back_the_meaning_inject_was_given_and_says_so():
    """inject --help said '--uninject  Remove the sidecar instead (gives back what `inject` was given)', but comments
    and flow style inside an injected document are lost. (Changed from the review's byte-equality test: keeping
    bytes of a re-written document needs a comment-preserving YAML editor; the promise is now meaning, and the
    help and README say exactly that.)"""
    text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: web}  # mine\nspec:\n  containers: [{name: app, image: a}]\n"
    once = hello_sidecar("inject", "--target", TARGET, stdin=text)
    back = hello_sidecar("inject", "--uninject", stdin=once.stdout)
    assert yaml.safe_load(back.stdout) == yaml.safe_load(text)
    help_text = " ".join(hello_sidecar("inject", "--help").stdout.split())
    assert "gives back the meaning of what `inject` was given, not its bytes" in help_text, help_text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "gives back the meaning of what `inject` was given, not its bytes" in readme


def test_chart_rbac_names_are_unique_per_release_and_namespace():
    """Release a in namespace b-c and release a-b in namespace c both gave `a-hello-sidecar-b-c`... in the target's
    namespace; long names were cut at 63 characters and could meet too. The name now carries a hash of the pair."""
    values = {"sidecar": {"target": "kubernetes:///hello.shop:grpc"}, "backend": {"enabled": False}}
    chart = helm.Chart.load(str(CHART))

    def binding(release, namespace):
        files = chart.render(values, name=release, namespace=namespace, is_install=True)
        docs = [d for d in yaml.safe_load_all(files["hello-sidecar/templates/rbac.yaml"]) if d]
        (b,) = find(docs, "RoleBinding")
        assert len(b["metadata"]["name"]) <= 63 and b["metadata"]["namespace"] == "shop", b
        return b["metadata"]["name"]

    assert binding("a", "b-hello-sidecar-c") != binding("a-hello-sidecar-b", "c")
    long = "n" * 40
    assert binding("r", long + "-x") != binding("r", long + "-y")


# --- chart values -------------------------------------------------------------------------------------------------


def test_the_schema_accepts_a_numeric_cpu_quantity():
    """`cpu: 0.5` is a valid Kubernetes quantity (and what many people write); the schema allows only int|string."""
    helm.Chart.load(str(CHART)).validate_schema({"sidecar": {"resources": {"limits": {"cpu": 0.5}}}})


def test_the_metrics_service_targets_the_admin_port_by_number():
    """kubeVersion >=1.29, but a Service's named targetPort resolves to a native sidecar's port only from 1.32
    (kubernetes/kubernetes#127958, fixed by #127976 + #128850, not backported): on 1.29-1.31 the ServiceMonitor
    finds EndpointSlices without a port and scrapes nothing."""
    docs = render_docs({"monitoring": {"serviceMonitor": {"enabled": True}}})
    (svc,) = find(docs, "Service", "release-hello-sidecar-client-metrics")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == [9901]


# --- the docker build replay ----------------------------------------------------------------------------------------


def test_the_replay_fails_when_the_final_stage_copies_what_the_builder_did_not_make(tmp_path):
    """COPY --from=build in the runtime stage is never checked: a renamed binary or a changed WORKDIR passes the
    replay and fails `docker build`."""
    df = tmp_path / "Dockerfile"
    df.write_text(
        "FROM rust:1.95-bookworm AS build\nWORKDIR /src\nCOPY Cargo.toml ./\nRUN true\n"
        "FROM gcr.io/distroless/cc-debian12:nonroot\n"
        "COPY --from=build /src/target/release/no-such-binary /usr/local/bin/hello-sidecar\n"
    )
    di = tmp_path / "dockerignore"
    di.write_text((ROOT / ".dockerignore").read_text())
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docker_replay.py"), "--dockerfile", str(df), "--dockerignore", str(di)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode != 0, out.stdout + out.stderr
    assert "COPY --from=build /src/target/release/no-such-binary: the build stage did not make it" in out.stderr, out.stderr
    # And what the builder did make passes.
    df.write_text(
        "FROM rust:1.95-bookworm AS build\nWORKDIR /src\nCOPY Cargo.toml ./\nRUN mkdir -p out && echo hi > out/app\n"
        "FROM gcr.io/distroless/cc-debian12:nonroot\nCOPY --from=build /src/out/app /usr/local/bin/app\n"
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docker_replay.py"), "--dockerfile", str(df), "--dockerignore", str(di)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and "COPY --from=build /src/out/app: present" in out.stdout, out.stdout + out.stderr


def test_inject_handles_a_pod_that_does_not_mount_its_token(tmp_path):
    """`automountServiceAccountToken: false` (common hardening) leaves the sidecar without in-cluster credentials:
    it retries forever, /ready stays 503, the startup probe fails and the app never starts. inject should give the
    sidecar a projected token (as linkerd inject does), or refuse / warn."""
    pod = POD.replace("spec:\n", "spec:\n  automountServiceAccountToken: false\n")
    out = hello_sidecar("inject", "--target", TARGET, stdin=pod)
    if out.returncode == 2 or "automountServiceAccountToken" in out.stderr:
        return
    (obj,) = [d for d in yaml.safe_load_all(out.stdout) if d]
    mounts = init_container(obj["spec"]).get("volumeMounts", [])
    assert any(m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in mounts), out.stdout
    # Only the sidecar: the app keeps its hardening. The output is a valid pod, and uninject takes it all back.
    assert all("volumeMounts" not in c for c in obj["spec"]["containers"]), out.stdout
    path = tmp_path / "out.yaml"
    path.write_text(out.stdout)
    kv = kubernetes_validate(path)
    assert kv.returncode == 0, kv.stdout + kv.stderr
    back = hello_sidecar("inject", "--uninject", stdin=out.stdout)
    assert yaml.safe_load(back.stdout) == yaml.safe_load(pod), back.stdout


# --- release ------------------------------------------------------------------------------------------------------


def test_release_check_uses_the_owner_the_workflow_pushes_to():
    """The workflow pushes ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/hello-sidecar; release_check.py read the owner
    from Chart.yaml's home only, so a fork's release passed the check and published a chart naming another image."""
    import os

    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

    def check(owner):
        env = {k: v for k, v in os.environ.items() if k != "GITHUB_REPOSITORY_OWNER"} | ({"GITHUB_REPOSITORY_OWNER": owner} if owner else {})
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "release_check.py"), f"v{version}"], capture_output=True, text=True, env=env)

    assert check(None).returncode == 0
    assert check("Hello-Sidecar").returncode == 0, "GHCR names are lower case"
    fork = check("someone-else")
    assert fork.returncode == 1 and "ghcr.io/someone-else/hello-sidecar" in fork.stderr, fork.stderr
