"""Release names up to Helm's 53-character limit: every object keeps a name of its own, within the API's limits."""

import collections
import re

import yaml
from chartlib import find, render_manifests

# RFC 1123 / 1035 labels (Service names are DNS-1035 labels): at most 63 characters.
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LONG_RELEASE = "payments-platform-grpc-sidecar-release-eu-west-1-prod"  # 53 characters, Helm's maximum
EVERYTHING_ON = {
    "mtls": {"enabled": True},
    "monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}},
}


def render(name: str, values: dict) -> list[dict]:
    text = render_manifests.render(values, name=name, namespace="payments", include_tests=True)
    return [d for d in yaml.safe_load_all(text) if d]


def test_a_53_character_release_name_gives_every_object_its_own_name():
    assert len(LONG_RELEASE) == 53
    docs = render(LONG_RELEASE, EVERYTHING_ON)
    names = collections.Counter((d["kind"], d["metadata"]["name"]) for d in docs)
    # Cut at 63 characters, "<fullname>-backend" and "<fullname>-client" were the same name: the backend and the
    # client Deployments, the two Certificates (so one Secret) and the two service accounts (so one SPIFFE ID).
    assert [k for k, n in names.items() if n > 1] == []
    for d in docs:
        if d["kind"] in ("Service", "Deployment", "ServiceAccount", "Role", "RoleBinding", "Certificate"):
            assert DNS_LABEL.match(d["metadata"]["name"]), d["metadata"]["name"]
    secrets = sorted(c["spec"]["secretName"] for c in find(docs, "Certificate"))
    assert len(set(secrets)) == 2, secrets
    uris = sorted(c["spec"]["uris"][0] for c in find(docs, "Certificate"))
    assert len(set(uris)) == 2, uris


def test_short_release_names_keep_their_object_names():
    docs = render("shop", EVERYTHING_ON)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "shop-hello-sidecar-backend") in names
    assert ("Deployment", "shop-hello-sidecar-client") in names
    assert ("Service", "shop-hello-sidecar-client-metrics") in names
    assert ("Certificate", "shop-hello-sidecar-client-mtls") in names
    assert ("Certificate", "shop-hello-sidecar-backend-mtls") in names
