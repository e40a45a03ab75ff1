#!/usr/bin/env bash
# smoke-crosspost.sh — operator smoke test of cross-posting (docs/runbooks/smoke-tests.md): publishes a signed NIP-71
# video event for a bridged account to the relay, waits until the post is on the PDS, checks the record (video embed
# whose blob is byte-for-byte the media file, text with title and hashtags, tag facets) and the gateway's
# crosspost-status, then publishes a NIP-09 kind 5 for the event and checks the post is gone from the PDS; then a pause
# round: disable, a deletion while paused is applied, a video posted while paused is skipped and bridged after enable.
#
#   scripts/smoke-crosspost.sh [--state-file acct.json]      # account from smoke-opt-in.sh; else opts one in itself
#   scripts/smoke-crosspost.sh --gateway URL --token T --pds URL --plc URL --relay wss://relay --media-url URL \
#       --handle-domain D [--timeout 120]
#
# The media server must serve <media-url>/tiny.mp4 (SMOKE_MEDIA_FILE overrides the name) to both this machine and the
# bridge. Prints one line per check and `N passed, N failed`; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG_TAG=smoke-crosspost
# shellcheck source=lib/common.sh
source scripts/lib/common.sh
# shellcheck source=localnet/smoke-common.sh
source scripts/localnet/smoke-common.sh

smoke_load_target "$@"
smoke_require SMOKE_GATEWAY SMOKE_TOKEN SMOKE_PDS SMOKE_RELAY SMOKE_MEDIA
smoke_nostr_tool
echo "smoke-crosspost: relay $SMOKE_RELAY, PDS $SMOKE_PDS, gateway $SMOKE_GATEWAY, media $SMOKE_MEDIA (from $SMOKE_SOURCE)"
T0=$SECONDS

# The account: from the state file, or a fresh opt-in (whose checks are counted here too).
state_file=$SMOKE_STATE_FILE
if [[ -z "$state_file" || ! -s "$state_file" ]]; then
  state_file=${state_file:-$SMOKE_TMP/account.json}
  echo "no account state file; running smoke-opt-in.sh first"
  if scripts/smoke-opt-in.sh "${SMOKE_ARGS[@]}" --state-file "$state_file"; then
    pass "smoke-opt-in.sh provisioned an account"
  else
    abort "smoke-opt-in.sh failed; no account to cross-post for"
  fi
fi
SECRET=$(jq -r .secret "$state_file")
PUBKEY=$(jq -r .pubkey "$state_file")
DID=$(jq -r .did "$state_file")
HANDLE=$(jq -r .handle "$state_file")
echo "account $HANDLE ($DID), key $PUBKEY"

# The media file, as the bridge will fetch it.
MEDIA_FILE_URL="$SMOKE_MEDIA/${SMOKE_MEDIA_FILE:-tiny.mp4}"
curl -fsS --max-time 30 -o "$SMOKE_TMP/video.mp4" "$MEDIA_FILE_URL" 2> "$SMOKE_TMP/media.err" ||
  abort "media file $MEDIA_FILE_URL downloadable: $(cat "$SMOKE_TMP/media.err")"
SIZE=$(stat -c %s "$SMOKE_TMP/video.mp4")
SHA=$(sha256sum "$SMOKE_TMP/video.mp4" | cut -d' ' -f1)
echo "media $MEDIA_FILE_URL: $SIZE bytes, sha256 $SHA"

# status_of EVENT_ID — crosspost-status of one event: sets HTTP_* and ST="<status> <at_uri> <error_code>".
status_of() {
  api POST "/api/account-links/$PUBKEY/crosspost-status" "$(jq -nc --arg id "$1" '{nostr_event_ids: [$id]}')"
  ST=$(jqb '.statuses[0] | "\(.status) \(.at_uri // "-") \(.error_code // "-")"')
}

# 1. publish the video event
tag=$(rand_name 8)
TITLE="Divine smoke $tag"
HASHTAG="divinesmoke"
"$NOSTR_TOOL" video-event --secret "$SECRET" --url "$MEDIA_FILE_URL" --file "$SMOKE_TMP/video.mp4" \
  --title "$TITLE" --content "Smoke test video $tag" --hashtag "$HASHTAG" --hashtag "smk$tag" --duration 1 \
  > "$SMOKE_TMP/video.json" || abort "nostr-tool video-event builds the event"
if EVENT_ID=$("$NOSTR_TOOL" publish --relay "$SMOKE_RELAY" "$SMOKE_TMP/video.json"); then
  pass "relay accepted video event $EVENT_ID"
else
  abort "relay $SMOKE_RELAY rejected the video event"
fi

# 2. wait until published (crosspost-status), failing fast on a terminal state
t_pub=$SECONDS
deadline=$((SECONDS + SMOKE_TIMEOUT))
ST=""
while :; do
  status_of "$EVENT_ID"
  case ${ST%% *} in published | failed | cancelled) break ;; esac
  ((SECONDS < deadline)) || break
  sleep 0.5
done
read -r s_status AT_URI s_code <<< "$ST"
if [[ $s_status == published ]]; then
  pass "crosspost-status: published in $((SECONDS - t_pub)) s"
else
  abort "crosspost-status is '${s_status:-?}' (error_code ${s_code:-?}) after $((SECONDS - t_pub)) s — HTTP $HTTP_STATUS ${HTTP_BODY:0:300}"
fi
RKEY=${AT_URI##*/}
check "at_uri is at://$DID/app.bsky.feed.post/<rkey>" eq "$AT_URI" "at://$DID/app.bsky.feed.post/$RKEY"
expect "crosspost-status carries the record cid" eval '[[ $(jqb ".statuses[0].cid // empty") == baf* ]]'

# 3. the record on the PDS
http GET "$SMOKE_PDS/xrpc/com.atproto.repo.getRecord?repo=$DID&collection=app.bsky.feed.post&rkey=$RKEY"
expect "PDS getRecord finds the post" eq "$HTTP_STATUS" 200
REC=$(jqb .value)
recq() { jq -r "$@" <<< "$REC" 2> /dev/null || true; }
check "record \$type app.bsky.feed.post" eq "$(recq '."$type"')" app.bsky.feed.post
check "embed \$type app.bsky.embed.video" eq "$(recq '.embed."$type"')" app.bsky.embed.video
check "embed video blob: video/mp4, $SIZE bytes" eq "$(recq '.embed.video | "\(."$type") \(.mimeType) \(.size)"')" \
  "blob video/mp4 $SIZE"
check "embed aspectRatio is square (the event's dim 64x64)" eval '[[ $(recq ".embed.aspectRatio | .width > 0 and .width == .height") == true ]]'
CID=$(recq '.embed.video.ref."$link"')
curl -fsS --max-time 30 -o "$SMOKE_TMP/blob" "$SMOKE_PDS/xrpc/com.atproto.sync.getBlob?did=$DID&cid=$CID" 2> /dev/null ||
  : > "$SMOKE_TMP/blob"
check "the PDS blob is byte-for-byte the media file (sha256)" \
  eq "$(sha256sum "$SMOKE_TMP/blob" | cut -d' ' -f1)" "$SHA"
TEXT=$(recq .text)
check "text contains the title" eval '[[ $TEXT == *"$TITLE"* ]]'
check "text contains #$HASHTAG and #smk$tag" eval '[[ $TEXT == *"#$HASHTAG"* && $TEXT == *"#smk$tag"* ]]'
# Facets: a #tag facet per hashtag whose byte range covers exactly "#tag" (the text is ASCII: bytes = code points).
facet_ok() { # tag
  jq -e --arg t "$1" '. as $r | [.facets[]? | select(.features[]? |
    (."$type" == "app.bsky.richtext.facet#tag" and .tag == $t)) |
    . as $f | select(($r.text | explode[$f.index.byteStart:$f.index.byteEnd] | implode) == "#" + $t)] | length == 1' \
    <<< "$REC" > /dev/null 2>&1
}
check "tag facet for #$HASHTAG with the right byte range" facet_ok "$HASHTAG"
check "tag facet for #smk$tag with the right byte range" facet_ok "smk$tag"
check "createdAt is set" eval '[[ $(recq .createdAt) =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]]'
http GET "$SMOKE_PDS/xrpc/com.atproto.repo.listRecords?repo=$DID&collection=app.bsky.feed.post&limit=100"
expect "listRecords lists the post" eq "$(jqb --arg u "$AT_URI" '[.records[] | select(.uri == $u)] | length')" 1

# 4. the same event again is not posted twice
"$NOSTR_TOOL" publish --relay "$SMOKE_RELAY" "$SMOKE_TMP/video.json" > /dev/null 2>&1 || true

# 5. delete (NIP-09 kind 5) → the post disappears
"$NOSTR_TOOL" delete-event --secret "$SECRET" --event-id "$EVENT_ID" --reason "smoke test cleanup" \
  > "$SMOKE_TMP/delete.json" || abort "nostr-tool delete-event builds the deletion"
if DEL_ID=$("$NOSTR_TOOL" publish --relay "$SMOKE_RELAY" "$SMOKE_TMP/delete.json"); then
  pass "relay accepted the kind 5 deletion $DEL_ID"
else
  fail "relay rejected the kind 5 deletion"
fi
t_del=$SECONDS
deadline=$((SECONDS + SMOKE_TIMEOUT))
while :; do
  http GET "$SMOKE_PDS/xrpc/com.atproto.repo.getRecord?repo=$DID&collection=app.bsky.feed.post&rkey=$RKEY"
  [[ $HTTP_STATUS != 200 ]] && break
  ((SECONDS < deadline)) || break
  sleep 0.5
done
expect "getRecord after the deletion → 400 RecordNotFound ($((SECONDS - t_del)) s)" \
  eq "$HTTP_STATUS $(jqb .error)" "400 RecordNotFound"
http GET "$SMOKE_PDS/xrpc/com.atproto.repo.listRecords?repo=$DID&collection=app.bsky.feed.post&limit=100"
expect "listRecords no longer lists the post (and holds no duplicate)" \
  eq "$HTTP_STATUS $(jqb --arg u "$AT_URI" --arg t "$TITLE" \
    '[.records[] | select(.uri == $u or (.value.text | contains($t)))] | length')" "200 0"
status_of "$EVENT_ID"
expect "crosspost-status after the deletion: cancelled (deleted)" eq "${ST%% *} ${ST##* }" "cancelled deleted"

# 6. pause round (docs/runbooks/account-lifecycle.md): disable → a video deleted while paused disappears, a video
#    posted while paused is skipped (failed account_disabled) → enable → the skipped video is bridged.
# new_video NAME — builds and publishes a video event; sets VID to its id.
new_video() {
  "$NOSTR_TOOL" video-event --secret "$SECRET" --url "$MEDIA_FILE_URL" --file "$SMOKE_TMP/video.mp4" \
    --title "Divine smoke $1 $(rand_name 6)" --content "pause round $1" --duration 1 \
    > "$SMOKE_TMP/$1.json" || abort "nostr-tool video-event builds the $1 event"
  VID=$("$NOSTR_TOOL" publish --relay "$SMOKE_RELAY" "$SMOKE_TMP/$1.json") || abort "relay accepted the $1 video"
}
# wait_status EVENT_ID STATUS... — polls crosspost-status until one of STATUS (or the timeout); ST as status_of.
wait_status() {
  local id=$1 deadline=$((SECONDS + SMOKE_TIMEOUT)) want
  shift
  while :; do
    status_of "$id"
    for want in "$@"; do [[ ${ST%% *} == "$want" ]] && return 0; done
    ((SECONDS < deadline)) || return 0
    sleep 0.5
  done
}
new_video kept
KEPT_ID=$VID
wait_status "$KEPT_ID" published failed cancelled
expect "pause round: a video posted before the pause is published" eq "${ST%% *}" published
KEPT_URI=$(cut -d' ' -f2 <<< "$ST")
api POST "/api/account-links/$PUBKEY/disable"
expect "disable → 200 disabled" eq "$HTTP_STATUS $(jqb .provisioning_state)" "200 disabled"
"$NOSTR_TOOL" delete-event --secret "$SECRET" --event-id "$KEPT_ID" --reason "deleted while paused" \
  > "$SMOKE_TMP/delete-paused.json" || abort "nostr-tool delete-event builds the deletion"
"$NOSTR_TOOL" publish --relay "$SMOKE_RELAY" "$SMOKE_TMP/delete-paused.json" > /dev/null ||
  fail "relay rejected the kind 5 deletion sent while paused"
deadline=$((SECONDS + SMOKE_TIMEOUT))
while :; do
  http GET "$SMOKE_PDS/xrpc/com.atproto.repo.getRecord?repo=$DID&collection=app.bsky.feed.post&rkey=${KEPT_URI##*/}"
  [[ $HTTP_STATUS != 200 ]] && break
  ((SECONDS < deadline)) || break
  sleep 0.5
done
expect "a video deleted while paused is gone from the PDS" eq "$HTTP_STATUS $(jqb .error)" "400 RecordNotFound"
new_video paused
PAUSED_ID=$VID
wait_status "$PAUSED_ID" failed published cancelled
expect "a video posted while paused is skipped: failed account_disabled" eq "${ST%% *} ${ST##* }" \
  "failed account_disabled"
api POST "/api/account-links/$PUBKEY/enable"
expect "enable → 200 ready" eq "$HTTP_STATUS $(jqb .provisioning_state)" "200 ready"
wait_status "$PAUSED_ID" published
expect "after enable the video posted while paused is published" eq "${ST%% *}" published
api GET "/api/account-links/$PUBKEY/posts?limit=100"
expect "post history lists the video posted while paused as published" \
  eq "$HTTP_STATUS $(jqb --arg id "$PAUSED_ID" '[.posts[] | select(.nostr_event_id == $id) | .status] | first')" \
  "200 published"

# 7. disconnect (docs/runbooks/account-lifecycle.md): every bridged record deleted, the PDS account deactivated,
#    keys and sessions destroyed; afterwards the account cannot be enabled again. A deactivated repo is no longer
#    listed by the PDS, so the deletion is checked through the bridge's own status of the video.
api POST "/api/account-links/$PUBKEY/disconnect"
expect "disconnect → 202 disconnecting" eq "$HTTP_STATUS $(jqb .provisioning_state)" "202 disconnecting"
deadline=$((SECONDS + SMOKE_TIMEOUT))
while :; do
  api GET "/api/account-links/$PUBKEY/status"
  [[ $(jqb .provisioning_state) == disconnected ]] && break
  ((SECONDS < deadline)) || break
  sleep 0.5
done
expect "disconnect finishes: status disconnected, DID kept" eq "$HTTP_STATUS $(jqb .provisioning_state) $(jqb .did)" \
  "200 disconnected $DID"
http GET "$SMOKE_PDS/xrpc/com.atproto.sync.getRepoStatus?did=$DID"
expect "getRepoStatus after disconnect: not active" eq "$HTTP_STATUS $(jqb .active)" "200 false"
status_of "$PAUSED_ID"
expect "the bridged video is deleted by the disconnect" eq "${ST%% *} ${ST##* }" "cancelled deleted"
api POST "/api/account-links/$PUBKEY/enable"
expect "enable after disconnect → 409 account_disconnected" eq "$HTTP_STATUS $(jqb .code)" "409 account_disconnected"

echo "smoke-crosspost took $((SECONDS - T0)) s"
summary
