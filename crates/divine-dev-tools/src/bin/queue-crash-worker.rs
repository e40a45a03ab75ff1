//! `queue-crash-worker`: a test helper process for the job queue's crash test (`tests/worker_crash.rs`). It runs a
//! real [`WorkerPool`] against `DATABASE_URL` (pool settings from the usual environment, e.g. `LEASE_SECS=2`) whose
//! `noop` handler announces each job on stdout (`owner=<lease owner>` first, then `started id=<id> attempt=<n>`) and then hangs forever,
//! so the test can SIGKILL the process mid-job. It must not be used for anything else and never finishes a job.

use divine_atbridge::worker::{JobHandler, LeasedJob, Outcome, Registry, WorkerConfig, WorkerPool};
use divine_bridge_db::{Db, JobKind};
use futures::future::BoxFuture;
use std::io::Write;
use std::sync::Arc;

struct Hang;

impl JobHandler for Hang {
    fn handle<'a>(&'a self, job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "started id={} attempt={}", job.id, job.attempt);
                let _ = out.flush();
            }
            std::future::pending::<Outcome>().await
        })
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-crash-worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is required")?;
    let config = WorkerConfig::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let db = Db::connect(&url, 4)?;
        let mut registry = Registry::new();
        registry.register(JobKind::Noop, Arc::new(Hang));
        let pool = WorkerPool::new(db, config, registry);
        println!("owner={}", pool.owner());
        // Never asked to stop: the test kills the process.
        let (_keep, never) = tokio::sync::watch::channel(false);
        pool.run(never).await;
        Ok(())
    })
}
