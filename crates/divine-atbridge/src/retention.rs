//! Retention of finished jobs (issue 9 §6). Each terminal job keeps its full payload (the event JSON), so without
//! pruning the `jobs` table only grows. This module owns the periodic prune: every [`PRUNE_INTERVAL`] it deletes
//! terminal jobs finished more than `JOB_RETENTION_SECS` ago, [`PRUNE_BATCH`] rows per statement
//! ([`queue::prune_finished`]), until a batch comes back short. Every replica runs it: batches are small,
//! `SKIP LOCKED` and idempotent, so concurrent replicas split the work instead of contending.
//!
//! The same loop runs the handle release pass ([`release_pass`], [`divine_bridge_db::accounts::release_handles`]): the
//! link row of an account `disconnected` more than `HANDLE_RELEASE_GRACE_SECS` ago is deleted, freeing its handle (its
//! tombstone stays), and so is the link of an opt-in that never finished provisioning (`pending`/`failed`, no DID)
//! created more than `UNPROVISIONED_HANDLE_RELEASE_SECS` ago.
//!
//! It must not touch live jobs, `record_mappings` or tombstones: those carry exactly-once after a job row is gone
//! (see [`queue::prune_finished`]).

use divine_bridge_db::accounts::ReleaseAfter;
use divine_bridge_db::{queue, Db};
use std::time::Duration;
use tokio::sync::watch;

/// Rows deleted per statement: one short transaction, a bounded amount of WAL and lock time.
pub const PRUNE_BATCH: i64 = 1_000;
/// Time between prune passes.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(300);
/// `JOB_RETENTION_SECS` default: 14 days of finished jobs stay inspectable (`jobs list`, `jobs retry <id>`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// Shortest accepted `JOB_RETENTION_SECS`: one hour, so an operator always has time to look at a failure.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

/// `HANDLE_RELEASE_GRACE_SECS` default: a disconnected account's handle stays taken for 30 days.
pub const DEFAULT_HANDLE_RELEASE_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// `UNPROVISIONED_HANDLE_RELEASE_SECS` default: an opt-in that has not become an account in 7 days lets its handle go.
pub const DEFAULT_UNPROVISIONED_RELEASE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Frees the handles that are due under `after` ([`divine_bridge_db::accounts::release_handles`], audited with the
/// `service` actor). Returns how many.
pub async fn release_pass(db: &Db, after: ReleaseAfter) -> Result<usize, divine_bridge_db::DbError> {
    let released = db
        .run(move |c| {
            Ok::<_, divine_bridge_db::DbError>(divine_bridge_db::accounts::release_handles(
                c,
                &after,
                &divine_bridge_db::audit::Actor::Service,
            ))
        })
        .await?
        .map_err(|e| match e {
            divine_bridge_db::accounts::AccountError::Db(d) => d,
            other => divine_bridge_db::DbError::Corrupt(other.to_string()),
        })?;
    metrics::counter!(crate::metrics::HANDLES_RELEASED).increment(released.len() as u64);
    Ok(released.len())
}

/// One pass: prunes batches until none is left older than `retention`; returns how many jobs were deleted. A
/// database error ends the pass (the next pass retries).
pub async fn prune_pass(db: &Db, retention: Duration, batch: i64) -> Result<usize, divine_bridge_db::DbError> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut total = 0;
    loop {
        let n = db.run(move |c| queue::prune_finished(c, cutoff, batch)).await?;
        total += n;
        metrics::counter!(crate::metrics::JOBS_PRUNED).increment(n as u64);
        if (n as i64) < batch {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Runs prune passes every [`PRUNE_INTERVAL`] until `shutdown` becomes true. Errors are logged and retried at the
/// next pass; the loop itself only ends at shutdown (the supervisor treats any other end as a dead task).
pub async fn run(db: Db, retention: Duration, release: ReleaseAfter, mut shutdown: watch::Receiver<bool>) {
    loop {
        match release_pass(&db, release).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "released handles (disconnected or never provisioned)"),
            Err(e) => tracing::warn!(error = %e, code = %divine_bridge_db::Classified::code(&e), "release pass failed"),
        }
        match prune_pass(&db, retention, PRUNE_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "pruned finished jobs"),
            Err(e) => tracing::warn!(error = %e, code = %divine_bridge_db::Classified::code(&e), "prune pass failed"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}
