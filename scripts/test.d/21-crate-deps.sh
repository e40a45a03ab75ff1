#!/usr/bin/env bash
# 21-crate-deps.sh — scripts/test.sh step: the crates keep to the dependency arrows (issue 13 §1), read from
# `cargo tree` (offline, no build, a few seconds):
#   - the protocol crates (divine-bridge-core, divine-atproto, divine-nostr) link neither Diesel nor libpq;
#   - the production binaries' crates (divine-atbridge, divine-handle-gateway) do not compile nostr-relay-builder
#     (a dev-dependency for tests, and a dependency of divine-dev-tools only);
#   - every production Dockerfile builds exactly one production binary, never a divine-dev-tools one.
# Prints `N passed, N failed`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
LOG_TAG=crate-deps
cd "$ROOT"

# normal_deps PKG — the crate names PKG links in a normal (non-dev) build, one per line.
normal_deps() {
  cargo tree --locked --offline -q -p "$1" -e normal,build --prefix none --format '{p}' | awk '{print $1}' | sort -u
}
lacks() { ! grep -qxE "$2" <<< "$1"; }

for pkg in divine-bridge-core divine-atproto divine-nostr; do
  deps=$(normal_deps "$pkg")
  check "$pkg links no diesel/pq-sys" lacks "$deps" 'diesel|diesel_derives|pq-sys|pq-src'
done
for pkg in divine-atbridge divine-handle-gateway; do
  deps=$(normal_deps "$pkg")
  check "$pkg (production) does not compile nostr-relay-builder or divine-dev-tools" \
    lacks "$deps" 'nostr-relay-builder|divine-dev-tools'
done
for f in deploy/docker/*.Dockerfile; do
  builds=$(grep -E '^[^#]*cargo build' "$f" || true)
  check "$f runs one cargo build" test "$(grep -c . <<< "$builds")" -eq 1
  check "$f builds only a production binary" \
    grep -qE -- '-p (divine-atbridge --bin divine-atbridge|divine-handle-gateway --bin divine-handle-gateway)( |$)' <<< "$builds"
  check "$f builds no divine-dev-tools binary" lacks "$builds" '.*divine-dev-tools.*'
done
summary
