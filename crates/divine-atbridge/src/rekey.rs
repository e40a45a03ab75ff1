//! `divine-atbridge keys rotate`: re-seals every `account_keys` row and every `account_sessions` row that is not yet
//! sealed by the ring's primary KEK (keys.rs rotation rules).
//!
//! Invariants:
//! 1. Resumable and idempotent: the work list is "rows whose `kek_id` is not the primary's", read in key order in
//!    batches. A rotation killed at any point is finished by running it again; a row already re-sealed is never
//!    touched twice (its `kek_id` now matches), so nothing depends on a checkpoint.
//! 2. Fenced: a key row is written only while it is still at the generation that was read (`seal_generation`), a
//!    session only while its `updated_at` and `kek_id` are unchanged. A concurrent writer (another rotation, a
//!    session refresh) wins; the row is counted as `skipped` and picked up by the next pass if still needed.
//! 3. Opens before it seals: a row that does not open under the KEK it names stops the rotation with that row's
//!    error (`key_decrypt_failed`, `key_encryption_key_unknown`) instead of being skipped silently: an operator must
//!    look at it (docs/runbooks/key-custody.md).
//! 4. Secrets exist in memory only between open and seal of one row (zeroed on drop by the key types).

use crate::identity::ProvisionSecrets;
use crate::keys::{KeyError, KeyRing};
use crate::pds::StoredSession;
use divine_bridge_db::records;
use divine_bridge_db::{Classified, Db, DbError, ErrorClass, ErrorCode};
use std::ops::ControlFlow;

/// Rows read per batch.
pub const DEFAULT_BATCH: i64 = 100;

/// A rotation failure, classified where it is born.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// A row did not open (invariant 3).
    #[error("{table} row {id}: {source}")]
    Key {
        table: &'static str,
        id: String,
        source: KeyError,
    },
}

impl Classified for RekeyError {
    fn code(&self) -> ErrorCode {
        match self {
            RekeyError::Db(e) => e.code(),
            RekeyError::Key { source, .. } => source.code(),
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            RekeyError::Db(e) => e.class(),
            RekeyError::Key { source, .. } => source.class(),
        }
    }
}

/// Progress of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Rows left when the run started (`account_keys`, `account_sessions`).
    pub keys_total: i64,
    pub sessions_total: i64,
    /// Rows this run re-sealed.
    pub keys_done: i64,
    pub sessions_done: i64,
    /// Fenced writes that lost to a concurrent writer (invariant 2).
    pub skipped: i64,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "account_keys {}/{}, account_sessions {}/{}, skipped {}",
            self.keys_done, self.keys_total, self.sessions_done, self.sessions_total, self.skipped
        )
    }
}

/// Re-seals everything not under `ring.primary()`, `batch` rows at a time. `on_batch` sees the progress after each
/// batch (the CLI prints it); returning `Break` stops the run there (what a crash does, for tests).
pub async fn rotate(
    db: &Db,
    ring: &KeyRing,
    batch: i64,
    mut on_batch: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Progress, RekeyError> {
    let primary = ring.primary().key_id();
    let p = primary.clone();
    let (keys_total, sessions_total) = db.run(move |c| records::count_not_under(c, &p)).await?;
    let mut progress = Progress {
        keys_total,
        sessions_total,
        ..Progress::default()
    };

    let mut after = String::new();
    loop {
        let (p, a) = (primary.clone(), after.clone());
        let rows = db.run(move |c| records::keys_not_under(c, &p, &a, batch)).await?;
        let Some(last) = rows.last() else { break };
        after = last.nostr_pubkey.clone();
        for row in rows {
            let secrets = ProvisionSecrets::open_row(ring, &row).map_err(|source| RekeyError::Key {
                table: "account_keys",
                id: row.nostr_pubkey.clone(),
                source,
            })?;
            let new = secrets.seal_at(ring.primary(), &row.nostr_pubkey, row.seal_generation + 1);
            let (pk, generation) = (row.nostr_pubkey.clone(), row.seal_generation);
            if db.run(move |c| records::reseal_keys(c, &pk, generation, &new)).await? {
                progress.keys_done += 1;
            } else {
                progress.skipped += 1;
            }
        }
        if on_batch(&progress).is_break() {
            return Ok(progress);
        }
    }

    let mut after = String::new();
    loop {
        let (p, a) = (primary.clone(), after.clone());
        let rows = db.run(move |c| records::sessions_not_under(c, &p, &a, batch)).await?;
        let Some(last) = rows.last() else { break };
        after = last.did.clone();
        for row in rows {
            let session = ring
                .get(&row.kek_id)
                .and_then(|kek| {
                    StoredSession::open(kek, &row.nostr_pubkey, &row.access_jwt_sealed, &row.refresh_jwt_sealed)
                })
                .map_err(|source| RekeyError::Key {
                    table: "account_sessions",
                    id: row.did.clone(),
                    source,
                })?;
            let (access, refresh) = session.seal(ring.primary(), &row.nostr_pubkey);
            let kek_id = ring.primary().key_id();
            if db
                .run(move |c| records::reseal_session(c, &row, &kek_id, &access, &refresh))
                .await?
            {
                progress.sessions_done += 1;
            } else {
                progress.skipped += 1;
            }
        }
        if on_batch(&progress).is_break() {
            return Ok(progress);
        }
    }
    Ok(progress)
}
