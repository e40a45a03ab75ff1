#!/usr/bin/env bash
# 20-error-codes.sh — scripts/test.sh step: every error code extracted from the source has an entry in
# docs/runbooks/troubleshooting.md (scripts/check-error-codes.sh; no build needed, runs in about a second).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec scripts/check-error-codes.sh
