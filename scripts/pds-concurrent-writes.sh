#!/usr/bin/env bash
# Measures whether the reference PDS (@atproto/pds) keeps one repo consistent under concurrent writes (issue 11 §2):
# creates a fresh account, fires N concurrent createRecord + N concurrent putRecord (distinct rkeys) at its repo, then
# checks that every write answered 200, every write got its own commit rev, listRecords holds all 2N records, the
# latest commit is the highest rev returned, and getRepo (the whole CAR) is served. Prints name=value lines.
# Usage: source the refstack env (PDS_URL), then scripts/pds-concurrent-writes.sh [N]
set -euo pipefail
N="${1:-32}"
: "${PDS_URL:?source the refstack env first}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
h="cw$(date +%s)$RANDOM.test"
# The PDS requires invites (refstack.sh): mint one through the admin API.
invite=$(curl -sf -X POST "$PDS_URL/xrpc/com.atproto.server.createInviteCode" -H 'content-type: application/json' \
  -u "admin:${PDS_ADMIN_PASSWORD:-admin-pass}" -d '{"useCount":1}' | jq -r .code)
acct=$(curl -sf -X POST "$PDS_URL/xrpc/com.atproto.server.createAccount" -H 'content-type: application/json' \
  -d "{\"handle\":\"$h\",\"email\":\"$h@example.com\",\"password\":\"pw-$h\",\"inviteCode\":\"$invite\"}")
did=$(jq -r .did <<<"$acct"); jwt=$(jq -r .accessJwt <<<"$acct")
now=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)
B32=234567abcdefghijklmnopqrstuvwxyz
tid() { # a valid, distinct TID rkey for index $1 (< 32768)
  local i=$1; echo "3lbbbbbbbb${B32:$((i / 1024 % 32)):1}${B32:$((i / 32 % 32)):1}${B32:$((i % 32)):1}"
}
write() { # $1 = create|put, $2 = index
  local body
  if [ "$1" = create ]; then
    body="{\"repo\":\"$did\",\"collection\":\"app.bsky.feed.post\",\"record\":{\"\$type\":\"app.bsky.feed.post\",\"text\":\"c$2\",\"createdAt\":\"$now\"}}"
    curl -s -o "$tmp/$1-$2.json" -w '%{http_code}\n' -X POST "$PDS_URL/xrpc/com.atproto.repo.createRecord" \
      -H "authorization: Bearer $jwt" -H 'content-type: application/json' -d "$body" >"$tmp/$1-$2.code"
  else
    body="{\"repo\":\"$did\",\"collection\":\"app.bsky.feed.post\",\"rkey\":\"$(tid "$2")\",\"record\":{\"\$type\":\"app.bsky.feed.post\",\"text\":\"p$2\",\"createdAt\":\"$now\"}}"
    curl -s -o "$tmp/$1-$2.json" -w '%{http_code}\n' -X POST "$PDS_URL/xrpc/com.atproto.repo.putRecord" \
      -H "authorization: Bearer $jwt" -H 'content-type: application/json' -d "$body" >"$tmp/$1-$2.code"
  fi
}
start=$(date +%s.%N)
for i in $(seq 1 "$N"); do write create "$i" & write put "$i" & done
wait
secs=$(echo "$(date +%s.%N) - $start" | bc)
ok=$(cat "$tmp"/*.code | grep -c '^200$' || true)
revs=$(jq -r '.commit.rev // empty' "$tmp"/*.json | sort -u)
distinct_revs=$(grep -c . <<<"$revs" || true)
max_rev=$(tail -n1 <<<"$revs")
latest=$(curl -sf "$PDS_URL/xrpc/com.atproto.sync.getLatestCommit?did=$did" | jq -r .rev)
count=0; cursor=""
while :; do
  page=$(curl -sf "$PDS_URL/xrpc/com.atproto.repo.listRecords?repo=$did&collection=app.bsky.feed.post&limit=100${cursor:+&cursor=$cursor}")
  n=$(jq '.records | length' <<<"$page"); count=$((count + n))
  cursor=$(jq -r '.cursor // empty' <<<"$page"); [ -n "$cursor" ] && [ "$n" -gt 0 ] || break
done
car_bytes=$(curl -sf "$PDS_URL/xrpc/com.atproto.sync.getRepo?did=$did" | wc -c)
echo "writes=$((2 * N))"
echo "writes_ok=$ok"
echo "distinct_commit_revs=$distinct_revs"
echo "records_listed=$count"
echo "latest_commit_is_max_rev=$([ "$latest" = "$max_rev" ] && echo true || echo false)"
echo "get_repo_bytes=$car_bytes"
echo "seconds=$secs"
[ "$ok" -eq $((2 * N)) ] && [ "$distinct_revs" -eq $((2 * N)) ] && [ "$count" -eq $((2 * N)) ] && [ "$latest" = "$max_rev" ] && [ "$car_bytes" -gt 0 ]
