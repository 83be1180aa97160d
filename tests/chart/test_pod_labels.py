"""Extra pod labels cannot take the selector's keys: the template would hold the key twice."""

import helm_python as helm
import pytest
from chartlib import CHART, render_docs


@pytest.mark.parametrize("role", ["backend", "client"])
@pytest.mark.parametrize("key", ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"])
def test_the_schema_refuses_pod_labels_with_a_selector_key(role, key):
    # Rendered after the selector labels, the key appeared twice in one mapping: Helm's YAML parser refuses a
    # duplicate key, and with the last one winning the Deployment's selector would not match its pods.
    with pytest.raises(helm.HelmError):
        helm.Chart.load(str(CHART)).validate_schema({role: {"podLabels": {key: "mine"}}})


def test_other_pod_labels_reach_the_pods():
    docs = render_docs({"backend": {"podLabels": {"team": "platform", "app.kubernetes.io/part-of": "shop"}}})
    backend = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-backend")][0]
    labels = backend["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "platform" and labels["app.kubernetes.io/part-of"] == "shop"
    assert backend["spec"]["selector"]["matchLabels"].items() <= labels.items()
