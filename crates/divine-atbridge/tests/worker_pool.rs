//! Worker pool behaviour against a real Postgres: outcome mapping (classified errors, Retry-After capping,
//! ineligible, permanent), `no_handler`, handler panics, the heartbeat keeping a long try alive, a reclaimed
//! worker's result being dropped, and graceful shutdown (finish within the grace period, else release).

use chrono::Utc;
use divine_atbridge::worker::{JobHandler, LeasedJob, Outcome, Registry, WorkerConfig, WorkerPool};
use divine_bridge_db::queue::{self, Finish, NewJob};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::{Classified, ErrorClass, JobKind};
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Behaviour chosen per job by its payload's `"do"` field.
struct Scripted {
    started: Arc<Notify>,
    release: Arc<Notify>,
    runs: AtomicUsize,
    /// Handler futures dropped before they returned (cut off by the pool).
    dropped: Arc<AtomicUsize>,
}

/// Counts its drop: put in a handler future that never returns, it tells the test the pool dropped the future.
struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Scripted {
    fn new() -> Arc<Scripted> {
        Arc::new(Scripted {
            started: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
            runs: AtomicUsize::new(0),
            dropped: Arc::default(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum FakeError {
    #[error("rate limited")]
    RateLimited(Duration),
    #[error("record rejected")]
    Rejected,
}

impl Classified for FakeError {
    fn code(&self) -> divine_bridge_db::ErrorCode {
        match self {
            FakeError::RateLimited(_) => divine_bridge_db::ErrorCode::XrpcRateLimited,
            FakeError::Rejected => divine_bridge_db::ErrorCode::PdsRejected,
        }
    }
    fn class(&self) -> ErrorClass {
        match self {
            FakeError::RateLimited(_) => ErrorClass::Transient,
            FakeError::Rejected => ErrorClass::Permanent,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            FakeError::RateLimited(d) => Some(*d),
            FakeError::Rejected => None,
        }
    }
}

impl JobHandler for Scripted {
    fn handle<'a>(&'a self, job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            match job.payload["do"].as_str().unwrap_or("succeed") {
                "succeed" => Outcome::Succeeded,
                "panic" => panic!("boom in job {}", job.id),
                "rate_limited" => Outcome::from_error(&FakeError::RateLimited(Duration::from_secs(86_400))),
                "rejected" => Outcome::from_error(&FakeError::Rejected),
                "ineligible" => Outcome::Ineligible {
                    code: divine_bridge_db::ErrorCode::AccountDisabled,
                    detail: "the user turned cross-posting off".into(),
                },
                "slow" => {
                    self.started.notify_one();
                    tokio::time::sleep(Duration::from_millis(4_500)).await;
                    Outcome::Succeeded
                }
                "wait" => {
                    self.started.notify_one();
                    self.release.notified().await;
                    Outcome::Succeeded
                }
                "hang" => {
                    self.started.notify_one();
                    std::future::pending().await
                }
                "hang_guarded" => {
                    let _guard = DropGuard(self.dropped.clone());
                    self.started.notify_one();
                    std::future::pending().await
                }
                "hang_first_try" if job.attempt == 1 => {
                    let _guard = DropGuard(self.dropped.clone());
                    self.started.notify_one();
                    std::future::pending().await
                }
                "hang_first_try" => Outcome::Succeeded,
                "retry_after_zero" => Outcome::from_error(&FakeError::RateLimited(Duration::ZERO)),
                other => panic!("unknown script {other}"),
            }
        })
    }
}

/// Reclaims that re-queue at once and never park (tests that are not about the reclaim backoff).
const NO_BACKOFF: queue::ReclaimPolicy = queue::ReclaimPolicy {
    base: Duration::ZERO,
    cap: Duration::ZERO,
    limit: 1000,
};

fn config() -> WorkerConfig {
    WorkerConfig {
        workers: 4,
        lease: Duration::from_secs(30),
        watchdog_interval: Duration::from_millis(300),
        shutdown_grace: Duration::from_secs(5),
        retry_base: Duration::from_secs(60),
        retry_cap: Duration::from_secs(600),
        poll_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

fn enqueue(db: &TestDb, kind: JobKind, key: &str, script: &str) -> i64 {
    queue::enqueue(
        &mut db.conn(),
        &NewJob::new(kind, key, serde_json::json!({ "do": script })),
    )
    .unwrap()
    .unwrap()
}

fn start(db: &TestDb, cfg: WorkerConfig, handler: Arc<Scripted>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let mut registry = Registry::new();
    registry.register(JobKind::Noop, handler);
    let (tx, rx) = watch::channel(false);
    (tx, tokio::spawn(WorkerPool::new(db.pool(6), cfg, registry).run(rx)))
}

async fn wait_for(db: &TestDb, id: i64, pred: impl Fn(&queue::JobRow) -> bool) -> queue::JobRow {
    let mut conn = db.conn();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = queue::get(&mut conn, id).unwrap().unwrap();
        if pred(&row) {
            return row;
        }
        assert!(Instant::now() < deadline, "timed out; job is {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_recorded_and_panics_and_unknown_kinds_do_not_kill_the_worker() {
    let db = TestDb::migrated("worker_outcomes");
    let handler = Scripted::new();
    let panicking = enqueue(&db, JobKind::Noop, "a", "panic");
    let limited = enqueue(&db, JobKind::Noop, "b", "rate_limited");
    let rejected = enqueue(&db, JobKind::Noop, "c", "rejected");
    let inel = enqueue(&db, JobKind::Noop, "d", "ineligible");
    let unhandled = enqueue(&db, JobKind::SyncProfile, "e", "succeed");
    let (stop, pool) = start(&db, config(), handler.clone());

    let row = wait_for(&db, panicking, |r| r.state == "queued" && r.attempt == 1).await;
    assert_eq!(row.last_error_code.as_deref(), Some("handler_panicked"));
    assert!(
        row.last_error.as_deref().unwrap().contains("boom in job"),
        "{:?}",
        row.last_error
    );
    assert!(row.run_at > Utc::now(), "a panic is retried with backoff");

    let row = wait_for(&db, limited, |r| r.state == "queued" && r.attempt == 1).await;
    assert_eq!(row.last_error_code.as_deref(), Some("xrpc_rate_limited"));
    let wait = (row.run_at - Utc::now()).num_seconds();
    assert!(
        (590..=600).contains(&wait),
        "a day of Retry-After is capped at RETRY_CAP (600 s), got {wait}"
    );

    let row = wait_for(&db, rejected, |r| r.state == "failed").await;
    assert_eq!(row.last_error_code.as_deref(), Some("pds_rejected"));
    let row = wait_for(&db, inel, |r| r.state == "ineligible").await;
    assert_eq!(row.last_error_code.as_deref(), Some("account_disabled"));
    let row = wait_for(&db, unhandled, |r| r.state == "failed").await;
    assert_eq!(row.last_error_code.as_deref(), Some("no_handler"));

    // The worker that caught the panic is still serving.
    let after = enqueue(&db, JobKind::Noop, "f", "succeed");
    wait_for(&db, after, |r| r.state == "succeeded").await;
    stop.send(true).unwrap();
    pool.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_a_try_longer_than_its_lease_alive() {
    let db = TestDb::migrated("worker_heartbeat");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "slow");
    let cfg = WorkerConfig {
        lease: Duration::from_secs(2),
        ..config()
    };
    let (stop, pool) = start(&db, cfg, handler.clone());
    handler.started.notified().await;
    let first = wait_for(&db, id, |r| r.state == "running")
        .await
        .lease_expires_at
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let mid = queue::get(&mut db.conn(), id).unwrap().unwrap();
    assert_eq!(mid.state, "running");
    assert!(mid.lease_expires_at.unwrap() > first, "lease renewed");
    assert!(
        mid.lease_expires_at.unwrap() > Utc::now(),
        "lease still valid past the original expiry"
    );
    let row = wait_for(&db, id, |r| r.state == "succeeded").await;
    assert_eq!(
        (row.attempt, row.reclaim_count),
        (1, 0),
        "the watchdog never reclaimed it"
    );
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
    stop.send(true).unwrap();
    pool.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_workers_result_is_dropped_and_the_new_owners_stands() {
    let db = TestDb::migrated("worker_fenced");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "wait");
    // One slot, held by the waiting try: the pool itself cannot lease the reclaimed job before the thief does.
    let cfg = WorkerConfig {
        workers: 1,
        watchdog_enabled: false,
        ..config()
    };
    let (stop, pool) = start(&db, cfg, handler.clone());
    handler.started.notified().await;
    let mut conn = db.conn();
    // The lease is taken away while the handler still runs (as after a long GC pause / partition).
    diesel::RunQueryDsl::execute(
        diesel::sql_query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
            .bind::<diesel::sql_types::BigInt, _>(id),
        &mut conn,
    )
    .unwrap();
    assert_eq!(queue::reclaim_expired(&mut conn, &NO_BACKOFF).unwrap().len(), 1);
    let stolen = queue::lease(&mut conn, "thief", 1, Duration::from_secs(60)).unwrap();
    assert_eq!((stolen[0].id, stolen[0].attempt), (id, 2));
    handler.release.notify_one();
    // The original worker reports success; the fence drops it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = queue::get(&mut conn, id).unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.lease_owner.as_deref()),
        ("running", Some("thief"))
    );
    let fail = Finish::Failed {
        code: divine_bridge_db::ErrorCode::PdsRejected,
        message: "thief's verdict".into(),
    };
    queue::finish(&mut conn, stolen[0].lease(), &fail).unwrap();
    stop.send(true).unwrap();
    pool.await.unwrap();
    let row = queue::get(&mut conn, id).unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.last_error.as_deref()),
        ("failed", Some("thief's verdict"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_work_finish_and_stops_leasing() {
    let db = TestDb::migrated("worker_drain");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "wait");
    let (stop, pool) = start(&db, config(), handler.clone());
    handler.started.notified().await;
    stop.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = enqueue(&db, JobKind::Noop, "b", "succeed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pool.is_finished(), "waits for the in-flight try");
    handler.release.notify_one();
    tokio::time::timeout(Duration::from_secs(5), pool)
        .await
        .unwrap()
        .unwrap();
    let mut conn = db.conn();
    assert_eq!(queue::get(&mut conn, id).unwrap().unwrap().state, "succeeded");
    let late = queue::get(&mut conn, late).unwrap().unwrap();
    assert_eq!(
        (late.state.as_str(), late.attempt),
        ("queued", 0),
        "no lease after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_what_does_not_finish_within_the_grace_period() {
    let db = TestDb::migrated("worker_release");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "hang");
    let cfg = WorkerConfig {
        shutdown_grace: Duration::from_secs(1),
        ..config()
    };
    let (stop, pool) = start(&db, cfg, handler.clone());
    handler.started.notified().await;
    assert_eq!(wait_for(&db, id, |r| r.state == "running").await.attempt, 1);
    let asked = Instant::now();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), pool)
        .await
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() >= Duration::from_secs(1), "the grace period was given");
    let row = queue::get(&mut db.conn(), id).unwrap().unwrap();
    assert_eq!(row.state, "queued");
    assert_eq!(row.attempt, 0, "the abandoned try is given back");
    assert!(row.lease_owner.is_none());
    assert_eq!(row.last_error_code.as_deref(), Some("released_at_shutdown"));
    assert!(row.run_at <= Utc::now(), "runnable at once by another replica");
}

/// Waits until the pool has dropped `n` handler futures.
async fn wait_dropped(handler: &Scripted, n: usize, within: Duration) -> Duration {
    let t = Instant::now();
    while handler.dropped.load(Ordering::SeqCst) < n {
        assert!(t.elapsed() < within, "the handler was not cut off within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_returns_is_cut_off_at_the_try_timeout_and_retried() {
    let db = TestDb::migrated("worker_try_timeout");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "hang_first_try");
    let cfg = WorkerConfig {
        try_timeout: Duration::from_secs(1),
        retry_base: Duration::from_secs(1),
        retry_cap: Duration::from_secs(2),
        ..config()
    };
    let (stop, pool) = start(&db, cfg, handler.clone());
    handler.started.notified().await;
    // The lease (30 s) is renewed all along; only the per-try deadline can end this try.
    wait_dropped(&handler, 1, Duration::from_secs(5)).await;
    let row = wait_for(&db, id, |r| r.state == "succeeded").await;
    assert_eq!(row.attempt, 2, "retried after the cut-off");
    assert_eq!(row.reclaim_count, 0, "not a watchdog reclaim");
    assert_eq!(row.last_error_code.as_deref(), Some("try_timeout"));
    assert!(
        row.last_error.as_deref().unwrap().contains("TRY_TIMEOUT_SECS"),
        "{:?}",
        row.last_error
    );
    stop.send(true).unwrap();
    pool.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_whose_lease_was_reclaimed_is_cut_off_by_the_heartbeat_and_writes_nothing() {
    let db = TestDb::migrated("worker_lease_lost");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "hang_guarded");
    let cfg = WorkerConfig {
        lease: Duration::from_secs(6),
        watchdog_enabled: false,
        // One slot, held by the hung try: the pool cannot re-lease the reclaimed job before the thief does.
        workers: 1,
        ..config()
    };
    let (stop, pool) = start(&db, cfg, handler.clone());
    handler.started.notified().await;
    let mut conn = db.conn();
    diesel::RunQueryDsl::execute(
        diesel::sql_query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
            .bind::<diesel::sql_types::BigInt, _>(id),
        &mut conn,
    )
    .unwrap();
    assert_eq!(queue::reclaim_expired(&mut conn, &NO_BACKOFF).unwrap().len(), 1);
    let stolen = queue::lease(&mut conn, "thief", 1, Duration::from_secs(60)).unwrap();
    assert_eq!(stolen[0].id, id);
    // The heartbeat (every 2 s) finds the lease gone well before the local deadline (6 s) would stop the try.
    let took = wait_dropped(&handler, 1, Duration::from_secs(4)).await;
    assert!(took < Duration::from_secs(4), "{took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = queue::get(&mut conn, id).unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.lease_owner.as_deref(), row.lease_token),
        ("running", Some("thief"), Some(stolen[0].lease_token)),
        "the cut-off try wrote nothing"
    );
    assert_eq!(row.last_error_code.as_deref(), Some("lease_expired"));
    stop.send(true).unwrap();
    pool.await.unwrap();
    let row = queue::get(&mut conn, id).unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.lease_owner.as_deref()),
        ("running", Some("thief")),
        "shutdown does not release a lease this pool no longer holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_that_cannot_renew_its_lease_stops_at_the_local_lease_deadline() {
    let db = TestDb::migrated("worker_lease_deadline");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "hang_guarded");
    let cfg = WorkerConfig {
        lease: Duration::from_secs(3),
        watchdog_enabled: false,
        ..config()
    };
    let (stop, pool) = start(&db, cfg, handler.clone());
    handler.started.notified().await;
    // An operator's psql session holds the job row locked: every renewal blocks.
    let mut lock = db.conn();
    diesel::RunQueryDsl::execute(diesel::sql_query("BEGIN"), &mut lock).unwrap();
    diesel::RunQueryDsl::execute(
        diesel::sql_query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE").bind::<diesel::sql_types::BigInt, _>(id),
        &mut lock,
    )
    .unwrap();
    // Cut off at most one lease length after the last renewal, although the handler never returns.
    wait_dropped(&handler, 1, Duration::from_secs(5)).await;
    diesel::RunQueryDsl::execute(diesel::sql_query("ROLLBACK"), &mut lock).unwrap();
    // Once the lock is gone the fenced finish records the cut-off as a transient retry.
    let row = wait_for(&db, id, |r| r.state == "queued").await;
    assert_eq!(row.last_error_code.as_deref(), Some("lease_lost"));
    assert!(row.run_at > Utc::now(), "retried with backoff");
    stop.send(true).unwrap();
    pool.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_zero_is_not_retried_at_once() {
    let db = TestDb::migrated("worker_retry_after_zero");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "retry_after_zero");
    let (stop, pool) = start(&db, config(), handler.clone());
    let row = wait_for(&db, id, |r| r.state == "queued" && r.attempt == 1).await;
    assert_eq!(row.last_error_code.as_deref(), Some("xrpc_rate_limited"));
    let wait = (row.run_at - Utc::now()).num_seconds();
    assert!(
        wait >= 55,
        "Retry-After: 0 waits at least the backoff (60-120 s after try 1), got {wait} s"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1, "no tight loop");
    stop.send(true).unwrap();
    pool.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_panicking_fails_permanently_at_the_panic_limit() {
    let db = TestDb::migrated("worker_panic_limit");
    let handler = Scripted::new();
    let id = enqueue(&db, JobKind::Noop, "a", "panic");
    let cfg = WorkerConfig {
        panic_limit: 2,
        retry_base: Duration::from_millis(1000),
        retry_cap: Duration::from_secs(1),
        ..config()
    };
    let (stop, pool) = start(&db, cfg, handler.clone());
    let row = wait_for(&db, id, |r| r.state == "failed").await;
    assert_eq!((row.attempt, row.panic_count), (2, 2));
    assert_eq!(row.last_error_code.as_deref(), Some("handler_panicked"));
    assert!(
        row.last_error.as_deref().unwrap().contains("boom in job"),
        "{:?}",
        row.last_error
    );
    assert_eq!(handler.runs.load(Ordering::SeqCst), 2);
    stop.send(true).unwrap();
    pool.await.unwrap();
}

/// Issue 11 §3 (throughput): a pool that is leasing vacuums `job_heads` itself, every second, so the dead index entries
/// each completion leaves at the front of the lease's scan do not pile up until autovacuum comes by (a minute at
/// best); it measured lease statements of ~30 ms, and 150 jobs/s instead of 5,000, when they did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_vacuums_the_key_heads() {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db = TestDb::migrated("worker_heads_vacuum");
    let mut conn = db.conn();
    diesel::RunQueryDsl::execute(
        diesel::sql_query("ALTER TABLE job_heads SET (autovacuum_enabled = false)"),
        &mut conn,
    )
    .unwrap();
    let last = (0..40)
        .map(|i| enqueue(&db, JobKind::Noop, &format!("v-{i}"), "succeed"))
        .last()
        .unwrap();
    let (stop, pool) = start(&db, config(), Scripted::new());
    wait_for(&db, last, |r| r.state == "succeeded").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let vacuums = loop {
        let c: Count = diesel::RunQueryDsl::get_result(
            diesel::sql_query("SELECT vacuum_count AS n FROM pg_stat_user_tables WHERE relname = 'job_heads'"),
            &mut conn,
        )
        .unwrap();
        if c.n > 0 || Instant::now() > deadline {
            break c.n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.send(true).unwrap();
    pool.await.unwrap();
    assert!(vacuums > 0, "the pool never vacuumed job_heads");
}
