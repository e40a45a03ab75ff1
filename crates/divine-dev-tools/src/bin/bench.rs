//! `bench`: performance measurements of the bridge, run through `scripts/bench.sh <suite>` (release build). Not a
//! test: it prints `name=value` lines for people and CI dashboards and asserts nothing.
//!
//! Suite `queue` (owned by the job-queue module): creates a throwaway database on the local Postgres
//! (`BENCH_PG_URL`, default `postgres://postgres@127.0.0.1:5432`), migrates it, measures, and drops it at the end
//! (also on failure). Prints:
//! - `queue_noop_jobs_per_sec` — enqueue (multi-row, 1,000 per statement, concurrently with the workers) + lease +
//!   complete of `BENCH_JOBS` (100,000) noop jobs over 10,000 ordering keys by one pool of 16 workers, wall clock
//!   from the first enqueue to the last committed success;
//! - `lease_p99_ms_empty` — p99 latency of one lease call (batch of 16, the pool's size) when the queue holds only
//!   the 16 jobs about to be leased;
//! - `lease_p99_ms_backlog` — the same with 1,000,000 queued jobs (100,000 keys, loaded with one INSERT … SELECT
//!   generate_series, then VACUUM ANALYZE as autovacuum would), leasing from the backlog itself;
//! - `lease_backlog_ratio` — backlog p99 / empty p99;
//! - `lease_p99_ms_blocked` — the same as `lease_p99_ms_empty` (16 runnable jobs enqueued per round) next to
//!   `BENCH_BLOCKED` (1,000,000) queued jobs over 10,000 ordering keys whose heads wait out a backoff (run_at a day
//!   ahead; everything behind them is due by time but blocked by its head: a PDS outage during a backfill);
//!   `BENCH_BLOCKED_ROUNDS` (2,000) rounds, the first twentieth not counted;
//! - `lease_blocked_ratio` — blocked p99 / empty p99 (target ≤ 2: the lease ignores blocked work, issue 11 §3);
//! - `fair_leases_until_live_done` — batch-16 leases (each batch completed) until all of 10 live jobs, enqueued
//!   after a wave of 1,000 provisioning-priority jobs, are leased (strict priority: 64; fair dispatch: 1);
//! - `fair_backfill_share` — the fraction of 100 batch-16 leases' jobs that were backfill while 1,000 backfill jobs
//!   wait and 16 fresh live jobs arrive before every lease (strict priority: 0, backfill starves);
//! - `stats_ms_empty` — median time of one `queue::stats()` (the 15 s gauge refresh of every replica) over
//!   [`STATS_ROUNDS`] calls, with a live backlog of [`STATS_LIVE`] queued jobs and no finished job;
//! - `stats_ms_1m_finished` — the same after adding `BENCH_FINISHED` (1,000,000) finished jobs (succeeded, failed,
//!   ineligible, finished over the last 14 days, like a fleet before retention prunes them);
//! - `stats_finished_vs_empty_ratio` — the two divided (target ≤ 2: the gauges are index-bound, issue 9 §6).
//!
//! Must not touch any database other than the one it created.
//!
//! Suite `e2e` (owned by the cross-posting e2e tests): against a running localnet, reading ONLY its env contract
//! (`DATABASE_URL`, `PDS_URL`, `RELAY_URL`, `MEDIA_URL` (serves `/tiny.mp4`), `GATEWAY_URL`,
//! `GATEWAY_SERVICE_TOKEN`, `HANDLE_DOMAIN`). Opts in `BENCH_ACCOUNTS` (20) fresh Nostr keys through the gateway and
//! waits until the bridge has provisioned them, then publishes `BENCH_EVENTS` (500) signed NIP-71 videos across them
//! to the relay twice: *steady* — 20 concurrent streams, each account publishing its next video as soon as its
//! previous one is written (one event in flight per account, the shape of the raw phase) — and *burst* — all 500 at
//! once, round-robin, so the bridge's queue is never empty. Each event has its own video (tiny.mp4 plus a unique
//! trailing `free` box, written to `$LOCALNET_DIR/media/` for the run and removed after), so every post uploads a new
//! blob as real posts do. Then, with the bridge idle, it creates as many plain PDS accounts (an invite each, minted
//! with `PDS_ADMIN_PASSWORD`: the PDS is invite-only) and writes equivalent post records with `putRecord`, one
//! in-flight write per repo, all repos in parallel. A record counts as written at its `record_mappings` row's
//! `published_at`: the bridge sets it after the PDS answered putRecord, and the PDS commits before it answers (the
//! bench polls for the rows every 5–250 ms, `poll_interval`, but takes the times from the rows); every one is then
//! read back with `getRecord`. Prints:
//! - `e2e_lag_p50_ms` / `e2e_lag_p99_ms` — steady phase, per event, relay OK → written;
//! - `bridged_posts_per_sec` — burst phase, events / (first publish → last record written): the bridge's capacity;
//! - `raw_pds_posts_per_sec` — posts / wall time of the raw putRecord phase (blob uploaded once per repo, untimed);
//! - `bridge_vs_raw_pds_ratio` — bridged / raw;
//! - context: `steady_bridged_posts_per_sec` and `steady_vs_raw_pds_ratio`; `burst_lag_p50_ms` / `_p99_ms` (mostly
//!   queueing behind the same account's earlier videos); `raw_pds_upload_put_posts_per_sec` (the raw phase again
//!   with an uploadBlob before each putRecord — the PDS work the bridge does per post) and
//!   `bridge_vs_raw_upload_put_ratio`: measured over two pairs of phases in the order burst, raw, raw, burst (each
//!   with its own videos; posts per second over the summed times, so a drift of the host's speed cancels), with each
//!   pair's own ratio as `bridge_vs_raw_upload_put_ratio_first_pair` / `_second_pair`; `e2e_lag_unloaded_p50_ms` /
//!   `_max_ms` from one warm-up event per account published one at a time; `burst_phase_<phase>_mean_ms` (the
//!   bridge's `bridge_publish_phase_seconds` over the burst: where a publish try's time goes) and
//!   `burst_publish_try_mean_ms`. The bridge's own media fetch time goes to stderr.
//! - `burst_cpu_<group>_ms_per_post` / `raw_upload_put_cpu_<group>_ms_per_post` and `burst_busy_cores` /
//!   `raw_upload_put_busy_cores` — where the machine's CPU went in the two compared phases, per post, by process
//!   group (`pds`, `bridge`, `relay`, `postgres`, `media`, `gateway`, `bench`, `other`; see [`cpu`]);
//!   `<phase>_pds_main_on_cpu`, `<phase>_pds_main_runqueue_wait` (fractions of the phase's wall time the PDS's main
//!   thread ran, and was runnable but waited for a CPU), `<phase>_pds_runqueue_wait_ms_per_post` and
//!   `<phase>_steal_cores` (CPU the virtual machine's host took from it); the same for the second pair as `burst2_*`
//!   and `raw_upload_put2_*`;
//! - `slo_fraction_le_5m` / `slo_fraction_le_30m` — of the bridge's publish/delete/profile jobs that ended during the
//!   run, the fraction that ended `succeeded`/`ineligible` within 5 / 30 min of the event (`bridge_e2e_lag_seconds`
//!   from `BRIDGE_HTTP_URL/metrics`, deltas over the run — the recording rules' definition);
//! - `reconcile_found_<reason>` — what the reconciliation sweep found during the run, read after one complete sweep
//!   that started after the last event was written (waits up to 3 min); 0 in a healthy run.
//!
//! Reads the bridge's tables; writes only through the gateway, the relay and the PDS (new accounts of its own).
//!
//! Suite `media` (owned by the media spool, issue 11 §1): against the reference PLC + PDS (`PLC_URL`, `PDS_URL`;
//! run it with `PDS_BLOB_UPLOAD_LIMIT` ≥ the video size) and a throwaway database on the local Postgres
//! (`BENCH_PG_URL`). Writes `BENCH_MEDIA_VIDEOS` (8) distinct generated videos of `BENCH_MEDIA_BYTES` (60,000,000)
//! bytes to a temporary directory served by an in-process HTTP server, starts an in-process relay and ONE
//! `divine-atbridge run` child (the binary next to this one) with `WORKERS=BENCH_MEDIA_WORKERS` (8), opts in one
//! account per video (so the videos do not queue behind each other on one account) and waits until they are
//! provisioned, then publishes all videos at once and waits until every post is published. Then, for comparison,
//! creates as many plain PDS accounts and does `uploadBlob` + `putRecord` of the same files, all in parallel.
//! Prints `media_peak_rss_mb` (the child's VmHWM from `/proc/<pid>/status` at the end: its peak over the whole run,
//! target ≤ 150), `media_idle_rss_mb` (VmHWM after provisioning, before any video), `media_bridge_secs` (first
//! publish → last post published), `media_raw_upload_put_secs`, `media_bridge_vs_raw_time_ratio` and the sizes used
//! (`media_videos`, `media_video_bytes`, `media_workers`). Removes its files, child, relay and database at the end.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use divine_atbridge::worker::{JobHandler, LeasedJob, Outcome, Registry, WorkerConfig, WorkerPool};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::{migrate, Db, JobKind};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(300);
const LEASE_BATCH: i64 = 16;
const LATENCY_ROUNDS: usize = 2_000;

/// A database created for this run and dropped (FORCE) when the value goes out of scope.
struct ThrowawayDb {
    admin_url: String,
    name: String,
    url: String,
}

impl ThrowawayDb {
    fn create(server: &str) -> anyhow::Result<ThrowawayDb> {
        ThrowawayDb::create_named(server, "bench_queue")
    }

    fn create_named(server: &str, prefix: &str) -> anyhow::Result<ThrowawayDb> {
        let admin_url = format!("{server}/postgres");
        let name = format!("{prefix}_{}_{:08x}", std::process::id(), rand::random::<u32>());
        let mut admin = PgConnection::establish(&admin_url)?;
        diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut admin)?;
        let db = ThrowawayDb {
            url: format!("{server}/{name}"),
            admin_url,
            name,
        };
        let mut conn = PgConnection::establish(&db.url)?;
        migrate::run_migrations(&mut conn)?;
        Ok(db)
    }
}

impl Drop for ThrowawayDb {
    fn drop(&mut self) {
        match PgConnection::establish(&self.admin_url) {
            Ok(mut admin) => {
                if let Err(e) = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
                    .execute(&mut admin)
                {
                    eprintln!("bench: could not drop {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("bench: could not drop {}: {e}", self.name),
        }
    }
}

struct Noop;

impl JobHandler for Noop {
    fn handle<'a>(&'a self, _job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async { Outcome::Succeeded })
    }
}

fn main() -> std::process::ExitCode {
    let suite = std::env::args().nth(1).unwrap_or_default();
    let result = match suite.as_str() {
        "queue" => queue_suite(),
        "e2e" => e2e::suite(),
        "ingest" => ingest_bench::suite(),
        "media" => media::suite(),
        other => Err(anyhow::anyhow!(
            "unknown bench suite {other:?} (known: queue, e2e, ingest, media)"
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn queue_suite() -> anyhow::Result<()> {
    let server = std::env::var("BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let jobs: usize = env_or("BENCH_JOBS", 100_000);
    let backlog: i64 = env_or("BENCH_BACKLOG", 1_000_000);
    let db = ThrowawayDb::create(&server)?;

    let per_sec = throughput(&db.url, jobs)?;
    println!("queue_noop_jobs_per_sec={per_sec:.0}");
    if std::env::var("BENCH_QUEUE_ONLY").as_deref() == Ok("throughput") {
        return Ok(());
    }

    let mut conn = PgConnection::establish(&db.url)?;
    diesel::sql_query("TRUNCATE jobs").execute(&mut conn)?;
    diesel::sql_query("VACUUM ANALYZE jobs").execute(&mut conn)?;
    let empty = lease_latencies(&mut conn, true)?;
    let empty_p99 = p99_ms(empty);
    println!("lease_p99_ms_empty={empty_p99:.3}");

    diesel::sql_query("TRUNCATE jobs").execute(&mut conn)?;
    let started = Instant::now();
    diesel::sql_query(
        "INSERT INTO jobs (kind, ordering_key, payload, priority, source_created_at) \
         SELECT 'noop', 'key-' || (i % 100000), '{}'::jsonb, 0, \
                timestamptz '2026-01-01' + make_interval(secs => i / 1000.0) \
         FROM generate_series(1, $1) AS i",
    )
    .bind::<BigInt, _>(backlog)
    .execute(&mut conn)?;
    diesel::sql_query("VACUUM ANALYZE jobs").execute(&mut conn)?;
    eprintln!("bench: loaded {backlog} queued jobs in {:.1?}", started.elapsed());
    let loaded = lease_latencies(&mut conn, false)?;
    let backlog_p99 = p99_ms(loaded);
    println!("lease_p99_ms_backlog={backlog_p99:.3}");
    println!("lease_backlog_ratio={:.2}", backlog_p99 / empty_p99);
    if std::env::var_os("BENCH_EXPLAIN").is_some() {
        explain(&mut conn)?;
    }

    let blocked: i64 = env_or("BENCH_BLOCKED", 1_000_000);
    let blocked_rounds: usize = env_or("BENCH_BLOCKED_ROUNDS", LATENCY_ROUNDS);
    diesel::sql_query("TRUNCATE jobs").execute(&mut conn)?;
    let started = Instant::now();
    // Key `blocked-k` gets jobs i ≡ k (mod 10,000); its head (the earliest, i ≤ 10,000) waits a day, the rest are due.
    diesel::sql_query(
        "INSERT INTO jobs (kind, ordering_key, payload, priority, source_created_at, run_at) \
         SELECT 'noop', 'blocked-' || (i % 10000), '{}'::jsonb, 0, \
                timestamptz '2026-01-01' + make_interval(secs => i / 1000.0), \
                CASE WHEN i <= 10000 THEN now() + interval '1 day' ELSE now() END \
         FROM generate_series(1, $1) AS i",
    )
    .bind::<BigInt, _>(blocked)
    .execute(&mut conn)?;
    diesel::sql_query("VACUUM ANALYZE jobs").execute(&mut conn)?;
    eprintln!("bench: loaded {blocked} blocked jobs in {:.1?}", started.elapsed());
    let blocked_p99 = p99_ms(lease_latencies_n(&mut conn, true, blocked_rounds)?);
    println!("lease_p99_ms_blocked={blocked_p99:.3}");
    println!("lease_blocked_ratio={:.2}", blocked_p99 / empty_p99);
    if std::env::var_os("BENCH_EXPLAIN").is_some() {
        explain(&mut conn)?;
    }

    diesel::sql_query("TRUNCATE jobs").execute(&mut conn)?;
    let (until_live, backfill_share) = fair_dispatch(&mut conn)?;
    println!("fair_leases_until_live_done={until_live}");
    println!("fair_backfill_share={backfill_share:.3}");

    let finished: i64 = env_or("BENCH_FINISHED", 1_000_000);
    let (stats_empty, stats_finished) = stats_timing(&mut conn, finished)?;
    println!("stats_ms_empty={stats_empty:.3}");
    println!("stats_ms_1m_finished={stats_finished:.3}");
    println!("stats_finished_vs_empty_ratio={:.2}", stats_finished / stats_empty);
    Ok(())
}

/// Calls of `queue::stats()` per measurement.
const STATS_ROUNDS: usize = 200;
/// Queued jobs present in both `stats()` measurements (a small live backlog).
const STATS_LIVE: i64 = 1_000;

/// Median `queue::stats()` time with [`STATS_LIVE`] queued jobs, first alone, then next to `finished` finished jobs.
fn stats_timing(conn: &mut PgConnection, finished: i64) -> anyhow::Result<(f64, f64)> {
    fn median_ms(conn: &mut PgConnection) -> anyhow::Result<f64> {
        let mut v = Vec::with_capacity(STATS_ROUNDS);
        queue::stats(conn)?; // warm the cache and the plan
        for _ in 0..STATS_ROUNDS {
            let t = Instant::now();
            queue::stats(conn)?;
            v.push(t.elapsed());
        }
        v.sort();
        Ok(v[v.len() / 2].as_secs_f64() * 1000.0)
    }
    diesel::sql_query("TRUNCATE jobs").execute(conn)?;
    diesel::sql_query(
        "INSERT INTO jobs (kind, ordering_key, payload) \
         SELECT 'noop', 'live-' || i, '{}'::jsonb FROM generate_series(1, $1) AS i",
    )
    .bind::<BigInt, _>(STATS_LIVE)
    .execute(conn)?;
    diesel::sql_query("VACUUM ANALYZE jobs").execute(conn)?;
    let empty = median_ms(conn)?;

    let started = Instant::now();
    diesel::sql_query(
        "INSERT INTO jobs (kind, ordering_key, payload, state, attempt, finished_at) \
         SELECT (ARRAY['publish_post', 'delete_post', 'sync_profile'])[1 + i % 3], 'key-' || (i % 100000), \
                '{}'::jsonb, (ARRAY['succeeded', 'succeeded', 'failed', 'ineligible'])[1 + i % 4], 1, \
                now() - make_interval(secs => (i % 1209600)::float8) \
         FROM generate_series(1, $1) AS i",
    )
    .bind::<BigInt, _>(finished)
    .execute(conn)?;
    diesel::sql_query("VACUUM ANALYZE jobs").execute(conn)?;
    eprintln!("bench: loaded {finished} finished jobs in {:.1?}", started.elapsed());
    let loaded = median_ms(conn)?;
    Ok((empty, loaded))
}

/// Wall-clock jobs/s for enqueue + lease + complete of `n` noop jobs with one 16-worker pool.
fn throughput(url: &str, n: usize) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let db = Db::connect(url, 24)?;
        let mut registry = Registry::new();
        registry.register(JobKind::Noop, Arc::new(Noop));
        let config = WorkerConfig {
            workers: 16,
            poll_interval: Duration::from_millis(20),
            ..WorkerConfig::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let pool = tokio::spawn(WorkerPool::new(db.clone(), config, registry).run(stop_rx));

        let started = Instant::now();
        let producer = {
            let db = db.clone();
            tokio::spawn(async move {
                for chunk_start in (0..n).step_by(1_000) {
                    let batch: Vec<NewJob> = (chunk_start..(chunk_start + 1_000).min(n))
                        .map(|i| NewJob::new(JobKind::Noop, format!("key-{}", i % 10_000), serde_json::json!({})))
                        .collect();
                    db.run(move |c| queue::enqueue_many(c, &batch)).await?;
                }
                Ok::<_, divine_bridge_db::DbError>(())
            })
        };
        // Done = everything enqueued and no live (queued/running) job left. The probe reads the partial index
        // `jobs_key_order` (live jobs only), so watching costs next to nothing; a `count(*)` of succeeded rows would
        // scan up to 100,000 index entries every tick and compete with the queue for the two cores.
        producer.await??;
        loop {
            let live = db
                .run(|c| {
                    Ok::<_, divine_bridge_db::DbError>(
                        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
                            "EXISTS (SELECT 1 FROM jobs WHERE state IN ('queued', 'running'))",
                        ))
                        .get_result::<bool>(c)?,
                    )
                })
                .await?;
            if !live {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("throughput run did not finish in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        let _ = stop_tx.send(true);
        pool.await?;
        let succeeded = db
            .run(|c| {
                use divine_bridge_db::schema::jobs;
                Ok::<_, divine_bridge_db::DbError>(
                    jobs::table
                        .filter(jobs::state.eq("succeeded"))
                        .count()
                        .get_result::<i64>(c)?,
                )
            })
            .await?;
        anyhow::ensure!(succeeded as usize == n, "{succeeded} of {n} jobs succeeded");
        eprintln!("bench: {n} noop jobs in {elapsed:.2?}");
        Ok(n as f64 / elapsed.as_secs_f64())
    })
}

/// Lease latencies (batch of 16) over [`LATENCY_ROUNDS`] rounds. With `refill`, each round first enqueues exactly
/// the 16 jobs it will lease (an otherwise empty queue); without, it leases from whatever backlog is there. Leased
/// jobs are completed (untimed) so the next round sees the same shape; `job_heads` is vacuumed every second (untimed),
/// as a busy pool does.
fn lease_latencies(conn: &mut PgConnection, refill: bool) -> anyhow::Result<Vec<Duration>> {
    lease_latencies_n(conn, refill, LATENCY_ROUNDS)
}

/// [`lease_latencies`] over `rounds` counted rounds, after `rounds / 20` uncounted warm-up rounds.
fn lease_latencies_n(conn: &mut PgConnection, refill: bool, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let warmup = (rounds / 20).max(1);
    let mut out = Vec::with_capacity(rounds);
    let mut vacuumed = Instant::now();
    for round in 0..rounds + warmup {
        // As a leasing worker pool does (`worker::vacuum_heads`): `job_heads` vacuumed every second, untimed. Without
        // it the dead index entries of every round's head moves pile up at the front of the lease's scan and the
        // rounds measure the bloat, not the lease.
        if vacuumed.elapsed() >= Duration::from_secs(1) {
            queue::vacuum_heads(conn)?;
            vacuumed = Instant::now();
        }
        if refill {
            let batch: Vec<NewJob> = (0..LEASE_BATCH)
                .map(|i| NewJob::new(JobKind::Noop, format!("key-{i}"), serde_json::json!({})))
                .collect();
            queue::enqueue_many(conn, &batch)?;
        }
        let t = Instant::now();
        let leased = queue::lease(conn, "bench", LEASE_BATCH, LEASE)?;
        let took = t.elapsed();
        anyhow::ensure!(
            leased.len() as i64 == LEASE_BATCH,
            "round {round}: leased {} of {LEASE_BATCH}",
            leased.len()
        );
        let leases: Vec<queue::Lease> = leased.iter().map(|j| j.lease()).collect();
        queue::complete_many(conn, &leases)?;
        // The first rounds warm caches and the plan cache; not counted.
        if round >= warmup {
            out.push(took);
        }
    }
    Ok(out)
}

/// Fair dispatch (issue 11 §2), two figures on an empty queue. (1) A wave of 1,000 provisioning-priority jobs, then 10
/// live ones: batch-16 leases (each batch completed at once) until every live job was leased. (2) 1,000 backfill jobs
/// waiting while 16 fresh live jobs arrive before each of 100 batch-16 leases: the fraction of leased jobs that were
/// backfill.
fn fair_dispatch(conn: &mut PgConnection) -> anyhow::Result<(usize, f64)> {
    use divine_bridge_db::states::priority;
    let wave = |conn: &mut PgConnection, prefix: &str, prio: i16, n: usize| -> anyhow::Result<Vec<i64>> {
        let batch: Vec<NewJob> = (0..n)
            .map(|i| {
                let mut j = NewJob::new(JobKind::Noop, format!("{prefix}-{i}"), serde_json::json!({}));
                j.priority = prio;
                j
            })
            .collect();
        Ok(queue::enqueue_many(conn, &batch)?)
    };
    let lease_and_complete = |conn: &mut PgConnection| -> anyhow::Result<Vec<queue::LeasedJob>> {
        let leased = queue::lease(conn, "bench", LEASE_BATCH, LEASE)?;
        let leases: Vec<queue::Lease> = leased.iter().map(|j| j.lease()).collect();
        queue::complete_many(conn, &leases)?;
        Ok(leased)
    };
    wave(conn, "provision", priority::ACCOUNT, 1_000)?;
    let mut live: std::collections::HashSet<i64> = wave(conn, "live", priority::LIVE, 10)?.into_iter().collect();
    let mut leases = 0;
    while !live.is_empty() {
        let got = lease_and_complete(conn)?;
        anyhow::ensure!(!got.is_empty(), "fair dispatch: queue ran dry with live jobs left");
        leases += 1;
        for j in got {
            live.remove(&j.id);
        }
    }
    diesel::sql_query("TRUNCATE jobs").execute(conn)?;
    wave(conn, "backfill", priority::BACKFILL, 1_000)?;
    let (mut total, mut backfill) = (0usize, 0usize);
    for round in 0..100 {
        wave(conn, &format!("live{round}"), priority::LIVE, LEASE_BATCH as usize)?;
        let got = lease_and_complete(conn)?;
        total += got.len();
        backfill += got.iter().filter(|j| j.priority == priority::BACKFILL).count();
    }
    Ok((leases, backfill as f64 / total.max(1) as f64))
}

fn p99_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    let idx = ((v.len() as f64) * 0.99).ceil() as usize - 1;
    v[idx.min(v.len() - 1)].as_secs_f64() * 1000.0
}

/// Prints the lease plan (BENCH_EXPLAIN=1) for the runbook and tuning.
fn explain(conn: &mut PgConnection) -> anyhow::Result<()> {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        #[diesel(column_name = "QUERY PLAN")]
        line: String,
    }
    let plan: Vec<Line> = conn.transaction(|c| {
        use divine_bridge_db::states::DispatchClass;
        let classes: Vec<i16> = DispatchClass::ALL.iter().map(|c| *c as i16).collect();
        let weights: Vec<i32> = DispatchClass::ALL.iter().map(|c| c.weight()).collect();
        diesel::sql_query(format!("EXPLAIN (ANALYZE, BUFFERS) {}", queue::LEASE_SQL))
            .bind::<diesel::sql_types::Text, _>("explain")
            .bind::<BigInt, _>(LEASE_BATCH)
            .bind::<diesel::sql_types::Double, _>(300.0)
            .bind::<diesel::sql_types::Array<diesel::sql_types::SmallInt>, _>(&classes)
            .bind::<diesel::sql_types::Array<diesel::sql_types::Integer>, _>(&weights)
            .load(c)
    })?;
    for l in plan {
        eprintln!("{}", l.line);
    }
    Ok(())
}

/// `n` random lowercase letters (handles and passwords of the bench's accounts).
fn rand_name(n: usize) -> String {
    (0..n).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect()
}

/// The bench's own plain PDS accounts (the raw phases' repos): each with an invite minted by the bridge's own client
/// call (the bridge's PDS is invite-only, issue 12 §4), one client for all of a suite's invites.
struct Invites {
    pds: divine_atproto::pds::PdsClient,
    pds_url: String,
    admin_password: String,
}

impl Invites {
    fn new(pds_url: &str, admin_password: &str) -> anyhow::Result<Invites> {
        use divine_atproto::xrpc::{XrpcClient, XrpcConfig};
        Ok(Invites {
            pds: divine_atproto::pds::PdsClient::new(XrpcClient::new(&XrpcConfig::default())?, pds_url),
            pds_url: pds_url.trim_end_matches('/').to_string(),
            admin_password: admin_password.to_string(),
        })
    }

    /// One single-use invite code.
    async fn mint(&self) -> anyhow::Result<String> {
        self.pds
            .create_invite_code(&self.admin_password)
            .await
            .map_err(|e| anyhow::anyhow!("createInviteCode: {e}"))
    }

    /// A new plain account `<prefix><random>.test` with a fresh invite: its `(did, accessJwt)`.
    async fn plain_account(&self, http: &reqwest::Client, prefix: &str) -> anyhow::Result<(String, String)> {
        let handle = format!("{prefix}{}.test", rand_name(10));
        let code = self.mint().await?;
        let resp = http
            .post(format!("{}/xrpc/com.atproto.server.createAccount", self.pds_url))
            .json(&serde_json::json!({
                "handle": handle, "email": format!("{handle}@bench.test"), "password": rand_name(24),
                "inviteCode": code
            }))
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            anyhow::bail!("createAccount: HTTP {status}: {body}");
        }
        let field = |name: &str| {
            body[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("createAccount answered without {name}: {body}"))
        };
        Ok((field("did")?, field("accessJwt")?))
    }
}

/// Suite `e2e`: bridge lag and throughput against the localnet, and raw PDS putRecord throughput for comparison.
mod e2e {
    use super::rand_name;
    use anyhow::{bail, Context};
    use chrono::{DateTime, Utc};
    use diesel::prelude::*;
    use divine_bridge_db::schema::{jobs, record_mappings};
    use divine_bridge_db::Db;
    use futures::future::join_all;
    use futures::StreamExt;
    use nostr_sdk::prelude::*;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    struct Env {
        database_url: String,
        pds_url: String,
        relay_url: String,
        media_url: String,
        gateway_url: String,
        gateway_token: String,
        handle_domain: String,
        /// The bridge's HTTP server (`/metrics`), for the SLO fractions and the sweep's found counters.
        bridge_http_url: String,
        /// The PDS admin password, to mint invites for the raw phase's plain accounts.
        pds_admin_password: String,
    }

    fn var(name: &str) -> anyhow::Result<String> {
        std::env::var(name).with_context(|| format!("{name} is not set (source the localnet env)"))
    }

    impl Env {
        fn from_env() -> anyhow::Result<Env> {
            Ok(Env {
                database_url: var("DATABASE_URL")?,
                pds_url: var("PDS_URL")?.trim_end_matches('/').to_string(),
                relay_url: var("RELAY_URL")?,
                media_url: var("MEDIA_URL")?.trim_end_matches('/').to_string(),
                gateway_url: var("GATEWAY_URL")?.trim_end_matches('/').to_string(),
                gateway_token: var("GATEWAY_SERVICE_TOKEN")?,
                handle_domain: var("HANDLE_DOMAIN")?,
                bridge_http_url: var("BRIDGE_HTTP_URL")?.trim_end_matches('/').to_string(),
                pds_admin_password: var("PDS_ADMIN_PASSWORD")?,
            })
        }
    }

    fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
        let idx = ((sorted.len() as f64) * p).ceil() as usize;
        sorted[idx.saturating_sub(1).min(sorted.len() - 1)].as_secs_f64() * 1000.0
    }

    async fn json_or_status(resp: reqwest::Response, what: &str) -> anyhow::Result<serde_json::Value> {
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            bail!("{what}: HTTP {status}: {body}");
        }
        Ok(body)
    }

    pub fn suite() -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(run())
    }

    async fn run() -> anyhow::Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let env = Env::from_env()?;
        let n_accounts: usize = super::env_or("BENCH_ACCOUNTS", 20);
        let n_events: usize = super::env_or("BENCH_EVENTS", 500);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let db = Db::connect(&env.database_url, 2)?;
        let metrics_url = format!("{}/metrics", env.bridge_http_url);
        let before = super::slo::scrape(&http, &metrics_url).await?;

        let video_url = format!("{}/tiny.mp4", env.media_url);
        let video = http
            .get(&video_url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?
            .to_vec();
        let video_sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&video))
        };

        // 0. Context: the bridge's own media fetch of that file (SSRF-checked, one client per hop), unloaded.
        let fetcher = divine_atbridge::media::MediaFetcher::new(divine_atbridge::media::MediaFetchConfig::new(
            vec!["127.0.0.1".into(), "localhost".into()],
            true,
        ));
        let mut fetches = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            fetcher
                .fetch(&video_url, Some(&video_sha), divine_atbridge::media::MediaKind::Video)
                .await
                .map_err(|e| anyhow::anyhow!("media fetch: {e}"))?;
            fetches.push(t.elapsed());
        }
        fetches.sort();
        eprintln!(
            "bench: media fetch of {video_url} (unloaded): p50 {:.1} ms, p99 {:.1} ms",
            percentile_ms(&fetches, 0.5),
            percentile_ms(&fetches, 0.99)
        );

        // 1. Opt in the accounts through the gateway and wait for the bridge to provision them.
        let started = Instant::now();
        let keys: Vec<Keys> = (0..n_accounts).map(|_| Keys::generate()).collect();
        let opt_ins = keys.iter().map(|k| {
            let (http, env) = (&http, &env);
            async move {
                let pubkey = k.public_key().to_hex();
                let handle = format!("bn{}.{}", rand_name(10), env.handle_domain);
                let resp = http
                    .post(format!("{}/api/account-links/opt-in", env.gateway_url))
                    .bearer_auth(&env.gateway_token)
                    .json(&serde_json::json!({"nostr_pubkey": pubkey, "handle": handle}))
                    .send()
                    .await?;
                json_or_status(resp, "opt-in").await?;
                let deadline = Instant::now() + Duration::from_secs(180);
                loop {
                    let resp = http
                        .get(format!("{}/api/account-links/{pubkey}/status", env.gateway_url))
                        .bearer_auth(&env.gateway_token)
                        .send()
                        .await?;
                    let body = json_or_status(resp, "status").await?;
                    match body["provisioning_state"].as_str() {
                        Some("ready") => return Ok::<String, anyhow::Error>(body["did"].as_str().unwrap_or("").into()),
                        Some("failed") => bail!("provisioning {pubkey} failed: {body}"),
                        _ if Instant::now() > deadline => bail!("{pubkey} not ready in 180 s: {body}"),
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        let dids: Vec<String> = join_all(opt_ins).await.into_iter().collect::<anyhow::Result<_>>()?;
        eprintln!(
            "bench: {n_accounts} accounts opted in and ready in {:.1?}",
            started.elapsed()
        );
        // Let the ingest pick up the new authors (ACCOUNT_REFRESH_SECS) before the clock starts.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // 2. Connect to the relay.
        let client = Client::default();
        client.add_relay(env.relay_url.as_str()).await?;
        client.connect().await;
        client.wait_for_connection(Duration::from_secs(10)).await;
        let video_tag = || imeta(&video_url, &video_sha);
        // 2a. Unloaded: one event per account, each published only after the previous one is written.
        let mut unloaded: Vec<Duration> = Vec::new();
        for (a, k) in keys.iter().enumerate() {
            let e = EventBuilder::new(Kind::from(22u16), format!("bench warm-up {a}"))
                .tags([video_tag()])
                .sign_with_keys(k)?;
            let out = client.send_event(&e).await?;
            let ok = Instant::now();
            if out.success.is_empty() {
                bail!("relay refused a warm-up event: {:?}", out.failed);
            }
            let seen = wait_published(&db, &e.id.to_hex(), Duration::from_secs(60)).await?;
            unloaded.push(seen - ok);
        }
        unloaded.sort();
        eprintln!(
            "bench: unloaded lag over {} events: p50 {:.0} ms, max {:.0} ms",
            unloaded.len(),
            percentile_ms(&unloaded, 0.5),
            percentile_ms(&unloaded, 1.0)
        );

        // 2b. Steady: every account publishes its next video as soon as its previous one is written (20 concurrent
        // streams, one event in flight per account: the shape of the raw phase). 2c. Burst: all at once.
        // Every event gets its own video file (as real posts do), so every post uploads a new blob.
        let steady_videos = Videos::unique(&env, &video, "steady", n_events)?;
        let burst_videos = Videos::unique(&env, &video, "burst", n_events)?;
        let second_videos = Videos::unique(&env, &video, "burst2", n_events)?;
        let steady = bridge_phase(&db, &client, &keys, n_events, Shape::Steady, steady_videos.tags.clone()).await?;
        eprintln!(
            "bench: steady: {n_events} events bridged in {:.2} s; lag p50 {:.0} ms, p99 {:.0} ms",
            steady.secs,
            percentile_ms(&steady.lags, 0.5),
            percentile_ms(&steady.lags, 0.99)
        );
        let burst_before = super::slo::scrape(&http, &metrics_url).await?;
        let (burst, burst_cpu) = super::cpu::during(bridge_phase(
            &db,
            &client,
            &keys,
            n_events,
            Shape::Burst,
            burst_videos.tags.clone(),
        ))
        .await?;
        let burst_after = super::slo::scrape(&http, &metrics_url).await?;
        eprintln!(
            "bench: burst: {n_events} events bridged in {:.2} s; lag p50 {:.0} ms, p99 {:.0} ms",
            burst.secs,
            percentile_ms(&burst.lags, 0.5),
            percentile_ms(&burst.lags, 0.99)
        );
        let uris: Vec<String> = steady.uris.iter().chain(burst.uris.iter()).cloned().collect();
        let ids = [steady.first_id.clone()];

        // Every bridged record is readable on the PDS.
        let checks = uris.iter().map(|uri| {
            let (http, env) = (&http, &env);
            async move {
                let parts: Vec<&str> = uri.trim_start_matches("at://").splitn(3, '/').collect();
                let resp = http
                    .get(format!("{}/xrpc/com.atproto.repo.getRecord", env.pds_url))
                    .query(&[("repo", parts[0]), ("collection", parts[1]), ("rkey", parts[2])])
                    .send()
                    .await?;
                json_or_status(resp, "getRecord").await.map(|_| ())
            }
        });
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(checks).buffer_unordered(20).collect().await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        eprintln!(
            "bench: all {} bridged records readable with getRecord ({} repos)",
            uris.len(),
            dids.len()
        );
        let sample_record: serde_json::Value = {
            let id = ids[0].clone();
            db.run(move |c| {
                Ok::<_, divine_bridge_db::DbError>(
                    record_mappings::table
                        .find(id)
                        .select(record_mappings::record)
                        .first::<Option<serde_json::Value>>(c)?,
                )
            })
            .await?
            .context("no stored record")?
        };

        // 3. Raw PDS: as many plain accounts, equivalent records, one in-flight putRecord per repo, all in parallel.
        let invites = super::Invites::new(&env.pds_url, &env.pds_admin_password)?;
        let setups = (0..n_accounts).map(|_| {
            let (http, env, video, invites) = (&http, &env, &video, &invites);
            async move {
                let (did, jwt) = invites.plain_account(http, "rw").await?;
                let resp = http
                    .post(format!("{}/xrpc/com.atproto.repo.uploadBlob", env.pds_url))
                    .bearer_auth(&jwt)
                    .header("content-type", "video/mp4")
                    .body(video.clone())
                    .send()
                    .await?;
                let blob = json_or_status(resp, "uploadBlob").await?["blob"].clone();
                Ok::<_, anyhow::Error>((did, jwt, blob))
            }
        });
        let raw_accounts: Vec<(String, String, serde_json::Value)> =
            join_all(setups).await.into_iter().collect::<anyhow::Result<_>>()?;
        let (raw_posts, raw_secs) = raw_writes(&http, &env, &raw_accounts, &sample_record, n_events, None).await?;
        eprintln!("bench: raw putRecord: {raw_posts} posts over {n_accounts} repos in {raw_secs:.2} s");
        let ((full_posts, full_secs), raw_cpu) = super::cpu::during(raw_writes(
            &http,
            &env,
            &raw_accounts,
            &sample_record,
            n_events,
            Some(&burst_videos.bytes),
        ))
        .await?;
        eprintln!("bench: raw uploadBlob+putRecord: {full_posts} posts over {n_accounts} repos in {full_secs:.2} s");
        // 4. The compared pair again in the opposite order (raw, then bridged: burst, raw, raw, burst), each with new
        // videos: the host's speed drifts by tens of percent between phases seconds apart (the PDS's CPU cost per post
        // moved between 12 and 21 ms from one phase to the next in one run, see crossposting.md), and a drift that
        // is linear over the four phases cancels out of the sums.
        let ((full2_posts, full2_secs), raw2_cpu) = super::cpu::during(raw_writes(
            &http,
            &env,
            &raw_accounts,
            &sample_record,
            n_events,
            Some(&second_videos.bytes),
        ))
        .await?;
        eprintln!("bench: raw uploadBlob+putRecord (second): {full2_posts} posts in {full2_secs:.2} s");
        let (burst2, burst2_cpu) = super::cpu::during(bridge_phase(
            &db,
            &client,
            &keys,
            n_events,
            Shape::Burst,
            second_videos.tags.clone(),
        ))
        .await?;
        eprintln!(
            "bench: burst (second): {n_events} events bridged in {:.2} s",
            burst2.secs
        );

        let bridged_pps = n_events as f64 / burst.secs;
        let steady_pps = n_events as f64 / steady.secs;
        let raw_pps = raw_posts as f64 / raw_secs;
        println!("e2e_lag_p50_ms={:.0}", percentile_ms(&steady.lags, 0.50));
        println!("e2e_lag_p99_ms={:.0}", percentile_ms(&steady.lags, 0.99));
        println!("bridged_posts_per_sec={bridged_pps:.1}");
        println!("raw_pds_posts_per_sec={raw_pps:.1}");
        println!("bridge_vs_raw_pds_ratio={:.2}", bridged_pps / raw_pps);
        // Context: the other shape of each figure, the PDS work the bridge does per post (uploadBlob + putRecord),
        // and the lag with nothing else in flight.
        let full_pps = full_posts as f64 / full_secs;
        println!("steady_bridged_posts_per_sec={steady_pps:.1}");
        println!("steady_vs_raw_pds_ratio={:.2}", steady_pps / raw_pps);
        println!("burst_lag_p50_ms={:.0}", percentile_ms(&burst.lags, 0.50));
        println!("burst_lag_p99_ms={:.0}", percentile_ms(&burst.lags, 0.99));
        println!("raw_pds_upload_put_posts_per_sec={full_pps:.1}");
        // Both pairs (burst, raw, raw, burst): posts per second over the summed phase times.
        let bridged_both = (2 * n_events) as f64 / (burst.secs + burst2.secs);
        let raw_both = (full_posts + full2_posts) as f64 / (full_secs + full2_secs);
        println!("bridge_vs_raw_upload_put_ratio={:.2}", bridged_both / raw_both);
        println!(
            "bridge_vs_raw_upload_put_ratio_first_pair={:.2}",
            bridged_pps / full_pps
        );
        println!(
            "bridge_vs_raw_upload_put_ratio_second_pair={:.2}",
            (n_events as f64 / burst2.secs) / (full2_posts as f64 / full2_secs)
        );
        // Where a burst job's time goes: the mean of each publish phase and of the whole try over the burst.
        for phase in divine_atbridge::metrics::PUBLISH_PHASES {
            let mean = super::slo::mean_delta(
                &burst_before,
                &burst_after,
                "bridge_publish_phase_seconds",
                "phase",
                phase,
            );
            println!("burst_phase_{phase}_mean_ms={:.2}", mean * 1000.0);
        }
        let try_mean = super::slo::mean_delta(
            &burst_before,
            &burst_after,
            "bridge_job_duration_seconds",
            "kind",
            "publish_post",
        );
        println!("burst_publish_try_mean_ms={:.2}", try_mean * 1000.0);
        // Where the machine's CPU went in each of the two compared phases (per post, per process group).
        super::cpu::print("burst", &burst_cpu, n_events);
        super::cpu::print("raw_upload_put", &raw_cpu, full_posts);
        super::cpu::print("raw_upload_put2", &raw2_cpu, full2_posts);
        super::cpu::print("burst2", &burst2_cpu, n_events);
        println!("e2e_lag_unloaded_p50_ms={:.0}", percentile_ms(&unloaded, 0.50));
        println!("e2e_lag_unloaded_max_ms={:.0}", percentile_ms(&unloaded, 1.0));
        // The zero-loss SLO over this run (deltas of the bridge's own counters), after one complete reconciliation
        // sweep that started after the last event was written: the found counters must be 0 in a healthy run.
        let done = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let after = super::slo::after_sweep(&http, &metrics_url, done, Duration::from_secs(180)).await?;
        let (le_5m, le_30m) = super::slo::fractions(&before, &after);
        println!("slo_fraction_le_5m={le_5m:.4}");
        println!("slo_fraction_le_30m={le_30m:.4}");
        for reason in divine_atbridge::reconcile::reason_labels() {
            println!(
                "reconcile_found_{reason}={}",
                super::slo::found(&before, &after, reason)
            );
        }
        client.shutdown().await;
        Ok(())
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Shape {
        /// One event in flight per account: each publishes its next event once the previous one is written.
        Steady,
        /// Every event published at once, round-robin over the accounts.
        Burst,
    }

    /// One bridged phase: sorted per-event lags (relay OK → written), seconds from the first publish to the last
    /// record written, the records' at_uris, and one event id (for a sample record). "Written" is the mapping's
    /// `published_at`, which the bridge sets when its `putRecord` has returned (same machine, same clock): the phase's
    /// figures do not depend on how often the bench polls, so the poll can stay sparse (see [`poll_interval`]).
    struct Phase {
        lags: Vec<Duration>,
        secs: f64,
        uris: Vec<String>,
        first_id: String,
    }

    #[derive(Default)]
    struct Track {
        index: HashMap<String, usize>,
        /// When the relay accepted the event (wall clock, to compare with `written`).
        ok: Vec<Option<DateTime<Utc>>>,
        /// When a poll first found the event written (paces the steady publishers, nothing else).
        seen: Vec<Option<Instant>>,
        /// The mapping's `published_at`.
        written: Vec<Option<DateTime<Utc>>>,
        uris: Vec<Option<String>>,
    }

    /// The NIP-71 `imeta` tag for a video at `url` with SHA-256 `sha`.
    fn imeta(url: &str, sha: &str) -> Tag {
        Tag::parse([
            "imeta".to_string(),
            format!("url {url}"),
            "m video/mp4".to_string(),
            format!("x {sha}"),
            "dim 64x64".to_string(),
        ])
        .expect("imeta tag")
    }

    /// One distinct video per event: the localnet's `tiny.mp4` plus a trailing MP4 `free` box carrying a unique
    /// number (still a valid MP4, sniffed as video/mp4), written to `$LOCALNET_DIR/media/` (served as
    /// `$MEDIA_URL/<name>`, see docs/runbooks/localnet.md) and removed on drop. Without `LOCALNET_DIR` every event
    /// uses `tiny.mp4` itself (and says so).
    struct Videos {
        tags: Vec<Tag>,
        bytes: Vec<Vec<u8>>,
        files: Vec<std::path::PathBuf>,
    }

    impl Videos {
        fn unique(env: &Env, base: &[u8], label: &str, n: usize) -> anyhow::Result<Videos> {
            use sha2::Digest;
            let dir = std::env::var("LOCALNET_DIR")
                .ok()
                .map(|d| std::path::Path::new(&d).join("media"))
                .filter(|d| d.is_dir());
            let Some(dir) = dir else {
                eprintln!("bench: LOCALNET_DIR/media not found; every event uses tiny.mp4 (the same blob)");
                let sha = hex::encode(sha2::Sha256::digest(base));
                let tag = imeta(&format!("{}/tiny.mp4", env.media_url), &sha);
                return Ok(Videos {
                    tags: vec![tag; n],
                    bytes: vec![base.to_vec(); n],
                    files: Vec::new(),
                });
            };
            let run: u32 = rand::random();
            let mut v = Videos {
                tags: Vec::with_capacity(n),
                bytes: Vec::with_capacity(n),
                files: Vec::with_capacity(n),
            };
            for i in 0..n {
                let mut bytes = base.to_vec();
                bytes.extend_from_slice(&16u32.to_be_bytes());
                bytes.extend_from_slice(b"free");
                bytes.extend_from_slice(&run.to_be_bytes());
                bytes.extend_from_slice(&(i as u32).to_be_bytes());
                let name = format!("bench-{run:08x}-{label}-{i}.mp4");
                let path = dir.join(&name);
                std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                v.files.push(path);
                v.tags.push(imeta(
                    &format!("{}/{name}", env.media_url),
                    &hex::encode(sha2::Sha256::digest(&bytes)),
                ));
                v.bytes.push(bytes);
            }
            Ok(v)
        }
    }

    impl Drop for Videos {
        fn drop(&mut self) {
            for f in &self.files {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    fn bench_event(keys: &Keys, shape: Shape, i: usize, imeta: &Tag) -> Event {
        EventBuilder::new(Kind::from(22u16), format!("bench {shape:?} clip {i} #divinebench"))
            .tags([imeta.clone(), Tag::hashtag("divinebench")])
            .sign_with_keys(keys)
            .expect("signing")
    }

    async fn send(client: &Client, track: &std::sync::Mutex<Track>, i: usize, event: &Event) -> anyhow::Result<()> {
        track.lock().unwrap().index.insert(event.id.to_hex(), i);
        let out = client.send_event(event).await?;
        if out.success.is_empty() {
            bail!("relay refused event {i}: {:?}", out.failed);
        }
        track.lock().unwrap().ok[i] = Some(Utc::now());
        Ok(())
    }

    async fn bridge_phase(
        db: &Db,
        client: &Client,
        keys: &[Keys],
        n_events: usize,
        shape: Shape,
        tags: Vec<Tag>,
    ) -> anyhow::Result<Phase> {
        let tags = std::sync::Arc::new(tags);
        let n_accounts = keys.len();
        let track = std::sync::Arc::new(std::sync::Mutex::new(Track {
            ok: vec![None; n_events],
            seen: vec![None; n_events],
            written: vec![None; n_events],
            uris: vec![None; n_events],
            ..Track::default()
        }));
        let first_publish = Utc::now();
        let mut publishers = tokio::task::JoinSet::new();
        match shape {
            Shape::Burst => {
                let events: Vec<Event> = (0..n_events)
                    .map(|i| bench_event(&keys[i % n_accounts], shape, i, &tags[i]))
                    .collect();
                let (client, track) = (client.clone(), track.clone());
                publishers.spawn(async move {
                    for (i, e) in events.iter().enumerate() {
                        send(&client, &track, i, e).await?;
                    }
                    Ok::<(), anyhow::Error>(())
                });
            }
            Shape::Steady => {
                for (a, k) in keys.iter().enumerate() {
                    let (client, track, k, tags) = (client.clone(), track.clone(), k.clone(), tags.clone());
                    publishers.spawn(async move {
                        for i in (a..n_events).step_by(n_accounts) {
                            send(&client, &track, i, &bench_event(&k, shape, i, &tags[i])).await?;
                            while track.lock().unwrap().seen[i].is_none() {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                        Ok::<(), anyhow::Error>(())
                    });
                }
            }
        }
        // Poll the mappings until every event is written (or 5 minutes pass), every `poll_interval(pending)`: the
        // poll is one index probe per pending event, so the interval grows with them and the observer's own load on
        // Postgres stays flat (~1 % of a core) instead of competing with the system it measures.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let pending: Vec<String> = {
                let t = track.lock().unwrap();
                t.index
                    .iter()
                    .filter(|(_, i)| t.seen[**i].is_none())
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            let interval = poll_interval(pending.len());
            let done = track.lock().unwrap().seen.iter().all(Option::is_some);
            if done {
                break;
            }
            let rows: Vec<(String, Option<String>, Option<DateTime<Utc>>)> = db
                .run(move |c| {
                    Ok::<_, divine_bridge_db::DbError>(
                        record_mappings::table
                            .filter(record_mappings::state.eq("published"))
                            .filter(record_mappings::nostr_event_id.eq_any(&pending))
                            .select((
                                record_mappings::nostr_event_id,
                                record_mappings::at_uri,
                                record_mappings::published_at,
                            ))
                            .load(c)?,
                    )
                })
                .await?;
            let now = Instant::now();
            {
                let mut t = track.lock().unwrap();
                for (id, uri, published_at) in rows {
                    let i = t.index[&id];
                    t.seen[i] = Some(now);
                    t.written[i] =
                        Some(published_at.with_context(|| format!("published mapping {id} has no published_at"))?);
                    t.uris[i] = uri;
                }
            }
            if Instant::now() > deadline {
                let stuck: Vec<(String, String, Option<String>)> = db
                    .run(move |c| {
                        Ok::<_, divine_bridge_db::DbError>(
                            jobs::table
                                .filter(jobs::kind.eq("publish_post"))
                                .filter(jobs::state.ne("succeeded"))
                                .select((jobs::ordering_key, jobs::state, jobs::last_error_code))
                                .limit(10)
                                .load(c)?,
                        )
                    })
                    .await?;
                bail!("{shape:?}: events not bridged within 5 minutes; e.g. {stuck:?}");
            }
            tokio::time::sleep(interval).await;
        }
        while let Some(r) = publishers.join_next().await {
            r??;
        }
        let t = track.lock().unwrap();
        let last_written = t.written.iter().flatten().max().copied().context("no events")?;
        // A mapping written before its relay OK arrived (the bridge can be that quick) counts as no lag.
        let mut lags: Vec<Duration> = (0..n_events)
            .map(|i| (t.written[i].unwrap() - t.ok[i].unwrap()).to_std().unwrap_or_default())
            .collect();
        lags.sort();
        let uris = t.uris.iter().map(|u| u.clone().unwrap_or_default()).collect();
        let first_id = t
            .index
            .iter()
            .find(|(_, i)| **i == 0)
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        Ok(Phase {
            lags,
            secs: (last_written - first_publish)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
            uris,
            first_id,
        })
    }

    /// The shortest and longest interval between two polls of `record_mappings` in [`bridge_phase`].
    const POLL_MIN: Duration = Duration::from_millis(5);
    const POLL_MAX: Duration = Duration::from_millis(250);

    /// How long to wait before the next poll with `pending` events still unwritten: 0.5 ms per pending event (a poll
    /// costs Postgres one index probe, ~5 µs, per pending event: measured 1.3 ms with 250 pending), between
    /// [`POLL_MIN`] and [`POLL_MAX`]. Polling every 10 ms whatever the backlog cost Postgres ~0.13 of a core during
    /// a burst (half of its CPU per post there), CPU the bridged phase lost and the raw phase did not; at 0.2 ms per
    /// pending event the poll still took ~0.5 ms of Postgres time per bridged post (statement log of one burst). The
    /// interval decides only when the bench notices the end, not the figures: those come from `published_at`
    /// ([`Phase`]). The steady publishers wait for a poll to see their last event, with few pending: 5 ms.
    fn poll_interval(pending: usize) -> Duration {
        (Duration::from_micros(500) * pending as u32).clamp(POLL_MIN, POLL_MAX)
    }

    /// Writes `n_events` equivalent post records across `accounts` with `putRecord`, one in-flight write per repo and
    /// all repos in parallel; with `upload`, each post first uploads its own video (as the bridge does). Returns
    /// (posts, seconds).
    async fn raw_writes(
        http: &reqwest::Client,
        env: &Env,
        accounts: &[(String, String, serde_json::Value)],
        sample_record: &serde_json::Value,
        n_events: usize,
        upload: Option<&[Vec<u8>]>,
    ) -> anyhow::Result<(usize, f64)> {
        let n_accounts = accounts.len();
        let clock = std::sync::atomic::AtomicU64::new(0);
        let started = Instant::now();
        let writers = accounts.iter().enumerate().map(|(a, (did, jwt, blob))| {
            let clock = &clock;
            let mut record = sample_record.clone();
            record["embed"]["video"] = blob.clone();
            async move {
                let mine = (a..n_events).step_by(n_accounts).count();
                for k in 0..mine {
                    if let Some(videos) = upload {
                        let resp = http
                            .post(format!("{}/xrpc/com.atproto.repo.uploadBlob", env.pds_url))
                            .bearer_auth(jwt)
                            .header("content-type", "video/mp4")
                            .body(videos[(a + k * n_accounts) % videos.len()].clone())
                            .send()
                            .await?;
                        record["embed"]["video"] = json_or_status(resp, "uploadBlob").await?["blob"].clone();
                    }
                    record["text"] = serde_json::json!(format!("raw clip {a}-{k} #divinebench"));
                    let now = chrono::Utc::now();
                    record["createdAt"] = serde_json::json!(now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
                    let seq = clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let rkey = divine_atbridge::tid::tid_for(now.timestamp_micros() as u64, (seq % 1024) as u16)?;
                    let resp = http
                        .post(format!("{}/xrpc/com.atproto.repo.putRecord", env.pds_url))
                        .bearer_auth(jwt)
                        .json(&serde_json::json!({
                            "repo": did, "collection": "app.bsky.feed.post", "rkey": rkey.to_string(), "record": record
                        }))
                        .send()
                        .await?;
                    json_or_status(resp, "putRecord").await?;
                }
                Ok::<usize, anyhow::Error>(mine)
            }
        });
        let posts: usize = join_all(writers)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<usize>>>()?
            .into_iter()
            .sum();
        Ok((posts, started.elapsed().as_secs_f64()))
    }

    /// Polls `record_mappings` every 5 ms until `event_id` is published; returns when it was seen.
    async fn wait_published(db: &Db, event_id: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let id = event_id.to_string();
            let state: Option<String> = db
                .run(move |c| {
                    Ok::<_, divine_bridge_db::DbError>(
                        record_mappings::table
                            .find(id)
                            .select(record_mappings::state)
                            .first(c)
                            .optional()?,
                    )
                })
                .await?;
            if state.as_deref() == Some("published") {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("event {event_id} not published within {timeout:?} (state {state:?})");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The SLO and reconciliation figures of `bench e2e`, read from the bridge's `/metrics` (the same series the
/// recording rules in deploy/k8s/alerts.yaml use).
mod slo {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    /// The event kinds the SLO covers, and its good outcomes (as in the recording rules).
    const KINDS: &[&str] = &["publish_post", "delete_post", "sync_profile"];
    const GOOD: &[&str] = &["succeeded", "ineligible"];

    /// Every sample line of the exposition: series (name and labels, as printed) → value.
    pub async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<HashMap<String, f64>> {
        let text = http.get(url).send().await?.error_for_status()?.text().await?;
        Ok(parse(&text))
    }

    fn parse(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
        let start = series.find(&format!("{name}=\""))? + name.len() + 2;
        let rest = &series[start..];
        Some(&rest[..rest.find('"')?])
    }

    fn sum(m: &HashMap<String, f64>, keep: impl Fn(&str) -> bool) -> f64 {
        m.iter().filter(|(k, _)| keep(k)).map(|(_, v)| v).sum()
    }

    fn in_kinds(series: &str) -> bool {
        label(series, "kind").is_some_and(|k| KINDS.contains(&k))
    }

    /// Fraction of event jobs ended good within 300 s and within 1800 s between the two scrapes (1.0 when none ended).
    pub fn fractions(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> (f64, f64) {
        let delta = |keep: &dyn Fn(&str) -> bool| sum(after, keep) - sum(before, keep);
        let total = delta(&|s: &str| s.starts_with("bridge_e2e_lag_seconds_count{") && in_kinds(s));
        let good = |le: &'static str| {
            move |s: &str| {
                s.starts_with("bridge_e2e_lag_seconds_bucket{")
                    && in_kinds(s)
                    && label(s, "outcome").is_some_and(|o| GOOD.contains(&o))
                    && label(s, "le") == Some(le)
            }
        };
        if total <= 0.0 {
            return (1.0, 1.0);
        }
        (delta(&good("300")) / total, delta(&good("1800")) / total)
    }

    /// The mean (seconds) of the histogram `name`'s observations with `label="value"` between the two scrapes
    /// (delta of `_sum` over delta of `_count`; 0 when nothing was observed).
    pub fn mean_delta(
        before: &HashMap<String, f64>,
        after: &HashMap<String, f64>,
        name: &str,
        label_name: &str,
        value: &str,
    ) -> f64 {
        let delta = |suffix: &str| {
            let prefix = format!("{name}{suffix}{{");
            let keep = |s: &str| s.starts_with(&prefix) && label(s, label_name) == Some(value);
            sum(after, keep) - sum(before, keep)
        };
        let n = delta("_count");
        if n <= 0.0 {
            0.0
        } else {
            delta("_sum") / n
        }
    }

    /// `bridge_reconcile_found_total{reason}` grown between the two scrapes.
    pub fn found(before: &HashMap<String, f64>, after: &HashMap<String, f64>, reason: &str) -> u64 {
        let keep = |s: &str| s.starts_with("bridge_reconcile_found_total{") && label(s, "reason") == Some(reason);
        (sum(after, keep) - sum(before, keep)).max(0.0) as u64
    }

    /// Scrapes once the bridge reports a complete sweep that started after `since` (UNIX seconds), or after `timeout` (with a
    /// warning: the found counters then only cover the sweeps that ran, e.g. RECONCILE_INTERVAL_SECS=0).
    pub async fn after_sweep(
        http: &reqwest::Client,
        url: &str,
        since: f64,
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, f64>> {
        // A success stamped after `since` may belong to a sweep that started before it: wait for the one after.
        let deadline = Instant::now() + timeout;
        let mut first: Option<f64> = None;
        loop {
            let m = scrape(http, url).await?;
            let last = sum(&m, |s| s == "bridge_reconcile_last_success_timestamp_seconds");
            match first {
                Some(f) if last > f => return Ok(m),
                None if last >= since => first = Some(last),
                _ => {}
            }
            if Instant::now() >= deadline {
                eprintln!("bench: no complete reconciliation sweep after the run within {timeout:?}; found counters are partial");
                return Ok(m);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fractions_and_found_are_deltas_over_the_run() {
            let before = parse(
                "# TYPE bridge_e2e_lag_seconds histogram\n\
                 bridge_e2e_lag_seconds_bucket{kind=\"publish_post\",outcome=\"succeeded\",le=\"300\"} 5\n\
                 bridge_e2e_lag_seconds_bucket{kind=\"publish_post\",outcome=\"succeeded\",le=\"1800\"} 5\n\
                 bridge_e2e_lag_seconds_count{kind=\"publish_post\",outcome=\"succeeded\"} 5\n\
                 bridge_reconcile_found_total{reason=\"missing_publish\"} 2\n",
            );
            let after = parse(
                "bridge_e2e_lag_seconds_bucket{kind=\"publish_post\",outcome=\"succeeded\",le=\"300\"} 13\n\
                 bridge_e2e_lag_seconds_bucket{kind=\"publish_post\",outcome=\"succeeded\",le=\"1800\"} 14\n\
                 bridge_e2e_lag_seconds_count{kind=\"publish_post\",outcome=\"succeeded\"} 14\n\
                 bridge_e2e_lag_seconds_bucket{kind=\"publish_post\",outcome=\"failed\",le=\"300\"} 1\n\
                 bridge_e2e_lag_seconds_bucket{kind=\"publish_post\",outcome=\"failed\",le=\"1800\"} 1\n\
                 bridge_e2e_lag_seconds_count{kind=\"publish_post\",outcome=\"failed\"} 1\n\
                 bridge_e2e_lag_seconds_count{kind=\"provision_account\",outcome=\"succeeded\"} 50\n\
                 bridge_reconcile_found_total{reason=\"missing_publish\"} 3\n\
                 bridge_reconcile_found_total{reason=\"missing_delete\"} 0\n",
            );
            // 10 event jobs ended during the run: 8 good within 5 min, 9 within 30 min; the failure is a miss and
            // provisioning is not an event kind.
            let (le_5m, le_30m) = fractions(&before, &after);
            assert!((le_5m - 0.8).abs() < 1e-9, "{le_5m}");
            assert!((le_30m - 0.9).abs() < 1e-9, "{le_30m}");
            assert_eq!(found(&before, &after, "missing_publish"), 1);
            assert_eq!(found(&before, &after, "missing_delete"), 0);
        }

        #[test]
        fn phase_means_are_deltas_of_sum_over_count() {
            let before = parse(
                "bridge_publish_phase_seconds_sum{phase=\"fetch\"} 1.5\n\
                 bridge_publish_phase_seconds_count{phase=\"fetch\"} 10\n\
                 bridge_publish_phase_seconds_sum{phase=\"put\"} 9\n\
                 bridge_publish_phase_seconds_count{phase=\"put\"} 10\n",
            );
            let after = parse(
                "bridge_publish_phase_seconds_sum{phase=\"fetch\"} 2.5\n\
                 bridge_publish_phase_seconds_count{phase=\"fetch\"} 30\n\
                 bridge_publish_phase_seconds_sum{phase=\"put\"} 9\n\
                 bridge_publish_phase_seconds_count{phase=\"put\"} 10\n",
            );
            let name = "bridge_publish_phase_seconds";
            let fetch = mean_delta(&before, &after, name, "phase", "fetch");
            assert!((fetch - 0.05).abs() < 1e-9, "{fetch}");
            assert_eq!(mean_delta(&before, &after, name, "phase", "put"), 0.0);
            assert_eq!(mean_delta(&before, &after, name, "phase", "upload"), 0.0);
        }
    }
}

/// Suite `ingest` (owned by relay ingest, issue 11 §4): events ingested per second by one vs two ingest replicas
/// reading the same relay. Each measurement gets its own throwaway database (on `BENCH_PG_URL`) and its own
/// in-process relay (nostr-relay-builder, no rate limit): `BENCH_INGEST_ACCOUNTS` (300) accounts opted in,
/// `NOSTR_INGEST_SHARDS`-style `BENCH_INGEST_SHARDS` (16) shards, the replicas (`ingest::run`, as in the binary)
/// started and left to divide the shards, then `BENCH_INGEST_EVENTS` (3,000) pre-signed NIP-71 events published by
/// 8 concurrent clients. Ingested = admitted (signature checked) and its job durably enqueued; time from the first
/// publish to the last job row. Prints `ingest_events_per_sec_1_replica`, `ingest_events_per_sec_2_replicas` and
/// `ingest_2_vs_1_replicas_ratio`. Everything runs in this one process on the machine's cores (relay, publishers,
/// replicas), so on a small machine the ratio is bounded by the shared CPU, not by the division itself.
mod ingest_bench {
    use super::{env_or, ThrowawayDb};
    use diesel::prelude::*;
    use diesel::sql_types::{Bool, Text};
    use divine_atbridge::ingest::{self, IngestConfig};
    use nostr_relay_builder::prelude::*;
    use std::time::{Duration, Instant};

    pub fn suite() -> anyhow::Result<()> {
        let server = std::env::var("BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let accounts: usize = env_or("BENCH_INGEST_ACCOUNTS", 300);
        let events: usize = env_or("BENCH_INGEST_EVENTS", 3_000);
        let shards: u32 = env_or("BENCH_INGEST_SHARDS", 16);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let one = rt.block_on(measure(&server, 1, accounts, events, shards))?;
        println!("ingest_events_per_sec_1_replica={one:.0}");
        let two = rt.block_on(measure(&server, 2, accounts, events, shards))?;
        println!("ingest_events_per_sec_2_replicas={two:.0}");
        println!("ingest_2_vs_1_replicas_ratio={:.2}", two / one);
        eprintln!("bench ingest: accounts={accounts} events={events} shards={shards}");
        Ok(())
    }

    fn count(conn: &mut PgConnection, sql: &str) -> anyhow::Result<i64> {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        Ok(diesel::sql_query(sql).get_result::<N>(conn)?.n)
    }

    async fn measure(
        server: &str,
        replicas: usize,
        accounts: usize,
        events: usize,
        shards: u32,
    ) -> anyhow::Result<f64> {
        let db = ThrowawayDb::create(server)?;
        let mut conn = PgConnection::establish(&db.url)?;
        let keys: Vec<Keys> = (0..accounts).map(|_| Keys::generate()).collect();
        for (i, k) in keys.iter().enumerate() {
            diesel::sql_query(
                "INSERT INTO account_links (nostr_pubkey, handle, provisioning_state, crosspost_enabled) \
                 VALUES ($1, $2, 'ready', $3)",
            )
            .bind::<Text, _>(k.public_key().to_hex())
            .bind::<Text, _>(format!("bench{i}.test"))
            .bind::<Bool, _>(true)
            .execute(&mut conn)?;
        }
        let limit = RateLimit {
            notes_per_minute: u32::MAX,
            ..RateLimit::default()
        };
        let relay = LocalRelay::new(RelayBuilder::default().rate_limit(limit));
        relay.run().await?;
        let url = relay.url().await.to_string();
        let relay_key = RelayUrl::parse(&url)?.to_string();
        let cfg = IngestConfig {
            shards,
            lease: Duration::from_secs(3),
            ..IngestConfig::new(vec![url.clone()], Duration::from_secs(900), Duration::from_secs(5))
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let pool = divine_bridge_db::Db::connect(&db.url, 8)?;
        let handles: Vec<_> = (0..replicas)
            .map(|_| tokio::spawn(ingest::run(pool.clone(), cfg.clone(), rx.clone())))
            .collect();
        // Wait until the replicas have divided every shard (each holds its fair share).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let holders = divine_bridge_db::shards::holders(&mut conn, &relay_key)?;
            let owners: std::collections::BTreeSet<&String> = holders.iter().map(|(_, o)| o).collect();
            if holders.len() == shards as usize && owners.len() == replicas {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "replicas did not divide the shards: {holders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the subscriptions reach the relay (status tick every 2 s subscribes on connect).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let signed: Vec<Event> = (0..events)
            .map(|i| {
                EventBuilder::new(Kind::from(22u16), format!("bench clip {i}"))
                    .tags([Tag::parse(["imeta", "url https://media.divine.video/a.mp4", "m video/mp4"]).unwrap()])
                    .sign_with_keys(&keys[i % accounts])
                    .unwrap()
            })
            .collect();
        let mut publishers = Vec::new();
        for _ in 0..8 {
            let c = nostr_sdk::Client::default();
            c.add_relay(url.as_str()).await?;
            c.connect().await;
            publishers.push(c);
        }
        let started = Instant::now();
        let mut sends = Vec::new();
        for (p, client) in publishers.iter().enumerate() {
            let batch: Vec<Event> = signed.iter().skip(p).step_by(publishers.len()).cloned().collect();
            let client = client.clone();
            sends.push(tokio::spawn(async move {
                for e in &batch {
                    let _ = client.send_event(e).await;
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let n = count(&mut conn, "SELECT count(*) AS n FROM jobs")?;
            if n as usize >= events {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "only {n} of {events} events ingested");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        for s in sends {
            s.await?;
        }
        tx.send(true)?;
        for h in handles {
            h.await??;
        }
        relay.shutdown();
        Ok(events as f64 / secs)
    }
}

/// Suite `media`: peak RSS of one bridge process bridging several large videos at once (see the module docs).
mod media {
    use super::rand_name;
    use super::{env_or, ThrowawayDb};
    use anyhow::{bail, Context};
    use diesel::prelude::*;
    use divine_bridge_db::accounts::{self, OptIn};
    use divine_bridge_db::schema::record_mappings;
    use divine_bridge_db::{Db, ProvisioningState};
    use futures::future::join_all;
    use nostr_sdk::prelude::*;
    use sha2::Digest;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// The temporary directory of the run, removed on drop.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The bridge child, killed on drop.
    struct Bridge(Child);

    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `VmHWM` (peak resident set) of `pid` in MB.
    fn vm_hwm_mb(pid: u32) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .context("no VmHWM line")?;
        let kb: f64 = line.split_whitespace().nth(1).context("VmHWM value")?.parse()?;
        Ok(kb / 1000.0)
    }

    /// A distinct video of `len` bytes: an MP4 `ftyp` box (sniffed as video/mp4), then pseudo-random bytes.
    fn write_video(path: &Path, len: usize, seed: u64) -> anyhow::Result<String> {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut hasher = sha2::Sha256::new();
        let mut head = Vec::new();
        head.extend_from_slice(&24u32.to_be_bytes());
        head.extend_from_slice(b"ftypisom\0\0\x02\0isomiso2");
        let mut written = 0usize;
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut buf = head;
        while written < len {
            while buf.len() < 1 << 16 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            let take = buf.len().min(len - written);
            f.write_all(&buf[..take])?;
            hasher.update(&buf[..take]);
            written += take;
            buf.clear();
        }
        f.flush()?;
        Ok(hex::encode(hasher.finalize()))
    }

    /// Serves the files of `dir` at `/<name>` (streamed, with Content-Length) on a loopback port.
    async fn serve_dir(dir: PathBuf) -> anyhow::Result<String> {
        use axum::extract::{Path as UrlPath, State};
        use axum::http::{header, StatusCode};
        use axum::response::{IntoResponse, Response};
        async fn file(State(dir): State<PathBuf>, UrlPath(name): UrlPath<String>) -> Response {
            if name.contains('/') || name.contains("..") {
                return StatusCode::NOT_FOUND.into_response();
            }
            let path = dir.join(&name);
            let Ok(f) = tokio::fs::File::open(&path).await else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            let stream = futures::stream::try_unfold(f, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
                let n = f.read_buf(&mut buf).await?;
                Ok::<_, std::io::Error>((n > 0).then(|| (buf.freeze(), f)))
            });
            (
                [
                    (header::CONTENT_TYPE, "video/mp4".to_string()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        let app = axum::Router::new()
            .route("/{name}", axum::routing::get(file))
            .with_state(dir);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(format!("http://{addr}"))
    }

    fn var(name: &str) -> anyhow::Result<String> {
        std::env::var(name).with_context(|| format!("{name} is not set (source the refstack env)"))
    }

    pub fn suite() -> anyhow::Result<()> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run())
    }

    async fn run() -> anyhow::Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let n: usize = env_or("BENCH_MEDIA_VIDEOS", 8);
        let size: usize = env_or("BENCH_MEDIA_BYTES", 60_000_000);
        let workers: usize = env_or("BENCH_MEDIA_WORKERS", 8);
        let (plc_url, pds_url) = (var("PLC_URL")?, var("PDS_URL")?);
        let server = std::env::var("BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let tdb = ThrowawayDb::create_named(&server, "bench_media")?;
        let db = Db::connect(&tdb.url, 4)?;
        let tmp = TempDir(std::env::temp_dir().join(format!("divine-bench-media-{}", std::process::id())));
        let media_dir = tmp.0.join("media");
        std::fs::create_dir_all(&media_dir)?;

        // Videos and the server for them.
        let started = Instant::now();
        let mut files = Vec::new();
        for i in 0..n {
            let name = format!("v{i}.mp4");
            let path = media_dir.join(&name);
            let sha = write_video(&path, size, i as u64 + 1)?;
            files.push((name, path, sha));
        }
        eprintln!("bench: wrote {n} videos of {size} bytes in {:?}", started.elapsed());
        let media_url = serve_dir(media_dir.clone()).await?;
        let relay = nostr_relay_builder::LocalRelay::new(nostr_relay_builder::RelayBuilder::default());
        relay.run().await?;
        let relay_url = relay.url().await.to_string();

        // The bridge under measurement.
        let http_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?
        };
        let log_path = tmp.0.join("bridge.log");
        let log = std::fs::File::create(&log_path)?;
        let bin = std::env::current_exe()?.with_file_name("divine-atbridge");
        let kek: [u8; 32] = rand::random();
        let child = Command::new(&bin)
            .arg("run")
            .env("DATABASE_URL", &tdb.url)
            .env("PLC_DIRECTORY_URL", &plc_url)
            .env("PDS_URL", &pds_url)
            .env(
                "KEY_ENCRYPTION_KEY",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, kek),
            )
            .env("ACCOUNT_EMAIL_DOMAIN", "bridge.test")
            .env("ALLOW_NO_RECOVERY_KEYS", "true")
            .env("PDS_ADMIN_PASSWORD", var("PDS_ADMIN_PASSWORD")?)
            .env("MEDIA_ALLOWED_HOSTS", "127.0.0.1")
            .env("MEDIA_ALLOW_LOOPBACK", "true")
            .env("MEDIA_SPOOL_DIR", tmp.0.join("spool"))
            .env("WORKERS", workers.to_string())
            .env("NOSTR_RELAYS", &relay_url)
            .env("ACCOUNT_REFRESH_SECS", "1")
            .env("CURSOR_OVERLAP_SECS", "900")
            .env("HTTP_ADDR", http_addr.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let bridge = Bridge(child);
        let pid = bridge.0.id();

        // One account per video, provisioned before the measurement.
        let keys: Vec<Keys> = (0..n).map(|_| Keys::generate()).collect();
        for k in &keys {
            let req = OptIn {
                nostr_pubkey: k.public_key().to_hex(),
                handle: format!("bm{}.test", rand_name(10)),
                crosspost_enabled: true,
            };
            db.run(move |c| accounts::opt_in(c, &req).map_err(|e| divine_bridge_db::DbError::Corrupt(e.to_string())))
                .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let pubkeys: Vec<String> = keys.iter().map(|k| k.public_key().to_hex()).collect();
            let states = db
                .run(move |c| {
                    pubkeys
                        .iter()
                        .map(|pk| accounts::get(c, pk)?.map(|l| l.state()).transpose())
                        .collect::<Result<Vec<_>, divine_bridge_db::DbError>>()
                })
                .await?;
            if states.contains(&Some(ProvisioningState::Failed)) {
                bail!("provisioning failed; bridge log: {}", log_path.display());
            }
            if states.iter().all(|s| *s == Some(ProvisioningState::Ready)) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "accounts not ready in 300 s: {states:?}; bridge log {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let idle_mb = vm_hwm_mb(pid)?;

        // All videos at once.
        let client = Client::default();
        client.add_relay(&relay_url).await?;
        client.connect().await;
        let events: Vec<Event> = files
            .iter()
            .zip(&keys)
            .map(|((name, _, sha), k)| {
                let tag = Tag::parse([
                    "imeta".to_string(),
                    format!("url {media_url}/{name}"),
                    "m video/mp4".to_string(),
                    format!("x {sha}"),
                    format!("size {size}"),
                ])
                .expect("imeta tag");
                EventBuilder::new(Kind::from(22u16), format!("bench media {name}"))
                    .tags([tag])
                    .sign_with_keys(k)
                    .expect("signing")
            })
            .collect();
        let t0 = Instant::now();
        for e in &events {
            let out = client.send_event(e).await?;
            if out.success.is_empty() {
                bail!("relay refused {}: {:?}", e.id, out.failed);
            }
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.to_hex()).collect();
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let ids = ids.clone();
            let published: i64 = db
                .run(move |c| {
                    Ok::<_, divine_bridge_db::DbError>(
                        record_mappings::table
                            .filter(record_mappings::nostr_event_id.eq_any(ids))
                            .filter(record_mappings::state.eq("published"))
                            .count()
                            .get_result(c)?,
                    )
                })
                .await?;
            if published as usize == n {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {published}/{n} published in 900 s; bridge log {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bridge_secs = t0.elapsed().as_secs_f64();
        let peak_mb = vm_hwm_mb(pid)?;
        eprintln!("bench: bridged {n} videos in {bridge_secs:.2} s, peak RSS {peak_mb:.1} MB (idle {idle_mb:.1} MB)");
        drop(bridge);
        client.disconnect().await;

        // Raw: the same files, uploadBlob + putRecord, all in parallel.
        let http = reqwest::Client::new();
        let invites = super::Invites::new(&pds_url, &var("PDS_ADMIN_PASSWORD")?)?;
        let mut raw_accounts = Vec::new();
        for _ in 0..n {
            raw_accounts.push(invites.plain_account(&http, "rm").await?);
        }
        let tids = divine_atbridge::tid::TidGenerator::with_random_clock_id();
        let t1 = Instant::now();
        let writes = files.iter().zip(&raw_accounts).map(|((name, path, _), (did, jwt))| {
            let (http, pds_url, tids) = (&http, &pds_url, &tids);
            async move {
                let bytes = tokio::fs::read(path).await?;
                let resp = http
                    .post(format!("{pds_url}/xrpc/com.atproto.repo.uploadBlob"))
                    .bearer_auth(jwt)
                    .header("content-type", "video/mp4")
                    .body(bytes)
                    .send()
                    .await?;
                let status = resp.status();
                let body: serde_json::Value = resp.json().await?;
                if !status.is_success() {
                    bail!("uploadBlob: {status} {body}");
                }
                let record = serde_json::json!({
                    "$type": "app.bsky.feed.post",
                    "text": format!("bench media {name}"),
                    "createdAt": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    "embed": {"$type": "app.bsky.embed.video", "video": body["blob"]},
                });
                let resp = http
                    .post(format!("{pds_url}/xrpc/com.atproto.repo.putRecord"))
                    .bearer_auth(jwt)
                    .json(&serde_json::json!({
                        "repo": did, "collection": "app.bsky.feed.post", "rkey": tids.next_at(chrono::Utc::now().timestamp_micros() as u64).to_string(), "record": record
                    }))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("putRecord: {} {}", resp.status(), resp.text().await.unwrap_or_default());
                }
                Ok::<(), anyhow::Error>(())
            }
        });
        join_all(writes)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<()>>>()?;
        let raw_secs = t1.elapsed().as_secs_f64();

        println!("media_videos={n}");
        println!("media_video_bytes={size}");
        println!("media_workers={workers}");
        // The child inherits this environment, so MEDIA_MEMORY_BUDGET_BYTES set for the bench applies to it.
        println!(
            "media_budget_bytes={}",
            std::env::var("MEDIA_MEMORY_BUDGET_BYTES")
                .unwrap_or_else(|_| divine_atbridge::spool::DEFAULT_MEDIA_BUDGET_BYTES.to_string())
        );
        println!("media_idle_rss_mb={idle_mb:.1}");
        println!("media_peak_rss_mb={peak_mb:.1}");
        println!("media_bridge_secs={bridge_secs:.2}");
        println!("media_raw_upload_put_secs={raw_secs:.2}");
        println!("media_bridge_vs_raw_time_ratio={:.2}", bridge_secs / raw_secs);
        drop(relay);
        drop(tdb);
        Ok(())
    }
}

/// Where the machine's CPU goes during a phase of `bench e2e`: CPU time per process group, read from `/proc`
/// (`utime + stime + cutime + cstime` of every process, so backends that exited during the phase still count
/// through their waiting parent), and the machine's busy cores from `/proc/stat`. Linux only; on a read error a
/// process is skipped (it exited between the listing and the read). Context for
/// `bridge_vs_raw_upload_put_ratio`: on two shared cores, CPU the bridge, relay, Postgres and this bench take during
/// the bridged phase is CPU the PDS does not get (docs/runbooks/crossposting.md "Throughput against the PDS").
mod cpu {
    use std::collections::BTreeMap;
    use std::time::Instant;

    /// `/proc` reports times in USER_HZ, which is 100 on every Linux ABI this runs on (x86_64, aarch64).
    const TICKS_PER_SEC: f64 = 100.0;
    /// How a process is recognised: by the start of its `comm` (the kernel's 15-byte name) or by a piece of its
    /// command line (node processes differ only there).
    enum Match {
        Comm(&'static str),
        Cmdline(&'static str),
    }

    /// The process groups, in the order they are printed; this bench's own process is `bench` and a process that
    /// matches nothing counts under `other`.
    const RULES: &[(&str, Match)] = &[
        ("pds", Match::Cmdline("pds.mjs")),
        ("bridge", Match::Comm("divine-atbridge")),
        ("relay", Match::Comm("dev-relay")),
        ("postgres", Match::Comm("postgres")),
        ("media", Match::Cmdline("media-server.mjs")),
        ("gateway", Match::Comm("divine-handle-g")),
    ];

    fn groups() -> impl Iterator<Item = &'static str> {
        RULES.iter().map(|(g, _)| *g).chain(["bench", "other"])
    }

    /// One reading: CPU seconds per group, the machine's busy and stolen seconds, the PDS main thread's scheduler
    /// times, and when.
    struct Sample {
        groups: BTreeMap<&'static str, f64>,
        busy: f64,
        steal: f64,
        pds_main: Option<Schedstat>,
        at: Instant,
    }

    /// `/proc/<pid>/schedstat` of a process's main thread: seconds on a CPU, seconds runnable but waiting for one.
    /// The PDS is one Node process whose main thread does its work; how long that thread waited for a CPU while the
    /// bridge's processes ran is the part of the throughput gap no bridge-side latency explains.
    #[derive(Clone, Copy)]
    struct Schedstat {
        on_cpu: f64,
        waiting: f64,
    }

    fn schedstat(text: &str) -> Option<Schedstat> {
        let mut v = text.split_whitespace().map(|x| x.parse::<f64>().ok());
        Some(Schedstat {
            on_cpu: v.next()?? / 1e9,
            waiting: v.next()?? / 1e9,
        })
    }

    fn group(pid: &str, comm: &str, cmdline: &str) -> &'static str {
        if pid == std::process::id().to_string() {
            return "bench";
        }
        RULES
            .iter()
            .find(|(_, m)| match m {
                Match::Comm(prefix) => comm.starts_with(prefix),
                Match::Cmdline(piece) => cmdline.contains(piece),
            })
            .map_or("other", |(g, _)| *g)
    }

    /// Fields 14–17 of `/proc/<pid>/stat` (after the `(comm)` field, which may hold spaces), in seconds.
    fn cpu_secs(stat: &str) -> Option<(String, f64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // rest[0] is field 3 (state); fields 14..=17 are rest[11..=14].
        let ticks: f64 = rest.get(11..=14)?.iter().map(|v| v.parse::<f64>().unwrap_or(0.0)).sum();
        Some((comm, ticks / TICKS_PER_SEC))
    }

    fn sample() -> Sample {
        let mut groups: BTreeMap<&'static str, f64> = groups().map(|g| (g, 0.0)).collect();
        let mut pds_main = None;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let Some((comm, secs)) = cpu_secs(&stat) else { continue };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                let g = group(&pid, &comm, &cmdline);
                if g == "pds" && pds_main.is_none() {
                    pds_main = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                        .ok()
                        .and_then(|t| schedstat(&t));
                }
                *groups.entry(g).or_default() += secs;
            }
        }
        let (busy, steal) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| busy_and_steal(s.lines().next()?))
            .unwrap_or_default();
        Sample {
            groups,
            busy: busy / TICKS_PER_SEC,
            steal: steal / TICKS_PER_SEC,
            pds_main,
            at: Instant::now(),
        }
    }

    /// The first line of `/proc/stat` (`cpu user nice system idle iowait irq softirq steal guest guest_nice`, in
    /// ticks): (busy, steal). Busy is everything but idle, iowait and steal; guest time is already inside user and
    /// nice. Steal is time this virtual machine's CPUs were runnable while the host ran something else: on a shared
    /// host it is what makes one phase slower than the next with the same work, so it is printed per phase.
    fn busy_and_steal(line: &str) -> Option<(f64, f64)> {
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
        let steal = at(7);
        let busy = (0..8).map(at).sum::<f64>() - at(3) - at(4) - steal;
        Some((busy, steal))
    }

    /// The readings at the start and the end of one phase.
    pub struct Window {
        before: Sample,
        after: Sample,
    }

    /// Runs one phase between two readings.
    pub async fn during<T>(phase: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, Window)> {
        let before = sample();
        let out = phase.await?;
        Ok((
            out,
            Window {
                before,
                after: sample(),
            },
        ))
    }

    /// Prints `<prefix>_cpu_<group>_ms_per_post` for every group, `<prefix>_busy_cores` (machine-wide CPU seconds per
    /// wall second) and `<prefix>_steal_cores` (CPU seconds the host took from this machine per wall second) over
    /// one phase.
    pub fn print(prefix: &str, window: &Window, posts: usize) {
        let Window { before, after } = window;
        for g in groups() {
            let secs = after.groups.get(g).copied().unwrap_or(0.0) - before.groups.get(g).copied().unwrap_or(0.0);
            println!(
                "{prefix}_cpu_{g}_ms_per_post={:.2}",
                secs.max(0.0) * 1000.0 / posts.max(1) as f64
            );
        }
        let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
        println!("{prefix}_busy_cores={:.2}", (after.busy - before.busy) / wall);
        println!("{prefix}_steal_cores={:.2}", (after.steal - before.steal) / wall);
        // The PDS main thread's share of the wall time on a CPU and waiting for one, and that wait per post.
        if let (Some(a), Some(b)) = (before.pds_main, after.pds_main) {
            let waiting = (b.waiting - a.waiting).max(0.0);
            println!("{prefix}_pds_main_on_cpu={:.2}", (b.on_cpu - a.on_cpu).max(0.0) / wall);
            println!("{prefix}_pds_main_runqueue_wait={:.2}", waiting / wall);
            println!(
                "{prefix}_pds_runqueue_wait_ms_per_post={:.2}",
                waiting * 1000.0 / posts.max(1) as f64
            );
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn stat_fields_after_a_comm_with_spaces() {
            // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
            let stat = "42 (node pds.mjs) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 11";
            let (comm, secs) = super::cpu_secs(stat).unwrap();
            assert_eq!(comm, "node pds.mjs");
            assert!((secs - 3.10).abs() < 1e-9, "{secs}");
            assert_eq!(super::group("1", "node", "node\0/x/pds.mjs\0"), "pds");
            assert_eq!(super::group("1", "postgres", ""), "postgres");
            assert_eq!(
                super::group("1", "divine-atbridge", "/x/divine-atbridge\0run\0"),
                "bridge"
            );
            assert_eq!(super::group("1", "node", "node\0/x/plc.cjs\0"), "other");
            assert_eq!(super::group(&std::process::id().to_string(), "bench", ""), "bench");
        }

        #[test]
        fn steal_is_apart_from_busy() {
            // user nice system idle iowait irq softirq steal guest guest_nice
            let (busy, steal) = super::busy_and_steal("cpu  100 10 30 500 20 0 5 40 7 0").unwrap();
            assert_eq!((busy, steal), (145.0, 40.0));
            assert!(super::busy_and_steal("cpu  1 x 3").is_none());
        }

        #[test]
        fn schedstat_is_run_and_wait_nanoseconds() {
            let s = super::schedstat("12500000000 250000000 9876\n").unwrap();
            assert!((s.on_cpu - 12.5).abs() < 1e-9 && (s.waiting - 0.25).abs() < 1e-9);
            assert!(super::schedstat("garbage").is_none());
        }
    }
}
