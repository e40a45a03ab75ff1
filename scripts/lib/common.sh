# shellcheck shell=bash
# common.sh — helpers shared by the localnet, smoke and test scripts. Source it; it defines functions only (plus
# ROOT, the checkout root) and never changes the caller's shell options.

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"

log() { printf '[%s] %s\n' "${LOG_TAG:-divine}" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "${LOG_TAG:-divine}" "$*" >&2
  exit 1
}

# Run as root, or through sudo when available.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo > /dev/null; then sudo -n "$@"; else
    die "need root for: $* (no sudo)"
  fi
}

# apt_install PKG... — install Debian packages; runs `apt-get update` at most once per process tree.
apt_install() {
  command -v apt-get > /dev/null || die "apt-get not found: install $* by hand"
  if [[ -z "${DIVINE_APT_UPDATED:-}" ]]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    export DIVINE_APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
    die "apt-get install $* failed"
}

# need_cmd CMD PKG — make sure CMD exists, installing PKG with apt if it does not.
need_cmd() {
  command -v "$1" > /dev/null && return 0
  apt_install "$2"
  command -v "$1" > /dev/null || die "$1 still missing after installing $2"
}

PGHOST_ADDR="${PGHOST_ADDR:-127.0.0.1}"
PGPORT_NUM="${PGPORT_NUM:-5432}"

pg_ready() { pg_isready -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -q 2> /dev/null; }
pg_sql() { psql -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq "$@"; }

# ensure_postgres — the system Postgres on 127.0.0.1:5432 (user postgres, trust): install, start, wait, check auth.
ensure_postgres() {
  local installed_now=0
  if ! command -v pg_ctlcluster > /dev/null || ! command -v psql > /dev/null; then
    apt_install postgresql
    installed_now=1
  fi
  if ! pg_ready; then
    local ver
    ver=$(ls /etc/postgresql 2> /dev/null | sort -V | tail -1)
    [[ -n "$ver" ]] || die "no cluster under /etc/postgresql (pg_createcluster <version> main)"
    log "starting Postgres $ver/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 ||
      die "pg_ctlcluster $ver main start failed (see /var/log/postgresql/postgresql-$ver-main.log)"
    local deadline=$((SECONDS + 30))
    until pg_ready; do
      ((SECONDS < deadline)) || die "Postgres did not accept connections on $PGHOST_ADDR:$PGPORT_NUM within 30 s"
      sleep 0.5
    done
  fi
  if ! pg_sql -c 'select 1' > /dev/null 2>&1; then
    # A fresh Debian install asks for a password on TCP; the dev/CI contract is trust on loopback.
    if [[ $installed_now == 1 || "${CI:-}" == "true" || "${DIVINE_PG_TRUST_LOOPBACK:-}" == "1" ]]; then
      local ver hba
      ver=$(ls /etc/postgresql | sort -V | tail -1)
      hba="/etc/postgresql/$ver/main/pg_hba.conf"
      log "allowing trust auth for user postgres on loopback in $hba"
      as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >&2
      sleep 1
    fi
    pg_sql -c 'select 1' > /dev/null ||
      die "cannot connect as postgres@$PGHOST_ADDR:$PGPORT_NUM without a password; add 'host all postgres 127.0.0.1/32 trust' to pg_hba.conf (or set DIVINE_PG_TRUST_LOOPBACK=1)"
  fi
}

# ensure_database NAME — create the database if missing.
ensure_database() {
  [[ "$1" =~ ^[a-z_][a-z0-9_]*$ ]] || die "bad database name $1"
  if [[ -z "$(pg_sql -c "select 1 from pg_database where datname = '$1'")" ]]; then
    log "creating database $1"
    pg_sql -c "create database \"$1\"" > /dev/null
  fi
}

# proc_running PID — the process exists and is not a zombie (an exited child nobody has reaped yet: a slow init in
# a container can leave those for seconds, and kill -0 still succeeds on them).
proc_running() {
  kill -0 "$1" 2> /dev/null || return 1
  local stat
  stat=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
  stat=${stat##*) }
  [[ "${stat%% *}" != Z ]]
}

# pid_alive PIDFILE [NAME] — the pid in PIDFILE is running (and its command line mentions NAME, if given, so a
# recycled pid is never mistaken for ours).
pid_alive() {
  local f=$1 name=${2:-} pid
  [[ -f "$f" ]] || return 1
  pid=$(cat "$f" 2> /dev/null)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  [[ -z "$name" ]] || tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null | grep -q -- "$name"
}

# stop_pidfile PIDFILE NAME GRACE_SECS — SIGTERM the process, SIGKILL after GRACE_SECS, remove the pid file.
stop_pidfile() {
  local f=$1 name=$2 grace=${3:-10} pid
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f" 2> /dev/null)
  if pid_alive "$f" "$name"; then
    kill -TERM "$pid" 2> /dev/null || true
    local deadline=$((SECONDS + grace))
    while proc_running "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if proc_running "$pid"; then
      log "$name (pid $pid) still running after ${grace}s; SIGKILL"
      kill -KILL "$pid" 2> /dev/null || true
    fi
    log "stopped $name (pid $pid)"
  elif [[ -n "$pid" ]] && proc_running "$pid"; then
    log "pid $pid in $f is not $name any more; not touching it"
  fi
  rm -f "$f"
}

# port_busy PORT — something listens on 127.0.0.1:PORT.
port_busy() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

# wait_http NAME URL TIMEOUT PIDFILE LOGFILE — poll URL until 2xx; fail with the log's tail if the process exits or
# the timeout passes.
wait_http() {
  local name=$1 url=$2 timeout=$3 pidfile=$4 logfile=$5
  local deadline=$((SECONDS + timeout))
  until curl -fsS -o /dev/null --max-time 2 "$url" 2> /dev/null; do
    if [[ -n "$pidfile" ]] && ! pid_alive "$pidfile"; then
      tail -n 30 "$logfile" >&2 2> /dev/null || true
      die "$name exited before $url answered; full log: $logfile"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$logfile" >&2 2> /dev/null || true
      die "$name did not answer $url within ${timeout}s; full log: $logfile"
    fi
    sleep 0.25
  done
}

# cargo_profile_dir — target sub-directory for $CARGO_PROFILE (debug|dev|release|<custom>).
cargo_profile_flag() {
  case "${CARGO_PROFILE:-debug}" in
    debug | dev) echo "--profile=dev" ;;
    *) echo "--profile=${CARGO_PROFILE}" ;;
  esac
}
cargo_profile_dir() {
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "${CARGO_PROFILE:-debug}" in
    debug | dev) echo "$target/debug" ;;
    *) echo "$target/${CARGO_PROFILE}" ;;
  esac
}

# Smoke-test bookkeeping: pass/fail counters and the standard last line.
PASSED=0
FAILED=0
pass() {
  PASSED=$((PASSED + 1))
  printf '  ok   %s\n' "$*"
}
fail() {
  FAILED=$((FAILED + 1))
  printf '  FAIL %s\n' "$*"
}
# check DESC CMD... — run CMD; pass/fail with DESC.
check() {
  local desc=$1
  shift
  if "$@"; then pass "$desc"; else fail "$desc"; fi
}
summary() {
  echo "$PASSED passed, $FAILED failed"
  [[ $FAILED -eq 0 ]]
}
