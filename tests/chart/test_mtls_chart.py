"""The chart's mTLS mode (issue 15): off by default; when on, identities from service accounts end to end."""

import re
import sys
from pathlib import Path

import helm_python as helm
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import render_manifests  # noqa: E402

MTLS = helm.values_from_yaml((ROOT / "charts" / "hello-sidecar" / "ci" / "mtls-values.yaml").read_text())
CLIENT_ID = "spiffe://cluster.example/ns/ns/sa/release-hello-sidecar"
BACKEND_ID = "spiffe://cluster.example/ns/ns/sa/release-hello-sidecar-backend"


def test_mtls_is_off_by_default():
    text = render_manifests.render({}, include_tests=True)
    assert "Certificate" not in text and "inbound" not in text and "HELLO_SIDECAR_TLS" not in text


def test_mtls_mode_wires_certificates_sidecar_and_inbound_by_service_account():
    text = render_manifests.render(MTLS, name="release", namespace="ns", include_tests=True)
    kinds = [line.removeprefix("kind: ") for line in text.splitlines() if line.startswith("kind: ")]
    assert kinds.count("Certificate") == 2, kinds
    # One Certificate per workload, its SPIFFE ID from the service account, from the configured issuer.
    assert f'uris:\n    - "{CLIENT_ID}"' in text and f'uris:\n    - "{BACKEND_ID}"' in text
    assert "name: workload-ca" in text and text.count("kind: ClusterIssuer") == 2
    # The backend runs under its own service account, the app on loopback, `inbound` on the Service's port.
    assert "serviceAccountName: release-hello-sidecar-backend" in text
    assert 'value: "127.0.0.1:8080"' in text and "args: [\"inbound\"]" in text
    assert "targetPort: grpc-mtls" in text and "- name: grpc-mtls" in text
    # Only the chart's client (and the extra namespace) may call the backend.
    assert f'value: "{CLIENT_ID},spiffe://cluster.example/ns/monitoring/*"' in text
    # The sidecar (in the client and in the helm test pod) checks the backend's identity and mounts its secret.
    identity = re.findall(r"name: HELLO_SIDECAR_TLS_SERVER_IDENTITY\n\s+value: (.*)", text)
    assert identity == [f'"{BACKEND_ID}"'] * 2, identity
    # Each secret: written by its Certificate, mounted by the pods of its workload.
    assert text.count("secretName: release-hello-sidecar-client-mtls") == 1 + 2
    assert text.count("secretName: release-hello-sidecar-backend-mtls") == 1 + 1
    assert text.count("mountPath: /var/run/secrets/hello-sidecar/mtls") == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"mtls": {"enabled": "yes"}},
        {"mtls": {"issuerRef": {"name": "x", "kind": "Secret"}}},
        {"mtls": {"allow": ["spiffe://td/*"]}},
        {"mtls": {"trustDomain": "Cluster.Local"}},
    ],
)
def test_the_schema_rejects_bad_mtls_values(bad):
    with pytest.raises(Exception):
        render_manifests.render(bad)
