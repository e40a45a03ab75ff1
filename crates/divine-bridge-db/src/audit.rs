//! The `account_audit` trail: one row per operator or user action on an account link — who (actor), what
//! (action), why (reason) and the link's state before and after — written in the SAME transaction as the action by
//! [`audited`], so an action that rolls back leaves no row and a committed one always has its row. Shown by
//! `divine-atbridge accounts show`. Owns the trail only; the state changes themselves belong to [`crate::accounts`].
//!
//! A refused action (e.g. a user's enable of a suspended account) changes nothing and is not recorded; the gateway
//! logs and counts refusals.

use crate::accounts::{self, AccountError, AccountLink};
use crate::error::DbError;
use crate::schema::account_audit;
use crate::states::AuditAction;
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::fmt;

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The login service / operator tooling holding `GATEWAY_SERVICE_TOKEN`.
    Service,
    /// The user, proven by a NIP-98 event signed by this pubkey (hex).
    Nip98(String),
    /// An operator at the CLI, by OS user name.
    Cli(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Service => f.write_str("service"),
            Actor::Nip98(pk) => write!(f, "nip98:{pk}"),
            Actor::Cli(user) => write!(f, "cli:{user}"),
        }
    }
}

impl Actor {
    /// The operator at this terminal (`$USER`, else `unknown`).
    pub fn cli_user() -> Actor {
        Actor::Cli(std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
    }
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = account_audit)]
pub struct AuditEntry {
    pub id: i64,
    pub nostr_pubkey: String,
    pub actor: String,
    pub action: String,
    pub reason: Option<String>,
    pub before_state: Option<serde_json::Value>,
    pub after_state: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

/// The fields of a link an audit row records.
pub fn snapshot(link: &AccountLink) -> serde_json::Value {
    serde_json::json!({
        "provisioning_state": link.provisioning_state,
        "crosspost_enabled": link.crosspost_enabled,
        "did": link.did,
        "handle": link.handle,
        "suspended_reason": link.suspended_reason,
    })
}

/// Runs `op` for `pubkey` and records it as `action` by `actor` with `reason`, with the link's state before and
/// after, all in one transaction.
pub fn audited<T>(
    conn: &mut PgConnection,
    pubkey: &str,
    actor: &Actor,
    action: AuditAction,
    reason: Option<&str>,
    op: impl FnOnce(&mut PgConnection) -> Result<T, AccountError>,
) -> Result<T, AccountError> {
    conn.transaction(|c| {
        let before = accounts::get(c, pubkey)?;
        let out = op(c)?;
        let after = accounts::get(c, pubkey)?;
        diesel::insert_into(account_audit::table)
            .values((
                account_audit::nostr_pubkey.eq(pubkey),
                account_audit::actor.eq(actor.to_string()),
                account_audit::action.eq(action.as_str()),
                account_audit::reason.eq(reason),
                account_audit::before_state.eq(before.as_ref().map(snapshot)),
                account_audit::after_state.eq(after.as_ref().map(snapshot)),
            ))
            .execute(c)
            .map_err(DbError::from)?;
        Ok(out)
    })
}

/// The newest `limit` audit rows of `pubkey`, newest first.
pub fn list(conn: &mut PgConnection, pubkey: &str, limit: i64) -> Result<Vec<AuditEntry>, DbError> {
    Ok(account_audit::table
        .filter(account_audit::nostr_pubkey.eq(pubkey))
        .order(account_audit::id.desc())
        .limit(limit.clamp(1, 1_000))
        .select(AuditEntry::as_select())
        .load(conn)?)
}
