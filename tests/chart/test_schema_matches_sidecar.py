"""Values the schema takes start a sidecar: what the sidecar refuses at start (exit 2) the schema refuses too."""

import helm_python as helm
import pytest
from chartlib import CHART, find, init_container, render_docs


def validate(values: dict) -> None:
    helm.Chart.load(str(CHART)).validate_schema(values)


def route(target: str) -> dict:
    return {"sidecar": {"routes": [{"service": "acme.orders.v1.OrderService", "target": target}]}}


@pytest.mark.parametrize(
    "bad",
    [
        # --listen: "invalid socket address syntax".
        {"sidecar": {"listen": "127.0.0.1:99999"}},
        {"sidecar": {"listen": "127.999.0.1:50051"}},
        # --threads: "not a thread count from 0 (one per core) to 1024".
        {"sidecar": {"threads": 2000}},
        # --keepalive-interval: "must be 0 (off) or at least 1s" (src/cli.rs parse_keepalive).
        {"sidecar": {"keepaliveInterval": "500ms"}},
        {"sidecar": {"keepaliveInterval": "0.5s"}},
        {"sidecar": {"keepaliveInterval": "999ms"}},
        # --max-concurrent-calls and --eject-after are u32.
        {"sidecar": {"maxConcurrentCalls": 2**32}},
        {"sidecar": {"ejectAfter": 2**32}},
        # Targets (src/discovery/target.rs): a port from 1 to 65535, or a port name of at most 15 characters with a
        # letter and no "--"; service and namespace are DNS labels (at most 63); every static host has a port.
        route("kubernetes:///orders.shop:0"),
        route("kubernetes:///orders.shop:99999"),
        route("kubernetes:///orders.shop:grpc-orders-service"),
        route("kubernetes:///orders.shop:grpc--web"),
        route("kubernetes:///" + "o" * 64 + ".shop:grpc"),
        route("static:///orders"),
        route("static:///10.0.0.7:8080,10.0.0.8"),
        route("static:///::1:8080"),
        {"sidecar": {"target": "static:///10.0.0.7"}},
    ],
)
def test_the_schema_refuses_what_the_sidecar_refuses_at_start(bad):
    with pytest.raises(helm.HelmError):
        validate(bad)


@pytest.mark.parametrize(
    "good",
    [
        {"sidecar": {"listen": "127.0.0.1:65535"}},
        {"sidecar": {"listen": "127.0.0.53:50051"}},
        {"sidecar": {"listen": "[::1]:50051"}},
        {"sidecar": {"threads": 1024}},
        {"sidecar": {"keepaliveInterval": "0"}},
        {"sidecar": {"keepaliveInterval": "0s"}},
        {"sidecar": {"keepaliveInterval": "1s"}},
        {"sidecar": {"keepaliveInterval": "1500ms"}},
        {"sidecar": {"keepaliveInterval": "1m30s"}},
        {"sidecar": {"keepaliveInterval": "2h"}},
        {"sidecar": {"maxConcurrentCalls": 2**32 - 1, "ejectAfter": 2**32 - 1}},
        route("kubernetes:///orders.shop:65535"),
        route("kubernetes:///orders.shop:grpc-web"),
        route("kubernetes:///orders:grpc"),
        route("kubernetes:///" + "o" * 63 + ".shop:h2c-orders-v1ab"),
        route("static:///10.0.0.7:8080"),
        route("static:///10.0.0.7:8080, orders.example.com:443,[::1]:8080"),
    ],
)
def test_the_schema_takes_what_the_sidecar_takes(good):
    validate(good)


def test_a_million_renders_as_an_integer_not_1e06():
    # Helm reads numbers as float64: `quote` of 1000000 is "1e+06", which the sidecar refuses (exit 2) and
    # `call --count` too.
    docs = render_docs({"sidecar": {"maxConcurrentCalls": 1000000, "ejectAfter": 1000000}, "tests": {"calls": 1000000}})
    client = find(docs, "Deployment", "release-hello-sidecar-client")[0]
    env = {e["name"]: e.get("value") for e in init_container(client["spec"]["template"]["spec"])["env"]}
    assert env["HELLO_SIDECAR_MAX_CONCURRENT_CALLS"] == "1000000"
    assert env["HELLO_SIDECAR_EJECT_AFTER"] == "1000000"
    test_pod = find(docs, "Pod")[0]
    args = [a for c in test_pod["spec"]["containers"] for a in c.get("args", [])]
    assert "--count=1000000" in args, args


@pytest.mark.parametrize(
    "bad",
    [
        # A flag on the command line beats its HELLO_SIDECAR_* variable without a word: --admin elsewhere than
        # adminPort leaves the probes and monitors on a closed port (the pod never gets ready); --listen elsewhere
        # than listen leaves the app calling a closed port; a --target or --route there gets no RBAC (the watch is
        # forbidden and every call UNAVAILABLE).
        {"sidecar": {"extraArgs": ["--admin=0.0.0.0:9999"]}},
        {"sidecar": {"extraArgs": ["--listen=127.0.0.1:6000"]}},
        {"sidecar": {"extraArgs": ["--route=acme.orders.v1.OrderService=kubernetes:///orders.billing:grpc"]}},
        {"sidecar": {"extraArgs": ["--target=kubernetes:///hello.other:grpc"]}},
        # The same through an environment variable after the chart's own (the last of two with one name wins).
        {"sidecar": {"extraEnv": [{"name": "HELLO_SIDECAR_ROUTE", "value": "acme.X=kubernetes:///x.other:grpc"}]}},
        {"sidecar": {"extraEnv": [{"name": "HELLO_SIDECAR_ADMIN", "value": "0.0.0.0:9999"}]}},
    ],
)
def test_the_schema_refuses_extra_flags_that_bypass_the_charts_wiring(bad):
    with pytest.raises(helm.HelmError):
        validate(bad)


def test_extra_flags_the_chart_does_not_wire_stay_allowed():
    validate({"sidecar": {"extraArgs": ["--retry-budget=0.1", "--ewma-decay=2s"],
                          "extraEnv": [{"name": "HELLO_SIDECAR_RETRY_BUDGET", "value": "0.1"}, {"name": "TZ", "value": "UTC"}]}})
