//! Concurrency proof: 16 workers in two independent pools (two "processes": separate connection pools and lease
//! owners) on one database run 10,000 jobs over 500 ordering keys. Every job runs exactly once, each key's jobs run
//! in enqueue order, two jobs of one key never overlap (checked in the handler), and the database never rejects a
//! lease with a unique violation.

use diesel::prelude::*;
use divine_atbridge::worker::{JobHandler, LeasedJob, Outcome, Registry, WorkerConfig, WorkerPool};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::schema::jobs;
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::JobKind;
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JOBS: usize = 10_000;
const KEYS: usize = 500;

#[derive(Default)]
struct Witness {
    /// Keys with a try in progress right now (across both pools).
    in_flight: Mutex<HashSet<String>>,
    overlaps: AtomicUsize,
    /// Executions per job id.
    runs: Mutex<HashMap<i64, u32>>,
    /// Per key, the sequence numbers in execution order.
    order: Mutex<HashMap<String, Vec<u64>>>,
}

struct Checker {
    witness: Arc<Witness>,
    pool: &'static str,
    ran: AtomicUsize,
}

impl JobHandler for Checker {
    fn handle<'a>(&'a self, job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let w = &self.witness;
            if !w.in_flight.lock().unwrap().insert(job.ordering_key.clone()) {
                w.overlaps.fetch_add(1, Ordering::SeqCst);
                eprintln!(
                    "OVERLAP on key {} (job {}, pool {})",
                    job.ordering_key, job.id, self.pool
                );
            }
            *w.runs.lock().unwrap().entry(job.id).or_default() += 1;
            let seq = job.payload["seq"].as_u64().expect("seq");
            w.order
                .lock()
                .unwrap()
                .entry(job.ordering_key.clone())
                .or_default()
                .push(seq);
            // Give the other pool a chance to (wrongly) start the same key.
            if job.id % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
            w.in_flight.lock().unwrap().remove(&job.ordering_key);
            self.ran.fetch_add(1, Ordering::SeqCst);
            Outcome::Succeeded
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_workers_in_two_pools_run_every_job_once_in_key_order() {
    let db = TestDb::migrated("worker_concurrency");
    let mut conn = db.conn();
    // Interleaved across keys; within a key, enqueue order (id order) is seq order.
    let all: Vec<NewJob> = (0..JOBS)
        .map(|i| {
            let key = format!("key-{:03}", i % KEYS);
            let seq = (i / KEYS) as u64;
            NewJob::new(JobKind::Noop, key.clone(), serde_json::json!({ "seq": seq })).unique(format!("c:{key}:{seq}"))
        })
        .collect();
    for chunk in all.chunks(1_000) {
        assert_eq!(queue::enqueue_many(&mut conn, chunk).unwrap().len(), chunk.len());
    }
    let conflicts_before = queue::lease_conflicts();

    let witness = Arc::new(Witness::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut pools = Vec::new();
    let mut checkers = Vec::new();
    for name in ["pool-a", "pool-b"] {
        let checker = Arc::new(Checker {
            witness: witness.clone(),
            pool: name,
            ran: AtomicUsize::new(0),
        });
        checkers.push(checker.clone());
        let mut registry = Registry::new();
        registry.register(JobKind::Noop, checker);
        let config = WorkerConfig {
            workers: 8,
            lease: Duration::from_secs(30),
            watchdog_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(20),
            ..WorkerConfig::default()
        };
        let pool = WorkerPool::new(db.pool(12), config, registry);
        pools.push(tokio::spawn(pool.run(stop_rx.clone())));
    }

    let started = Instant::now();
    loop {
        let done: i64 = jobs::table
            .filter(jobs::state.eq("succeeded"))
            .count()
            .get_result(&mut conn)
            .unwrap();
        if done as usize == JOBS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "only {done}/{JOBS} done after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{JOBS} jobs in {:?}", started.elapsed());
    stop_tx.send(true).unwrap();
    for p in pools {
        p.await.unwrap();
    }

    assert_eq!(
        witness.overlaps.load(Ordering::SeqCst),
        0,
        "two tries of one key overlapped"
    );
    let runs = witness.runs.lock().unwrap();
    assert_eq!(runs.len(), JOBS, "every job ran");
    let repeated: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "jobs run more than once: {repeated:?}");
    let order = witness.order.lock().unwrap();
    assert_eq!(order.len(), KEYS);
    let expected: Vec<u64> = (0..(JOBS / KEYS) as u64).collect();
    for (key, seqs) in order.iter() {
        assert_eq!(seqs, &expected, "key {key} ran out of order");
    }
    assert_eq!(
        queue::lease_conflicts(),
        conflicts_before,
        "a lease hit the unique index"
    );
    // Both "processes" did real work.
    for c in &checkers {
        assert!(c.ran.load(Ordering::SeqCst) > JOBS / 10, "{} ran too little", c.pool);
    }
    // The database agrees: one try each, nothing reclaimed, nothing left running.
    let (max_attempt, reclaims): (Option<i32>, Option<i64>) = jobs::table
        .select((diesel::dsl::max(jobs::attempt), diesel::dsl::sum(jobs::reclaim_count)))
        .first(&mut conn)
        .unwrap();
    assert_eq!(max_attempt, Some(1));
    assert_eq!(reclaims, Some(0));
    let min_attempt: Option<i32> = jobs::table
        .select(diesel::dsl::min(jobs::attempt))
        .first(&mut conn)
        .unwrap();
    assert_eq!(min_attempt, Some(1));
}
