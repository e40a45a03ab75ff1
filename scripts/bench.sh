#!/usr/bin/env bash
# Benchmarks for the Divine ATProto bridge. Usage: scripts/bench.sh <suite>
#
#   queue   job-queue throughput and lease latency (release build; creates a throwaway database on the local
#           Postgres — BENCH_PG_URL, default postgres://postgres@127.0.0.1:5432 — and drops it at the end).
#           Prints queue_noop_jobs_per_sec, lease_p99_ms_empty, lease_p99_ms_backlog, lease_backlog_ratio.
#           BENCH_JOBS (100000) and BENCH_BACKLOG (1000000) scale it down; BENCH_EXPLAIN=1 prints the lease plan.
#
# Results go to stdout as name=value lines; progress goes to stderr. A benchmark is a measurement, not a test: it
# exits non-zero only when it could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

suite="${1:-}"
case "$suite" in
  queue)
    cargo build --release -p divine-atbridge --bin bench >&2
    exec ./target/release/bench queue
    ;;
  ""|-h|--help)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    [ -n "$suite" ] || exit 2
    ;;
  *)
    echo "scripts/bench.sh: unknown suite '$suite' (known: queue)" >&2
    exit 2
    ;;
esac
