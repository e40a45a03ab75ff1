#!/usr/bin/env bash
# 31-alerts.sh — checks deploy/k8s/alerts.yaml: extracts the PrometheusRule's rule groups, runs `promtool check
# rules` and `promtool test rules` with deploy/k8s/tests/alerts.test.yaml (every alert fires on a bad series and
# stays silent on healthy ones), and lints labels, annotations and runbook anchors (deploy/k8s/tests/check_alerts.py).
# promtool comes from the Debian package `prometheus`: when it is not on PATH, the .deb is downloaded with apt and
# only promtool is unpacked into ~/.cache/divine-bridge/ — installing the package would start a Prometheus server on
# :9090, the port divine-atbridge uses. Prints `N passed, N failed`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
# shellcheck source=deploy/k8s/tests/venv.sh
source "$ROOT/deploy/k8s/tests/venv.sh"
LOG_TAG=alerts

ALERTS="$ROOT/deploy/k8s/alerts.yaml"
TESTS="$ROOT/deploy/k8s/tests/alerts.test.yaml"
DOC="$ROOT/docs/runbooks/metrics.md"
CACHE="${DIVINE_CACHE:-$HOME/.cache/divine-bridge}"

find_promtool() {
  if command -v promtool > /dev/null; then
    PROMTOOL=$(command -v promtool)
    return 0
  fi
  local dir="$CACHE/promtool"
  PROMTOOL="$dir/usr/bin/promtool"
  [[ -x "$PROMTOOL" ]] && return 0
  command -v apt-get > /dev/null || die "promtool not found and no apt-get: install the prometheus package"
  mkdir -p "$dir"
  (
    flock 9
    [[ -x "$PROMTOOL" ]] && exit 0
    if [[ -z "${DIVINE_APT_UPDATED:-}" ]]; then
      log "apt-get update"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    fi
    local tmp
    tmp=$(mktemp -d)
    chown _apt "$tmp" 2> /dev/null || true # apt-get download fetches as the _apt user
    log "downloading the Debian package prometheus to unpack promtool into $dir"
    (cd "$tmp" && apt-get download -qq prometheus >&2) || die "apt-get download prometheus failed"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    install -D -m 0755 "$tmp/x/usr/bin/promtool" "$PROMTOOL"
    rm -rf "$tmp"
  ) 9> "$dir.lock" || die "could not unpack promtool"
}

ensure_k8s_venv
find_promtool
log "$("$PROMTOOL" --version 2>&1 | head -1)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# promtool reads plain rule files: the test file names rules.yaml, next to it in $WORK.
"$K8S_VENV/bin/python" "$ROOT/deploy/k8s/tests/check_alerts.py" extract "$ALERTS" "$WORK/rules.yaml"
cp "$TESTS" "$WORK/alerts.test.yaml"

# quiet CMD... — run CMD, show its output only when it fails.
quiet() {
  local out
  if out=$("$@" 2>&1); then return 0; fi
  printf '%s\n' "$out" | sed 's/^/      /'
  return 1
}
check "promtool check rules (alerts.yaml spec)" quiet "$PROMTOOL" check rules "$WORK/rules.yaml"
check "promtool test rules (deploy/k8s/tests/alerts.test.yaml)" quiet "$PROMTOOL" test rules "$WORK/alerts.test.yaml"

lint_out=$("$K8S_VENV/bin/python" "$ROOT/deploy/k8s/tests/check_alerts.py" lint "$ALERTS" "$TESTS" "$DOC" \
  "$ROOT/crates/divine-atbridge/src/metrics.rs" "$ROOT/crates/divine-handle-gateway/src/metrics.rs") ||
  fail "check_alerts.py lint ran"
grep -v '^counts ' <<< "$lint_out" || true
read -r _ p f <<< "$(grep '^counts ' <<< "$lint_out" || echo "counts 0 1")"
PASSED=$((PASSED + p))
FAILED=$((FAILED + f))
summary
