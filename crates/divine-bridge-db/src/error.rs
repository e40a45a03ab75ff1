//! The database error type. Connection and serialization problems are transient (the queue retries); constraint
//! violations the caller did not expect and decode failures are permanent. Owns classification of Postgres errors
//! only; callers map "expected" violations (unique handle, duplicate enqueue) to their own domain errors.

use crate::class::{Classified, ErrorClass};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

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
    fn code(&self) -> &'static str {
        match self {
            DbError::Pool(_) => "db_unavailable",
            DbError::Join(_) => "db_unavailable",
            DbError::Migration(_) => "db_migration_failed",
            DbError::UniqueViolation { .. } => "db_conflict",
            DbError::Query(_) => "db_query_failed",
            DbError::Corrupt(_) => "db_corrupt_value",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            DbError::Pool(_) | DbError::Join(_) => ErrorClass::Transient,
            DbError::Query(DieselError::DatabaseError(kind, _)) => match kind {
                DatabaseErrorKind::SerializationFailure
                | DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            DbError::Query(DieselError::BrokenTransactionManager) => ErrorClass::Transient,
            DbError::Query(_) => ErrorClass::Permanent,
            DbError::Migration(_) | DbError::UniqueViolation { .. } | DbError::Corrupt(_) => ErrorClass::Permanent,
        }
    }
}
