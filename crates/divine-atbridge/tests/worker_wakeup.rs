//! Idle worker wake-ups (issue 11 §3): an idle pool leases a newly enqueued job on the `bridge_jobs` notification and
//! a retry when its backoff ends, long before its fallback poll (`POLL_INTERVAL_MS`, 10 s here); a listener whose
//! connection is killed reconnects and still wakes the pool.

use chrono::Utc;
use divine_atbridge::worker::{JobHandler, LeasedJob, Outcome, Registry, WorkerConfig, WorkerPool};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::JobKind;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

struct Noop;

impl JobHandler for Noop {
    fn handle<'a>(&'a self, _job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async { Outcome::Succeeded })
    }
}

const FALLBACK_POLL: Duration = Duration::from_secs(10);

fn start(db: &TestDb) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let mut registry = Registry::new();
    registry.register(JobKind::Noop, Arc::new(Noop));
    let cfg = WorkerConfig {
        workers: 2,
        poll_interval: FALLBACK_POLL,
        ..WorkerConfig::default()
    };
    let (tx, rx) = watch::channel(false);
    (tx, tokio::spawn(WorkerPool::new(db.pool(4), cfg, registry).run(rx)))
}

/// Time from now until job `id` succeeded (panics after 15 s).
async fn succeeded_within(db: &TestDb, id: i64) -> Duration {
    let started = Instant::now();
    let mut conn = db.conn();
    loop {
        let row = queue::get(&mut conn, id).unwrap().unwrap();
        if row.state == "succeeded" {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "job {id} still {}",
            row.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn enqueue(db: &TestDb, key: &str, run_at: Option<chrono::DateTime<Utc>>) -> i64 {
    let mut job = NewJob::new(JobKind::Noop, key, serde_json::json!({}));
    job.run_at = run_at;
    queue::enqueue(&mut db.conn(), &job).unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pool_leases_a_new_job_on_notify_not_at_its_fallback_poll() {
    let db = TestDb::migrated("wakeup_notify");
    let (stop, pool) = start(&db);
    // Let the pool find the queue empty and go idle (its first lease happens at start).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 0..3 {
        let id = enqueue(&db, &format!("k{n}"), None);
        let took = succeeded_within(&db, id).await;
        assert!(
            took < Duration::from_secs(1),
            "job {n} took {took:?} (fallback poll {FALLBACK_POLL:?})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(true).unwrap();
    pool.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pool_wakes_when_a_head_in_backoff_becomes_due() {
    let db = TestDb::migrated("wakeup_due");
    let (stop, pool) = start(&db);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = enqueue(&db, "later", Some(Utc::now() + chrono::Duration::milliseconds(2000)));
    let took = succeeded_within(&db, id).await;
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "due in 2 s, ran after {took:?} (fallback poll {FALLBACK_POLL:?})"
    );
    stop.send(true).unwrap();
    pool.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    use diesel::prelude::*;
    let db = TestDb::migrated("wakeup_reconnect");
    let (stop, pool) = start(&db);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed: Vec<bool> = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN bridge_jobs%' AND pid <> pg_backend_pid()",
    ))
    .load(&mut db.conn())
    .unwrap();
    assert_eq!(killed, vec![true], "exactly one listener connection");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = enqueue(&db, "after-kill", None);
    let took = succeeded_within(&db, id).await;
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} after the listener was killed"
    );
    stop.send(true).unwrap();
    pool.await.unwrap();
}
