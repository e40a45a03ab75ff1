//! The durable job queue over the `jobs` table: enqueue (idempotent by unique key), lease, heartbeat, fenced
//! finalize, backoff, cancel and watchdog reclaim. Every state change goes through the transitions declared in
//! [`crate::states::JobState`]. This module owns job rows only; it never runs jobs (see divine-atbridge `worker`).
//!
//! Unique-key conventions (callers must use these so enqueue is idempotent across replicas):
//! `provision:<pubkey>`, `publish:<event id>`, `delete:<kind-5 event id>`, `profile:<event id>`,
//! `backfill:<pubkey>:<generation>`.
//!
//! Ordering keys ([`keys`]; decided in issue 11 §2, see docs/runbooks/job-queue.md "Ordering keys"): a key names
//! what truly conflicts, not the account, so a stuck video never holds back another video of its author.
//! - `event:<id>` — a plain (non-addressable) video publish; a delete with one event target (runs after it).
//! - `coord:<kind>:<pubkey>:<d>` — every revision of one addressable video and a delete whose one coordinate target
//!   is it: an edit chain stays in `created_at` order.
//! - `profile:<pubkey>` — the account's kind-0 syncs (newest-wins anyway; one writer of `app.bsky.actor.profile/self`).
//! - `<pubkey>` (the bare account key) — account lifecycle jobs (provision, disconnect) and backfill, in order
//!   among themselves. Old jobs queued under the bare pubkey before this change drain there as they are.
//! - A delete with several targets runs under `event:<its own id>`: tombstones (`records::is_tombstoned`, checked by
//!   publish before and after its write) make either order end deleted.
//!
//! Jobs are built from typed args ([`crate::job_args::JobArgs`], [`NewJob::of`]): the args type decides kind, unique
//! key, ordering key and priority, so the conventions above are spelled once per kind (docs/runbooks/job-queue.md,
//! "Job kinds and their args"). [`NewJob::new`] and [`NewJob::for_account`] stay for raw jobs in tests and drills.
//!
//! Account barrier: every job names its account in `payload.account` ([`NewJob::for_account`],
//! [`LeasedJob::account`]). Lifecycle jobs ([`JobKind::is_lifecycle`]) run BEFORE the account's posts because
//! posts check the account gate (`account_not_ready` retries while provisioning) and AFTER the account's running
//! jobs because the worker refuses to start a lifecycle job while [`running_for_account`] is non-empty
//! (`account_busy`, a transient retry). A lifecycle job that ends an account closes the gate first (so no new post
//! can start), then waits for the running ones to drain. Queued posts in backoff never block a lifecycle job.
//!
//! Semantics decided here (see docs/runbooks/job-queue.md):
//! - **Head of key.** A job is leasable only when no earlier `(priority, source_created_at, id)` job of its
//!   ordering key is queued or running. A queued head that is waiting out a backoff (`run_at` in the future) blocks
//!   its successors: per-key order is a hard guarantee, latency is not.
//! - **Key heads** (issue 11 §3). `job_heads` holds one row per ordering key with live work: its head (first live
//!   job in key order), the head's `run_at` and dispatch class. Statement-level triggers on `jobs` keep it exact in
//!   the transaction of every change (migration 2026-12-04-233000_lease_job_heads: whatever writes `jobs`, the
//!   heads follow). The lease reads due heads only ([`LEASE_SQL`]), so jobs queued behind a head in backoff cost it
//!   nothing: 1,000,000 of them behind 10,000 heads used to cost seconds per lease. A lease (queued → running) does
//!   not move a key's head, so it never writes or locks `job_heads`; a lease and an enqueue of the same key never
//!   wait on each other (the enqueue may make an earlier job the head; leasing that one then trips
//!   `jobs_one_running_per_key` and is an empty lease, as before).
//! - **Fair dispatch** (issue 11 §2). Priorities fall in three [`DispatchClass`]es (account < 0 ≤ live < 10 ≤
//!   backfill) that share the workers by weight (live 4, account 2, backfill 1) over the fleet's running jobs,
//!   instead of strict priority: a launch wave of provisioning no longer holds back every live post, and live
//!   traffic no longer stops backfill. Work-conserving: a class without due work leaves its share to the others.
//!   Within a class, due heads go oldest `run_at` first (the head due longest runs first; a retry queues behind work
//!   that was due before it). Within a key, order stays `(priority, source_created_at, id)`.
//! - **Wake-ups.** The triggers `NOTIFY bridge_jobs` whenever a key's head is recomputed and queued (due now or
//!   later); idle workers wait on it ([`crate::listen`]) or until the next head in backoff is due ([`next_due`]),
//!   and poll only as a fallback.
//! - **Attempt** counts real tries: incremented once, at lease. The watchdog never touches it; a graceful-shutdown
//!   release gives the interrupted try back (`attempt - 1`); an operator retry keeps it.
//! - **Fencing.** Every lease draws a fresh `lease_token` (from the sequence `jobs_lease_token_seq`: it never
//!   repeats, so two leases of one job — even by the same process — never share a token). Every write by a worker
//!   (heartbeat, finish, complete, release) names the job AND its token ([`Lease`]) and is conditioned on
//!   `state = 'running'`; a try whose lease was reclaimed matches no row and is reported as lost. `lease_owner` is
//!   kept for diagnostics only (which process holds the job); it fences nothing.
//! - **Retry delay** is `max(server hint, backoff(attempt))`, capped: a `Retry-After: 0` or a past `RateLimit-Reset`
//!   never re-leases at once. [`backoff`] has a floor (half its ceiling), so no draw is near zero.
//! - **Reclaim** (a lease expired: the process died or hung) is not free: the job comes back after
//!   `backoff(reclaim_count)`, and at the reclaim limit it is parked `failed` with `suspected_poison` (a video that
//!   OOM-kills its pod must not walk through the fleet). The operator re-drives it with `jobs retry`.
//! - **Panics** count per job (`panic_count`); at the panic limit the job fails permanently with `handler_panicked`
//!   and the panic message. Nothing else turns a transient failure permanent by count; only the retry window does.
//! - **Cancel** of a running job is a request honoured at finalize: a retry or failure becomes `cancelled`; a
//!   success stays `succeeded` (the side effect happened); an ineligible result stays `ineligible`.

use crate::error::DbError;
use crate::prepared::{Param, Prepared};
use crate::schema::jobs;
use crate::states::{DispatchClass, JobKind, JobState};
use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Double, Int2, Int4, Jsonb, Nullable, Text, Timestamptz};
use divine_bridge_core::ErrorCode;
use std::time::Duration;

/// Ordering-key constructors: the only place key formats are spelled (see the module header for the rules).
pub mod keys {
    /// The account key: lifecycle jobs and backfill of `pubkey` (lower-case hex).
    pub fn account(pubkey: &str) -> String {
        pubkey.to_string()
    }

    /// A plain video event (hex id).
    pub fn event(id: &str) -> String {
        format!("event:{id}")
    }

    /// An addressable coordinate `<kind>:<lower-case pubkey>:<d>` (the `d` identifier keeps its case).
    pub fn coordinate(coordinate: &str) -> String {
        format!("coord:{coordinate}")
    }

    /// The profile record of `pubkey`.
    pub fn profile(pubkey: &str) -> String {
        format!("profile:{pubkey}")
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: JobKind,
    /// Serialisation key: at most one running job per key; built by [`keys`].
    pub ordering_key: String,
    /// Deduplication key; enqueueing a second job with the same key is a no-op.
    pub unique_key: Option<String>,
    pub payload: serde_json::Value,
    /// Lower runs first; see [`crate::states::priority`].
    pub priority: i16,
    /// Earliest time to run (None = now).
    pub run_at: Option<DateTime<Utc>>,
    /// When the source event was created (dispatch order within a priority). None = now.
    pub source_created_at: Option<DateTime<Utc>>,
}

impl NewJob {
    /// A live-priority job with no delay.
    pub fn new(kind: JobKind, ordering_key: impl Into<String>, payload: serde_json::Value) -> NewJob {
        NewJob {
            kind,
            ordering_key: ordering_key.into(),
            unique_key: None,
            payload,
            priority: crate::states::priority::LIVE,
            run_at: None,
            source_created_at: None,
        }
    }

    /// A live-priority job of `account` (lower-case hex pubkey) under `ordering_key`: `payload` must be a JSON
    /// object; the account is written into it as `account` (what [`LeasedJob::account`], [`running_for_account`]
    /// and [`cancel_for_account`] read).
    pub fn for_account(
        kind: JobKind,
        account: &str,
        ordering_key: impl Into<String>,
        mut payload: serde_json::Value,
    ) -> NewJob {
        if let Some(map) = payload.as_object_mut() {
            map.insert("account".into(), serde_json::Value::String(account.to_string()));
        }
        NewJob::new(kind, ordering_key, payload)
    }

    /// Sets the deduplication key.
    pub fn unique(mut self, key: impl Into<String>) -> NewJob {
        self.unique_key = Some(key.into());
        self
    }
}

#[derive(Insertable)]
#[diesel(table_name = jobs)]
struct InsertJob<'a> {
    kind: &'a str,
    ordering_key: &'a str,
    unique_key: Option<&'a str>,
    payload: &'a serde_json::Value,
    priority: i16,
    run_at: DateTime<Utc>,
    source_created_at: DateTime<Utc>,
}

impl<'a> InsertJob<'a> {
    /// The row of `job`; an unset `run_at` / `source_created_at` is `now`.
    fn of(job: &'a NewJob, now: DateTime<Utc>) -> InsertJob<'a> {
        InsertJob {
            kind: job.kind.as_str(),
            ordering_key: &job.ordering_key,
            unique_key: job.unique_key.as_deref(),
            payload: &job.payload,
            priority: job.priority,
            run_at: job.run_at.unwrap_or(now),
            source_created_at: job.source_created_at.unwrap_or(now),
        }
    }
}

/// Enqueues `job`; returns its id, or `None` when a job with the same unique key already exists (in any state).
/// Works inside a caller's transaction, so a record and its job can be written atomically.
pub fn enqueue(conn: &mut PgConnection, job: &NewJob) -> Result<Option<i64>, DbError> {
    let row = InsertJob::of(job, Utc::now());
    let id = diesel::insert_into(jobs::table)
        .values(&row)
        .on_conflict(jobs::unique_key)
        .do_nothing()
        .returning(jobs::id)
        .get_result::<i64>(conn)
        .optional()
        .map_err(DbError::from_diesel)?;
    if id.is_some() {
        metrics::counter!(JOBS_ENQUEUED_METRIC, "kind" => job.kind.as_str()).increment(1);
    }
    Ok(id)
}

/// Enqueues many jobs in one multi-row INSERT (bulk loads such as backfill); jobs whose unique key already exists
/// are skipped. Returns the ids of the rows inserted. Works inside a caller's transaction.
pub fn enqueue_many(conn: &mut PgConnection, batch: &[NewJob]) -> Result<Vec<i64>, DbError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let rows: Vec<InsertJob<'_>> = batch.iter().map(|job| InsertJob::of(job, now)).collect();
    let mut ids = Vec::with_capacity(batch.len());
    // Postgres allows 65,535 bind parameters per statement; 7 per row.
    for chunk in rows.chunks(5_000) {
        let inserted: Vec<(i64, JobKind)> = diesel::insert_into(jobs::table)
            .values(chunk)
            .on_conflict(jobs::unique_key)
            .do_nothing()
            .returning((jobs::id, jobs::kind))
            .get_results(conn)
            .map_err(DbError::from_diesel)?;
        let mut per_kind: std::collections::BTreeMap<&'static str, u64> = Default::default();
        for (id, kind) in inserted {
            ids.push(id);
            *per_kind.entry(kind.as_str()).or_default() += 1;
        }
        for (kind, n) in per_kind {
            metrics::counter!(JOBS_ENQUEUED_METRIC, "kind" => kind).increment(n);
        }
    }
    Ok(ids)
}

/// The jobs of `kinds` of `account` (their `payload.account`, whatever their ordering key): the one filter of every
/// per-account cancel and re-queue below.
fn account_jobs<'a>(
    account: &'a str,
    kinds: &[JobKind],
) -> Box<dyn BoxableExpression<jobs::table, Pg, SqlType = Bool> + 'a> {
    let kinds: Vec<&'static str> = kinds.iter().map(|k| k.as_str()).collect();
    Box::new(
        jobs::payload
            .retrieve_as_text("account")
            .eq(account)
            .and(jobs::kind.eq_any(kinds)),
    )
}

/// Cancels every QUEUED job of `kinds` of `account` (its `payload.account`, whatever its ordering key; queued → cancelled), recording `code` as its
/// `last_error_code` so the reason can be found again (account disable uses `account_disabled`, and
/// [`requeue_skipped`] re-drives exactly those on enable). Running jobs are left alone. Returns how many were cancelled.
pub fn cancel_queued_for_account(
    conn: &mut PgConnection,
    account: &str,
    kinds: &[JobKind],
    code: &str,
) -> Result<usize, DbError> {
    debug_assert!(JobState::Queued.can_transition_to(JobState::Cancelled));
    let now = Utc::now();
    Ok(diesel::update(
        jobs::table
            .filter(account_jobs(account, kinds))
            .filter(jobs::state.eq(JobState::Queued.as_str())),
    )
    .set((
        jobs::state.eq(JobState::Cancelled.as_str()),
        jobs::finished_at.eq(now),
        jobs::updated_at.eq(now),
        jobs::last_error_code.eq(code),
    ))
    .execute(conn)?)
}

/// Re-queues (as [`retry`]: attempt kept, key order kept) every job of `kinds` of `account` (`payload.account`) that ended
/// `cancelled` or `ineligible` with `last_error_code = code`: the jobs skipped for a reason that no longer holds
/// (account re-enable passes `account_disabled`). Returns how many were re-queued.
pub fn requeue_skipped(
    conn: &mut PgConnection,
    account: &str,
    kinds: &[JobKind],
    code: &str,
) -> Result<usize, DbError> {
    debug_assert!(JobState::Cancelled.can_transition_to(JobState::Queued));
    debug_assert!(JobState::Ineligible.can_transition_to(JobState::Queued));
    let now = Utc::now();
    Ok(diesel::update(
        jobs::table
            .filter(account_jobs(account, kinds))
            .filter(jobs::state.eq_any([JobState::Cancelled.as_str(), JobState::Ineligible.as_str()]))
            .filter(jobs::last_error_code.eq(code)),
    )
    .set((
        jobs::state.eq(JobState::Queued.as_str()),
        jobs::run_at.eq(now),
        jobs::finished_at.eq(None::<DateTime<Utc>>),
        jobs::cancel_requested_at.eq(None::<DateTime<Utc>>),
        jobs::updated_at.eq(now),
    ))
    .execute(conn)?)
}

/// Cancels every queued job of `kinds` of `account` (its `payload.account`, whatever its ordering key; queued →
/// cancelled at once) and requests cancellation of running ones (honoured at finalize). Returns the number affected.
pub fn cancel_for_account(conn: &mut PgConnection, account: &str, kinds: &[JobKind]) -> Result<usize, DbError> {
    let queued = cancel_queued_for_account(conn, account, kinds, "cancelled")?;
    let now = Utc::now();
    let running = diesel::update(
        jobs::table
            .filter(account_jobs(account, kinds))
            .filter(jobs::state.eq(JobState::Running.as_str()))
            .filter(jobs::cancel_requested_at.is_null()),
    )
    .set((jobs::cancel_requested_at.eq(now), jobs::updated_at.eq(now)))
    .execute(conn)?;
    Ok(queued + running)
}

/// Ids of the running jobs of `account` other than `except` (the account barrier: a lifecycle job starts only
/// when this is empty). Served by the partial index `jobs_live_account`.
pub fn running_for_account(conn: &mut PgConnection, account: &str, except: i64) -> Result<Vec<i64>, DbError> {
    Ok(jobs::table
        .filter(jobs::payload.retrieve_as_text("account").eq(account))
        .filter(jobs::state.eq(JobState::Running.as_str()))
        .filter(jobs::id.ne(except))
        .select(jobs::id)
        .order(jobs::id)
        .load(conn)?)
}

/// The counter of enqueued jobs, by kind (duplicates absorbed by a unique key are not counted).
pub const JOBS_ENQUEUED_METRIC: &str = "bridge_jobs_enqueued_total";

/// A job leased by this process. `attempt` already counts the current try.
#[derive(Debug, Clone, QueryableByName)]
pub struct LeasedJob {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: JobKind,
    #[diesel(sql_type = Text)]
    pub ordering_key: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub unique_key: Option<String>,
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
    #[diesel(sql_type = Int2)]
    pub priority: i16,
    #[diesel(sql_type = Int4)]
    pub attempt: i32,
    #[diesel(sql_type = Timestamptz)]
    pub source_created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// The fencing token of this lease; every later write of this try must present it ([`LeasedJob::lease`]).
    #[diesel(sql_type = BigInt)]
    pub lease_token: i64,
}

impl LeasedJob {
    /// The account (lower-case hex pubkey) this job belongs to, from `payload.account` (written by
    /// [`NewJob::for_account`]; rows queued before it got theirs from the 2026-12-04-000110 migration).
    pub fn account(&self) -> Result<&str, DbError> {
        self.payload
            .get("account")
            .and_then(|a| a.as_str())
            .ok_or_else(|| DbError::Corrupt(format!("job {} has no payload.account", self.id)))
    }

    /// The lease this try holds: what heartbeat, finish, complete and release are fenced on.
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            token: self.lease_token,
        }
    }
}

/// One lease: a job id and the token drawn when it was leased. A write that presents an older token (the job was
/// reclaimed and leased again since) matches no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: i64,
    pub token: i64,
}

fn split(leases: &[Lease]) -> (Vec<i64>, Vec<i64>) {
    leases.iter().map(|l| (l.id, l.token)).unzip()
}

/// The lease statement (`$1` owner, `$2` batch size, `$3` lease seconds, `$4` dispatch classes, `$5` their weights),
/// public for `EXPLAIN` in the benchmark and the runbook.
///
/// It reads key heads only (`job_heads`, see "Key heads" in the module header): per class, the due heads
/// (`run_at <= now()`) in `(run_at, head_id)` order from the index `job_heads_dispatch`, each checked to be queued
/// and its key to have nothing running (a probe of `jobs_one_running_per_key`), locked `SKIP LOCKED`, at most `$2`
/// per class. Heads in backoff are outside the index range and the jobs behind any head are not in the table, so
/// the cost follows the number of due heads and running jobs, never the blocked backlog. The classes then share the
/// batch by weighted fair queueing over the fleet's running jobs: the k-th candidate of class c gets the virtual
/// time `(running_c + k) / weight_c`, and the `$2` lowest win (ties: lower class first, i.e. priority order).
pub const LEASE_SQL: &str = "WITH running AS ( \
           SELECT job_dispatch_class(priority) AS class, count(*) AS n FROM jobs WHERE state = 'running' GROUP BY 1), \
         cand AS ( \
           SELECT c.class, x.id, \
                  (coalesce(r.n, 0) + row_number() OVER (PARTITION BY c.class ORDER BY x.run_at, x.id))::float8 \
                    / c.weight AS vtime \
           FROM unnest($4::int2[], $5::int4[]) AS c(class, weight) \
           LEFT JOIN running r ON r.class = c.class \
           CROSS JOIN LATERAL ( \
             SELECT j.id, h.run_at FROM job_heads h JOIN jobs j ON j.id = h.head_id \
             WHERE h.class = c.class AND h.run_at <= now() AND j.state = 'queued' \
               AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.ordering_key = j.ordering_key AND e.state = 'running') \
             ORDER BY h.run_at, h.head_id \
             LIMIT $2 \
             FOR UPDATE OF j SKIP LOCKED) x), \
         pick AS (SELECT id FROM cand ORDER BY vtime, class LIMIT $2) \
         UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, lease_owner = $1, \
                lease_token = nextval('jobs_lease_token_seq'), \
                lease_expires_at = now() + make_interval(secs => $3), updated_at = now() \
         FROM pick WHERE jobs.id = pick.id \
         RETURNING jobs.id, jobs.kind, jobs.ordering_key, jobs.unique_key, jobs.payload, jobs.priority, jobs.attempt, \
                   jobs.source_created_at, jobs.created_at, jobs.lease_token";

/// The lease's settings: per transaction ([`lease_settings_local_sql`], [`lease`] on any connection) or for the
/// session of the lease connection ([`lease_session_sql`], [`lease_in_session`]).
///
/// **Durability: `synchronous_commit = off`.** The lease's commit does not wait for its WAL flush (~1.8 ms per
/// `fdatasync` on the CI disk, which capped a busy pool at one lease per flush). This loses nothing: WAL is flushed
/// in order, so whatever a try makes durable afterwards (a reservation, a record, its own finalize, all committed
/// synchronously) flushes the lease with it. A lease lost in a Postgres crash is therefore a lease under which
/// nothing durable happened: the job is `queued` again after recovery and runs again, exactly as after a reclaim
/// (the handler's external effects are idempotent for that reason already). The worker's heartbeat and finalize
/// then find no row with its token and the try is cut off (fencing, module header).
///
/// **Plan.** Pins the lease plan for its transaction: `job_heads` and the live part of `jobs` churn by thousands of rows a
/// second, so their statistics are nearly always stale, and with underestimates the planner (a) hashed every due head
/// and sorted them (143 ms per lease with 25,000 due heads, measured) instead of walking `job_heads_dispatch` in order
/// and stopping after the batch, and (b) joined the heads to `jobs` by materializing every queued job (8,632 rows,
/// 121 ms per lease, measured during `queue_noop_jobs_per_sec`) instead of one `jobs_pkey` probe per head. Without
/// sorts, bitmap scans, hash and merge joins and materialization the only plan left is the intended one. JIT is off
/// too: the disabled-node penalties inflate the estimated cost past `jit_above_cost`, and compiling the statement
/// cost ~280 ms per lease for a plan that runs in under 1 ms. The plan is generic (`plan_cache_mode`): the lease is
/// a prepared statement ([`crate::prepared`]) planned once per connection (planning took ~10 ms of a ~11 ms lease
/// under load), and its shape does not depend on the parameters.
pub const LEASE_SETTINGS: [(&str, &str); 8] = [
    ("enable_sort", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("enable_material", "off"),
    ("jit", "off"),
    ("plan_cache_mode", "force_generic_plan"),
    ("synchronous_commit", "off"),
];

/// [`LEASE_SETTINGS`] for one transaction (`set_config(…, true)`): what [`lease`] runs before the lease on any
/// connection.
pub fn lease_settings_local_sql() -> String {
    let calls: Vec<String> = LEASE_SETTINGS
        .iter()
        .map(|(name, value)| format!("set_config('{name}', '{value}', true)"))
        .collect();
    format!("SELECT {}", calls.join(", "))
}

/// [`LEASE_SETTINGS`] for a whole session (`SET …;`): the session settings of the lease connection
/// ([`crate::Db::lease`], [`lease_in_session`]), which runs nothing but the lease.
pub fn lease_session_sql() -> String {
    LEASE_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET {name} = '{value}';"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Leases up to `limit` runnable jobs for `owner`: key heads only, shared among the dispatch classes by weight
/// ([`LEASE_SQL`], [`crate::states::DispatchClass`]); returned in dispatch order `(priority, source_created_at, id)`.
/// Each leased job carries a fresh fencing token (`LeasedJob::lease_token`); `owner` is recorded for diagnostics only.
///
/// Only the head of each ordering key is leasable: a job waits while an earlier job of its key is queued (even one
/// in backoff) or running, so a key's jobs run one at a time and in order. The partial unique index
/// `jobs_one_running_per_key` enforces the same invariant in the database; should a concurrent lease ever trip it,
/// this call returns no jobs instead of failing.
pub fn lease(conn: &mut PgConnection, owner: &str, limit: i64, lease_for: Duration) -> Result<Vec<LeasedJob>, DbError> {
    let result = conn
        .transaction(|conn| {
            diesel::sql_query(lease_settings_local_sql()).execute(conn)?;
            lease_statement(conn, owner, limit, lease_for)
        })
        .map_err(DbError::from_diesel);
    lease_result(owner, result)
}

/// [`lease`] on a connection whose session already carries [`LEASE_SETTINGS`] (the lease connection,
/// [`crate::Db::lease`]): the statement alone, in its own implicit transaction — one round trip. On any other
/// connection it would run with the default planner settings and a synchronous commit: correct, but slow.
pub fn lease_in_session(
    conn: &mut PgConnection,
    owner: &str,
    limit: i64,
    lease_for: Duration,
) -> Result<Vec<LeasedJob>, DbError> {
    let result = lease_statement(conn, owner, limit, lease_for).map_err(DbError::from_diesel);
    lease_result(owner, result)
}

fn lease_statement(
    conn: &mut PgConnection,
    owner: &str,
    limit: i64,
    lease_for: Duration,
) -> Result<Vec<LeasedJob>, diesel::result::Error> {
    debug_assert!(JobState::Queued.can_transition_to(JobState::Running));
    let classes: Vec<i16> = DispatchClass::ALL.iter().map(|c| *c as i16).collect();
    let weights: Vec<i32> = DispatchClass::ALL.iter().map(|c| c.weight()).collect();
    Prepared::new(
        LEASE_SQL,
        vec![
            Param::Text(owner),
            Param::BigInt(limit),
            Param::Double(lease_for.as_secs_f64()),
            Param::SmallInts(&classes),
            Param::Ints(&weights),
        ],
    )
    .load::<LeasedJob>(conn)
}

/// A lease that tripped `jobs_one_running_per_key` is an empty lease; jobs come back in dispatch order.
fn lease_result(owner: &str, result: Result<Vec<LeasedJob>, DbError>) -> Result<Vec<LeasedJob>, DbError> {
    match result {
        Err(e) if e.is_unique_violation() => {
            LEASE_CONFLICTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(owner, error = %e, "lease raced another lease on jobs_one_running_per_key; empty lease");
            Ok(Vec::new())
        }
        Ok(mut jobs) => {
            jobs.sort_by_key(|j| (j.priority, j.source_created_at, j.id));
            Ok(jobs)
        }
        other => other,
    }
}

/// When the next key head in backoff becomes due (`None` when no head waits): an idle pool sleeps until then at the
/// latest, so a retry runs on time without polling. Heads already due are not counted (they are running or their
/// key is busy; whatever frees them notifies). Served by `job_heads_dispatch`, one probe per class.
pub const NEXT_DUE_SQL: &str = "SELECT min(d.at) AS at FROM unnest($1::int2[]) AS c(class) \
     CROSS JOIN LATERAL (SELECT min(h.run_at) AS at FROM job_heads h WHERE h.class = c.class AND h.run_at > now()) d";

/// See [`NEXT_DUE_SQL`].
pub fn next_due(conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>, DbError> {
    #[derive(QueryableByName)]
    struct At {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        at: Option<DateTime<Utc>>,
    }
    let classes: Vec<i16> = DispatchClass::ALL.iter().map(|c| *c as i16).collect();
    let row: At = Prepared::new(NEXT_DUE_SQL, vec![Param::SmallInts(&classes)]).get_result(conn)?;
    Ok(row.at)
}

/// Vacuums `job_heads`, skipping it when another vacuum holds it (`SKIP_LOCKED`: replicas never wait on each other).
///
/// Why the queue does it itself: every head move is a non-HOT update (`run_at` and `head_id` are indexed), so a busy
/// queue leaves dead entries at the front of `job_heads_dispatch`, exactly where every lease starts its scan, and the
/// lease slows down with every completion until they are removed. Autovacuum looks at a database once a minute at
/// best; a table rewritten thousands of times a second needs it every second. The table holds one row per key with
/// live work, so a vacuum of it costs milliseconds. Not in a transaction (VACUUM refuses one).
pub fn vacuum_heads(conn: &mut PgConnection) -> Result<(), DbError> {
    diesel::sql_query("VACUUM (SKIP_LOCKED) job_heads").execute(conn)?;
    Ok(())
}

static LEASE_CONFLICTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many leases in this process were turned into empty leases because they tripped `jobs_one_running_per_key`
/// (a concurrent enqueue of an earlier job for a key being leased). Diagnostics and tests.
pub fn lease_conflicts() -> u64 {
    LEASE_CONFLICTS.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The heartbeat statement (`$1` ids, `$2` their tokens, `$3` lease seconds).
pub const HEARTBEAT_SQL: &str =
    "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now() \
     FROM unnest($1::bigint[], $2::bigint[]) AS l(id, token) \
     WHERE jobs.id = l.id AND jobs.lease_token = l.token AND jobs.state = 'running' RETURNING jobs.id";

/// Renews `leases`; returns the ids still held (a missing id lost its lease: reclaimed, and maybe leased again
/// under another token, or finalized).
pub fn heartbeat(conn: &mut PgConnection, leases: &[Lease], lease_for: Duration) -> Result<Vec<i64>, DbError> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, tokens) = split(leases);
    let params = vec![
        Param::BigInts(&ids),
        Param::BigInts(&tokens),
        Param::Double(lease_for.as_secs_f64()),
    ];
    let rows: Vec<Id> = Prepared::new(HEARTBEAT_SQL, params).load(conn)?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// The batched completion statement (`$1` ids, `$2` their tokens).
pub const COMPLETE_SQL: &str = "UPDATE jobs SET state = 'succeeded', lease_owner = NULL, lease_token = NULL, \
            lease_expires_at = NULL, finished_at = now(), updated_at = now() \
     FROM unnest($1::bigint[], $2::bigint[]) AS l(id, token) \
     WHERE jobs.id = l.id AND jobs.lease_token = l.token AND jobs.state = 'running' RETURNING jobs.id";

/// Marks `leases` succeeded, fenced on each lease's token and `state = 'running'`; returns the ids actually
/// finalized (the rest lost their lease to the watchdog and another try owns them now). A cancel requested while
/// the job ran does not undo a success: the side effect happened.
pub fn complete_many(conn: &mut PgConnection, leases: &[Lease]) -> Result<Vec<i64>, DbError> {
    debug_assert!(JobState::Running.can_transition_to(JobState::Succeeded));
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, tokens) = split(leases);
    let rows: Vec<Id> = Prepared::new(COMPLETE_SQL, vec![Param::BigInts(&ids), Param::BigInts(&tokens)]).load(conn)?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// How a try ended, for [`finish`].
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Succeeded,
    /// Correctly skipped (e.g. account disabled).
    Ineligible {
        code: ErrorCode,
        detail: String,
    },
    /// Permanent failure.
    Failed {
        code: ErrorCode,
        message: String,
    },
    /// Transient failure: try again at `run_at`, unless the job is older than `max_age`.
    Retry {
        code: ErrorCode,
        message: String,
        run_at: DateTime<Utc>,
        max_age: Duration,
    },
    /// The handler panicked: a `handler_panicked` retry at `run_at` (within `max_age`), until this is the job's
    /// `limit`-th panic; then it fails permanently with `handler_panicked`, keeping `message`.
    Panicked {
        message: String,
        run_at: DateTime<Utc>,
        max_age: Duration,
        limit: i32,
    },
}

/// What [`finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The job moved to this state.
    Applied(JobState),
    /// The caller no longer holds the lease (reclaimed by the watchdog); nothing was written.
    LostLease,
}

/// Finalizes one try, fenced on its lease token: the row is locked and only changed while it is still `running`
/// under this very lease. A pending cancel turns a retry or failure into `cancelled`. A retry past `max_age` (from
/// created_at) becomes `failed` with `retry_window_exhausted`, keeping the last error text. A panic at the limit
/// becomes `failed` with `handler_panicked`.
pub fn finish(conn: &mut PgConnection, lease: Lease, outcome: &Finish) -> Result<Finished, DbError> {
    let id = lease.id;
    conn.transaction(|conn| {
        let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>, i32)> = jobs::table
            .find(id)
            .filter(jobs::lease_token.eq(lease.token))
            .filter(jobs::state.eq(JobState::Running.as_str()))
            .select((jobs::created_at, jobs::cancel_requested_at, jobs::panic_count))
            .for_update()
            .first(conn)
            .optional()?;
        let Some((created_at, cancel_requested, panic_count)) = row else {
            return Ok(Finished::LostLease);
        };
        let now = Utc::now();
        let panics = panic_count + i32::from(matches!(outcome, Finish::Panicked { .. }));
        let panicked_at_limit = matches!(outcome, Finish::Panicked { limit, .. } if panics >= *limit);
        let retry_within = |code: ErrorCode, message: &str, run_at: DateTime<Utc>, max_age: Duration| {
            let age = (now - created_at).to_std().unwrap_or_default();
            if age >= max_age {
                (
                    JobState::Failed,
                    Some(ErrorCode::RetryWindowExhausted),
                    Some(format!(
                        "gave up after {}s of transient failures; last {code}: {message}",
                        age.as_secs()
                    )),
                    None,
                )
            } else {
                (JobState::Queued, Some(code), Some(message.to_string()), Some(run_at))
            }
        };
        let (state, code, message, run_at): (JobState, Option<ErrorCode>, Option<String>, Option<DateTime<Utc>>) =
            match outcome {
                Finish::Succeeded => (JobState::Succeeded, None, None, None),
                Finish::Ineligible { code, detail } => (JobState::Ineligible, Some(*code), Some(detail.clone()), None),
                _ if cancel_requested.is_some() => {
                    let (code, message) = match outcome {
                        Finish::Failed { code, message } | Finish::Retry { code, message, .. } => (*code, message),
                        Finish::Panicked { message, .. } => (ErrorCode::HandlerPanicked, message),
                        Finish::Succeeded | Finish::Ineligible { .. } => unreachable!("matched above"),
                    };
                    (
                        JobState::Cancelled,
                        Some(ErrorCode::Cancelled),
                        Some(format!("cancelled after {code}: {message}")),
                        None,
                    )
                }
                Finish::Failed { code, message } => (JobState::Failed, Some(*code), Some(message.clone()), None),
                Finish::Retry {
                    code,
                    message,
                    run_at,
                    max_age,
                } => retry_within(*code, message, *run_at, *max_age),
                Finish::Panicked { message, limit, .. } if panicked_at_limit => (
                    JobState::Failed,
                    Some(ErrorCode::HandlerPanicked),
                    Some(format!(
                        "panicked {panics} times (PANIC_LIMIT {limit}); parked as permanent. last: {message}"
                    )),
                    None,
                ),
                Finish::Panicked {
                    message,
                    run_at,
                    max_age,
                    ..
                } => retry_within(ErrorCode::HandlerPanicked, message, *run_at, *max_age),
            };
        debug_assert!(JobState::Running.can_transition_to(state));
        let finished_at = state.is_terminal().then_some(now);
        // A success leaves the previous error fields alone (history of earlier tries); every other outcome records
        // its code and text.
        let update = diesel::update(jobs::table.find(id));
        let set_common = (
            jobs::state.eq(state.as_str()),
            jobs::lease_owner.eq(None::<String>),
            jobs::lease_token.eq(None::<i64>),
            jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
            jobs::finished_at.eq(finished_at),
            jobs::run_at.eq(run_at.unwrap_or(now)),
            jobs::panic_count.eq(panics),
            jobs::updated_at.eq(now),
        );
        match code {
            Some(code) => update
                .set((
                    set_common,
                    jobs::last_error_code.eq(code.as_str()),
                    jobs::last_error.eq(message),
                ))
                .execute(conn)?,
            None => update.set(set_common).execute(conn)?,
        };
        Ok(Finished::Applied(state))
    })
}

/// Exponential backoff with a floor after the try numbered `attempt` (1 = first try) failed: a uniform delay in
/// `[ceiling / 2, ceiling]` where `ceiling = min(cap, base * 2^attempt)` ("equal jitter"). With the defaults (5 s,
/// 1 h) that is 5–10 s after the first failure, reaching the cap after the ninth. Full jitter (`[0, ceiling]`) was
/// replaced because a draw near zero re-leases at once, which is exactly the storm a backoff must prevent.
pub fn backoff(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let ceiling = backoff_ceiling(attempt, base, cap);
    ceiling.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// The upper bound [`backoff`] draws from: `min(cap, base * 2^attempt)` (saturating).
pub fn backoff_ceiling(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.clamp(0, 31) as u32;
    base.saturating_mul(2u32.saturating_pow(exp)).min(cap)
}

/// The delay before the next try: `max(server hint, backoff(attempt))`, capped at `cap`. A server's `Retry-After`
/// can lengthen the wait (up to `cap`: a hostile or buggy server cannot park a job for a week) but never shorten it
/// below the backoff: `Retry-After: 0` or a `RateLimit-Reset` in the past would otherwise re-lease at once and
/// re-download the video in a tight loop.
pub fn retry_delay(attempt: i32, retry_after: Option<Duration>, base: Duration, cap: Duration) -> Duration {
    let backoff = backoff(attempt, base, cap);
    retry_after.map_or(backoff, |hint| hint.max(backoff)).min(cap)
}

/// Puts unfinished jobs back in the queue at shutdown, fenced on each lease's token (`owner` only names the
/// releasing process in `last_error`). The interrupted try is not counted (the attempt counter goes back by one):
/// the process gave the work up, the work did not fail.
/// The release statement (`$1` owner, `$2` ids, `$3` their tokens).
pub const RELEASE_SQL: &str =
    "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, \
            run_at = now(), attempt = GREATEST(jobs.attempt - 1, 0), last_error_code = 'released_at_shutdown', \
            last_error = 'released by ' || $1 || ' during graceful shutdown', updated_at = now() \
     FROM unnest($2::bigint[], $3::bigint[]) AS l(id, token) \
     WHERE jobs.id = l.id AND jobs.lease_token = l.token AND jobs.state = 'running'";

pub fn release(conn: &mut PgConnection, owner: &str, leases: &[Lease]) -> Result<usize, DbError> {
    debug_assert!(JobState::Running.can_transition_to(JobState::Queued));
    if leases.is_empty() {
        return Ok(0);
    }
    let (ids, tokens) = split(leases);
    Ok(diesel::sql_query(RELEASE_SQL)
        .bind::<Text, _>(owner)
        .bind::<Array<BigInt>, _>(&ids)
        .bind::<Array<BigInt>, _>(&tokens)
        .execute(conn)?)
}

/// A job the watchdog put back in the queue (`state` queued), cancelled, or parked (`state` failed, code
/// `suspected_poison`).
#[derive(Debug, Clone, QueryableByName)]
pub struct Reclaimed {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: JobKind,
    #[diesel(sql_type = Text)]
    pub state: JobState,
    #[diesel(sql_type = Int4)]
    pub reclaim_count: i32,
}

impl Reclaimed {
    /// Whether this reclaim parked the job as a suspected poison job.
    pub fn parked(&self) -> bool {
        self.state == JobState::Failed
    }
}

/// How the watchdog treats expired leases: reclaim number `n` re-queues after `backoff(n, base, cap)`; reclaim
/// number `limit` parks the job (`failed`, `suspected_poison`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub limit: i32,
}

/// The watchdog statement (`$1` backoff base seconds, `$2` cap seconds, `$3` reclaim limit). The backoff is the
/// SQL twin of [`backoff`]: `min(cap, base * 2^n) * uniform[0.5, 1]`.
pub const RECLAIM_SQL: &str = "WITH expired AS ( \
       SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < now() \
       ORDER BY lease_expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED) \
     UPDATE jobs SET \
       state = CASE WHEN jobs.cancel_requested_at IS NOT NULL THEN 'cancelled' \
                    WHEN jobs.reclaim_count + 1 >= $3 THEN 'failed' ELSE 'queued' END, \
       finished_at = CASE WHEN jobs.cancel_requested_at IS NULL AND jobs.reclaim_count + 1 < $3 THEN NULL \
                     ELSE now() END, \
       last_error_code = CASE WHEN jobs.cancel_requested_at IS NOT NULL THEN 'cancelled' \
                         WHEN jobs.reclaim_count + 1 >= $3 THEN 'suspected_poison' ELSE 'lease_expired' END, \
       last_error = CASE WHEN jobs.cancel_requested_at IS NULL AND jobs.reclaim_count + 1 >= $3 \
                      THEN 'suspected poison job: parked after ' || (jobs.reclaim_count + 1) \
                        || ' expired leases (RECLAIM_LIMIT); last: ' ELSE '' END \
         || 'lease of ' || jobs.lease_owner || ' expired at ' || jobs.lease_expires_at \
         || ' (try ' || jobs.attempt || ' not finished; reclaimed by the watchdog)', \
       reclaim_count = jobs.reclaim_count + 1, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, \
       run_at = now() + make_interval(secs => \
         LEAST($2, $1 * power(2, LEAST(jobs.reclaim_count + 1, 31))) * (0.5 + random() / 2)), \
       updated_at = now() \
     FROM expired WHERE jobs.id = expired.id \
     RETURNING jobs.id, jobs.kind, jobs.state, jobs.reclaim_count";

/// Watchdog: running jobs whose lease expired go back to `queued` after a backoff on their reclaim count, or to
/// `cancelled` when a cancel was requested, or — at `policy.limit` reclaims — to `failed` with `suspected_poison`.
/// The attempt counter is untouched (the next lease counts the next real try); `reclaim_count` and the error fields
/// record why. Safe to run from every replica at once (`SKIP LOCKED`).
pub fn reclaim_expired(conn: &mut PgConnection, policy: &ReclaimPolicy) -> Result<Vec<Reclaimed>, DbError> {
    debug_assert!(JobState::Running.can_transition_to(JobState::Queued));
    debug_assert!(JobState::Running.can_transition_to(JobState::Cancelled));
    debug_assert!(JobState::Running.can_transition_to(JobState::Failed));
    const BATCH: usize = 1000;
    let mut all = Vec::new();
    loop {
        let batch: Vec<Reclaimed> = diesel::sql_query(RECLAIM_SQL)
            .bind::<Double, _>(policy.base.as_secs_f64())
            .bind::<Double, _>(policy.cap.as_secs_f64())
            .bind::<Int4, _>(policy.limit)
            .load(conn)?;
        let n = batch.len();
        all.extend(batch);
        if n < BATCH {
            return Ok(all);
        }
    }
}

/// Cancels one job: queued → cancelled at once; running → cancel requested (honoured at finalize). Returns false
/// when the job does not exist or is already finished.
pub fn cancel(conn: &mut PgConnection, id: i64) -> Result<bool, DbError> {
    let now = Utc::now();
    let queued = diesel::update(jobs::table.find(id).filter(jobs::state.eq(JobState::Queued.as_str())))
        .set((
            jobs::state.eq(JobState::Cancelled.as_str()),
            jobs::finished_at.eq(now),
            jobs::updated_at.eq(now),
            jobs::last_error_code.eq("cancelled"),
        ))
        .execute(conn)?;
    if queued == 1 {
        return Ok(true);
    }
    let running = diesel::update(jobs::table.find(id).filter(jobs::state.eq(JobState::Running.as_str())))
        .set((jobs::cancel_requested_at.eq(now), jobs::updated_at.eq(now)))
        .execute(conn)?;
    Ok(running == 1)
}

/// States an operator retry may re-queue (see [`JobState::can_transition_to`]); `succeeded` is not one of them.
const RETRYABLE: [&str; 3] = ["failed", "cancelled", "ineligible"];

/// Operator retry: failed / cancelled / ineligible → queued, runnable now. Returns false when the job does not exist
/// or is not in one of those states.
///
/// The attempt count is kept (history stays honest: the next lease counts the next real try) and `created_at` is
/// not changed, so the retry window is not reset: a job that already exhausted `RETRY_MAX_AGE_SECS` gets exactly
/// one more try per operator retry before a transient failure fails it again with `retry_window_exhausted`. The
/// re-queued job keeps its place in its key's order: it becomes the head again and later jobs of the key wait for it.
pub fn retry(conn: &mut PgConnection, id: i64) -> Result<bool, DbError> {
    debug_assert!(RETRYABLE.iter().all(|s| s
        .parse::<JobState>()
        .is_ok_and(|s| s.can_transition_to(JobState::Queued))));
    let now = Utc::now();
    let n = diesel::update(jobs::table.find(id).filter(jobs::state.eq_any(RETRYABLE)))
        .set((
            jobs::state.eq(JobState::Queued.as_str()),
            jobs::run_at.eq(now),
            jobs::finished_at.eq(None::<DateTime<Utc>>),
            jobs::cancel_requested_at.eq(None::<DateTime<Utc>>),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// Operator retry of every `failed` job (optionally of one kind) in one statement; returns how many were re-queued.
/// Same attempt and window rules as [`retry`].
pub fn retry_failed(conn: &mut PgConnection, kind: Option<JobKind>) -> Result<usize, DbError> {
    debug_assert!(JobState::Failed.can_transition_to(JobState::Queued));
    let now = Utc::now();
    let mut q = diesel::update(jobs::table)
        .filter(jobs::state.eq(JobState::Failed.as_str()))
        .into_boxed();
    if let Some(k) = kind {
        q = q.filter(jobs::kind.eq(k.as_str()));
    }
    Ok(q.set((
        jobs::state.eq(JobState::Queued.as_str()),
        jobs::run_at.eq(now),
        jobs::finished_at.eq(None::<DateTime<Utc>>),
        jobs::cancel_requested_at.eq(None::<DateTime<Utc>>),
        jobs::updated_at.eq(now),
    ))
    .execute(conn)?)
}

/// Ids of failed jobs (optionally of one kind), oldest first, for `jobs retry --failed`.
pub fn failed_ids(conn: &mut PgConnection, kind: Option<JobKind>) -> Result<Vec<i64>, DbError> {
    let mut q = jobs::table
        .filter(jobs::state.eq(JobState::Failed.as_str()))
        .select(jobs::id)
        .into_boxed();
    if let Some(k) = kind {
        q = q.filter(jobs::kind.eq(k.as_str()));
    }
    Ok(q.order(jobs::id).load(conn)?)
}

/// Enqueues `job`, or re-drives the existing job holding its unique key; returns the id of the job that will run
/// (`None` only when nothing was enqueued, which cannot happen for a job without a unique key). Used by
/// `accounts reprovision` and account re-enable. Runs in one transaction, the existing row locked:
/// - no row with the key → a fresh job (as [`enqueue`]);
/// - queued or running → left alone (it is about to run or running; its id is returned);
/// - failed / cancelled / ineligible → re-queued as by [`retry`] (attempt kept);
/// - succeeded → that row cannot leave `succeeded` (its side effect happened), so it keeps its history and gives its
///   unique key up (renamed `<key>@<id>`), and a fresh job takes the key.
pub fn requeue_or_enqueue(conn: &mut PgConnection, job: &NewJob) -> Result<Option<i64>, DbError> {
    let Some(key) = job.unique_key.as_deref() else {
        return enqueue(conn, job);
    };
    conn.transaction(|conn| {
        if let Some(id) = enqueue(conn, job)? {
            return Ok(Some(id));
        }
        let existing: Option<(i64, JobState)> = jobs::table
            .filter(jobs::unique_key.eq(key))
            .select((jobs::id, jobs::state))
            .for_update()
            .first(conn)
            .optional()?;
        let Some((id, state)) = existing else {
            // Lost a race with a concurrent re-drive that renamed the key away; enqueue against the new holder.
            return enqueue(conn, job);
        };
        match state {
            JobState::Queued | JobState::Running => Ok(Some(id)),
            JobState::Failed | JobState::Cancelled | JobState::Ineligible => {
                retry(conn, id)?;
                Ok(Some(id))
            }
            JobState::Succeeded => {
                diesel::update(jobs::table.find(id))
                    .set((
                        jobs::unique_key.eq(format!("{key}@{id}")),
                        jobs::updated_at.eq(Utc::now()),
                    ))
                    .execute(conn)?;
                enqueue(conn, job)
            }
        }
    })
}

/// Filter for [`list`]; `None` fields match everything.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<JobKind>,
    pub ordering_key: Option<String>,
    /// The account (lower-case hex pubkey) a job belongs to: `payload.account` (see [`NewJob::for_account`]).
    pub account: Option<String>,
}

/// Jobs matching `filter`, newest first, at most `limit` (clamped to 1..=10,000), for the operator CLI.
pub fn list(conn: &mut PgConnection, filter: &JobFilter, limit: i64) -> Result<Vec<JobRow>, DbError> {
    let mut q = jobs::table.select(JobRow::as_select()).into_boxed();
    if let Some(s) = filter.state {
        q = q.filter(jobs::state.eq(s.as_str()));
    }
    if let Some(k) = filter.kind {
        q = q.filter(jobs::kind.eq(k.as_str()));
    }
    if let Some(key) = &filter.ordering_key {
        q = q.filter(jobs::ordering_key.eq(key));
    }
    if let Some(account) = &filter.account {
        q = q.filter(jobs::payload.retrieve_as_text("account").eq(account));
    }
    Ok(q.order(jobs::id.desc()).limit(limit.clamp(1, 10_000)).load(conn)?)
}

/// How many jobs of `account` (`payload.account`) are in each state, by state name, for `accounts show`: the
/// per-account summary of the same rows [`list`] lists (states without a job are left out).
pub fn count_by_state_for_account(conn: &mut PgConnection, account: &str) -> Result<Vec<(JobState, i64)>, DbError> {
    Ok(jobs::table
        .filter(jobs::payload.retrieve_as_text("account").eq(account))
        .group_by(jobs::state)
        .select((jobs::state, diesel::dsl::count_star()))
        .order(jobs::state)
        .load(conn)?)
}

/// A job row for operators.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: i64,
    pub kind: JobKind,
    pub ordering_key: String,
    pub unique_key: Option<String>,
    pub state: JobState,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub attempt: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub reclaim_count: i32,
    pub lease_token: Option<i64>,
    pub panic_count: i32,
    pub last_error: Option<String>,
    pub last_error_code: Option<String>,
    pub source_created_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One job by id.
pub fn get(conn: &mut PgConnection, id: i64) -> Result<Option<JobRow>, DbError> {
    Ok(jobs::table
        .find(id)
        .select(JobRow::as_select())
        .first(conn)
        .optional()?)
}

/// Counts per (kind, state) of the LIVE states and the age of the oldest queued job per kind, for the gauges. The age
/// counts from the source event (`source_created_at`: the post's `created_at`, or the enqueue time for jobs without an
/// event) and includes jobs waiting out a backoff: a post retrying for days is days old, not as young as its last retry.
/// History imported at backfill priority (`priority >= states::priority::BACKFILL`, 10) counts from its enqueue
/// time instead: a post from last year imported on opt-in is not a stalled queue.
#[derive(Debug, Clone, QueryableByName)]
pub struct QueueStat {
    #[diesel(sql_type = Text)]
    pub kind: JobKind,
    #[diesel(sql_type = Text)]
    pub state: JobState,
    #[diesel(sql_type = BigInt)]
    pub count: i64,
    #[diesel(sql_type = Double)]
    pub oldest_age_secs: f64,
}

/// The states [`stats`] counts: the live ones. Terminal rows are history (counted by `bridge_jobs_finished_total`
/// when they finish); counting them made every gauge refresh scan the whole table.
pub const STATS_STATES: [JobState; 2] = [JobState::Queued, JobState::Running];

/// The gauge query. Index-bound: it reads only the partial index `jobs_live_kind_state` (kind, state, run_at WHERE
/// state IN ('queued', 'running')), so its cost follows the backlog, never the number of finished jobs.
pub const STATS_SQL: &str = "SELECT kind, state, count(*) AS count, \
        COALESCE(EXTRACT(EPOCH FROM now() - min(CASE WHEN priority >= 10 THEN created_at ELSE source_created_at END) \
          FILTER (WHERE state = 'queued')), 0)::float8 \
          AS oldest_age_secs \
     FROM jobs WHERE state IN ('queued', 'running') GROUP BY kind, state";

/// Gauge source: one GROUP BY over the live states ([`STATS_SQL`]); terminal states are not reported.
pub fn stats(conn: &mut PgConnection) -> Result<Vec<QueueStat>, DbError> {
    // The statement's `priority >= 10` is the backfill priority.
    const _: () = assert!(crate::states::priority::BACKFILL == 10);
    Ok(diesel::sql_query(STATS_SQL).load(conn)?)
}

/// Running jobs whose lease already expired (the `bridge_expired_leases` gauge).
pub fn expired_lease_count(conn: &mut PgConnection) -> Result<i64, DbError> {
    Ok(jobs::table
        .filter(jobs::state.eq(JobState::Running.as_str()))
        .filter(jobs::lease_expires_at.lt(Utc::now()))
        .count()
        .get_result(conn)?)
}

// ---------------------------------------------------------------------------------------------------------------
// Retention (issue 9 §6)
// ---------------------------------------------------------------------------------------------------------------

/// One prune batch: terminal jobs (`finished_at IS NOT NULL` ⇔ succeeded/failed/cancelled/ineligible, by the
/// `jobs_finished_matches_state` constraint) finished before `$1`, oldest first, at most `$2` rows. Walks the partial
/// index `jobs_finished_at`; `SKIP LOCKED` lets several replicas prune at once without waiting on each other (or on
/// an operator's `jobs retry`, which locks the row it moves back to `queued`). Live jobs are never touched.
pub const PRUNE_SQL: &str = "DELETE FROM jobs WHERE id IN ( \
       SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 \
       ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Deletes one batch of terminal jobs finished before `finished_before` (at most `batch` rows); returns how many.
/// Callers repeat until it returns less than `batch`.
///
/// Idempotency after pruning does not rest on the job row: a pruned job's unique key is free again, so a redelivered
/// event enqueues a new job, and that job converges on the ledger instead of repeating work — `publish_post` finds
/// the event's `record_mappings` row (published → `AlreadyDone`, deleted/superseded → ineligible) and the author's
/// tombstones, `delete_post` re-applies tombstones (an upsert) and skips records already deleted, `sync_profile`
/// is either superseded by a newer claimed profile or re-puts the same profile record (an identical `putRecord`). Those tables are never pruned.
pub fn prune_finished(conn: &mut PgConnection, finished_before: DateTime<Utc>, batch: i64) -> Result<usize, DbError> {
    Ok(diesel::sql_query(PRUNE_SQL)
        .bind::<Timestamptz, _>(finished_before)
        .bind::<BigInt, _>(batch.max(1))
        .execute(conn)?)
}

// ---------------------------------------------------------------------------------------------------------------
// Operator status (issue 14 §4: `divine-atbridge status`)
// ---------------------------------------------------------------------------------------------------------------

/// One kind's line of `divine-atbridge status`.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct KindStatus {
    #[diesel(sql_type = Text)]
    pub kind: JobKind,
    #[diesel(sql_type = BigInt)]
    pub queued: i64,
    #[diesel(sql_type = BigInt)]
    pub running: i64,
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
    /// Seconds the oldest runnable job (queued, `run_at` passed) has been runnable; `None` when none is.
    #[diesel(sql_type = Nullable<Double>)]
    pub oldest_runnable_secs: Option<f64>,
}

/// Per kind: queued, running and failed counts and the age of the oldest runnable job (from its `run_at`: how long
/// it has been waiting for a worker, backoff not counted). Counts `failed` too, so unlike [`STATS_SQL`] it reads the
/// failed rows; an operator command, not a gauge refresh.
pub const KIND_STATUS_SQL: &str = "SELECT kind, \
        count(*) FILTER (WHERE state = 'queued') AS queued, \
        count(*) FILTER (WHERE state = 'running') AS running, \
        count(*) FILTER (WHERE state = 'failed') AS failed, \
        EXTRACT(EPOCH FROM now() - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now()))::float8 \
          AS oldest_runnable_secs \
     FROM jobs WHERE state IN ('queued', 'running', 'failed') GROUP BY kind ORDER BY kind";

/// [`KIND_STATUS_SQL`]: kinds without a queued, running or failed job are left out.
pub fn kind_status(conn: &mut PgConnection) -> Result<Vec<KindStatus>, DbError> {
    Ok(diesel::sql_query(KIND_STATUS_SQL).load(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes the watchdog and the shutdown release write from SQL (`last_error_code = '…'`) are `ErrorCode`s, as
    /// every code written from Rust is by type: none can drift from the enum and its runbook entry.
    #[test]
    fn codes_written_by_sql_are_error_codes() {
        let mut seen = 0;
        for sql in [RECLAIM_SQL, RELEASE_SQL] {
            let start = sql.find("last_error_code =").expect("the statement writes a code") + "last_error_code =".len();
            let end = start + sql[start..].find("last_error =").expect("then the message");
            for (i, part) in sql[start..end].split('\'').enumerate() {
                if i % 2 == 1 {
                    part.parse::<ErrorCode>().unwrap_or_else(|e| panic!("{e}"));
                    seen += 1;
                }
            }
        }
        assert_eq!(
            seen, 4,
            "cancelled, suspected_poison, lease_expired, released_at_shutdown"
        );
    }
}
