#!/usr/bin/env bash
# Benchmarks for the Divine ATProto bridge. Usage: scripts/bench.sh <suite>
#
#   queue   job-queue throughput and lease latency (release build; creates a throwaway database on the local
#           Postgres — BENCH_PG_URL, default postgres://postgres@127.0.0.1:5432 — and drops it at the end).
#           Prints queue_noop_jobs_per_sec, lease_p99_ms_empty, lease_p99_ms_backlog, lease_backlog_ratio,
#           lease_p99_ms_blocked, lease_blocked_ratio (BENCH_BLOCKED 1000000 jobs behind 10000 heads in backoff;
#           BENCH_BLOCKED_ROUNDS 2000), fair_leases_until_live_done, fair_backfill_share,
#           stats_ms_empty, stats_ms_1m_finished, stats_finished_vs_empty_ratio (BENCH_FINISHED, default 1000000).
#           BENCH_JOBS (100000) and BENCH_BACKLOG (1000000) scale it down; BENCH_EXPLAIN=1 prints the lease plan;
#           BENCH_QUEUE_ONLY=throughput stops after queue_noop_jobs_per_sec.
#   e2e     cross-posting lag and throughput against the localnet (scripts/localnet-up.sh is run first: it is
#           idempotent, and when it has to start services it builds them with CARGO_PROFILE, default release here).
#           Opts in BENCH_ACCOUNTS (20) accounts via the gateway, publishes BENCH_EVENTS (500) NIP-71 videos to the
#           relay (steady, then as a burst), then measures raw putRecord on the same PDS. When it starts the bridge,
#           WORKERS defaults to BENCH_ACCOUNTS (the raw phase's writes in flight), DB_POOL_SIZE to WORKERS + 4.
#           Prints e2e_lag_p50_ms,
#           e2e_lag_p99_ms, bridged_posts_per_sec, raw_pds_posts_per_sec, bridge_vs_raw_pds_ratio, the SLO fractions
#           slo_fraction_le_5m / slo_fraction_le_30m, the sweep's reconcile_found_<reason> (0 in a healthy run; read
#           after one complete sweep that started after the run), burst_phase_<phase>_mean_ms (where a publish try's
#           time goes, from bridge_publish_phase_seconds) and context lines (see crates/divine-dev-tools/src/bin/bench.rs). Uses only $LOCALNET_DIR/env; WORKERS etc. apply if it starts the bridge.
#   ingest  events ingested per second by 1 vs 2 ingest replicas on the same in-process relay (release build; a
#           throwaway database per measurement on BENCH_PG_URL). Prints ingest_events_per_sec_1_replica,
#           ingest_events_per_sec_2_replicas, ingest_2_vs_1_replicas_ratio. BENCH_INGEST_ACCOUNTS (300),
#           BENCH_INGEST_EVENTS (3000) and BENCH_INGEST_SHARDS (16) scale it.
#   media   peak RSS of ONE divine-atbridge (WORKERS=8) bridging 8 distinct 60 MB videos at once against the reference
#           PLC + PDS (PLC_URL/PDS_URL from the environment, else sourced from $REFSTACK_ENV, default
#           target/test-refstack/env written by scripts/refstack.sh; the PDS needs PDS_BLOB_UPLOAD_LIMIT ≥ 60 MB) and a
#           throwaway database on BENCH_PG_URL. Prints media_peak_rss_mb (target ≤ 150), media_idle_rss_mb,
#           media_bridge_secs, media_raw_upload_put_secs (uploadBlob + putRecord of the same files, in parallel),
#           media_bridge_vs_raw_time_ratio and the sizes used. BENCH_MEDIA_VIDEOS (8), BENCH_MEDIA_BYTES (60000000)
#           and BENCH_MEDIA_WORKERS (8) scale it; CARGO_PROFILE (release) picks the build. The bridge inherits the
#           environment, so MEDIA_MEMORY_BUDGET_BYTES (default 200 MB: 3 of the 60 MB videos in flight) applies.
#
# Results go to stdout as name=value lines; progress goes to stderr. A benchmark is a measurement, not a test: it
# exits non-zero only when it could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

suite="${1:-}"
case "$suite" in
  queue)
    cargo build --release -p divine-dev-tools --bin bench >&2
    exec ./target/release/bench queue
    ;;
  ingest)
    cargo build --release -p divine-dev-tools --bin bench >&2
    exec ./target/release/bench ingest
    ;;
  e2e)
    if [[ -x scripts/localnet-up.sh ]]; then
      # Like for like with the raw phase (one write in flight per repo, BENCH_ACCOUNTS repos): as many workers as
      # accounts, when this call starts the bridge (docs/runbooks/crossposting.md "Throughput against the PDS").
      workers="${WORKERS:-${BENCH_ACCOUNTS:-20}}"
      CARGO_PROFILE="${CARGO_PROFILE:-release}" WORKERS="$workers" DB_POOL_SIZE="${DB_POOL_SIZE:-$((workers + 4))}" \
        scripts/localnet-up.sh >&2
    fi
    env_file="${LOCALNET_DIR:-$PWD/.localnet}/env"
    [[ -f "$env_file" ]] || { echo "scripts/bench.sh: no localnet env at $env_file" >&2; exit 1; }
    # shellcheck disable=SC1090
    source "$env_file"
    cargo build --release -p divine-dev-tools --bin bench >&2
    exec ./target/release/bench e2e
    ;;
  media)
    if [[ -z "${PDS_URL:-}" || -z "${PLC_URL:-}" ]]; then
      env_file="${REFSTACK_ENV:-$PWD/target/test-refstack/env}"
      [[ -f "$env_file" ]] || { echo "scripts/bench.sh: PLC_URL/PDS_URL unset and no refstack env at $env_file" >&2; exit 1; }
      # shellcheck disable=SC1090
      source "$env_file"
      export PLC_URL PDS_URL
    fi
    profile="${CARGO_PROFILE:-release}"
    cargo build --profile "$profile" -p divine-dev-tools --bin bench -p divine-atbridge --bin divine-atbridge >&2
    dir="$profile"; [[ "$profile" == dev ]] && dir=debug
    exec "${CARGO_TARGET_DIR:-./target}/$dir/bench" media
    ;;
  ""|-h|--help)
    sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'
    [ -n "$suite" ] || exit 2
    ;;
  *)
    echo "scripts/bench.sh: unknown suite '$suite' (known: queue, e2e, ingest, media)" >&2
    exit 2
    ;;
esac
