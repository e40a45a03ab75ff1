# shellcheck shell=bash
# venv.sh — sourced by scripts/test.d/30-k8s.sh and 31-alerts.sh (after scripts/lib/common.sh): defines
# ensure_k8s_venv, which installs deploy/k8s/tests/requirements.txt into a venv cached under ~/.cache/divine-bridge/
# (keyed by the requirements' hash, built under a lock so parallel runs share one install) and sets K8S_VENV.
# Defines functions only.

ensure_k8s_venv() {
  local req="$ROOT/deploy/k8s/tests/requirements.txt"
  local cache="${DIVINE_CACHE:-$HOME/.cache/divine-bridge}"
  K8S_VENV="$cache/k8s-venv-$(sha256sum "$req" | cut -c1-16)"
  [[ -f "$K8S_VENV/.complete" ]] && return 0
  need_cmd python3 python3
  python3 -c 'import venv, ensurepip' 2> /dev/null || apt_install python3-venv
  mkdir -p "$cache"
  (
    flock 9
    [[ -f "$K8S_VENV/.complete" ]] && exit 0
    log "installing $(grep -v '^#' "$req" | xargs) into $K8S_VENV"
    rm -rf "$K8S_VENV"
    python3 -m venv "$K8S_VENV"
    "$K8S_VENV/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    touch "$K8S_VENV/.complete"
  ) 9> "$K8S_VENV.lock" || die "could not install the k8s test tools into $K8S_VENV"
}
