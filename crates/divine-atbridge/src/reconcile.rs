//! The reconciliation sweep: the zero-loss guarantee behind the live path. Periodically, one leader compares every
//! enabled account's recent history on the relays with what the bridge holds (`jobs`, `record_mappings`,
//! `nostr_tombstones`, `profile_sync`) and enqueues what is missing; it re-drives jobs that ended
//! `retry_window_exhausted`. What it finds is counted in `bridge_reconcile_found_total{reason}`: in a healthy system
//! every reason stays 0, so the counters are the measurement of loss (alert `DivineBridgeReconcileFoundMissing`).
//!
//! Owns the leader lock, the sweep window and the found counters. It must not admit, build or translate anything
//! itself: events pass [`ingest::admit`] (the one admission path) and become jobs through [`ingest::enqueue_event`]
//! (the one constructor, unique keys included); failed jobs go back through [`queue::retry`].
//!
//! Semantics:
//! 1. **One leader.** The sweep runs only on the replica holding the session-level advisory lock [`LOCK_KEY`]
//!    ([`TRY_LOCK_SQL`]) on a dedicated connection (never a pooled one: returned to the pool it would keep the lock
//!    without a sweeper). Other replicas retry every interval. The lock dies with the leader's session (crash, pod
//!    kill, Postgres restart), and the leader checks it still holds it ([`HOLDS_LOCK_SQL`]) before every sweep, so a
//!    connection lost silently ends its leadership instead of leaving two sweepers.
//! 2. **Window.** A sweep reads, per relay and paged ([`ingest::fetch_history`]), every event of the enabled authors
//!    with `now − RECONCILE_WINDOW_SECS ≤ created_at ≤ now − RECONCILE_GRACE_SECS`. The grace keeps the sweep off
//!    events the live path is delivering right now. Back-dated events are found as long as their `created_at` is
//!    inside the window, whenever they reached the relay.
//! 3. **Missing** means: no job holds the event's unique key AND its result is not recorded either (publish: a
//!    `record_mappings` row; delete: a tombstone written by this delete event; profile: a synced profile at least as
//!    new). The second test keeps the sweep correct after job retention deleted old finished jobs. A missing event
//!    is enqueued at LIVE priority and counted under its reason only if this sweep's enqueue created the job (a
//!    concurrent live delivery wins silently).
//! 4. **Retry window exhausted.** A `failed` job with `last_error_code = retry_window_exhausted` that finished inside
//!    the window is re-queued ([`queue::retry`]: attempt and window kept, so it gets exactly one more try per
//!    sweep). Once the cause is fixed that try succeeds; while it is not, the job fails again and is counted again at
//!    the next sweep, so the alert keeps firing until someone fixes or cancels it.
//! 5. **Success** means every relay was read to the end and every database step succeeded: only then is
//!    `bridge_reconcile_last_success_timestamp_seconds` set (alert `DivineBridgeReconcileNotSucceeding`). What was
//!    found before a failure is still enqueued and counted.

use crate::ingest;
use crate::nostr::SUPPORTED_KINDS;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Timestamptz};
use divine_bridge_db::queue;
use divine_bridge_db::schema::{jobs, nostr_tombstones, profile_sync, record_mappings};
use divine_bridge_db::states::priority;
use divine_bridge_db::{Classified, Db, DbError, ErrorClass, ErrorCode, JobKind};
use nostr_sdk::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The advisory lock key of the sweep leader (`"RECN"`; below 2^31, so it shows in `pg_locks` as `classid = 0,
/// objid = LOCK_KEY, objsubid = 1`).
pub const LOCK_KEY: i64 = 0x5245_434e;
/// Takes the leader lock if free; `$1` = [`LOCK_KEY`].
pub const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1) AS ok";
/// True while this session holds the leader lock; `$1` = [`LOCK_KEY`].
pub const HOLDS_LOCK_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND pid = pg_backend_pid() AND classid = 0 AND objid = $1::oid AND objsubid = 1) AS ok";
/// Releases the leader lock at shutdown; `$1` = [`LOCK_KEY`].
pub const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock($1) AS ok";
/// Jobs to re-drive (semantics 4): `$1` = window start.
pub const EXHAUSTED_SQL: &str = "SELECT id FROM jobs WHERE state = 'failed' \
     AND last_error_code = 'retry_window_exhausted' AND finished_at >= $1 ORDER BY id LIMIT 10000";

/// Default `RECONCILE_INTERVAL_SECS` (5 min): well inside the 30-minute objective for what the sweep finds.
pub const DEFAULT_INTERVAL_SECS: u64 = 300;
/// Default `RECONCILE_WINDOW_SECS` (24 h).
pub const DEFAULT_WINDOW_SECS: u64 = 86_400;
/// Default `RECONCILE_PAGE_SIZE`: events per relay request (relays cap it further; paging continues).
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// Default `RECONCILE_GRACE_SECS`: events younger than this are the live path's.
pub const DEFAULT_GRACE_SECS: u64 = 60;
/// Time allowed for one page from one relay.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sweep settings (from env via `config`). `interval` zero = the sweep is off.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub relays: Vec<String>,
    pub interval: Duration,
    pub window: Duration,
    pub grace: Duration,
    pub page_size: usize,
    /// Authors per relay query (the live path's `NOSTR_AUTHORS_PER_SUBSCRIPTION`, the same relay cap).
    pub authors_per_query: usize,
}

/// Why the sweep enqueued or re-drove something: the `reason` label of `bridge_reconcile_found_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A video event with no job and no record.
    MissingPublish,
    /// A kind-5 delete with no job and no tombstone.
    MissingDelete,
    /// A profile event with no job and no synced profile as new.
    MissingProfile,
    /// A job that gave up after `RETRY_MAX_AGE_SECS` of transient failures, re-driven.
    RetryWindowExhausted,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::MissingPublish,
        Reason::MissingDelete,
        Reason::MissingProfile,
        Reason::RetryWindowExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingPublish => "missing_publish",
            Reason::MissingDelete => "missing_delete",
            Reason::MissingProfile => "missing_profile",
            Reason::RetryWindowExhausted => "retry_window_exhausted",
        }
    }

    fn missing(kind: JobKind) -> Option<Reason> {
        match kind {
            JobKind::PublishPost => Some(Reason::MissingPublish),
            JobKind::DeletePost => Some(Reason::MissingDelete),
            JobKind::SyncProfile => Some(Reason::MissingProfile),
            _ => None,
        }
    }
}

/// The `reason` labels, for pre-registering the counters at 0 (`metrics`).
pub fn reason_labels() -> impl Iterator<Item = &'static str> {
    Reason::ALL.iter().map(|r| r.as_str())
}

/// What one sweep found, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found(pub std::collections::BTreeMap<Reason, u64>);

impl Found {
    pub fn get(&self, reason: Reason) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }
    fn add(&mut self, reason: Reason, n: u64) {
        *self.0.entry(reason).or_default() += n;
    }
    fn merge(&mut self, other: Found) {
        for (r, n) in other.0 {
            self.add(r, n);
        }
    }
}

/// A sweep that did not complete (semantics 5).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A relay's history could not be read to the window's start.
    #[error("relay {relay} could not be read: {message}")]
    Relay { relay: String, message: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Classified for ReconcileError {
    fn code(&self) -> ErrorCode {
        match self {
            ReconcileError::Relay { .. } => ErrorCode::ReconcileRelayUnavailable,
            ReconcileError::Db(e) => e.code(),
        }
    }
    fn class(&self) -> ErrorClass {
        match self {
            ReconcileError::Relay { .. } => ErrorClass::Transient,
            ReconcileError::Db(e) => e.class(),
        }
    }
}

#[derive(QueryableByName)]
struct Ok_ {
    #[diesel(sql_type = Bool)]
    ok: bool,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The leader lock, held by a dedicated session (semantics 1). Dropping it closes the session, which releases the
/// lock.
pub struct Leader {
    conn: Arc<Mutex<PgConnection>>,
}

impl Leader {
    /// Takes the lock on a new connection to `database_url`; `Ok(None)` when another session holds it.
    pub async fn try_acquire(database_url: &str) -> Result<Option<Leader>, DbError> {
        let url = database_url.to_string();
        blocking(move || {
            let mut conn = PgConnection::establish(&url).map_err(|e| DbError::Pool(e.to_string()))?;
            let got: Ok_ = diesel::sql_query(TRY_LOCK_SQL)
                .bind::<BigInt, _>(LOCK_KEY)
                .get_result(&mut conn)?;
            Ok(got.ok.then(|| Leader {
                conn: Arc::new(Mutex::new(conn)),
            }))
        })
        .await
    }

    /// True while the session still holds the lock (false, or an error, once the connection was lost).
    pub async fn holds(&self) -> Result<bool, DbError> {
        let conn = self.conn.clone();
        blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            let held: Ok_ = diesel::sql_query(HOLDS_LOCK_SQL)
                .bind::<BigInt, _>(LOCK_KEY)
                .get_result(&mut *c)?;
            Ok(held.ok)
        })
        .await
    }

    /// Releases the lock and closes the session.
    pub async fn release(self) {
        let conn = self.conn.clone();
        let _ = blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            let _: Ok_ = diesel::sql_query(UNLOCK_SQL)
                .bind::<BigInt, _>(LOCK_KEY)
                .get_result(&mut *c)?;
            Ok(())
        })
        .await;
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, DbError> + Send + 'static) -> Result<T, DbError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DbError::Join(e.to_string()))?
}

/// Waits `d` or until shutdown; true when shutting down.
async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    };
    stopped || *shutdown.borrow()
}

/// The sweep loop: leader election, then one sweep per `interval` while leading. Returns on shutdown. With
/// `interval` zero it only waits for shutdown.
pub async fn run(db: Db, database_url: String, cfg: ReconcileConfig, mut shutdown: watch::Receiver<bool>) {
    if cfg.interval.is_zero() {
        tracing::info!("RECONCILE_INTERVAL_SECS=0: the reconciliation sweep is off");
        let _ = shutdown.wait_for(|s| *s).await;
        return;
    }
    metrics::gauge!(crate::metrics::RECONCILE_LEADER).set(0.0);
    // Exported at 0 by every replica with the sweep on, so "never succeeded anywhere" is visible (max over replicas
    // is the leader's last success).
    metrics::gauge!(crate::metrics::RECONCILE_LAST_SUCCESS).set(0.0);
    loop {
        match Leader::try_acquire(&database_url).await {
            Ok(Some(leader)) => {
                tracing::info!("reconciliation leader lock taken; sweeping every {:?}", cfg.interval);
                metrics::gauge!(crate::metrics::RECONCILE_LEADER).set(1.0);
                let stopping = lead(&db, &cfg, &leader, &mut shutdown).await;
                metrics::gauge!(crate::metrics::RECONCILE_LEADER).set(0.0);
                if stopping {
                    leader.release().await;
                    return;
                }
                drop(leader);
            }
            Ok(None) => tracing::debug!("another replica leads the reconciliation sweep"),
            Err(e) => tracing::warn!(code = %e.code(), error = %e, "reconciliation leader lock unavailable"),
        }
        if wait(&mut shutdown, cfg.interval).await {
            return;
        }
    }
}

/// Sweeps while the lock is held; true when shutting down, false when leadership was lost.
async fn lead(db: &Db, cfg: &ReconcileConfig, leader: &Leader, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        match leader.holds().await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                tracing::warn!("reconciliation leader lock lost; another replica may take over");
                return false;
            }
        }
        let _ = sweep_and_record(db, cfg).await;
        if wait(shutdown, cfg.interval).await {
            return true;
        }
    }
}

/// One sweep with its metrics: found counters, duration, last-success timestamp (semantics 5).
pub async fn sweep_and_record(db: &Db, cfg: &ReconcileConfig) -> Result<Found, ReconcileError> {
    let started = Instant::now();
    let (found, result) = sweep(db, cfg).await;
    for (reason, n) in &found.0 {
        metrics::counter!(crate::metrics::RECONCILE_FOUND, "reason" => reason.as_str()).increment(*n);
        if *n > 0 {
            tracing::warn!(
                code = "reconcile_found",
                reason = reason.as_str(),
                count = n,
                "reconciliation sweep found what the live path missed"
            );
        }
    }
    metrics::histogram!(crate::metrics::RECONCILE_SWEEP_DURATION).record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            metrics::gauge!(crate::metrics::RECONCILE_LAST_SUCCESS).set(Utc::now().timestamp() as f64);
            Ok(found)
        }
        Err(e) => {
            tracing::warn!(code = %e.code(), error = %e, "reconciliation sweep incomplete");
            Err(e)
        }
    }
}

/// One sweep (semantics 2–4). Returns what was found, and whether the sweep completed.
pub async fn sweep(db: &Db, cfg: &ReconcileConfig) -> (Found, Result<(), ReconcileError>) {
    let mut found = Found::default();
    let now = Utc::now();
    let window_start = now - chrono::Duration::from_std(cfg.window).unwrap_or(chrono::Duration::days(1));
    let grace_end = now - chrono::Duration::from_std(cfg.grace).unwrap_or_default();
    let authors = match db.run(ingest::load_enabled_authors).await {
        Ok(a) => a,
        Err(e) => return (found, Err(e.into())),
    };
    let mut failure: Option<ReconcileError> = None;
    if !authors.is_empty() && !cfg.relays.is_empty() && grace_end > window_start {
        let client = Client::default();
        for url in &cfg.relays {
            if let Err(e) = client.add_relay(url.as_str()).await {
                failure.get_or_insert(ReconcileError::Relay {
                    relay: url.clone(),
                    message: e.to_string(),
                });
            }
        }
        client.connect().await;
        let since = Timestamp::from(window_start.timestamp().max(0) as u64);
        let until = Timestamp::from(grace_end.timestamp().max(0) as u64);
        let keys: Vec<PublicKey> = authors.iter().filter_map(|a| PublicKey::from_hex(a).ok()).collect();
        for chunk in keys.chunks(cfg.authors_per_query.max(1)) {
            let filter = Filter::new()
                .authors(chunk.iter().copied())
                .kinds(SUPPORTED_KINDS.iter().map(|k| Kind::from(*k)));
            let history = ingest::fetch_history(
                &client,
                &cfg.relays,
                &filter,
                Some(since),
                cfg.page_size,
                usize::MAX,
                PAGE_TIMEOUT,
                ingest::ReadMode::Reconcile,
            )
            .await;
            if let Some((relay, message)) = history.failed.into_iter().next() {
                failure.get_or_insert(ReconcileError::Relay { relay, message });
            }
            let admitted_at = Utc::now().timestamp().max(0) as u64;
            let mut events: Vec<Event> = history
                .events
                .into_values()
                .filter(|e| e.created_at <= until)
                .filter(|e| ingest::admit(e, &authors, admitted_at).is_ok())
                .collect();
            events.sort_by_key(|e| (e.created_at, e.id));
            match db.run(move |c| enqueue_missing(c, &events)).await {
                Ok(f) => found.merge(f),
                Err(e) => {
                    failure.get_or_insert(e.into());
                }
            }
        }
        client.shutdown().await;
    }
    match db.run(move |c| redrive_exhausted(c, window_start)).await {
        Ok(n) => found.add(Reason::RetryWindowExhausted, n),
        Err(e) => {
            failure.get_or_insert(e.into());
        }
    }
    (found, failure.map_or(Ok(()), Err))
}

/// Enqueues the admitted `events` that are missing (semantics 3); returns what was enqueued, by reason.
pub fn enqueue_missing(conn: &mut PgConnection, events: &[Event]) -> Result<Found, DbError> {
    let mut found = Found::default();
    for event in events {
        let Some((kind, unique)) = ingest::job_for(event) else {
            continue;
        };
        let Some(reason) = Reason::missing(kind) else { continue };
        let has_job: bool =
            diesel::select(diesel::dsl::exists(jobs::table.filter(jobs::unique_key.eq(&unique)))).get_result(conn)?;
        if has_job || result_recorded(conn, kind, event)? {
            continue;
        }
        if ingest::enqueue_event(conn, event, priority::LIVE)?.is_some() {
            found.add(reason, 1);
        }
    }
    Ok(found)
}

/// The event's effect is already recorded even though its job is gone (retention).
fn result_recorded(conn: &mut PgConnection, kind: JobKind, event: &Event) -> Result<bool, DbError> {
    let id = event.id.to_hex();
    let recorded = match kind {
        JobKind::PublishPost => {
            diesel::select(diesel::dsl::exists(record_mappings::table.find(&id))).get_result(conn)?
        }
        JobKind::DeletePost => diesel::select(diesel::dsl::exists(
            nostr_tombstones::table.filter(nostr_tombstones::delete_event_id.eq(&id)),
        ))
        .get_result(conn)?,
        JobKind::SyncProfile => {
            let at: DateTime<Utc> = crate::nostr::admitted_time(event);
            diesel::select(diesel::dsl::exists(
                profile_sync::table
                    .filter(profile_sync::nostr_pubkey.eq(event.pubkey.to_hex()))
                    .filter(profile_sync::event_created_at.ge(at)),
            ))
            .get_result(conn)?
        }
        _ => false,
    };
    Ok(recorded)
}

/// Re-queues the `retry_window_exhausted` jobs that finished since `window_start` (semantics 4); returns how many.
pub fn redrive_exhausted(conn: &mut PgConnection, window_start: DateTime<Utc>) -> Result<u64, DbError> {
    let ids: Vec<Id> = diesel::sql_query(EXHAUSTED_SQL)
        .bind::<Timestamptz, _>(window_start)
        .load(conn)?;
    let mut n = 0;
    for Id { id } in ids {
        if queue::retry(conn, id)? {
            tracing::info!(job = id, "re-driving a job that exhausted its retry window");
            n += 1;
        }
    }
    Ok(n)
}
