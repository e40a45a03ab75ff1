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
//! - `lease_backlog_ratio` — backlog p99 / empty p99.
//!
//! Must not touch any database other than the one it created.

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
        let admin_url = format!("{server}/postgres");
        let name = format!("bench_queue_{}_{:08x}", std::process::id(), rand::random::<u32>());
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
        other => Err(anyhow::anyhow!("unknown bench suite {other:?} (known: queue)")),
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
    Ok(())
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
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let done = db
                .run(|c| {
                    use divine_bridge_db::schema::jobs;
                    Ok(jobs::table
                        .filter(jobs::state.eq("succeeded"))
                        .count()
                        .get_result::<i64>(c)?)
                })
                .await?;
            if done as usize >= n {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("throughput run did not finish in 10 minutes ({done}/{n})");
            }
        }
        let elapsed = started.elapsed();
        producer.await??;
        let _ = stop_tx.send(true);
        pool.await?;
        eprintln!("bench: {n} noop jobs in {elapsed:.2?}");
        Ok(n as f64 / elapsed.as_secs_f64())
    })
}

/// Lease latencies (batch of 16) over [`LATENCY_ROUNDS`] rounds. With `refill`, each round first enqueues exactly
/// the 16 jobs it will lease (an otherwise empty queue); without, it leases from whatever backlog is there. Leased
/// jobs are completed (untimed) so the next round sees the same shape.
fn lease_latencies(conn: &mut PgConnection, refill: bool) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(LATENCY_ROUNDS);
    for round in 0..LATENCY_ROUNDS + 100 {
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
        let ids: Vec<i64> = leased.iter().map(|j| j.id).collect();
        queue::complete_many(conn, "bench", &ids)?;
        // The first 100 rounds warm caches and the plan cache; not counted.
        if round >= 100 {
            out.push(took);
        }
    }
    Ok(out)
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
        diesel::sql_query(format!("EXPLAIN (ANALYZE, BUFFERS) {}", queue::LEASE_SQL))
            .bind::<diesel::sql_types::Text, _>("explain")
            .bind::<BigInt, _>(LEASE_BATCH)
            .bind::<diesel::sql_types::Double, _>(300.0)
            .load(c)
    })?;
    for l in plan {
        eprintln!("{}", l.line);
    }
    Ok(())
}
