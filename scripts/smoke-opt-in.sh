#!/usr/bin/env bash
# smoke-opt-in.sh — operator smoke test of account provisioning (docs/runbooks/smoke-tests.md): opts a freshly
# generated Nostr key in through the gateway, waits for `ready`, then checks from the outside what Bluesky would see:
# the DID document on PLC (handle, PDS endpoint, signing key installed by the update op and actually used by the PDS
# to sign the repo), the account active on the PDS, handle resolution through the PDS and the gateway's
# /.well-known/atproto-did, idempotent opt-in, handle_taken for another key, NIP-98 auth, 401 on a bad token.
#
#   scripts/smoke-opt-in.sh                                   # against the localnet ($LOCALNET_DIR/env)
#   scripts/smoke-opt-in.sh --gateway https://gw --token T --pds https://pds --plc https://plc.directory \
#       --handle-domain divine.video [--state-file acct.json] [--timeout 120]
#
# Prints one line per check and `N passed, N failed`; exits non-zero on any failure. --state-file writes the account
# (pubkey, secret, did, handle; 0600) for scripts/smoke-crosspost.sh. Creates one real account on the target.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG_TAG=smoke-opt-in
# shellcheck source=lib/common.sh
source scripts/lib/common.sh
# shellcheck source=localnet/smoke-common.sh
source scripts/localnet/smoke-common.sh

smoke_load_target "$@"
smoke_require SMOKE_GATEWAY SMOKE_TOKEN SMOKE_PDS SMOKE_PLC SMOKE_DOMAIN
smoke_nostr_tool
echo "smoke-opt-in: gateway $SMOKE_GATEWAY, PDS $SMOKE_PDS, PLC $SMOKE_PLC, domain $SMOKE_DOMAIN (from $SMOKE_SOURCE)"
T0=$SECONDS

# A fresh key and a random handle smk<random>.<domain> of at most 30 characters.
keys=$("$NOSTR_TOOL" keygen) || abort "nostr-tool keygen"
SECRET=$(jq -r .secret_hex <<< "$keys")
PUBKEY=$(jq -r .pubkey_hex <<< "$keys")
n=$((30 - 4 - ${#SMOKE_DOMAIN}))
((n > 10)) && n=10
((n >= 3)) || die "handle domain $SMOKE_DOMAIN is too long for a smk<random>.<domain> handle of <= 30 characters"
HANDLE="smk$(rand_name "$n").$SMOKE_DOMAIN"
echo "key $PUBKEY, handle $HANDLE"

optin_body() { jq -nc --arg pk "$1" --arg h "$2" '{nostr_pubkey: $pk, handle: $h}'; }

# 1. opt-in → 202 pending
api POST /api/account-links/opt-in "$(optin_body "$PUBKEY" "$HANDLE")"
expect "opt-in answers 202" eq "$HTTP_STATUS" 202
expect "opt-in link is pending for $HANDLE" eq "$(jqb '.provisioning_state + " " + .handle')" "pending $HANDLE"
[[ $HTTP_STATUS == 202 ]] || abort "opt-in refused; nothing else can be checked"

# 2. status → ready
deadline=$((SECONDS + SMOKE_TIMEOUT))
state=""
while :; do
  api GET "/api/account-links/$PUBKEY/status"
  state=$(jqb .provisioning_state)
  [[ $state == ready || $state == failed ]] && break
  ((SECONDS < deadline)) || break
  sleep 0.5
done
if [[ $state == ready ]]; then
  pass "status reaches ready in $((SECONDS - T0)) s"
else
  abort "status did not reach ready within ${SMOKE_TIMEOUT}s: state ${state:-?}, error $(jqb .provisioning_error) — HTTP $HTTP_STATUS ${HTTP_BODY:0:300}"
fi
DID=$(jqb .did)
expect "status carries a did:plc" eval '[[ $DID =~ ^did:plc:[a-z2-7]{24}$ ]]'
expect "status shows crosspost_enabled" eq "$(jqb .crosspost_enabled)" true

# 3. the DID document on PLC
http GET "$SMOKE_PLC/$DID"
expect "PLC serves the DID document" eq "$HTTP_STATUS" 200
DOC=$HTTP_BODY
check "DID document alsoKnownAs is at://$HANDLE" \
  eq "$(jq -r '.alsoKnownAs | join(",")' <<< "$DOC" 2> /dev/null)" "at://$HANDLE"
check "DID document atproto_pds endpoint is $SMOKE_PDS" eq "$(jq -r '[.service[]? |
  select((.id | endswith("#atproto_pds")) and .type == "AtprotoPersonalDataServer") | .serviceEndpoint] | join(",")' \
  <<< "$DOC" 2> /dev/null)" "$SMOKE_PDS"
DOC_KEY=$(jq -r '[.verificationMethod[]? | select(.id | endswith("#atproto")) | .publicKeyMultibase] | join(",")' \
  <<< "$DOC" 2> /dev/null || true)
check "DID document has one #atproto verification method" eval '[[ $DOC_KEY =~ ^z[1-9A-HJ-NP-Za-km-z]+$ ]]'

http GET "$SMOKE_PLC/$DID/data"
DATA_KEY=$(jqb .verificationMethods.atproto)
check "PLC data has an atproto did:key" eval '[[ $DATA_KEY =~ ^did:key:z[1-9A-HJ-NP-Za-km-z]+$ ]]'
http GET "$SMOKE_PLC/$DID/log"
LOG_JSON=$HTTP_BODY
ops=$(jq 'length' <<< "$LOG_JSON" 2> /dev/null || echo 0)
genesis_key=$(jq -r '.[0].verificationMethods.atproto // empty' <<< "$LOG_JSON" 2> /dev/null || true)
last_key=$(jq -r '.[-1].verificationMethods.atproto // empty' <<< "$LOG_JSON" 2> /dev/null || true)
check "PLC log: the PDS signing key was installed by an update op ($ops ops, genesis key differs)" \
  eval '((ops >= 2)) && [[ $last_key == "$DATA_KEY" && -n $genesis_key && $genesis_key != "$DATA_KEY" ]]'

# The document's key (legacy multibase form) is that did:key, and the PDS actually signs this repo with it (needs the
# refstack install's @atproto packages: scripts/refstack.sh install).
if home=$(scripts/refstack.sh home 2> /dev/null) && [[ -d "$home/node_modules/@atproto/repo" ]] &&
  node_bin=$(scripts/refstack.sh node 2> /dev/null); then
  out=$(REFSTACK_HOME=$home "$node_bin" scripts/localnet/verify-commit.mjs "$SMOKE_PDS" "$DID" "$DATA_KEY" "$SMOKE_PLC" \
    2>&1) || true
  check "DID document #atproto key decodes to the PLC data key" eq "$(jq -r .doc_key_ok <<< "$out" 2> /dev/null)" true
  if [[ $(jq -r .sig_ok <<< "$out" 2> /dev/null) == true ]]; then
    pass "the PDS signs the repo commit with the DID's atproto key (rev $(jq -r .rev <<< "$out"))"
  else
    fail "repo commit signature does not verify with $DATA_KEY: $out"
  fi
else
  echo "  skip DID-document key decoding and repo commit signature (no refstack install: scripts/refstack.sh install)"
fi

# 4. the account on the PDS
http GET "$SMOKE_PDS/xrpc/com.atproto.sync.getRepoStatus?did=$DID"
expect "PDS getRepoStatus: active" eq "$(jqb .active)" true
http GET "$SMOKE_PDS/xrpc/com.atproto.repo.describeRepo?repo=$DID"
expect "PDS describeRepo: handle $HANDLE, handleIsCorrect" eq "$(jqb '"\(.handle) \(.handleIsCorrect)"')" "$HANDLE true"
http GET "$SMOKE_PDS/xrpc/com.atproto.repo.getRecord?repo=$DID&collection=app.bsky.actor.profile&rkey=self"
expect "PDS has the initial profile record" eq "$HTTP_STATUS" 200

# 5. handle resolution
http GET "$SMOKE_PDS/xrpc/com.atproto.identity.resolveHandle?handle=$HANDLE"
expect "PDS resolveHandle($HANDLE) → DID" eq "$(jqb .did)" "$DID"
http GET "$SMOKE_GATEWAY/.well-known/atproto-did" -H "Host: $HANDLE"
expect "gateway /.well-known/atproto-did (Host: $HANDLE) → DID" eq "$HTTP_BODY" "$DID"
http GET "$SMOKE_GATEWAY/.well-known/atproto-did" -H "Host: smknobody0.$SMOKE_DOMAIN"
expect "gateway /.well-known/atproto-did for an unknown handle → 404 handle_not_found" \
  eq "$HTTP_STATUS $(jqb .code)" "404 handle_not_found"

# 6. idempotent opt-in, handle_taken, auth
api POST /api/account-links/opt-in "$(optin_body "$PUBKEY" "$HANDLE")"
expect "same opt-in again → 2xx with the same DID" eval '[[ $HTTP_STATUS == 20[02] && $(jqb .did) == "$DID" ]]'
other=$("$NOSTR_TOOL" keygen | jq -r .pubkey_hex)
api POST /api/account-links/opt-in "$(optin_body "$other" "$HANDLE")"
expect "another key with the same handle → 409 handle_taken" eq "$HTTP_STATUS $(jqb .code)" "409 handle_taken"
url="$SMOKE_GATEWAY/api/account-links/$PUBKEY/status"
auth=$("$NOSTR_TOOL" nip98 --secret "$SECRET" --url "$url" --method GET)
http GET "$url" -H "Authorization: $auth"
expect "NIP-98 signed by the user reads its own status" eq "$HTTP_STATUS $(jqb .did)" "200 $DID"
http POST "$SMOKE_GATEWAY/api/account-links/opt-in" -H "Authorization: Bearer not-the-token" \
  -H 'Content-Type: application/json' --data-binary "$(optin_body "$PUBKEY" "$HANDLE")"
expect "bad token → 401 problem+json unauthorized" \
  eq "$HTTP_STATUS ${HTTP_CTYPE%%;*} $(jqb .code)" "401 application/problem+json unauthorized"

if [[ -n "$SMOKE_STATE_FILE" ]]; then
  (
    umask 077
    jq -n --arg pubkey "$PUBKEY" --arg secret "$SECRET" --arg did "$DID" --arg handle "$HANDLE" \
      '{pubkey: $pubkey, secret: $secret, did: $did, handle: $handle}' > "$SMOKE_STATE_FILE"
  )
  echo "account saved to $SMOKE_STATE_FILE"
fi
echo "smoke-opt-in took $((SECONDS - T0)) s"
summary
