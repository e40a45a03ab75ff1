//! The database error type and the classification of Postgres errors by SQLSTATE class ([`PgCondition`]).
//! Transient (the queue retries, the account is not failed): class 08 (connection), 40 (serialization failure,
//! deadlock), 53 (insufficient resources), 57 (operator intervention: shutdown, `pg_terminate_backend`, statement
//! timeout), 55P03 (lock not available / lock timeout) and 25006 (read-only transaction, as on a demoted primary
//! during a failover). Everything else from a statement — constraint violations the caller did not expect, syntax,
//! undefined objects, data exceptions — and decode failures are permanent. Owns classification of Postgres errors
//! only; callers map "expected" violations (unique handle, duplicate enqueue) to their own domain errors.
//!
//! How the SQLSTATE is found. Diesel 2.3 does not expose it: `DatabaseErrorInformation` has message, detail, hint,
//! table, column, constraint and position, and the Postgres implementation (holding the `PGresult`) is private
//! (upstream diesel PR #4290 adds `sql_state()`; switch to it when it is released). What diesel does give:
//! - the SQLSTATEs it maps itself: 08000/08001/08004/08006 → `ClosedConnection` (and ANY error on a connection libpq
//!   reports as `CONNECTION_BAD`, which covers 57P01/57P02 "terminating connection …" FATALs and libpq's own
//!   "server closed the connection unexpectedly" / "no connection to the server", which carry no SQLSTATE),
//!   40001 → `SerializationFailure`, 25006 → `ReadOnlyTransaction`;
//! - for every other SQLSTATE, `Unknown` and the server's primary message.
//!
//! So the SQLSTATEs diesel folds into `Unknown` and that are transient are recognised by their primary message:
//! [`UNMAPPED_TRANSIENT`], one row per SQLSTATE and message, exact texts from the Postgres sources
//! (`src/backend/tcop/postgres.c`, `storage/lmgr`, `utils/mmgr`). This holds while the server's `lc_messages` is
//! English (`C`/`en_*`, the default and what managed Postgres uses); with a translated `lc_messages` those errors
//! fall back to permanent `db_query_failed` — the runbook says so under every code below.

use crate::class::{Classified, ErrorClass};
use crate::code::ErrorCode;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What a failed statement means, by SQLSTATE class. Decided once, from the diesel error, by [`PgCondition::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgCondition {
    /// Class 08, 57P01/57P02/57P03 (shutdown, `pg_terminate_backend`, crash restart, not accepting connections), or
    /// the socket closed. The connection is unusable; the statement may or may not have been applied.
    ConnectionLost,
    /// Class 40: 40001 serialization failure, 40P01 deadlock detected. Nothing was applied; retry the transaction.
    Conflict,
    /// Class 53: disk full, out of memory, too many connections.
    Resources,
    /// 57014: the statement was cancelled (statement timeout, cancel request). Nothing was applied.
    Canceled,
    /// 55P03: a lock was not available within `lock_timeout` (or `NOWAIT`). Nothing was applied.
    LockTimeout,
    /// 25006: the server refused a write in a read-only transaction (a standby or a demoted primary).
    ReadOnly,
    /// Anything else (constraints, syntax, undefined objects, data exceptions, …): permanent.
    Other,
}

/// SQLSTATEs that diesel reports as `DatabaseErrorKind::Unknown` and that are transient, with the primary message
/// the server sends for them (prefix match). Order is irrelevant: no message is a prefix of another row's.
pub const UNMAPPED_TRANSIENT: &[(&str, &str, PgCondition)] = &[
    (
        "57P01",
        "terminating connection due to administrator command",
        PgCondition::ConnectionLost,
    ),
    (
        "57P02",
        "terminating connection because of crash of another server process",
        PgCondition::ConnectionLost,
    ),
    ("57P03", "the database system is ", PgCondition::ConnectionLost),
    ("57P04", "database dropped", PgCondition::ConnectionLost),
    (
        "57014",
        "canceling statement due to statement timeout",
        PgCondition::Canceled,
    ),
    (
        "57014",
        "canceling statement due to user request",
        PgCondition::Canceled,
    ),
    ("57014", "canceling autovacuum task", PgCondition::Canceled),
    (
        "55P03",
        "canceling statement due to lock timeout",
        PgCondition::LockTimeout,
    ),
    ("55P03", "could not obtain lock on ", PgCondition::LockTimeout),
    ("40P01", "deadlock detected", PgCondition::Conflict),
    ("53100", "could not extend file", PgCondition::Resources),
    ("53200", "out of memory", PgCondition::Resources),
    ("53300", "sorry, too many clients already", PgCondition::Resources),
    ("53300", "too many connections for ", PgCondition::Resources),
    (
        "53300",
        "remaining connection slots are reserved",
        PgCondition::Resources,
    ),
];

impl PgCondition {
    /// Classifies a diesel error (see the module docs for how the SQLSTATE is found).
    pub fn of(e: &DieselError) -> PgCondition {
        let (kind, info) = match e {
            DieselError::DatabaseError(kind, info) => (kind, info),
            // A failed COMMIT (e.g. the connection died) whose rollback failed too: the commit's error decides.
            DieselError::RollbackErrorOnCommit { commit_error, .. } => return PgCondition::of(commit_error),
            _ => return PgCondition::Other,
        };
        match kind {
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => PgCondition::ConnectionLost,
            DatabaseErrorKind::SerializationFailure => PgCondition::Conflict,
            DatabaseErrorKind::ReadOnlyTransaction => PgCondition::ReadOnly,
            DatabaseErrorKind::Unknown => UNMAPPED_TRANSIENT
                .iter()
                .find(|(_, message, _)| info.message().starts_with(message))
                .map_or(PgCondition::Other, |(_, _, condition)| *condition),
            _ => PgCondition::Other,
        }
    }

    /// Transient conditions are worth retrying: everything but [`PgCondition::Other`].
    pub fn class(self) -> ErrorClass {
        match self {
            PgCondition::Other => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        }
    }

    /// The stable error code of a statement that failed with this condition (one runbook entry each).
    pub fn code(self) -> ErrorCode {
        match self {
            PgCondition::ConnectionLost => ErrorCode::DbConnectionLost,
            PgCondition::Conflict => ErrorCode::DbSerializationConflict,
            PgCondition::Resources => ErrorCode::DbResourcesExhausted,
            PgCondition::Canceled => ErrorCode::DbStatementCanceled,
            PgCondition::LockTimeout => ErrorCode::DbLockTimeout,
            PgCondition::ReadOnly => ErrorCode::DbReadOnly,
            PgCondition::Other => ErrorCode::DbQueryFailed,
        }
    }

    /// True when the connection that reported this must not be reused: it is closed, or it reached a server that
    /// refuses writes (after a failover a new connection may reach the new primary).
    pub fn discards_connection(self) -> bool {
        matches!(self, PgCondition::ConnectionLost | PgCondition::ReadOnly)
    }
}

/// Errors from the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database pool: {0}")]
    Pool(String),
    #[error("blocking task failed: {0}")]
    Join(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("unique violation on {constraint}")]
    UniqueViolation { constraint: String },
    #[error("database: {0}")]
    Query(#[from] DieselError),
    #[error("stored value is invalid: {0}")]
    Corrupt(String),
    /// A job's payload does not decode as its kind's args ([`crate::job_args::JobArgs`]): a bug or a hand-edited row.
    #[error("job {id}: invalid payload: {reason}")]
    InvalidPayload { id: i64, reason: String },
    /// Postgres (or libpq) refused `DATABASE_URL` in a way waiting cannot fix: malformed, unknown database or role,
    /// authentication failed. The message is scrubbed of the password ([`crate::Db::connect_within`]).
    #[error("DATABASE_URL was rejected: {0}; expected {shape} (fix DATABASE_URL; retrying cannot help)", shape = crate::envcfg::DATABASE_URL_SHAPE)]
    ConnectRejected(String),
}

impl DbError {
    /// True when the error is a unique-constraint violation (on any constraint).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::UniqueViolation { .. })
            || matches!(
                self,
                DbError::Query(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _))
            )
    }

    /// The Postgres condition of a failed statement ([`PgCondition::Other`] for errors that are not a statement's).
    pub fn condition(&self) -> PgCondition {
        match self {
            DbError::Query(e) => PgCondition::of(e),
            _ => PgCondition::Other,
        }
    }

    /// Converts a raw Diesel error, lifting unique violations into a variant carrying the constraint name.
    pub fn from_diesel(e: DieselError) -> DbError {
        match e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => DbError::UniqueViolation {
                constraint: info.constraint_name().unwrap_or("unknown").to_string(),
            },
            other => DbError::Query(other),
        }
    }
}

impl From<crate::states::UnknownValue> for DbError {
    fn from(e: crate::states::UnknownValue) -> Self {
        DbError::Corrupt(e.to_string())
    }
}

impl Classified for DbError {
    fn code(&self) -> ErrorCode {
        let condition = self.condition();
        match self {
            DbError::Pool(_) => ErrorCode::DbUnavailable,
            DbError::Join(_) => ErrorCode::DbUnavailable,
            DbError::Migration(_) => ErrorCode::DbMigrationFailed,
            DbError::UniqueViolation { .. } => ErrorCode::DbConflict,
            DbError::Query(_) => condition.code(),
            DbError::Corrupt(_) => ErrorCode::DbCorruptValue,
            DbError::InvalidPayload { .. } => ErrorCode::InvalidJobPayload,
            DbError::ConnectRejected(_) => ErrorCode::DbConnectRejected,
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            DbError::Pool(_) | DbError::Join(_) => ErrorClass::Transient,
            DbError::Query(DieselError::BrokenTransactionManager) => ErrorClass::Transient,
            DbError::Query(e) => PgCondition::of(e).class(),
            DbError::Migration(_)
            | DbError::UniqueViolation { .. }
            | DbError::Corrupt(_)
            | DbError::InvalidPayload { .. }
            | DbError::ConnectRejected(_) => ErrorClass::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(message: &str) -> DieselError {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_string()))
    }

    /// Class 53 cannot be produced safely on a shared server; its rows are checked on the messages Postgres sends.
    #[test]
    fn messages_of_unmapped_sqlstates_classify_by_their_class() {
        for (message, condition) in [
            ("out of memory", PgCondition::Resources),
            ("sorry, too many clients already", PgCondition::Resources),
            (
                "could not extend file \"base/1/2\": No space left on device",
                PgCondition::Resources,
            ),
            (
                "terminating connection due to administrator command",
                PgCondition::ConnectionLost,
            ),
            ("the database system is shutting down", PgCondition::ConnectionLost),
            ("deadlock detected", PgCondition::Conflict),
            ("value out of range", PgCondition::Other),
            ("relation \"x\" does not exist", PgCondition::Other),
        ] {
            let e = DbError::Query(unknown(message));
            assert_eq!(e.condition(), condition, "{message}");
            assert_eq!(e.class(), condition.class(), "{message}");
            assert_eq!(e.code(), condition.code(), "{message}");
        }
        // libpq's own message carries no SQLSTATE; diesel reports it as ClosedConnection.
        let closed = DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("server closed the connection unexpectedly".to_string()),
        );
        assert_eq!(PgCondition::of(&closed), PgCondition::ConnectionLost);
        // A failed COMMIT is classified by the commit's error, not the rollback's.
        let commit = DieselError::RollbackErrorOnCommit {
            rollback_error: Box::new(unknown("whatever")),
            commit_error: Box::new(closed),
        };
        assert_eq!(PgCondition::of(&commit), PgCondition::ConnectionLost);
        assert!(PgCondition::ConnectionLost.discards_connection() && PgCondition::ReadOnly.discards_connection());
        assert!(!PgCondition::LockTimeout.discards_connection());
    }
}
