#!/usr/bin/env bash
# 40-smoke.sh (scripts/test.sh step) — the operator smoke scripts against a throw-away localnet: brings one up in
# target/smoke-localnet on ports of its own (apart from test.sh's refstack 2682/2683 and
# the localnet defaults) with a random database, runs scripts/smoke-opt-in.sh then scripts/smoke-crosspost.sh with
# the account it created, and always tears everything down (localnet-down.sh --wipe drops the database). On failure
# the tails of the service logs are printed. Ports: SMOKE_PORT_BASE shifts them all (default 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
LOG_TAG=40-smoke
# shellcheck source=../lib/common.sh
source scripts/lib/common.sh

off=${SMOKE_PORT_BASE:-0}
export LOCALNET_DIR="$ROOT/target/smoke-localnet"
export LOCALNET_PLC_PORT=$((2882 + off)) LOCALNET_PDS_PORT=$((2883 + off)) LOCALNET_RELAY_PORT=$((7877 + off))
export LOCALNET_MEDIA_PORT=$((8188 + off)) LOCALNET_GATEWAY_PORT=$((3100 + off)) LOCALNET_BRIDGE_PORT=$((9190 + off))
export LOCALNET_DB="divine_smoke_$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
# What scripts/test.sh exports for its own stack must not leak into the localnet or the smoke target.
unset RUN_DIR PLC_PORT PDS_PORT PLC_URL PDS_URL PDS_ADMIN_PASSWORD GATEWAY_URL GATEWAY_SERVICE_TOKEN RELAY_URL \
  MEDIA_URL HANDLE_DOMAIN DATABASE_URL

rc=1
t0=$SECONDS
on_exit() {
  if ((rc != 0)); then
    log "FAILED; service log tails ($LOCALNET_DIR):"
    for f in atbridge gateway relay media refstack/pds refstack/plc; do
      for ext in log err; do
        [[ -s "$LOCALNET_DIR/$f.$ext" ]] || continue
        echo "──── $f.$ext (last 40 lines)" >&2
        tail -n 40 "$LOCALNET_DIR/$f.$ext" >&2 || true
      done
    done
  fi
  scripts/localnet-down.sh --wipe > /dev/null 2>&1 || log "localnet-down.sh --wipe failed; clean up $LOCALNET_DIR by hand"
  log "total $((SECONDS - t0)) s"
}
trap on_exit EXIT

# A stale run (killed before its trap) may still hold the ports: stop it by its pid files first.
[[ -d "$LOCALNET_DIR" ]] && scripts/localnet-down.sh --wipe > /dev/null 2>&1 || true

# Its log (stderr) must say which build profile it uses and end with the next command to run (issue 14 §2).
uplog="$ROOT/target/smoke-localnet-up.log"
scripts/localnet-up.sh > /dev/null 2> "$uplog" || {
  cat "$uplog" >&2
  exit 1
}
grep -q "build profile: ${CARGO_PROFILE:-debug} " "$uplog" || die "localnet-up.sh did not say its build profile ($uplog)"
tail -n 1 "$uplog" | grep -q "next: scripts/smoke-opt-in.sh" || die "localnet-up.sh did not end with the next command"
log "localnet up in $((SECONDS - t0)) s"
state="$LOCALNET_DIR/smoke-account.json"
t1=$SECONDS
scripts/smoke-opt-in.sh --state-file "$state" --timeout 90
log "smoke-opt-in passed in $((SECONDS - t1)) s"
t1=$SECONDS
scripts/smoke-crosspost.sh --state-file "$state" --timeout 90
log "smoke-crosspost passed in $((SECONDS - t1)) s"
rc=0
