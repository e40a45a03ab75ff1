#!/usr/bin/env bash
# localnet-down.sh [--wipe] — stops exactly what scripts/localnet-up.sh started, by pid file (gateway, bridge, media
# server, relay, then the reference PLC + PDS of $LOCALNET_DIR/refstack). The database and $LOCALNET_DIR are kept
# (logs stay readable); --wipe also drops the database and deletes $LOCALNET_DIR, secrets included.
# A pid whose process is not ours any more (recycled) is left alone. See docs/runbooks/localnet.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG_TAG=localnet
# shellcheck source=lib/common.sh
source scripts/lib/common.sh

wipe=0
for a in "$@"; do
  case $a in
    --wipe) wipe=1 ;;
    -h | --help)
      sed -n '2,5p' "$0"
      exit 0
      ;;
    *) die "unknown argument $a (usage: $0 [--wipe])" ;;
  esac
done

DIR="${LOCALNET_DIR:-$ROOT/.localnet}"
if [[ ! -d "$DIR" ]]; then
  log "no localnet at $DIR; nothing to stop"
  exit 0
fi
DIR=$(cd "$DIR" && pwd)

# The ports/database the localnet was started with, as localnet-up.sh recorded them (LOCALNET_* ports in the
# environment as a fallback). Without that record no database is dropped: it may belong to another localnet.
PLC_P="${LOCALNET_PLC_PORT:-2582}" PDS_P="${LOCALNET_PDS_PORT:-2583}" DB=""
if [[ -f "$DIR/ports" ]]; then
  PLC_P=$(sed -n 's/^PLC_P=//p' "$DIR/ports")
  PDS_P=$(sed -n 's/^PDS_P=//p' "$DIR/ports")
  DB=$(sed -n 's/^DB=//p' "$DIR/ports")
fi

stop_pidfile "$DIR/gateway.pid" divine-handle-gateway 10
stop_pidfile "$DIR/atbridge.pid" divine-atbridge 20
stop_pidfile "$DIR/media.pid" media-server.mjs 5
stop_pidfile "$DIR/relay.pid" dev-relay 5
if [[ -d "$DIR/refstack" ]]; then
  RUN_DIR="$DIR/refstack" PLC_PORT="$PLC_P" PDS_PORT="$PDS_P" scripts/refstack.sh stop
fi

if ((wipe)); then
  if [[ -z "$DB" ]]; then
    log "no $DIR/ports (localnet-up.sh never got that far): no database to drop"
  elif [[ "$DB" =~ ^[a-z_][a-z0-9_]*$ ]] && pg_ready; then
    log "dropping database $DB"
    pg_sql -c "drop database if exists \"$DB\" with (force)" > /dev/null
  else
    log "Postgres not reachable or bad database name ($DB); database left alone"
  fi
  log "removing $DIR"
  rm -rf "$DIR"
fi
if ((wipe)); then log "localnet stopped and wiped"; else log "localnet stopped (database ${DB:-?} and $DIR kept)"; fi
