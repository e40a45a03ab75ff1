#!/usr/bin/env bash
# test.sh — everything CI runs (`.ci/run` calls exactly this), in order, failing fast:
#
#   1. Postgres on 127.0.0.1:5432 (installed with apt and/or started when needed; trust auth for user postgres)
#   2. cargo fmt --check, cargo clippy --all-targets -- -D warnings
#   3. the reference PLC + PDS (scripts/refstack.sh: cached install outside the checkout, started on private ports)
#   4. cargo test --workspace: unit, Postgres and end-to-end tests (REQUIRE_E2E=1: a missing peer fails, never skips)
#   5. every step listed in scripts/test.d/ (smoke scripts against a localnet, k8s manifests, alerts, error-code
#      coverage), each an executable script run in name order
#
# Tests create and drop their own databases. Environment: TEST_PLC_PORT/TEST_PDS_PORT (2682/2683) keep the test
# stack apart from a running localnet; SKIP_LINT=1 skips step 2 (local iteration only; CI never sets it);
# TEST_FILTER passes a filter to cargo test. Timing of every step is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG_TAG=test
# shellcheck source=lib/common.sh
source scripts/lib/common.sh

declare -a TIMES=()
step() { # name cmd...
  local name=$1 t0=$SECONDS
  shift
  log "── $name"
  "$@"
  TIMES+=("$(printf '%-28s %4d s' "$name" $((SECONDS - t0)))")
}

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"

need_cmd curl curl
need_cmd openssl openssl
need_cmd jq jq
step postgres ensure_postgres

if [[ "${SKIP_LINT:-}" != 1 ]]; then
  step fmt cargo fmt --all -- --check
  step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# The reference stack for the end-to-end tests, on ports of its own, stopped on exit whatever happens.
export RUN_DIR="${TEST_RUN_DIR:-$ROOT/target/test-refstack}"
export PLC_PORT="${TEST_PLC_PORT:-2682}" PDS_PORT="${TEST_PDS_PORT:-2683}"
cleanup() { scripts/refstack.sh stop > /dev/null 2>&1 || true; }
trap cleanup EXIT
step refstack-install scripts/refstack.sh install
step refstack-start scripts/refstack.sh start
# shellcheck disable=SC1091
source "$RUN_DIR/env"
export PLC_URL PDS_URL PDS_ADMIN_PASSWORD REQUIRE_E2E=1

# Build first (one cargo invocation), so test binaries can spawn the real service binaries from target/debug.
step build cargo build --workspace --all-targets --locked
step cargo-test cargo test --workspace --locked --no-fail-fast -- ${TEST_FILTER:-}

if [[ -d scripts/test.d ]]; then
  for s in scripts/test.d/*; do
    [[ -x "$s" ]] || continue
    step "$(basename "$s")" "$s"
  done
fi

log "timings:"
for t in "${TIMES[@]}"; do log "  $t"; done
log "all steps passed"
