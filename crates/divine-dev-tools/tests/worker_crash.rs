//! Crash recovery: a worker process SIGKILLed mid-job loses its lease; after expiry the watchdog re-queues the job
//! without counting a try, another worker completes it exactly once, and the row shows one attempt per real try
//! (2) and one reclaim.

use divine_atbridge::worker::{JobHandler, LeasedJob, Outcome, Registry, WorkerConfig, WorkerPool};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::JobKind;
use futures::future::BoxFuture;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Record {
    runs: Mutex<Vec<(i64, i32)>>,
}

impl JobHandler for Record {
    fn handle<'a>(&'a self, job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            self.runs.lock().unwrap().push((job.id, job.attempt));
            Outcome::Succeeded
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_loses_its_job_to_the_watchdog_and_the_job_runs_once_more() {
    let db = TestDb::migrated("worker_crash");
    let mut conn = db.conn();
    let id = queue::enqueue(&mut conn, &NewJob::new(JobKind::Noop, "acct", serde_json::json!({})))
        .unwrap()
        .unwrap();

    // The doomed process: leases the job and hangs in the handler.
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue-crash-worker"))
        .env("DATABASE_URL", &db.url)
        .env("LEASE_SECS", "2")
        .env("WATCHDOG_ENABLED", "false")
        .env("WORKERS", "1")
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn queue-crash-worker");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let owner_line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("child announces its owner");
    let child_owner = owner_line.strip_prefix("owner=").expect("owner line").to_string();
    assert!(
        !child_owner.chars().all(|c| c.is_ascii_digit()) && child_owner.contains('-'),
        "owner is <hostname>-<hex>, got {child_owner}"
    );
    let started = rx.recv_timeout(Duration::from_secs(30)).expect("child starts the job");
    assert_eq!(started, format!("started id={id} attempt=1"));
    let row = queue::get(&mut conn, id).unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.lease_owner.as_deref()),
        ("running", Some(child_owner.as_str()))
    );

    // Let the child's heartbeat renew the 2 s lease at least once, then kill -9 it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let row = queue::get(&mut conn, id).unwrap().unwrap();
    assert_eq!(
        row.state, "running",
        "the heartbeat kept the lease alive past its first expiry"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert!(!status.success());
    let killed_at = Instant::now();

    // A survivor with the watchdog on picks it up after the lease expires.
    let handler = Arc::new(Record::default());
    let mut registry = Registry::new();
    registry.register(JobKind::Noop, handler.clone());
    let config = WorkerConfig {
        workers: 2,
        lease: Duration::from_secs(2),
        watchdog_interval: Duration::from_millis(250),
        poll_interval: Duration::from_millis(50),
        // A reclaimed job waits out a backoff of at most `retry_base * 2^reclaims` (2 s here) before it runs again.
        retry_base: Duration::from_secs(1),
        ..WorkerConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let pool = tokio::spawn(WorkerPool::new(db.pool(4), config, registry).run(stop_rx));

    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let row = queue::get(&mut conn, id).unwrap().unwrap();
        if row.state == "succeeded" {
            break row;
        }
        assert!(Instant::now() < deadline, "job not recovered: {row:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recovered_after = killed_at.elapsed();
    stop_tx.send(true).unwrap();
    pool.await.unwrap();

    assert_eq!(row.attempt, 2, "one attempt per real try");
    assert_eq!(row.reclaim_count, 1);
    assert_eq!(row.last_error_code.as_deref(), Some("lease_expired"));
    assert!(
        row.last_error.as_deref().unwrap_or("").contains(&child_owner),
        "the error names the owner that lost the lease: {:?}",
        row.last_error
    );
    assert_eq!(
        *handler.runs.lock().unwrap(),
        vec![(id, 2)],
        "completed exactly once, as try 2"
    );
    assert!(
        recovered_after < Duration::from_secs(10),
        "recovered {recovered_after:?} after the kill"
    );
}
