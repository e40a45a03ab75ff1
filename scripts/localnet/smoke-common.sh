# shellcheck shell=bash
# smoke-common.sh — target selection, HTTP and polling helpers shared by scripts/smoke-opt-in.sh and
# scripts/smoke-crosspost.sh (docs/runbooks/smoke-tests.md). Source it after scripts/lib/common.sh; it defines
# functions and the SMOKE_* target variables only, and never changes the caller's shell options.
#
# Target, in increasing precedence:
#   1. $LOCALNET_DIR/env (default <checkout>/.localnet/env), unless GATEWAY_URL is already set in the environment
#      (then the environment names a remote target: staging or production);
#   2. the environment: GATEWAY_URL GATEWAY_SERVICE_TOKEN PDS_URL PLC_URL RELAY_URL MEDIA_URL HANDLE_DOMAIN
#      SMOKE_TIMEOUT SMOKE_STATE_FILE NOSTR_TOOL;
#   3. flags: --gateway --token --pds --plc --relay --media-url --handle-domain --timeout --state-file --nostr-tool.

smoke_usage() {
  cat << USAGE
usage: $0 [--gateway URL] [--token T] [--pds URL] [--plc URL] [--relay URL] [--media-url URL]
          [--handle-domain D] [--timeout SECS] [--state-file FILE] [--nostr-tool PATH]
Defaults come from \$LOCALNET_DIR/env (the localnet) unless GATEWAY_URL is set in the environment.
USAGE
}

# smoke_load_target "$@" — fills SMOKE_GATEWAY SMOKE_TOKEN SMOKE_PDS SMOKE_PLC SMOKE_RELAY SMOKE_MEDIA SMOKE_DOMAIN
# SMOKE_TIMEOUT SMOKE_STATE_FILE NOSTR_TOOL and SMOKE_ARGS (the flags, to hand to another smoke script).
smoke_load_target() {
  local envfile="${LOCALNET_DIR:-$ROOT/.localnet}/env"
  if [[ -z "${GATEWAY_URL:-}" && -f "$envfile" ]]; then
    # shellcheck disable=SC1090
    source "$envfile"
    SMOKE_SOURCE="localnet ($envfile)"
  else
    SMOKE_SOURCE="environment"
  fi
  SMOKE_GATEWAY="${GATEWAY_URL:-}"
  SMOKE_TOKEN="${GATEWAY_SERVICE_TOKEN:-}"
  SMOKE_PDS="${PDS_URL:-}"
  SMOKE_PLC="${PLC_URL:-}"
  SMOKE_RELAY="${RELAY_URL:-}"
  SMOKE_MEDIA="${MEDIA_URL:-}"
  SMOKE_DOMAIN="${HANDLE_DOMAIN:-}"
  SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-90}"
  SMOKE_STATE_FILE="${SMOKE_STATE_FILE:-}"
  NOSTR_TOOL="${NOSTR_TOOL:-}"
  SMOKE_ARGS=()
  while (($#)); do
    case $1 in
      -h | --help)
        smoke_usage
        exit 0
        ;;
      --gateway | --token | --pds | --plc | --relay | --media-url | --handle-domain | --timeout | --state-file | --nostr-tool)
        (($# >= 2)) || die "$1 needs a value"
        case $1 in
          --gateway) SMOKE_GATEWAY=$2 ;;
          --token) SMOKE_TOKEN=$2 ;;
          --pds) SMOKE_PDS=$2 ;;
          --plc) SMOKE_PLC=$2 ;;
          --relay) SMOKE_RELAY=$2 ;;
          --media-url) SMOKE_MEDIA=$2 ;;
          --handle-domain) SMOKE_DOMAIN=$2 ;;
          --timeout) SMOKE_TIMEOUT=$2 ;;
          --state-file) SMOKE_STATE_FILE=$2 ;;
          --nostr-tool) NOSTR_TOOL=$2 ;;
        esac
        [[ $1 == --state-file ]] || SMOKE_ARGS+=("$1" "$2")
        shift 2
        ;;
      *)
        smoke_usage >&2
        die "unknown argument $1"
        ;;
    esac
  done
  SMOKE_GATEWAY=${SMOKE_GATEWAY%/} SMOKE_PDS=${SMOKE_PDS%/} SMOKE_PLC=${SMOKE_PLC%/} SMOKE_MEDIA=${SMOKE_MEDIA%/}
  SMOKE_DOMAIN=${SMOKE_DOMAIN#.}
  [[ "$SMOKE_TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be whole seconds"
  need_cmd curl curl
  need_cmd jq jq
  need_cmd sha256sum coreutils
}

# smoke_require VAR... — die naming the flag when a target setting is empty.
smoke_require() {
  local v flag
  for v in "$@"; do
    [[ -n "${!v}" ]] && continue
    case $v in
      SMOKE_GATEWAY) flag="--gateway / GATEWAY_URL" ;;
      SMOKE_TOKEN) flag="--token / GATEWAY_SERVICE_TOKEN" ;;
      SMOKE_PDS) flag="--pds / PDS_URL" ;;
      SMOKE_PLC) flag="--plc / PLC_URL" ;;
      SMOKE_RELAY) flag="--relay / RELAY_URL" ;;
      SMOKE_MEDIA) flag="--media-url / MEDIA_URL" ;;
      SMOKE_DOMAIN) flag="--handle-domain / HANDLE_DOMAIN" ;;
      *) flag=$v ;;
    esac
    die "no target: set $flag (or start the localnet: scripts/localnet-up.sh)"
  done
}

# smoke_nostr_tool — NOSTR_TOOL, or the workspace's target/debug/nostr-tool (built when missing).
smoke_nostr_tool() {
  if [[ -n "$NOSTR_TOOL" && -x "$NOSTR_TOOL" ]]; then return 0; fi
  NOSTR_TOOL="$(cargo_profile_dir)/nostr-tool"
  if [[ ! -x "$NOSTR_TOOL" ]]; then
    log "building nostr-tool"
    (cd "$ROOT" && cargo build --locked -q -p divine-dev-tools --bin nostr-tool >&2) || die "cannot build nostr-tool"
  fi
}

SMOKE_TMP=$(mktemp -d "${TMPDIR:-/tmp}/divine-smoke.XXXXXX")
# shellcheck disable=SC2064
trap "rm -rf '$SMOKE_TMP'" EXIT

# http METHOD URL [curl args...] — sets HTTP_STATUS, HTTP_CTYPE and HTTP_BODY (status 000 when unreachable).
http() {
  local method=$1 url=$2 meta
  shift 2
  meta=$(curl -sS -X "$method" -o "$SMOKE_TMP/body" -w '%{http_code} %{content_type}' --max-time 15 "$@" "$url" \
    2> "$SMOKE_TMP/curl.err") || true
  HTTP_STATUS=${meta%% *}
  HTTP_CTYPE=${meta#* }
  [[ -n "$HTTP_STATUS" ]] || HTTP_STATUS=000
  HTTP_BODY=$(cat "$SMOKE_TMP/body" 2> /dev/null || true)
  if [[ $HTTP_STATUS == 000 ]]; then HTTP_BODY="(no answer: $(cat "$SMOKE_TMP/curl.err"))"; fi
  return 0
}

# api METHOD PATH [JSON] — gateway call with the service token.
api() {
  local method=$1 path=$2 body=${3:-}
  if [[ -n "$body" ]]; then
    http "$method" "$SMOKE_GATEWAY$path" -H "Authorization: Bearer $SMOKE_TOKEN" -H 'Content-Type: application/json' \
      --data-binary "$body"
  else
    http "$method" "$SMOKE_GATEWAY$path" -H "Authorization: Bearer $SMOKE_TOKEN"
  fi
}

# jqb FILTER — FILTER applied to HTTP_BODY (empty output when the body is not JSON).
jqb() { jq -r "$@" <<< "$HTTP_BODY" 2> /dev/null || true; }

# expect DESC CONDITION... — pass/fail with the last HTTP answer shown on failure.
expect() {
  local desc=$1
  shift
  if "$@"; then pass "$desc"; else fail "$desc — got HTTP $HTTP_STATUS: ${HTTP_BODY:0:400}"; fi
}

# rand_name N — N random characters of [a-z0-9].
rand_name() {
  local alphabet=abcdefghijklmnopqrstuvwxyz0123456789 out="" i
  for ((i = 0; i < $1; i++)); do out+=${alphabet:$((RANDOM % 36)):1}; done
  echo "$out"
}

# abort MSG — count MSG as a failure, print the summary and exit 1 (a check the rest cannot run without).
abort() {
  fail "$*"
  summary || true
  exit 1
}

# eq A B — string equality as a command (for check/expect).
eq() { [[ "$1" == "$2" ]]; }
