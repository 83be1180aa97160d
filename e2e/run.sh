#!/usr/bin/env bash
# The kind tier: the local tier's scenarios against a real Kubernetes cluster.
#
#   e2e/run.sh            create a kind cluster, build + load the image, helm install, run the scenarios,
#                         helm test, delete the cluster (logs and events are printed on failure)
#   KEEP_CLUSTER=1 e2e/run.sh   leave the cluster up afterwards
#
# Needs docker (with a running engine), kind, helm, kubectl, and the Rust toolchain for the scenario runner.
set -euo pipefail
root="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"
# shellcheck source=prereqs.sh
source "$root/e2e/prereqs.sh"
if ! check_prereqs; then
  echo "e2e/run.sh: cannot run the kind tier without the prerequisites above" >&2
  exit 1
fi

stamp="$(date +%s)"
sha="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo nogit)"
cluster="hello-sidecar-e2e-$stamp"
namespace="e2e-$stamp"
release="hello-sidecar"
image="hello-sidecar:e2e-$sha-$stamp" # unique: never :latest, never a stale image on the nodes

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "== e2e failed (exit $rc): logs and events ==" >&2
    kubectl -n "$namespace" get pods -o wide >&2 || true
    kubectl -n "$namespace" get events --sort-by=.lastTimestamp >&2 || true
    kubectl -n "$namespace" logs -l app.kubernetes.io/instance="$release" --all-containers --prefix --tail=200 >&2 || true
  fi
  if [ -z "${KEEP_CLUSTER:-}" ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

echo "== kind cluster $cluster"
kind create cluster --name "$cluster" --config "$root/e2e/kind-config.yaml" --wait 120s
kubectl config use-context "kind-$cluster"

echo "== image $image"
docker build -t "$image" "$root"
kind load docker-image "$image" --name "$cluster"

echo "== helm install into $namespace"
kubectl create namespace "$namespace"
helm install "$release" "$root/charts/hello-sidecar" --namespace "$namespace" --wait --timeout 180s \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never

echo "== scenarios (the local tier's, through tests/common/kind.rs)"
E2E_KIND_NAMESPACE="$namespace" E2E_KIND_RELEASE="$release" \
  cargo test --manifest-path "$root/Cargo.toml" --test kind -- --ignored --test-threads=1

echo "== helm test"
helm test "$release" --namespace "$namespace" --logs --timeout 120s
echo "== e2e passed"
