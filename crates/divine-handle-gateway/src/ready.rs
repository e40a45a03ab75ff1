//! The readiness probe's own database connection. `/ready` must not borrow from the request pool: a flood that holds
//! every pooled connection (slow well-known lookups, say) would otherwise fail `/ready` on every replica at once and
//! take them all out of rotation, turning an overload into an outage. The probe keeps ONE connection of its own,
//! opened lazily with the same URL and session settings as the pool, dropped after any failure and reopened by the
//! next check. Checks never queue behind each other: while one runs, another answers `not_ready` at once.
//!
//! Owns this connection only; what `/ready` answers is `routes::ready`'s.

use crate::config::Config;
use crate::problem::ApiError;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use divine_bridge_db::migrate::migrations_applied;
use divine_bridge_db::{Classified, DbError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a readiness check may take.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// See the module docs.
pub struct ReadyProbe {
    url: String,
    session_sql: String,
    conn: Mutex<Option<PgConnection>>,
}

impl std::fmt::Debug for ReadyProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyProbe").finish_non_exhaustive()
    }
}

impl ReadyProbe {
    /// A probe for `config`'s database (connects on the first check).
    pub fn new(config: &Config) -> ReadyProbe {
        ReadyProbe {
            // Validated by `GatewayArgs::validate`; an invalid URL fails the check, which is what /ready is for.
            url: config
                .db
                .connection_url(&config.database_url)
                .unwrap_or_else(|_| config.database_url.clone()),
            session_sql: config.db.session_sql(),
            conn: Mutex::new(None),
        }
    }

    fn check_blocking(&self) -> Result<(), ApiError> {
        let Ok(mut slot) = self.conn.try_lock() else {
            return Err(ApiError::NotReady {
                reason: "database_unavailable",
                detail: "a previous readiness check is still running".into(),
            });
        };
        // A kept connection may have died since the last check (a Postgres restart or failover closes it, and
        // nothing notices until it is used): its failure says nothing about the database now. So a check on a KEPT
        // connection that fails is repeated once on a fresh one; only a fresh connection's answer is reported.
        let reused = slot.is_some();
        match self.check_on(&mut slot) {
            Err(_) if reused => self.check_on(&mut slot),
            result => result,
        }
    }

    /// One check on the kept connection, opening it first when there is none; drops it after any failure.
    fn check_on(&self, slot: &mut Option<PgConnection>) -> Result<(), ApiError> {
        if slot.is_none() {
            let mut conn = PgConnection::establish(&self.url).map_err(|e| {
                tracing::warn!(code = "db_unavailable", error = %e, "readiness probe cannot connect");
                ApiError::NotReady {
                    reason: "database_unavailable",
                    detail: "database (db_unavailable)".into(),
                }
            })?;
            conn.batch_execute(&self.session_sql).map_err(|e| ApiError::NotReady {
                reason: "database_unavailable",
                detail: format!("database ({})", DbError::from(e).code()),
            })?;
            *slot = Some(conn);
        }
        let conn = slot.as_mut().expect("connected above");
        let result = diesel::sql_query("SELECT 1")
            .execute(conn)
            .map_err(DbError::from)
            .and_then(|_| migrations_applied(conn));
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::NotReady {
                reason: "migrations_pending",
                detail: "migrations pending".into(),
            }),
            Err(e) => {
                *slot = None;
                tracing::warn!(code = %e.code(), error = %e, "readiness check failed");
                Err(ApiError::NotReady {
                    reason: "database_unavailable",
                    detail: format!("database ({})", e.code()),
                })
            }
        }
    }

    /// One readiness check within [`READY_TIMEOUT`].
    pub async fn check(self: &Arc<Self>) -> Result<(), ApiError> {
        let probe = self.clone();
        match tokio::time::timeout(
            READY_TIMEOUT,
            tokio::task::spawn_blocking(move || probe.check_blocking()),
        )
        .await
        {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ApiError::Internal(format!("readiness check panicked: {join}"))),
            Err(_) => Err(ApiError::NotReady {
                reason: "database_unavailable",
                detail: "database did not answer within 3s".into(),
            }),
        }
    }
}
