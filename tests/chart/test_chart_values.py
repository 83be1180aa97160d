"""The chart for any app: RBAC in each target's namespace, every sidecar flag a value, optional monitors."""

import hashlib
import re

import helm_python as helm
import pytest
import yaml
from chartlib import CHART, find, hello_sidecar, init_container, render_docs

MONITORED = helm.values_from_yaml((CHART / "ci" / "monitored-values.yaml").read_text())


def elsewhere(release_namespace: str, fullname: str = "release-hello-sidecar") -> str:
    """The RBAC name outside the release namespace: full name, release namespace, hash of the two."""
    digest = hashlib.sha256(f"{release_namespace}/{fullname}".encode()).hexdigest()[:8]
    return f"{fullname}-{release_namespace}"[:54].rstrip("-") + "-" + digest


def rbac_by_namespace(docs):
    return {
        kind: sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in find(docs, kind))
        for kind in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
    }


def test_a_cross_namespace_target_gets_its_role_and_binding_in_that_namespace():
    values = {
        "sidecar": {
            "target": "kubernetes:///hello.shop:grpc",
            "routes": [
                {"service": "acme.orders.v1.OrderService", "target": "kubernetes:///orders.billing:8080"},
                {"service": "acme.local.v1.Local", "target": "kubernetes:///local:grpc"},
                {"service": "*", "target": "static:///10.0.0.7:8080"},
            ],
        }
    }
    docs = render_docs(values, namespace="web")
    rbac = rbac_by_namespace(docs)
    # One Role + RoleBinding per Kubernetes target namespace (a target without one is the pod's own), none for
    # the static target, and no cluster-wide grant.
    assert rbac["Role"] == [("billing", elsewhere("web")), ("shop", elsewhere("web")), ("web", "release-hello-sidecar")]
    assert rbac["RoleBinding"] == rbac["Role"]
    assert rbac["ClusterRole"] == [] and rbac["ClusterRoleBinding"] == []
    sa = find(docs, "ServiceAccount")[0]["metadata"]
    for binding in find(docs, "RoleBinding"):
        ns = binding["metadata"]["namespace"]
        role = [r for r in find(docs, "Role", binding["roleRef"]["name"]) if r["metadata"]["namespace"] == ns]
        assert len(role) == 1 and role[0]["rules"] == [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
        ]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]
    # The routes reach the sidecar's command line.
    client = find(docs, "Deployment", "release-hello-sidecar-client")[0]
    args = init_container(client["spec"]["template"]["spec"])["args"]
    assert "--route=acme.orders.v1.OrderService=kubernetes:///orders.billing:8080" in args


def test_bring_your_own_service_gets_rbac_where_the_service_is():
    values = helm.values_from_yaml((CHART / "ci" / "bring-your-own-values.yaml").read_text())
    docs = render_docs(values, namespace="web")
    rbac = rbac_by_namespace(docs)
    assert rbac["Role"] == [("shop", elsewhere("web"))] == rbac["RoleBinding"]
    binding = find(docs, "RoleBinding")[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "my-app", "namespace": "web"}]


def test_a_static_target_needs_no_rbac():
    docs = render_docs({"sidecar": {"target": "static:///10.0.0.5:8080"}})
    assert find(docs, "Role") == [] and find(docs, "RoleBinding") == []


def sidecar_flags() -> list[str]:
    """The flags of `hello-sidecar sidecar --help`, without help and the global --log-format."""
    out = hello_sidecar("sidecar", "--help")
    assert out.returncode == 0, out.stderr
    flags = re.findall(r"^\s+(?:-\w, )?--([a-z][a-z-]*)", out.stdout, re.M)
    return [f for f in flags if f not in ("help", "log-format")]


def camel(flag: str) -> str:
    head, *rest = flag.split("-")
    return head + "".join(w.title() for w in rest)


def test_every_sidecar_flag_is_a_value_and_reaches_the_sidecar():
    flags = sidecar_flags()
    assert len(flags) >= 14, flags
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["sidecar"]
    docs = render_docs(MONITORED)
    client = find(docs, "Deployment", "release-hello-sidecar-client")[0]
    sidecar = init_container(client["spec"]["template"]["spec"])
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    # A new sidecar flag needs: a sidecar.<camelCase> value, its schema, its env var in _helpers.tpl, and a
    # setting in ci/monitored-values.yaml. --route (repeatable) is the `routes` list, rendered as arguments; the
    # --tls-* flags come from the `mtls` block (cert-manager certificates; tests/chart/test_mtls_chart.py).
    tls = [f for f in flags if f.startswith("tls-")]
    assert tls == ["tls-cert", "tls-key", "tls-ca", "tls-server-identity"], tls
    flags = [f for f in flags if f != "route" and f not in tls]
    route_args = [a for a in sidecar["args"] if a.startswith("--route=")]
    assert route_args == [f"--route={r['service']}={r['target']}" for r in MONITORED["sidecar"]["routes"]]
    for flag in flags:
        key = "adminPort" if flag == "admin" else camel(flag)
        assert key in defaults, f"--{flag}: no sidecar.{key} in values.yaml"
        assert key in MONITORED["sidecar"], f"--{flag}: ci/monitored-values.yaml does not set sidecar.{key}"
        var = "HELLO_SIDECAR_" + flag.upper().replace("-", "_")
        assert var in env, f"--{flag}: the sidecar gets no {var}"
        want = MONITORED["sidecar"][key]
        got = env[var]
        assert got == (f"0.0.0.0:{want}" if flag == "admin" else str(want)), (flag, got, want)
    assert env["RUST_BACKTRACE"] == "1", "extraEnv reaches the sidecar"
    assert sidecar["args"][-1] == "--log-format=json", "extraArgs reach the sidecar"
    # The values are flags the binary accepts: its parser checks each one before it reaches --help (exit 2 if not).
    given = [f"--{f}={env['HELLO_SIDECAR_' + f.upper().replace('-', '_')]}" for f in flags]
    check = hello_sidecar("sidecar", *given, "--help")
    assert check.returncode == 0, check.stderr
    assert hello_sidecar("sidecar", *given, "--eject-after=none", "--help").returncode == 2


def test_a_descriptor_set_config_map_is_mounted_in_the_sidecar_next_to_its_certificate():
    values = {"sidecar": {"descriptorSetConfigMap": "acme-sets"}, "mtls": {"enabled": True}}
    client = find(render_docs(values), "Deployment", "release-hello-sidecar-client")[0]["spec"]["template"]["spec"]
    assert {"name": "descriptor-sets", "configMap": {"name": "acme-sets"}} in client["volumes"]
    assert any(v["name"] == "mtls" for v in client["volumes"]), client["volumes"]
    mounts = {m["name"]: m["mountPath"] for m in init_container(client)["volumeMounts"]}
    assert mounts["descriptor-sets"] == "/etc/hello-sidecar/descriptor-sets", mounts
    assert "mtls" in mounts, mounts
    plain = find(render_docs({}), "Deployment", "release-hello-sidecar-client")[0]["spec"]["template"]["spec"]
    assert "volumes" not in plain and "volumeMounts" not in init_container(plain)


@pytest.mark.parametrize(
    "bad",
    [
        {"sidecar": {"unknownFlag": 1}},
        {"sidecar": {"routes": [{"service": "acme.Orders"}]}},
        {"sidecar": {"routes": [{"service": "acme.Orders", "target": "http://orders"}]}},
        {"sidecar": {"routes": [{"service": "not a service", "target": "static:///1.2.3.4:80"}]}},
        # The sidecar wants a protobuf full name (routes.rs): anything else would render and then crash-loop the pod.
        {"sidecar": {"routes": [{"service": "acme.Orders.", "target": "static:///1.2.3.4:80"}]}},
        {"sidecar": {"routes": [{"service": "1acme.Orders", "target": "static:///1.2.3.4:80"}]}},
        # Answered by the sidecar itself: the sidecar refuses a route for it (routes.rs ANSWERED_HERE).
        {"sidecar": {"routes": [{"service": "grpc.health.v1.Health", "target": "static:///1.2.3.4:80"}]}},
        {"sidecar": {"routes": [{"service": "grpc.reflection.v1alpha.ServerReflection", "target": "static:///1.2.3.4:80"}]}},
        {"sidecar": {"target": "kubernetes:///Hello.shop:grpc"}},
        {"sidecar": {"extraArgs": ["retry-budget=0.1"]}},
        {"sidecar": {"extraEnv": [{"value": "no name"}]}},
        {"sidecar": {"ejectAfter": 0}},
        {"sidecar": {"threads": -1}},
        {"sidecar": {"failfastTimeout": "soon"}},
        # A zero default deadline or connect timeout: the sidecar refuses both (exit 2).
        {"sidecar": {"defaultTimeout": "0s"}},
        {"sidecar": {"connectTimeout": "0"}},
        {"sidecar": {"defaultTimeout": "0m0.0s"}},
        {"sidecar": {"descriptorSetConfigMap": "Not A Name"}},
        {"monitoring": {"podMonitor": {"enabled": "yes"}}},
        {"monitoring": {"grafana": {}}},
    ],
)
def test_the_schema_rejects_bad_sidecar_and_monitoring_values(bad):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema(bad)


def test_the_schema_takes_a_service_of_a_proto_without_a_package():
    # `service Orders {}` in a .proto with no `package` is called as /Orders/Method: its full name is one part.
    helm.Chart.load(str(CHART)).validate_schema(
        {"sidecar": {"routes": [{"service": "Orders", "target": "static:///1.2.3.4:80"}]}}
    )


def test_monitors_are_off_by_default():
    docs = render_docs({})
    assert find(docs, "PodMonitor") == [] and find(docs, "ServiceMonitor") == []


def subset(small: dict, big: dict) -> bool:
    return all(big.get(k) == v for k, v in small.items())


def test_monitors_render_when_enabled_and_select_the_sidecars_admin_port():
    docs = render_docs(MONITORED)
    client = find(docs, "Deployment", "release-hello-sidecar-client")[0]
    pod_labels = client["spec"]["template"]["metadata"]["labels"]
    admin_ports = {p["name"] for p in init_container(client["spec"]["template"]["spec"])["ports"]}
    admin_numbers = {p["containerPort"] for p in init_container(client["spec"]["template"]["spec"])["ports"]}
    (pm,) = find(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["metadata"]["labels"]["release"] == "prometheus"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ns"]}
    assert subset(pm["spec"]["selector"]["matchLabels"], pod_labels), (pm["spec"]["selector"], pod_labels)
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in admin_ports and endpoint["path"] == "/metrics"
    (sm,) = find(docs, "ServiceMonitor")
    (svc,) = find(docs, "Service", "release-hello-sidecar-client-metrics")
    assert subset(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert subset(svc["spec"]["selector"], pod_labels)
    # By number: a named targetPort resolves to a native sidecar's port only from Kubernetes 1.32.
    ((target_port,),) = [[p["targetPort"] for p in svc["spec"]["ports"]]]
    assert isinstance(target_port, int) and target_port in admin_numbers
    (sm_endpoint,) = sm["spec"]["endpoints"]
    assert sm_endpoint["port"] == svc["spec"]["ports"][0]["name"] and sm_endpoint["interval"] == "15s"
    # A backend Service must not be picked up by the ServiceMonitor.
    backend = find(docs, "Service", "release-hello-sidecar-backend")[0]
    assert not subset(sm["spec"]["selector"]["matchLabels"], backend["metadata"]["labels"])


def test_a_route_for_hello_service_is_refused_at_render_time():
    # The chart always routes hello.v1.HelloService through HELLO_SIDECAR_TARGET (sidecar.target or this chart's
    # backend), so a route of its own would make the sidecar exit 2 ("routed twice") in every pod: say so when
    # rendering instead, naming the value to use.
    values = {"sidecar": {"routes": [{"service": "hello.v1.HelloService", "target": "static:///1.2.3.4:80"}]}}
    with pytest.raises(helm.HelmError, match="sidecar.target"):
        render_docs(values)
