//! The worker pool: leases jobs in batches, runs each with the handler registered for its kind (at most `WORKERS`
//! at once per process), renews leases while work runs (heartbeat), finalizes every try through the fenced queue
//! functions (successes batched), reclaims expired leases (watchdog) and refreshes the queue gauges. On shutdown it
//! stops leasing, lets in-flight work finish within the grace period and releases what is left.
//!
//! Owns scheduling and lifecycle only: what a job *does* belongs to the handlers (`jobs`), and every state change
//! goes through `divine_bridge_db::queue` (the one place transitions live).
//!
//! Semantics decided here (see docs/runbooks/job-queue.md):
//! 1. **Every write is fenced on the try's own lease** ([`queue::Lease`]: job id + the token drawn at lease), never on
//!    the process: a job reclaimed and leased again by this same process cannot be finished by the older try.
//! 2. **A try runs only while it provably holds its lease.** The handler future is dropped (cut off) when the
//!    heartbeat finds the lease gone (nothing is written: the lease is someone else's), when the local lease
//!    deadline (start of the last successful renewal + `LEASE_SECS`) passes without a renewal (a `lease_lost`
//!    retry, fenced), or when the try has run `TRY_TIMEOUT_SECS` (a `try_timeout` retry): a hung PDS, a half-open
//!    socket or a row lock held by an operator's psql session cannot keep a lease alive forever.
//! 3. **Retries cannot storm**: the delay is `max(server hint, backoff(attempt))` ([`queue::retry_delay`]); the
//!    watchdog backs reclaims off and parks a job at `RECLAIM_LIMIT` reclaims (`suspected_poison`); a handler panic
//!    is a retry until the job's `PANIC_LIMIT`-th panic, then a permanent `handler_panicked` with the message kept.

pub use divine_bridge_db::queue::LeasedJob;

use crate::config::ConfigError;
use divine_bridge_db::accounts;
use divine_bridge_db::envcfg::Problems;
use divine_bridge_db::queue::{self, Finish, Finished, Lease, ReclaimPolicy};
use divine_bridge_db::{Classified, Db, ErrorClass, ErrorCode, JobKind, JobState};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tracing::Instrument;

/// How a handler's try ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    /// Correctly skipped; recorded as `ineligible` with a reason code.
    Ineligible {
        code: ErrorCode,
        detail: String,
    },
    /// Transient: retried with backoff, or after `retry_after` when the server gave one.
    Retry {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Permanent: `failed` with a stable code.
    Fail {
        code: ErrorCode,
        message: String,
    },
}

impl Outcome {
    /// Maps a classified error: transient → retry (keeping its retry hint), permanent → fail.
    pub fn from_error<E: Classified + ?Sized>(e: &E) -> Outcome {
        match e.class() {
            ErrorClass::Transient => Outcome::Retry {
                code: e.code(),
                message: e.to_string(),
                retry_after: e.retry_after(),
            },
            ErrorClass::Permanent => Outcome::Fail {
                code: e.code(),
                message: e.to_string(),
            },
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Ineligible { .. } => "ineligible",
            Outcome::Retry { .. } => "retried",
            Outcome::Fail { .. } => "failed",
        }
    }
}

/// Runs one kind of job. Implementations classify every failure ([`Outcome::from_error`]) and must be idempotent
/// per job: a try can be repeated after a crash or a lost lease, and the future may be dropped at any `.await`
/// (cut off, semantics 2). A panic is caught and becomes a `handler_panicked` retry (permanent at `PANIC_LIMIT`);
/// it never takes the worker down.
pub trait JobHandler: Send + Sync + 'static {
    /// Performs one try of `job` (`job.attempt` already counts it).
    fn handle<'a>(&'a self, job: &'a LeasedJob) -> BoxFuture<'a, Outcome>;
}

/// Job kind → handler. A kind without a handler fails permanently with `no_handler`.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<JobKind, Arc<dyn JobHandler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }
    /// Sets the handler of `kind` (replacing any previous one).
    pub fn register(&mut self, kind: JobKind, handler: Arc<dyn JobHandler>) -> &mut Registry {
        self.handlers.insert(kind, handler);
        self
    }

    /// The handler of `kind`; `None` makes the try a permanent `no_handler` failure.
    pub fn get(&self, kind: JobKind) -> Option<Arc<dyn JobHandler>> {
        self.handlers.get(&kind).cloned()
    }

    /// Kinds with a handler.
    pub fn kinds(&self) -> Vec<JobKind> {
        self.handlers.keys().copied().collect()
    }
}

/// How long a pool with work waiting gathers free slots before it leases fewer than [`lease_batch`] jobs.
const LEASE_BATCH_WAIT: Duration = Duration::from_millis(2);

/// How many free slots a pool with work waiting gathers before it leases (half the pool, at least one): leasing per
/// freed slot made the lease round trips, not the jobs, the limit of a busy pool (issue 11 §3 throughput).
fn lease_batch(workers: usize) -> usize {
    workers.div_ceil(2).max(1)
}

/// How long the lease loop waits after a failed lease (Postgres unreachable, statement timeout) before trying again.
const LEASE_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Pool settings (`crate::config::WorkerArgs`: env names and defaults in `divine-atbridge run --help`).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `WORKERS` (8): jobs run at once by this process.
    pub workers: usize,
    /// `LEASE_SECS` (300): lease length; the heartbeat renews it every third of it.
    pub lease: Duration,
    /// `WATCHDOG_ENABLED` (true): reclaim expired leases from this process too (safe on every replica).
    pub watchdog_enabled: bool,
    /// `WATCHDOG_INTERVAL_SECS` (30).
    pub watchdog_interval: Duration,
    /// `SHUTDOWN_GRACE_SECS` (30): how long in-flight tries may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// `RETRY_BASE_SECS` (5): backoff base.
    pub retry_base: Duration,
    /// `RETRY_CAP_SECS` (3600): backoff ceiling, also the cap on a server's Retry-After.
    pub retry_cap: Duration,
    /// `RETRY_MAX_AGE_SECS` (604800 = 7 days): transient failures of a job older than this (from `created_at`)
    /// fail it with `retry_window_exhausted`.
    pub retry_max_age: Duration,
    /// `TRY_TIMEOUT_SECS` (600): a try still running after this is cut off and retried (`try_timeout`).
    pub try_timeout: Duration,
    /// `RECLAIM_LIMIT` (5): the watchdog parks a job whose lease expired this many times (`suspected_poison`).
    pub reclaim_limit: i32,
    /// `PANIC_LIMIT` (3): a job whose handler panicked this many times fails permanently (`handler_panicked`).
    pub panic_limit: i32,
    /// `POLL_INTERVAL_MS` (5000): the fallback poll of an idle pool. An idle pool wakes on `NOTIFY bridge_jobs`
    /// (a key head became due anywhere in the fleet), on its own finalizes and when the next head in backoff is due
    /// ([`queue::next_due`]); the poll only bounds the delay after a lost notification (listener reconnecting).
    pub poll_interval: Duration,
    /// Gauge refresh interval.
    pub stats_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: 8,
            lease: Duration::from_secs(300),
            watchdog_enabled: true,
            watchdog_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(3600),
            retry_max_age: Duration::from_secs(7 * 24 * 3600),
            try_timeout: Duration::from_secs(600),
            reclaim_limit: 5,
            panic_limit: 3,
            poll_interval: Duration::from_millis(5000),
            stats_interval: Duration::from_secs(15),
        }
    }
}

impl WorkerConfig {
    /// From the process environment alone (`WORKERS`, `LEASE_SECS`, … — `crate::config::WorkerArgs`); the dev
    /// binaries and tests use it, `divine-atbridge run` validates these with everything else.
    pub fn from_env() -> Result<WorkerConfig, ConfigError> {
        let mut p = Problems::default();
        let c = crate::config::args_from_env::<crate::config::WorkerArgs>()?.validate(&mut p);
        Ok(p.finish(c)?)
    }

    /// Checks the invariants (also for configs built in code), every violated one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.check(&mut p);
        Ok(p.finish(())?)
    }

    /// Records every violated invariant in `p` (a variable that already has a problem keeps its first one).
    pub fn check(&self, p: &mut Problems) {
        if self.workers == 0 {
            p.invalid("WORKERS", "must be at least 1");
        }
        if self.lease < Duration::from_secs(2) {
            p.invalid(
                "LEASE_SECS",
                "must be at least 2 (the heartbeat renews every third of it)",
            );
        }
        if self.watchdog_enabled && self.watchdog_interval.is_zero() && !p.has("WATCHDOG_ENABLED") {
            p.invalid(
                "WATCHDOG_INTERVAL_SECS",
                "must be at least 1 when WATCHDOG_ENABLED=true",
            );
        }
        if self.retry_cap < self.retry_base && !p.has("RETRY_BASE_SECS") {
            p.invalid("RETRY_CAP_SECS", "must not be below RETRY_BASE_SECS");
        }
        if self.retry_max_age.is_zero() {
            p.invalid("RETRY_MAX_AGE_SECS", "must be at least 1");
        }
        if self.try_timeout.is_zero() {
            p.invalid("TRY_TIMEOUT_SECS", "must be at least 1");
        }
        if self.reclaim_limit < 1 {
            p.invalid("RECLAIM_LIMIT", "must be at least 1");
        }
        if self.panic_limit < 1 {
            p.invalid("PANIC_LIMIT", "must be at least 1");
        }
        if self.poll_interval.is_zero() {
            p.invalid("POLL_INTERVAL_MS", "must be at least 1");
        }
    }

    /// The watchdog's reclaim policy: the retry backoff on the reclaim count, parked at `RECLAIM_LIMIT`.
    pub fn reclaim_policy(&self) -> ReclaimPolicy {
        ReclaimPolicy {
            base: self.retry_base,
            cap: self.retry_cap,
            limit: self.reclaim_limit,
        }
    }
}

/// A lease owner unique per process: `<hostname>-<random hex>` (never a bare PID: PIDs repeat across pods).
pub fn lease_owner() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}-{:016x}", rand::random::<u64>())
}

/// How a try ended, as the completer sees it.
#[derive(Debug)]
enum TryEnd {
    /// The handler returned.
    Returned(Outcome),
    /// The handler panicked (message).
    Panicked(String),
    /// Cut off at `TRY_TIMEOUT_SECS`.
    TimedOut,
    /// Cut off: the local lease deadline passed without a successful renewal.
    LeaseDeadline,
    /// Cut off: the heartbeat found the lease gone. Nothing may be written for this try.
    LeaseLost,
}

/// What the heartbeat tells a running try about its lease.
#[derive(Debug, Clone, Copy)]
enum LeaseSignal {
    /// Renewed: held at least until this instant (measured from before the renewal was sent).
    HeldUntil(Instant),
    /// The heartbeat found the lease gone.
    Lost,
}

/// In-flight tries by lease (not by job id: this process may lease a reclaimed job again while the older try is
/// still being cut off).
type Inflight = Arc<Mutex<HashMap<Lease, watch::Sender<LeaseSignal>>>>;

struct Done {
    job: LeasedJob,
    end: TryEnd,
    started: Instant,
    /// The try's span ([`try_span`]): the completer writes the try's one finished line inside it.
    span: tracing::Span,
}

/// The pool.
pub struct WorkerPool {
    db: Db,
    config: WorkerConfig,
    registry: Registry,
    owner: String,
}

impl WorkerPool {
    /// A pool with a fresh lease owner id ([`lease_owner`]).
    pub fn new(db: Db, config: WorkerConfig, registry: Registry) -> WorkerPool {
        WorkerPool {
            db,
            config,
            registry,
            owner: lease_owner(),
        }
    }

    /// This pool's lease owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs until `shutdown` becomes true, then drains: no new leases; in-flight tries get `shutdown_grace` to
    /// finish (their results are recorded normally); tries still running after that are abandoned and their jobs
    /// released back to `queued` with the try given back (`attempt - 1`, code `released_at_shutdown`) — the process
    /// gave the work up, the work did not fail. If the release itself fails, the watchdog reclaims the jobs after
    /// lease expiry (then the abandoned try does count).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let cfg = self.config.clone();
        let owner = self.owner.clone();
        let inflight: Inflight = Arc::default();
        let permits = Arc::new(Semaphore::new(cfg.workers));
        let finalized = Arc::new(Notify::new());
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
        let (stop_aux_tx, stop_aux) = watch::channel(false);
        tracing::info!(
            owner,
            workers = cfg.workers,
            lease_secs = cfg.lease.as_secs(),
            "worker pool started"
        );

        let completer = tokio::spawn(completer(
            self.db.clone(),
            cfg.clone(),
            inflight.clone(),
            finalized.clone(),
            done_rx,
        ));
        let heartbeat = tokio::spawn(heartbeat(
            self.db.clone(),
            cfg.clone(),
            inflight.clone(),
            stop_aux.clone(),
        ));
        let watchdog = cfg.watchdog_enabled.then(|| {
            tokio::spawn(watchdog(
                self.db.clone(),
                cfg.watchdog_interval,
                cfg.reclaim_policy(),
                stop_aux.clone(),
            ))
        });
        let stats = tokio::spawn(refresh_stats(self.db.clone(), cfg.stats_interval, stop_aux.clone()));
        let leased_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let heads_vacuum = tokio::spawn(vacuum_heads(self.db.clone(), leased_total.clone(), stop_aux.clone()));
        let wakeups = self.db.job_wakeups();
        let mut tasks = tokio::task::JoinSet::new();

        // Whether the last lease filled every free slot, i.e. more runnable work is probably waiting.
        let mut backlog = false;
        let batch = lease_batch(cfg.workers);
        while !*shutdown.borrow() {
            let mut free = permits.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = permits.clone().acquire_owned() => {}
                }
                continue;
            }
            if backlog && free < batch {
                // Gather slots for a batch instead of leasing one job per freed slot: a lease costs about the same
                // for one job as for sixteen, and with work waiting slots free one by one. Waits at most
                // LEASE_BATCH_WAIT, so a pool of slow jobs loses nothing that matters.
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = permits.acquire_many(batch as u32) => {}
                    _ = tokio::time::sleep(LEASE_BATCH_WAIT) => {}
                }
                free = permits.available_permits();
            }
            let (o, lease_for) = (owner.clone(), cfg.lease);
            let asked_at = Instant::now();
            let leased = match self.db.lease(&o, free as i64, lease_for).await {
                Ok(jobs) => {
                    // The queue counts the leases that raced an enqueue (process-wide); export its running total.
                    metrics::counter!(crate::metrics::LEASE_CONFLICTS).absolute(queue::lease_conflicts());
                    jobs
                }
                Err(e) => {
                    tracing::warn!(error = %e, code = %e.code(), "lease failed; backing off");
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(LEASE_ERROR_BACKOFF) => {}
                    }
                    continue;
                }
            };
            let got = leased.len();
            backlog = got == free;
            leased_total.fetch_add(got as u64, std::sync::atomic::Ordering::Relaxed);
            for job in leased {
                let permit = permits
                    .clone()
                    .try_acquire_owned()
                    .expect("leased no more than the free permits");
                let (signal, lease_rx) = watch::channel(LeaseSignal::HeldUntil(asked_at + cfg.lease));
                inflight.lock().unwrap().insert(job.lease(), signal);
                let handler = self.registry.get(job.kind);
                let tx = done_tx.clone();
                let try_timeout = cfg.try_timeout;
                let span = try_span(&job);
                tasks.spawn(
                    async move {
                        let started = Instant::now();
                        // Whichever ends first wins; the others (the handler future included) are dropped here.
                        let end = tokio::select! {
                            end = run_one(handler, &job) => end,
                            _ = tokio::time::sleep(try_timeout) => TryEnd::TimedOut,
                            end = lease_watch(lease_rx) => end,
                        };
                        let span = tracing::Span::current();
                        let _ = tx.send(Done {
                            job,
                            end,
                            started,
                            span,
                        });
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            while tasks.try_join_next().is_some() {}
            if got < free {
                // Nothing (more) runnable right now. Wake when a head becomes due anywhere in the fleet (NOTIFY), when
                // a finalize by this pool may have unblocked the next job of a key, when the next head in backoff
                // is due, or at the fallback poll.
                let wait = match self.db.run(queue::next_due).await {
                    Ok(Some(at)) => (at - chrono::Utc::now())
                        .to_std()
                        .unwrap_or_default()
                        .min(cfg.poll_interval),
                    Ok(None) | Err(_) => cfg.poll_interval,
                };
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = finalized.notified() => {}
                    _ = wakeups.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }

        // Drain: no new leases; give in-flight work the grace period, then release what is left.
        tracing::info!(inflight = inflight.lock().unwrap().len(), "draining worker pool");
        let drained =
            tokio::time::timeout(cfg.shutdown_grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                grace_secs = cfg.shutdown_grace.as_secs(),
                "in-flight jobs did not finish within the grace period; abandoning them"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        drop(done_tx);
        let _ = completer.await;
        let left: Vec<Lease> = inflight.lock().unwrap().keys().copied().collect();
        if !left.is_empty() {
            let o = owner.clone();
            match self.db.run(move |c| queue::release(c, &o, &left)).await {
                Ok(n) => tracing::info!(released = n, "released unfinished leases"),
                Err(e) => tracing::warn!(error = %e, "could not release leases; the watchdog will reclaim them"),
            }
        }
        let _ = stop_aux_tx.send(true);
        let _ = heartbeat.await;
        if let Some(w) = watchdog {
            let _ = w.await;
        }
        let _ = stats.await;
        let _ = heads_vacuum.await;
        tracing::info!(owner, "worker pool stopped");
    }
}

/// Runs one try: the registered handler with panics caught, or `no_handler` when the kind has none.
async fn run_one(handler: Option<Arc<dyn JobHandler>>, job: &LeasedJob) -> TryEnd {
    let Some(h) = handler else {
        return TryEnd::Returned(Outcome::Fail {
            code: ErrorCode::NoHandler,
            message: format!("no handler registered for job kind {:?}", job.kind),
        });
    };
    match AssertUnwindSafe(h.handle(job)).catch_unwind().await {
        Ok(o) => TryEnd::Returned(o),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            tracing::error!(job = job.id, kind = %job.kind, panic = msg, "handler panicked");
            TryEnd::Panicked(msg)
        }
    }
}

/// Resolves when the try must stop because of its lease: at once when the heartbeat reports it lost, or when the
/// last known deadline passes without a newer renewal.
async fn lease_watch(mut rx: watch::Receiver<LeaseSignal>) -> TryEnd {
    loop {
        let signal = *rx.borrow_and_update();
        match signal {
            LeaseSignal::Lost => return TryEnd::LeaseLost,
            LeaseSignal::HeldUntil(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        if !rx.has_changed().unwrap_or(false) {
                            return TryEnd::LeaseDeadline;
                        }
                    }
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // The pool dropped the sender (shutdown): only the deadline is left to watch.
                            tokio::time::sleep_until(deadline.into()).await;
                            return TryEnd::LeaseDeadline;
                        }
                    }
                }
            }
        }
    }
}

/// Finalizes tries: successes in batches (one fenced UPDATE for everything that finished since the last flush),
/// everything else one by one through the fenced [`queue::finish`]. A try whose lease was lost is logged and its
/// result dropped (the new owner's result stands).
async fn completer(
    db: Db,
    cfg: WorkerConfig,
    inflight: Inflight,
    finalized: Arc<Notify>,
    mut rx: mpsc::UnboundedReceiver<Done>,
) {
    let mut batch: Vec<Done> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let (ok, rest): (Vec<Done>, Vec<Done>) = batch
            .drain(..)
            .partition(|d| matches!(d.end, TryEnd::Returned(Outcome::Succeeded)));
        if !ok.is_empty() {
            let leases: Vec<Lease> = ok.iter().map(|d| d.job.lease()).collect();
            let leases2 = leases.clone();
            match db.run(move |c| queue::complete_many(c, &leases2)).await {
                Ok(applied) => {
                    let applied: HashSet<i64> = applied.into_iter().collect();
                    for d in &ok {
                        if applied.contains(&d.job.id) {
                            record(&d.job, "succeeded", d.started);
                            log_finished(d, "succeeded", JobState::Succeeded);
                        } else {
                            d.span.in_scope(|| {
                                tracing::warn!(
                                    outcome = "lease_lost",
                                    "lost lease before completion; result dropped (fenced)"
                                )
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not record successes; the watchdog will retry them"),
            }
            let mut set = inflight.lock().unwrap();
            for lease in leases {
                set.remove(&lease);
            }
        }
        for d in rest {
            let lease = d.job.lease();
            if let Some(finish) = finish_for(&cfg, &d) {
                let label = match &d.end {
                    TryEnd::Returned(o) => o.label(),
                    _ => "retried",
                };
                // A publish the gate skipped because the account was paused is finalized against the account, so
                // an enable that raced the try re-queues it (accounts::finish_skipped, accounts rule 3).
                let paused_account = match &finish {
                    Finish::Ineligible { code, .. }
                        if *code == accounts::DISABLE_CODE && d.job.kind == JobKind::PublishPost =>
                    {
                        d.job.account().ok().map(str::to_string)
                    }
                    _ => None,
                };
                let finalized = db.run(move |c| match paused_account {
                    Some(account) => accounts::finish_skipped(c, lease, &account, &finish),
                    None => queue::finish(c, lease, &finish),
                });
                match finalized.await {
                    Ok(Finished::Applied(state)) => {
                        let label = match state {
                            JobState::Cancelled => "cancelled",
                            JobState::Failed => "failed",
                            _ => label,
                        };
                        record(&d.job, label, d.started);
                        log_finished(&d, label, state);
                    }
                    Ok(Finished::LostLease) => d.span.in_scope(|| {
                        let (code, message) = d.end.code_and_message();
                        tracing::warn!(
                            outcome = "lease_lost",
                            code,
                            error = message,
                            "lost lease before finalize; result dropped (fenced)"
                        )
                    }),
                    Err(e) => d.span.in_scope(|| {
                        tracing::warn!(code = %e.code(), error = %e, "finalize failed; the watchdog will retry the job")
                    }),
                }
            } else {
                d.span.in_scope(|| {
                    tracing::warn!(
                        outcome = "lease_lost",
                        "lease lost while running; try cut off, nothing written"
                    )
                });
            }
            inflight.lock().unwrap().remove(&lease);
        }
        finalized.notify_one();
    }
}

/// What to write for a try that did not simply succeed; `None` for a try whose lease is known to be gone.
fn finish_for(cfg: &WorkerConfig, d: &Done) -> Option<Finish> {
    let retry_at = |hint: Option<Duration>| {
        let delay = queue::retry_delay(d.job.attempt, hint, cfg.retry_base, cfg.retry_cap);
        chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()
    };
    let cut_off = |reason: &'static str| {
        metrics::counter!(crate::metrics::JOB_TRIES_CUT_OFF, "kind" => d.job.kind.as_str(), "reason" => reason)
            .increment(1);
        d.span.in_scope(|| tracing::warn!(reason, "try cut off"));
    };
    Some(match &d.end {
        TryEnd::Returned(Outcome::Succeeded) => Finish::Succeeded,
        TryEnd::Returned(Outcome::Ineligible { code, detail }) => Finish::Ineligible {
            code: *code,
            detail: detail.clone(),
        },
        TryEnd::Returned(Outcome::Fail { code, message }) => Finish::Failed {
            code: *code,
            message: message.clone(),
        },
        TryEnd::Returned(Outcome::Retry {
            code,
            message,
            retry_after,
        }) => Finish::Retry {
            code: *code,
            message: message.clone(),
            run_at: retry_at(*retry_after),
            max_age: cfg.retry_max_age,
        },
        TryEnd::Panicked(msg) => Finish::Panicked {
            message: format!("handler panicked: {msg}"),
            run_at: retry_at(None),
            max_age: cfg.retry_max_age,
            limit: cfg.panic_limit,
        },
        TryEnd::TimedOut => {
            cut_off("try_timeout");
            Finish::Retry {
                code: ErrorCode::TryTimeout,
                message: format!(
                    "try {} did not finish within TRY_TIMEOUT_SECS ({} s); cut off",
                    d.job.attempt,
                    cfg.try_timeout.as_secs()
                ),
                run_at: retry_at(None),
                max_age: cfg.retry_max_age,
            }
        }
        TryEnd::LeaseDeadline => {
            cut_off("lease_deadline");
            Finish::Retry {
                code: ErrorCode::LeaseLost,
                message: format!(
                    "no successful lease renewal within LEASE_SECS ({} s); try cut off",
                    cfg.lease.as_secs()
                ),
                run_at: retry_at(None),
                max_age: cfg.retry_max_age,
            }
        }
        TryEnd::LeaseLost => {
            cut_off("lease_lost");
            return None;
        }
    })
}

/// The span of one job try: every line a handler (and the XRPC client under it) writes carries the job's ids,
/// and the completer writes the try's one `job try finished` line inside it. `pubkey` is the job's account and
/// `event_id` the id of the event it carries (event jobs); `did`, `rkey` and `at_uri` start empty and are filled by
/// the handler when it learns them ([`note_did`], [`note_record`]).
pub fn try_span(job: &LeasedJob) -> tracing::Span {
    let span = tracing::info_span!(
        "job_try",
        job.id = job.id,
        kind = %job.kind,
        attempt = job.attempt,
        ordering_key = %job.ordering_key,
        pubkey = tracing::field::Empty,
        event_id = tracing::field::Empty,
        did = tracing::field::Empty,
        rkey = tracing::field::Empty,
        at_uri = tracing::field::Empty,
    );
    if let Ok(account) = job.account() {
        span.record("pubkey", account);
    }
    if let Some(id) = job
        .payload
        .get("event")
        .and_then(|e| e.get("id"))
        .and_then(|i| i.as_str())
    {
        span.record("event_id", id);
    }
    span
}

/// Records, on the current job try's span, the DID the try acts for (no effect outside a try).
pub fn note_did(did: &str) {
    tracing::Span::current().record("did", did);
}

/// Records, on the current job try's span, the repo record the try writes or deletes: its DID, rkey and AT-URI.
pub fn note_record(did: &str, collection: &str, rkey: &str) {
    let span = tracing::Span::current();
    span.record("did", did);
    span.record("rkey", rkey);
    span.record("at_uri", format!("at://{did}/{collection}/{rkey}"));
}

/// Writes the one info line of a finished try, inside its span: `outcome` (succeeded|failed|retried|cancelled|
/// ineligible), the resulting `state`, the error `code` and message (`error`) when it did not succeed, and `duration_ms`.
fn log_finished(d: &Done, outcome: &str, state: JobState) {
    let (code, message) = d.end.code_and_message();
    let duration_ms = d.started.elapsed().as_millis() as u64;
    d.span.in_scope(|| {
        tracing::info!(
            outcome,
            state = state.as_str(),
            code,
            error = message,
            duration_ms,
            "job try finished"
        )
    });
}

impl TryEnd {
    /// The stable code and human message of a try that did not succeed (`None`s for a success).
    fn code_and_message(&self) -> (Option<&'static str>, Option<&str>) {
        let (code, message) = match self {
            TryEnd::Returned(Outcome::Succeeded) => return (None, None),
            TryEnd::Returned(Outcome::Ineligible { code, detail }) => (*code, Some(detail.as_str())),
            TryEnd::Returned(Outcome::Retry { code, message, .. } | Outcome::Fail { code, message }) => {
                (*code, Some(message.as_str()))
            }
            TryEnd::Panicked(msg) => (ErrorCode::HandlerPanicked, Some(msg.as_str())),
            TryEnd::TimedOut => (ErrorCode::TryTimeout, None),
            TryEnd::LeaseDeadline | TryEnd::LeaseLost => (ErrorCode::LeaseLost, None),
        };
        (Some(code.as_str()), message)
    }
}

/// Counts a finished try (`outcome`: succeeded|failed|retried|cancelled|ineligible) and its duration.
fn record(job: &LeasedJob, outcome: &'static str, started: Instant) {
    metrics::counter!(crate::metrics::JOBS_FINISHED, "kind" => job.kind.as_str(), "outcome" => outcome).increment(1);
    metrics::histogram!(crate::metrics::JOB_DURATION, "kind" => job.kind.as_str())
        .record(started.elapsed().as_secs_f64());
    crate::slo::observe_end(job, outcome);
}

/// Renews the leases of every in-flight try every third of `LEASE_SECS` and tells each try what it learned: renewed
/// until (send time + lease), or lost. A failed renewal tells nothing: the try's local deadline runs on.
async fn heartbeat(db: Db, cfg: WorkerConfig, inflight: Inflight, mut stop: watch::Receiver<bool>) {
    let every = (cfg.lease / 3).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let leases: Vec<Lease> = inflight.lock().unwrap().keys().copied().collect();
        if leases.is_empty() {
            continue;
        }
        let lease = cfg.lease;
        let sent = Instant::now();
        let asked = leases.clone();
        match db.run(move |c| queue::heartbeat(c, &asked, lease)).await {
            Ok(held) => {
                let held: HashSet<i64> = held.into_iter().collect();
                let map = inflight.lock().unwrap();
                let mut lost = 0;
                for l in &leases {
                    let Some(signal) = map.get(l) else { continue };
                    if held.contains(&l.id) {
                        signal.send_replace(LeaseSignal::HeldUntil(sent + lease));
                    } else {
                        lost += 1;
                        signal.send_replace(LeaseSignal::Lost);
                    }
                }
                if lost > 0 {
                    tracing::warn!(
                        lost,
                        "some leases were lost (reclaimed or finalized); cutting those tries off"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; tries stop at their local lease deadline"),
        }
    }
}

/// Watchdog loop: reclaims expired leases every `interval` (backing off and parking per `policy`) and exports the
/// gauges.
pub async fn watchdog(db: Db, interval: Duration, policy: ReclaimPolicy, mut stop: watch::Receiver<bool>) {
    loop {
        match db.run(move |c| queue::reclaim_expired(c, &policy)).await {
            Ok(reclaimed) => {
                for r in &reclaimed {
                    if r.parked() {
                        tracing::error!(
                            job = r.id,
                            kind = %r.kind,
                            reclaims = r.reclaim_count,
                            "watchdog parked a suspected poison job (its lease expired RECLAIM_LIMIT times)"
                        );
                        metrics::counter!(crate::metrics::JOBS_SUSPECTED_POISON, "kind" => r.kind.as_str())
                            .increment(1);
                    } else {
                        tracing::warn!(
                            job = r.id,
                            kind = %r.kind,
                            state = %r.state,
                            reclaims = r.reclaim_count,
                            "watchdog reclaimed an expired lease"
                        );
                    }
                }
                if !reclaimed.is_empty() {
                    metrics::counter!(crate::metrics::WATCHDOG_RECLAIMED).increment(reclaimed.len() as u64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "watchdog pass failed"),
        }
        if let Ok(n) = db.run(queue::expired_lease_count).await {
            metrics::gauge!(crate::metrics::EXPIRED_LEASES).set(n as f64);
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// How often a busy pool vacuums `job_heads` ([`queue::vacuum_heads`]: the dead index entries every completion leaves
/// at the front of the lease's scan).
const HEADS_VACUUM_INTERVAL: Duration = Duration::from_secs(1);

/// Vacuums `job_heads` every [`HEADS_VACUUM_INTERVAL`] while this pool is leasing (`leased` grew since the last
/// round); an idle pool leaves it to autovacuum. A failure is logged at debug and retried next round: the vacuum is an
/// optimisation, never a condition of progress.
async fn vacuum_heads(db: Db, leased: Arc<std::sync::atomic::AtomicU64>, mut stop: watch::Receiver<bool>) {
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(HEADS_VACUUM_INTERVAL) => {}
        }
        let now = leased.load(std::sync::atomic::Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        if let Err(e) = db.run(queue::vacuum_heads).await {
            tracing::debug!(error = %e, "job_heads vacuum failed; retried next round");
        }
    }
}

async fn refresh_stats(db: Db, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if let Ok(stats) = db.run(queue::stats).await {
            let mut oldest: HashMap<JobKind, f64> = JobKind::ALL.iter().map(|k| (*k, 0.0)).collect();
            for kind in JobKind::ALL {
                for state in queue::STATS_STATES {
                    let n = stats
                        .iter()
                        .find(|s| s.kind == *kind && s.state == state)
                        .map_or(0, |s| s.count);
                    metrics::gauge!(crate::metrics::JOBS, "kind" => kind.as_str(), "state" => state.as_str())
                        .set(n as f64);
                }
            }
            for s in stats.iter().filter(|s| s.state == JobState::Queued) {
                oldest.insert(s.kind, s.oldest_age_secs);
            }
            for (kind, age) in oldest {
                metrics::gauge!(crate::metrics::OLDEST_QUEUED_JOB_AGE, "kind" => kind.as_str()).set(age);
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
