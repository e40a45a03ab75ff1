#!/usr/bin/env bash
# 25-failpoints.sh — scripts/test.sh step: the crash points of crates/divine-atbridge/src/failpoint.rs are compiled
# only into test builds (issue 12 §4). The `failpoints` feature must be reachable from the crate's dev-dependency on
# itself (so `cargo test` and the binaries its e2e tests spawn have it) and from nothing in the normal build graph
# (so `cargo build --release`, the production image, has none). Reads the dependency graph (`cargo tree`); no build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
LOG_TAG=failpoints
cd "$ROOT"

feature='divine-atbridge feature "failpoints"'
normal=$(cargo tree --locked -q -p divine-atbridge -e features,normal,build --prefix none)
with_dev=$(cargo tree --locked -q -p divine-atbridge -e features --prefix none)
if grep -qF "$feature" <<< "$normal"; then
  die "the normal build graph enables the failpoints feature: production binaries would carry crash points"
fi
grep -qF "$feature" <<< "$with_dev" ||
  die "no dev-dependency enables the failpoints feature: the crash tests would run without crash points"
for bin in divine-handle-gateway; do
  if cargo tree --locked -q -p "$bin" -e features,normal,build --prefix none | grep -qF "$feature"; then
    die "$bin's build graph enables the failpoints feature"
  fi
done
log "failpoints: test builds only (normal build graph clean, dev build enables them)"
