#!/usr/bin/env bash
# localnet-up.sh — the whole bridge on one machine, on loopback only (docs/runbooks/localnet.md):
#
#   Postgres (system cluster, database $LOCALNET_DB)      127.0.0.1:5432
#   reference PLC directory (in-memory)                   localhost:$LOCALNET_PLC_PORT     (2582)
#   reference PDS (handles *.test)                        localhost:$LOCALNET_PDS_PORT     (2583)
#   dev-relay (in-memory Nostr relay)                     127.0.0.1:$LOCALNET_RELAY_PORT   (7777)
#   media server (scripts/localnet/media, $DIR/media)     127.0.0.1:$LOCALNET_MEDIA_PORT   (8088)
#   divine-atbridge run (/metrics /health /ready)         127.0.0.1:$LOCALNET_BRIDGE_PORT  (9090)
#   divine-handle-gateway                                 127.0.0.1:$LOCALNET_GATEWAY_PORT (3000)
#
# Idempotent: with everything up it only prints the env; a stopped piece is started again. Pid files, logs, the
# generated secrets (0600) and `env` (shell export lines, the contract the smoke scripts read) live in
# $LOCALNET_DIR (default <checkout>/.localnet). The PLC keeps its data in memory, so whenever the reference stack has
# to be (re)started every DID is gone: the script then also resets the database (and restarts the bridge and the
# gateway) so no account points at a vanished identity. Set LOCALNET_SKIP_BUILD=1 to use the binaries already built.
# The binaries are built with the Cargo profile CARGO_PROFILE (default debug: quick to build; CARGO_PROFILE=release
# for optimised binaries); the script says which at the start and ends with the next command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG_TAG=localnet
# shellcheck source=lib/common.sh
source scripts/lib/common.sh

DIR="${LOCALNET_DIR:-$ROOT/.localnet}"
PLC_P="${LOCALNET_PLC_PORT:-2582}"
PDS_P="${LOCALNET_PDS_PORT:-2583}"
RELAY_P="${LOCALNET_RELAY_PORT:-7777}"
MEDIA_P="${LOCALNET_MEDIA_PORT:-8088}"
GATEWAY_P="${LOCALNET_GATEWAY_PORT:-3000}"
BRIDGE_P="${LOCALNET_BRIDGE_PORT:-9090}"
DB="${LOCALNET_DB:-divine_localnet}"
ADMIN_PW="${LOCALNET_PDS_ADMIN_PASSWORD:-admin-pass}"
for p in "$PLC_P" "$PDS_P" "$RELAY_P" "$MEDIA_P" "$GATEWAY_P" "$BRIDGE_P"; do
  if ! [[ "$p" =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die "bad port $p (LOCALNET_*_PORT)"; fi
done
[[ "$DB" =~ ^[a-z_][a-z0-9_]*$ ]] || die "bad database name $DB (LOCALNET_DB: lower-case letters, digits, _)"

mkdir -p "$DIR/media"
DIR=$(cd "$DIR" && pwd)
REFSTACK_RUN="$DIR/refstack"

PLC_URL="http://localhost:$PLC_P"
PDS_URL="http://localhost:$PDS_P"
RELAY_URL="ws://127.0.0.1:$RELAY_P"
MEDIA_URL="http://127.0.0.1:$MEDIA_P"
GATEWAY_URL="http://127.0.0.1:$GATEWAY_P"
BRIDGE_HTTP_URL="http://127.0.0.1:$BRIDGE_P"
HANDLE_DOMAIN="test"
# TLS to a Postgres on loopback protects nothing and costs both ends CPU on every round trip (libpq's default
# sslmode=prefer negotiates it whenever the server has ssl=on, as Debian's does): ~8 % of the bridge's CPU and a share
# of Postgres's in the e2e bench, next to the PDS on the same cores. A localnet pointed at another host keeps prefer;
# production uses sslmode=require or stricter (launch-checklist.md).
case "$PGHOST_ADDR" in
  127.* | ::1 | localhost) DB_TLS="?sslmode=disable" ;;
  *) DB_TLS="" ;;
esac
DATABASE_URL="postgres://postgres@${PGHOST_ADDR}:${PGPORT_NUM}/$DB$DB_TLS"

# refstack.sh with this localnet's run dir and ports (and nothing inherited from a caller such as scripts/test.sh).
refstack() { RUN_DIR="$REFSTACK_RUN" PLC_PORT="$PLC_P" PDS_PORT="$PDS_P" PDS_ADMIN_PASSWORD="$ADMIN_PW" scripts/refstack.sh "$@"; }
refstack_up() { pid_alive "$REFSTACK_RUN/plc.pid" plc.cjs && pid_alive "$REFSTACK_RUN/pds.pid" pds.mjs; }

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2> /dev/null; }

# Each service: name, pid-file process marker, health probe.
relay_up() { pid_alive "$DIR/relay.pid" dev-relay && port_busy "$RELAY_P"; }
media_up() { pid_alive "$DIR/media.pid" media-server.mjs && http_ok "$MEDIA_URL/health"; }
bridge_up() { pid_alive "$DIR/atbridge.pid" divine-atbridge && http_ok "$BRIDGE_HTTP_URL/ready"; }
gateway_up() { pid_alive "$DIR/gateway.pid" divine-handle-gateway && http_ok "$GATEWAY_URL/ready"; }

# The build profile, said up front (stderr, like every log line: stdout carries only the env).
PROFILE="${CARGO_PROFILE:-debug}"
log "build profile: $PROFILE (binaries from $(cargo_profile_dir)); change it with CARGO_PROFILE=release (or debug) $0"

print_env() {
  log "localnet up (env: $DIR/env; logs: $DIR/*.log, $REFSTACK_RUN/pds.log; build profile $PROFILE)"
  cat "$DIR/env"
  log "next: scripts/smoke-opt-in.sh && scripts/smoke-crosspost.sh   (they read $DIR/env; \`source $DIR/env\` for the CLI; stop with scripts/localnet-down.sh)"
}

if [[ -f "$DIR/env" ]] && refstack_up && http_ok "http://127.0.0.1:$PLC_P/_health" &&
  http_ok "http://127.0.0.1:$PDS_P/xrpc/_health" && relay_up && media_up && bridge_up && gateway_up; then
  log "everything is already running"
  print_env
  exit 0
fi

# Refuse before starting anything when a port we need is held by a process that is not ours.
busy=()
if ! refstack_up; then
  port_busy "$PLC_P" && busy+=("$PLC_P (PLC)")
  port_busy "$PDS_P" && busy+=("$PDS_P (PDS)")
fi
pid_alive "$DIR/relay.pid" dev-relay || ! port_busy "$RELAY_P" || busy+=("$RELAY_P (relay)")
pid_alive "$DIR/media.pid" media-server.mjs || ! port_busy "$MEDIA_P" || busy+=("$MEDIA_P (media)")
pid_alive "$DIR/atbridge.pid" divine-atbridge || ! port_busy "$BRIDGE_P" || busy+=("$BRIDGE_P (bridge HTTP)")
pid_alive "$DIR/gateway.pid" divine-handle-gateway || ! port_busy "$GATEWAY_P" || busy+=("$GATEWAY_P (gateway)")
if ((${#busy[@]})); then
  die "port(s) already in use by other processes: ${busy[*]}. Find them with ss -ltnp, or move this localnet with LOCALNET_PLC_PORT, LOCALNET_PDS_PORT, LOCALNET_RELAY_PORT, LOCALNET_MEDIA_PORT, LOCALNET_BRIDGE_PORT, LOCALNET_GATEWAY_PORT"
fi

T0=$SECONDS
need_cmd curl curl
need_cmd jq jq
need_cmd openssl openssl
need_cmd flock util-linux
ensure_postgres

# A port we are about to bind must be free (ours are checked alive first, so this is someone else's process).
claim_port() { # port what
  if port_busy "$1"; then
    die "port $1 ($2) is already in use by another process: stop it (ss -ltnp 'sport = :$1') or pick another port with LOCALNET_*_PORT"
  fi
}

# Build (one cargo invocation; a no-op when nothing changed).
BIN_DIR=$(cargo_profile_dir)
if [[ "${LOCALNET_SKIP_BUILD:-}" != 1 ]]; then
  # Exactly the four binaries the localnet runs (not every bin of the crates: a broken dev tool such as `bench`
  # must not block the localnet).
  bins=(--bin divine-atbridge --bin dev-relay --bin nostr-tool --bin divine-handle-gateway)
  log "cargo build --locked $(cargo_profile_flag) -p divine-atbridge -p divine-handle-gateway -p divine-dev-tools ${bins[*]} (CARGO_PROFILE=$PROFILE)"
  cargo build --locked "$(cargo_profile_flag)" -p divine-atbridge -p divine-handle-gateway -p divine-dev-tools "${bins[@]}" >&2 ||
    die "cargo build failed"
fi
for b in divine-atbridge divine-handle-gateway dev-relay nostr-tool; do
  [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b missing (build failed or LOCALNET_SKIP_BUILD=1 without a build)"
done

# Secrets, generated once and kept across runs (0600).
umask 077
if [[ ! -s "$DIR/secrets" ]]; then
  log "generating KEY_ENCRYPTION_KEY and GATEWAY_SERVICE_TOKEN into $DIR/secrets"
  {
    echo "KEY_ENCRYPTION_KEY=$(openssl rand -base64 32)"
    echo "GATEWAY_SERVICE_TOKEN=localnet-$(openssl rand -hex 24)"
  } > "$DIR/secrets.tmp"
  mv "$DIR/secrets.tmp" "$DIR/secrets"
fi
chmod 600 "$DIR/secrets"
umask 022
KEY_ENCRYPTION_KEY=$(sed -n 's/^KEY_ENCRYPTION_KEY=//p' "$DIR/secrets")
GATEWAY_SERVICE_TOKEN=$(sed -n 's/^GATEWAY_SERVICE_TOKEN=//p' "$DIR/secrets")
[[ -n "$KEY_ENCRYPTION_KEY" && -n "$GATEWAY_SERVICE_TOKEN" ]] || die "$DIR/secrets is incomplete: delete it and re-run"

# A database this localnet directory did not create may belong to another localnet: never reset someone else's.
db_exists() { [[ -n "$(pg_sql -c "select 1 from pg_database where datname = '$DB'")" ]]; }
if db_exists && [[ "$(sed -n 's/^DB=//p' "$DIR/ports" 2> /dev/null)" != "$DB" ]]; then
  die "database $DB exists but was not created for $DIR (another localnet's?): choose LOCALNET_DB, or drop it: psql -h $PGHOST_ADDR -U postgres -c 'drop database \"$DB\" with (force)'"
fi
# The ports and database of this localnet, so localnet-down.sh stops the same refstack (even after a failed start).
printf 'PLC_P=%s\nPDS_P=%s\nDB=%s\n' "$PLC_P" "$PDS_P" "$DB" > "$DIR/ports"

# Reference PLC + PDS.
fresh_identity=0
if ! refstack_up; then
  fresh_identity=1
  if ! refstack node > /dev/null 2>&1; then
    # First install: npm compiles better-sqlite3 (python3, make, g++), and Node 22 comes from the npm registry.
    command -v npm > /dev/null || die "npm is needed for the first refstack install (apt-get install -y npm)"
    need_cmd python3 python3
    need_cmd make make
    need_cmd g++ g++
  fi
  refstack install
  refstack start
fi
NODE=$(refstack node)

# The database: created when missing; reset when the (in-memory) PLC was just started, because every DID and PDS
# account the old rows point at is gone. The bridge and gateway must not hold connections to it meanwhile.
if ((fresh_identity)) && db_exists; then
  stop_pidfile "$DIR/gateway.pid" divine-handle-gateway 10
  stop_pidfile "$DIR/atbridge.pid" divine-atbridge 15
  log "reference PLC/PDS (re)started with empty state: resetting database $DB"
  pg_sql -c "drop database if exists \"$DB\" with (force)" > /dev/null
fi
ensure_database "$DB"

# start_bg NAME PIDFILE LOGFILE CMD... — start CMD detached from our stdio, record its pid.
start_bg() {
  local name=$1 pidfile=$2 logfile=$3
  shift 3
  log "starting $name (log: $logfile)"
  echo "==== $(date -u +%FT%TZ) localnet-up.sh starting $name" >> "$logfile"
  nohup "$@" < /dev/null >> "$logfile" 2>&1 &
  echo $! > "$pidfile"
}

wait_port() { # name port timeout pidfile logfile
  local deadline=$((SECONDS + $3))
  until port_busy "$2"; do
    pid_alive "$4" || {
      tail -n 30 "$5" >&2 || true
      die "$1 exited before listening on 127.0.0.1:$2; full log: $5"
    }
    ((SECONDS < deadline)) || {
      tail -n 30 "$5" >&2 || true
      die "$1 not listening on 127.0.0.1:$2 within $3 s; full log: $5"
    }
    sleep 0.2
  done
}

if ! relay_up; then
  stop_pidfile "$DIR/relay.pid" dev-relay 5
  claim_port "$RELAY_P" relay
  start_bg dev-relay "$DIR/relay.pid" "$DIR/relay.log" env NO_COLOR=1 RUST_LOG=info "$BIN_DIR/dev-relay" --addr "127.0.0.1:$RELAY_P"
  wait_port dev-relay "$RELAY_P" 20 "$DIR/relay.pid" "$DIR/relay.log"
fi

if ! media_up; then
  stop_pidfile "$DIR/media.pid" media-server.mjs 5
  claim_port "$MEDIA_P" media
  start_bg media-server "$DIR/media.pid" "$DIR/media.log" env MEDIA_HOST=127.0.0.1 MEDIA_PORT="$MEDIA_P" \
    MEDIA_DIRS="$ROOT/scripts/localnet/media:$DIR/media" "$NODE" "$ROOT/scripts/localnet/media-server.mjs"
  wait_http media-server "$MEDIA_URL/health" 20 "$DIR/media.pid" "$DIR/media.log"
fi

# Service environments (0600: they hold the key-encryption key and the token). Values from the caller's
# environment win for the tunables (e.g. WORKERS=2 scripts/localnet-up.sh).
umask 077
cat > "$DIR/atbridge.env" << ENV
DATABASE_URL=$DATABASE_URL
HTTP_ADDR=127.0.0.1:$BRIDGE_P
PLC_DIRECTORY_URL=$PLC_URL
PDS_URL=$PDS_URL
KEY_ENCRYPTION_KEY=$KEY_ENCRYPTION_KEY
ACCOUNT_EMAIL_DOMAIN=${ACCOUNT_EMAIL_DOMAIN:-localnet.test}
ALLOW_NO_RECOVERY_KEYS=true
PDS_ADMIN_PASSWORD=$ADMIN_PW
NOSTR_RELAYS=$RELAY_URL
MEDIA_ALLOWED_HOSTS=127.0.0.1,localhost
MEDIA_ALLOW_LOOPBACK=true
WORKERS=${WORKERS:-4}
LEASE_SECS=${LEASE_SECS:-30}
WATCHDOG_INTERVAL_SECS=${WATCHDOG_INTERVAL_SECS:-5}
RETRY_BASE_SECS=${RETRY_BASE_SECS:-1}
RETRY_CAP_SECS=${RETRY_CAP_SECS:-15}
SHUTDOWN_GRACE_SECS=${SHUTDOWN_GRACE_SECS:-5}
ACCOUNT_REFRESH_SECS=${ACCOUNT_REFRESH_SECS:-1}
CURSOR_OVERLAP_SECS=${CURSOR_OVERLAP_SECS:-900}
RECONCILE_INTERVAL_SECS=${RECONCILE_INTERVAL_SECS:-20}
DB_POOL_SIZE=${DB_POOL_SIZE:-8}
RUST_LOG=${RUST_LOG:-info,divine_atbridge=debug}
NO_COLOR=1
ENV
cat > "$DIR/gateway.env" << ENV
DATABASE_URL=$DATABASE_URL
BIND_ADDR=127.0.0.1:$GATEWAY_P
HANDLE_DOMAIN=$HANDLE_DOMAIN
GATEWAY_SERVICE_TOKEN=$GATEWAY_SERVICE_TOKEN
PUBLIC_URL=$GATEWAY_URL
DB_POOL_SIZE=4
RATE_LIMIT_PER_IP_PER_MINUTE=0
RUST_LOG=${RUST_LOG:-info}
NO_COLOR=1
ENV
umask 022

# start_service NAME PIDFILE LOGFILE ENVFILE CMD... — the process gets exactly ENVFILE plus PATH/HOME.
start_service() {
  local name=$1 pidfile=$2 logfile=$3 envfile=$4
  shift 4
  local -a vars=()
  mapfile -t vars < "$envfile"
  start_bg "$name" "$pidfile" "$logfile" env -i PATH="$PATH" HOME="$HOME" "${vars[@]}" "$@"
}

if ! bridge_up; then
  stop_pidfile "$DIR/atbridge.pid" divine-atbridge 15
  claim_port "$BRIDGE_P" "divine-atbridge HTTP"
  start_service divine-atbridge "$DIR/atbridge.pid" "$DIR/atbridge.log" "$DIR/atbridge.env" \
    "$BIN_DIR/divine-atbridge" run
  wait_http divine-atbridge "$BRIDGE_HTTP_URL/ready" 60 "$DIR/atbridge.pid" "$DIR/atbridge.log"
fi

if ! gateway_up; then
  stop_pidfile "$DIR/gateway.pid" divine-handle-gateway 10
  claim_port "$GATEWAY_P" divine-handle-gateway
  start_service divine-handle-gateway "$DIR/gateway.pid" "$DIR/gateway.log" "$DIR/gateway.env" \
    "$BIN_DIR/divine-handle-gateway"
  wait_http divine-handle-gateway "$GATEWAY_URL/ready" 60 "$DIR/gateway.pid" "$DIR/gateway.log"
fi

# The env contract (docs/runbooks/localnet.md); the smoke scripts source it.
umask 077
{
  echo "# divine-bridge localnet ($(date -u +%FT%TZ)); source this file"
  for v in LOCALNET_DIR DATABASE_URL PLC_URL PDS_URL PDS_ADMIN_PASSWORD RELAY_URL MEDIA_URL GATEWAY_URL \
    GATEWAY_SERVICE_TOKEN BRIDGE_HTTP_URL HANDLE_DOMAIN KEY_ENCRYPTION_KEY NOSTR_TOOL; do
    case $v in
      LOCALNET_DIR) val=$DIR ;;
      PDS_ADMIN_PASSWORD) val=$ADMIN_PW ;;
      NOSTR_TOOL) val=$BIN_DIR/nostr-tool ;;
      *) val=${!v} ;;
    esac
    printf 'export %s=%q\n' "$v" "$val"
  done
} > "$DIR/env.tmp"
mv "$DIR/env.tmp" "$DIR/env"
umask 022
log "ready in $((SECONDS - T0)) s"
print_env
