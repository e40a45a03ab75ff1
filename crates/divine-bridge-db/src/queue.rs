//! The durable job queue over the `jobs` table: enqueue (idempotent by unique key), lease, heartbeat, fenced
//! finalize, backoff, cancel and watchdog reclaim. Every state change goes through the transitions declared in
//! [`crate::states::JobState`]. This module owns job rows only; it never runs jobs (see divine-atbridge `worker`).
//!
//! Unique-key conventions (callers must use these so enqueue is idempotent across replicas):
//! `provision:<pubkey>`, `publish:<event id>`, `delete:<kind-5 event id>`, `profile:<event id>`,
//! `backfill:<pubkey>:<generation>`.

use crate::error::DbError;
use crate::schema::jobs;
use crate::states::{JobKind, JobState};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: JobKind,
    /// Serialisation key: at most one running job per key (the account's Nostr pubkey).
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

/// Enqueues `job`; returns its id, or `None` when a job with the same unique key already exists (in any state).
/// Works inside a caller's transaction, so a record and its job can be written atomically.
pub fn enqueue(conn: &mut PgConnection, job: &NewJob) -> Result<Option<i64>, DbError> {
    let now = Utc::now();
    let row = InsertJob {
        kind: job.kind.as_str(),
        ordering_key: &job.ordering_key,
        unique_key: job.unique_key.as_deref(),
        payload: &job.payload,
        priority: job.priority,
        run_at: job.run_at.unwrap_or(now),
        source_created_at: job.source_created_at.unwrap_or(now),
    };
    let id = diesel::insert_into(jobs::table)
        .values(&row)
        .on_conflict(jobs::unique_key)
        .do_nothing()
        .returning(jobs::id)
        .get_result::<i64>(conn)
        .optional()
        .map_err(DbError::from_diesel)?;
    if id.is_some() {
        metrics::counter!("bridge_jobs_enqueued_total", "kind" => job.kind.as_str()).increment(1);
    }
    Ok(id)
}

/// Cancels every queued job of `kinds` for `ordering_key` (queued → cancelled at once) and requests cancellation of
/// running ones (honoured at finalize). Returns the number of jobs affected.
pub fn cancel_for_key(conn: &mut PgConnection, ordering_key: &str, kinds: &[JobKind]) -> Result<usize, DbError> {
    debug_assert!(JobState::Queued.can_transition_to(JobState::Cancelled));
    let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    let now = Utc::now();
    let queued = diesel::update(
        jobs::table
            .filter(jobs::ordering_key.eq(ordering_key))
            .filter(jobs::kind.eq_any(&kinds))
            .filter(jobs::state.eq(JobState::Queued.as_str())),
    )
    .set((
        jobs::state.eq(JobState::Cancelled.as_str()),
        jobs::finished_at.eq(now),
        jobs::updated_at.eq(now),
        jobs::last_error_code.eq("cancelled"),
    ))
    .execute(conn)?;
    let running = diesel::update(
        jobs::table
            .filter(jobs::ordering_key.eq(ordering_key))
            .filter(jobs::kind.eq_any(&kinds))
            .filter(jobs::state.eq(JobState::Running.as_str()))
            .filter(jobs::cancel_requested_at.is_null()),
    )
    .set((jobs::cancel_requested_at.eq(now), jobs::updated_at.eq(now)))
    .execute(conn)?;
    Ok(queued + running)
}
