//! Embedded migrations, applied under a Postgres advisory lock so replicas starting at once never race. Every binary
//! calls [`run_migrations`] at startup; `divine-atbridge migrate` calls it alone. Owns schema evolution only.

use crate::error::DbError;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// The project's migrations, compiled into every binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Number of embedded migrations (for tests and diagnostics).
pub fn migration_count() -> usize {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Advisory lock key shared by all migrators (arbitrary constant: "divine-bridge-migrate").
pub const MIGRATION_LOCK_KEY: i64 = 0x0d1b_4eb1_d6e0_0001;

/// Applies pending migrations while holding a session advisory lock; returns the versions applied by this call
/// (empty when another process already did the work).
///
/// The pool's `statement_timeout` and `lock_timeout` ([`crate::DbSettings`]) are suspended for the duration: waiting
/// for another replica's migrations on the advisory lock, or a long index build, is not a stuck statement. The
/// session's own values are restored afterwards, so a pooled connection goes back to the pool as it came.
pub fn run_migrations(conn: &mut PgConnection) -> Result<Vec<String>, DbError> {
    let (statement_timeout, lock_timeout) = diesel::select(diesel::dsl::sql::<(Text, Text)>(
        "current_setting('statement_timeout'), current_setting('lock_timeout')",
    ))
    .get_result::<(String, String)>(conn)?;
    diesel::sql_query(SET_TIMEOUTS)
        .bind::<Text, _>("0")
        .bind::<Text, _>("0")
        .execute(conn)?;
    let result = migrate_locked(conn);
    let restore = diesel::sql_query(SET_TIMEOUTS)
        .bind::<Text, _>(statement_timeout)
        .bind::<Text, _>(lock_timeout)
        .execute(conn);
    let applied = result?;
    restore?;
    Ok(applied)
}

/// Sets the session's `statement_timeout` ($1) and `lock_timeout` ($2).
const SET_TIMEOUTS: &str = "SELECT set_config('statement_timeout', $1, false), set_config('lock_timeout', $2, false)";

fn migrate_locked(conn: &mut PgConnection) -> Result<Vec<String>, DbError> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn)?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(|v| v.to_string()).collect::<Vec<_>>())
        .map_err(|e| DbError::Migration(e.to_string()));
    let unlock = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn);
    let applied = result?;
    unlock?;
    Ok(applied)
}

/// True when every embedded migration has been applied (used by `/ready`).
///
/// Read-only on purpose: diesel's `has_pending_migration` first runs `CREATE TABLE IF NOT EXISTS
/// __diesel_schema_migrations`, which needs `CREATE` on the schema, and the gateway's role has none
/// (`roles`, issue 12 §2). A database that was never migrated has no migrations table: pending.
pub fn migrations_applied(conn: &mut PgConnection) -> Result<bool, DbError> {
    use diesel::migration::MigrationSource;
    let table_exists = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(MIGRATIONS_TABLE_EXISTS))
        .get_result::<bool>(conn)?;
    if !table_exists {
        return Ok(false);
    }
    let applied: std::collections::HashSet<String> = diesel::sql_query(APPLIED_VERSIONS_SQL)
        .load::<AppliedVersion>(conn)?
        .into_iter()
        .map(|v| v.version)
        .collect();
    let embedded =
        MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS).map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(embedded
        .iter()
        .all(|m| applied.contains(&m.name().version().to_string())))
}

/// Whether diesel's migrations table exists (in the search path).
const MIGRATIONS_TABLE_EXISTS: &str = "to_regclass('__diesel_schema_migrations') IS NOT NULL";

/// The versions recorded as applied.
pub const APPLIED_VERSIONS_SQL: &str = "SELECT version FROM __diesel_schema_migrations";

#[derive(QueryableByName)]
struct AppliedVersion {
    #[diesel(sql_type = Text)]
    version: String,
}
