//! Least-privilege Postgres roles (issue 12 §2): the SQL that creates a **worker** role and a **gateway** role and
//! grants each what it needs, kept outside the migrations (roles are cluster-wide objects, their names are a
//! deployment's choice, and creating them needs `CREATEROLE`, which the migrating role must not have).
//! `divine-atbridge db roles` prints it (or applies it with `--apply`); the gateway's integration tests run under
//! the gateway role it creates. Owns role and grant SQL only.
//!
//! Decisions:
//! 1. **The worker role owns the schema.** It runs the migrations (at startup under the advisory lock, or
//!    `divine-atbridge migrate`), so it has `CREATE` on schema `public` and [`roles_sql`] hands it the ownership of
//!    every existing table and free-standing sequence there (an upgrade from one shared role). Separating a third
//!    "migrator" role would buy nothing: the worker already holds the key-encryption key and every sealed key.
//! 2. **The gateway role gets exactly [`GATEWAY_GRANTS`]**, column by column where it writes: it can create a link
//!    and move its state, but not rewrite a link's DID or handle; it can enqueue and cancel/re-queue jobs, but not
//!    rewrite a job's payload, kind or lease; it appends audit entries but cannot change them or read more than the toggle limit counts. It has no
//!    privilege at all on [`GATEWAY_DENIED`] (sealed keys, sessions) nor on the worker's ingest/sync tables, and it
//!    cannot create objects (`REVOKE CREATE ON SCHEMA public FROM PUBLIC`). It never migrates: `/ready` reads the
//!    migrations table and stays 503 until the worker has migrated.
//! 3. **Grants follow the schema.** [`gateway_grants_sql`] revokes everything the role holds in `public` and grants
//!    [`GATEWAY_GRANTS`] again, so re-applying it after an upgrade is idempotent and drops privileges on anything a
//!    release stopped needing. The worker re-applies it after migrating when `GATEWAY_DB_ROLE` is set (an owner may
//!    grant on its own tables), so a migration that adds a table the gateway reads never leaves it without access.
//! 4. Role names are identifiers checked by [`RoleName::parse`] (lower-case, digits, `_`; at most 63 bytes): they are
//!    spliced into SQL, so nothing else is accepted. Passwords are not set here; the operator sets them out of band
//!    (`ALTER ROLE … PASSWORD`) so they never pass through a command line or a log.

use crate::class::{Classified, ErrorClass};
use crate::code::ErrorCode;
use crate::error::DbError;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;

/// Default name of the worker role.
pub const DEFAULT_WORKER_ROLE: &str = "divine_bridge_worker";
/// Default name of the gateway role.
pub const DEFAULT_GATEWAY_ROLE: &str = "divine_bridge_gateway";

/// A table privilege, with the columns it is limited to (`None` = the whole table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableGrant {
    pub privilege: &'static str,
    pub table: &'static str,
    pub columns: Option<&'static [&'static str]>,
}

const fn grant(privilege: &'static str, table: &'static str) -> TableGrant {
    TableGrant {
        privilege,
        table,
        columns: None,
    }
}

const fn grant_cols(privilege: &'static str, table: &'static str, columns: &'static [&'static str]) -> TableGrant {
    TableGrant {
        privilege,
        table,
        columns: Some(columns),
    }
}

/// Everything the gateway may do, and the code that needs it. The one list: [`gateway_grants_sql`] is built from it.
pub const GATEWAY_GRANTS: &[TableGrant] = &[
    // `/ready`: every embedded migration applied (`migrate::migrations_applied`).
    grant("SELECT", "__diesel_schema_migrations"),
    // accounts::{get, opt_in, enable, disable, suspend, unsuspend, begin_disconnect, resolve_handle}. `SELECT …
    // FOR UPDATE` needs UPDATE on some column, which the state columns give.
    grant("SELECT", "account_links"),
    grant_cols(
        "INSERT",
        "account_links",
        &[
            "nostr_pubkey",
            "handle",
            "crosspost_enabled",
            "provisioning_state",
            "created_at",
            "updated_at",
        ],
    ),
    grant_cols(
        "UPDATE",
        "account_links",
        &[
            "crosspost_enabled",
            "provisioning_state",
            "provisioning_error",
            "provisioning_error_detail",
            "disabled_at",
            "suspended_reason",
            "disconnected_at",
            "updated_at",
        ],
    ),
    // accounts::begin_disconnect opens the tombstone; export reads it.
    grant("SELECT", "account_tombstones"),
    grant_cols(
        "INSERT",
        "account_tombstones",
        &["nostr_pubkey", "did", "handle", "disconnected_at"],
    ),
    // audit::audited appends. The trail itself stays unreadable: only what abuse::toggles_in_window counts (the
    // enable/disable rate limit) — whose, which action, when — not the actor or the reason.
    grant_cols("SELECT", "account_audit", &["nostr_pubkey", "action", "created_at"]),
    grant_cols(
        "INSERT",
        "account_audit",
        &[
            "nostr_pubkey",
            "actor",
            "action",
            "reason",
            "before_state",
            "after_state",
        ],
    ),
    // queue::{enqueue, requeue_or_enqueue, retry, requeue_skipped, cancel_queued_for_account, cancel_for_account};
    // accounts::{history, crosspost_status} read jobs. No lease, attempt, payload, kind or key columns.
    grant("SELECT", "jobs"),
    grant_cols(
        "INSERT",
        "jobs",
        &[
            "kind",
            "ordering_key",
            "unique_key",
            "payload",
            "priority",
            "run_at",
            "source_created_at",
        ],
    ),
    grant_cols(
        "UPDATE",
        "jobs",
        &[
            "state",
            "run_at",
            "finished_at",
            "cancel_requested_at",
            "last_error_code",
            "unique_key",
            "updated_at",
        ],
    ),
    // accounts::crosspost_status.
    grant("SELECT", "record_mappings"),
    // auth::ReplayGuard: claim an event id, prune old ones.
    grant("SELECT", "nip98_seen"),
    grant("INSERT", "nip98_seen"),
    grant("DELETE", "nip98_seen"),
    // abuse::{allow, disallow, is_allowed}: the opt-in allowlist the login service maintains (OPT_IN_POLICY=allowlist).
    grant("SELECT", "opt_in_allowlist"),
    grant("INSERT", "opt_in_allowlist"),
    grant("DELETE", "opt_in_allowlist"),
];

/// Sequences behind the `BIGSERIAL` ids of the tables the gateway inserts into (`USAGE` lets it call `nextval`).
pub const GATEWAY_SEQUENCES: &[&str] = &["jobs_id_seq", "account_tombstones_id_seq", "account_audit_id_seq"];

/// Tables the gateway must never read: the KEK-sealed signing/rotation keys and PDS password, and the sealed PDS
/// session tokens. Named so tests can prove the role is refused.
pub const GATEWAY_DENIED: &[&str] = &["account_keys", "account_sessions"];

/// An invalid role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("role name {name:?} is invalid: use 1-63 characters of a-z, 0-9 and _, not starting with a digit")]
    InvalidName { name: String },
    #[error("worker and gateway roles must differ (both are {0:?})")]
    SameName(String),
}

impl Classified for RoleError {
    fn code(&self) -> ErrorCode {
        ErrorCode::DbRoleInvalid
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// A checked Postgres role name (safe to splice into SQL, quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(name: &str) -> Result<RoleName, RoleError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(RoleName(name.to_string()))
        } else {
            Err(RoleError::InvalidName { name: name.to_string() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quoted identifier.
    fn ident(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

/// The two roles of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    pub worker: RoleName,
    pub gateway: RoleName,
}

impl Roles {
    pub fn new(worker: &str, gateway: &str) -> Result<Roles, RoleError> {
        let (worker, gateway) = (RoleName::parse(worker)?, RoleName::parse(gateway)?);
        if worker == gateway {
            return Err(RoleError::SameName(worker.0));
        }
        Ok(Roles { worker, gateway })
    }
}

/// Creates `role` (LOGIN, no password) unless it exists.
fn create_role_sql(role: &RoleName) -> String {
    format!(
        "DO $$ BEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN\n    CREATE ROLE {ident} \
         LOGIN;\n  END IF;\nEND $$;\n",
        name = role.as_str(),
        ident = role.ident()
    )
}

/// The gateway's privileges in schema `public`, from nothing: revoke all, grant [`GATEWAY_GRANTS`] and
/// [`GATEWAY_SEQUENCES`]. Runnable by the owner of the tables (the worker) or a superuser; idempotent.
pub fn gateway_grants_sql(gateway: &RoleName) -> String {
    let g = gateway.ident();
    let mut sql = format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {g};\nREVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {g};\n\
         GRANT USAGE ON SCHEMA public TO {g};\n"
    );
    for grant in GATEWAY_GRANTS {
        let columns = grant
            .columns
            .map(|c| format!(" ({})", c.join(", ")))
            .unwrap_or_default();
        sql.push_str(&format!(
            "GRANT {}{columns} ON {} TO {g};\n",
            grant.privilege, grant.table
        ));
    }
    for seq in GATEWAY_SEQUENCES {
        sql.push_str(&format!("GRANT USAGE ON SEQUENCE {seq} TO {g};\n"));
    }
    sql
}

/// The roles and the worker's ownership, as `divine-atbridge db roles` prints it before [`gateway_grants_sql`]: run
/// as a superuser or the database owner with `CREATEROLE`, on the bridge's database. Idempotent. The gateway's
/// grants name the tables, so they need a migrated schema: on a fresh database the worker applies them after its
/// first migration (`GATEWAY_DB_ROLE`), or the operator re-runs `db roles --apply` after `divine-atbridge migrate`.
pub fn roles_sql(roles: &Roles) -> String {
    let (w, wname) = (roles.worker.ident(), roles.worker.as_str());
    let g = roles.gateway.ident();
    let mut sql = String::from(
        "-- divine-bridge least-privilege roles (issue 12 §2). Idempotent; run as a superuser or the database owner.\n\
         -- Set the passwords afterwards, out of band: ALTER ROLE <name> PASSWORD '…';\n",
    );
    sql.push_str(&create_role_sql(&roles.worker));
    sql.push_str(&create_role_sql(&roles.gateway));
    sql.push_str(&format!(
        "-- Nobody but the owner creates objects (the Postgres 15 default, made explicit for older servers).\n\
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n\
         DO $$ BEGIN\n  EXECUTE format('GRANT CONNECT ON DATABASE %I TO {w}, {g}', current_database());\nEND $$;\n\
         -- The worker owns the schema and runs the migrations.\n\
         GRANT USAGE, CREATE ON SCHEMA public TO {w};\n\
         DO $$ DECLARE r record; BEGIN\n  FOR r IN SELECT c.relname, c.relkind FROM pg_class c\n    \
         JOIN pg_namespace n ON n.oid = c.relnamespace\n    \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')\n      \
         AND pg_get_userbyid(c.relowner) <> '{wname}'\n      \
         -- a sequence owned by a column follows its table\n      \
         AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid\n        \
         AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))\n  LOOP\n    \
         EXECUTE format('ALTER %s %I OWNER TO {w}', CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'\n      \
         WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, r.relname);\n  END LOOP;\nEND $$;\n"
    ));
    sql
}

/// Everything `db roles` prints: [`roles_sql`], then the gateway's grants.
pub fn full_sql(roles: &Roles) -> String {
    format!(
        "{}-- The gateway: only what it uses (needs the migrated schema).\n{}",
        roles_sql(roles),
        gateway_grants_sql(&roles.gateway)
    )
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Roles, ownership and the gateway's grants.
    All,
    /// Roles and ownership; the schema is not migrated yet, so the gateway's grants are left to the worker's first
    /// start (`GATEWAY_DB_ROLE`) or a second `db roles --apply` after `migrate`.
    GatewayGrantsDeferred,
}

/// Applies [`roles_sql`] and, when every migration is applied, [`gateway_grants_sql`], in one transaction.
pub fn apply(conn: &mut PgConnection, roles: &Roles) -> Result<Applied, DbError> {
    conn.transaction(|c| {
        c.batch_execute(&roles_sql(roles)).map_err(DbError::from_diesel)?;
        if !crate::migrate::migrations_applied(c)? {
            return Ok(Applied::GatewayGrantsDeferred);
        }
        c.batch_execute(&gateway_grants_sql(&roles.gateway))
            .map_err(DbError::from_diesel)?;
        Ok(Applied::All)
    })
}

/// Applies [`gateway_grants_sql`] in one transaction (the worker, after migrating, as the owner of the tables).
pub fn apply_gateway_grants(conn: &mut PgConnection, gateway: &RoleName) -> Result<(), DbError> {
    let sql = gateway_grants_sql(gateway);
    conn.transaction(|c| c.batch_execute(&sql))
        .map_err(DbError::from_diesel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_plain_identifiers() {
        for ok in ["divine_bridge_gateway", "gw", "_x1"] {
            assert!(RoleName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1gw",
            "Gateway",
            "gw\"; DROP TABLE jobs; --",
            "gw-1",
            &"x".repeat(64),
        ] {
            assert_eq!(
                RoleName::parse(bad).unwrap_err().code(),
                ErrorCode::DbRoleInvalid,
                "{bad}"
            );
        }
        assert_eq!(Roles::new("a", "a").unwrap_err(), RoleError::SameName("a".into()));
    }

    #[test]
    fn gateway_grants_never_name_a_denied_table() {
        let sql = gateway_grants_sql(&RoleName::parse("gw").unwrap());
        for denied in GATEWAY_DENIED {
            assert!(GATEWAY_GRANTS.iter().all(|g| g.table != *denied), "{denied}");
            assert!(!sql.contains(&format!(" ON {denied} ")), "{denied}");
        }
    }
}
