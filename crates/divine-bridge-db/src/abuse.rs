//! The database side of the gateway's abuse controls (issue 12 §1): the opt-in allowlist the login service fills,
//! and the rolling-hour counts behind the provisioning budget and the enable/disable limit.
//!
//! Decisions, stated here because the callers depend on them:
//! 1. Both limits count rows that exist anyway (`account_links.created_at`, `account_audit`), so every replica sees
//!    the same numbers and nothing extra has to be written or pruned. They are checked before the action, not in its
//!    transaction: concurrent requests can overshoot a limit by the number in flight at that instant, which is
//!    accepted (they are brakes against floods, not quotas to the unit).
//! 2. A window is the rolling hour before `now`; the caller's `Retry-After` is when the oldest counted row leaves
//!    it ([`Window::retry_after`]).
//! 3. The allowlist is a set of pubkeys; adding twice or removing an absent key is not an error (the service may
//!    retry blindly). It grants nothing by itself: the gateway consults it only under `OPT_IN_POLICY=allowlist`.
//!
//! Owns these reads and the allowlist writes only; what is refused, and how, is the gateway's.

use crate::error::DbError;
use crate::schema::{account_audit, account_links, opt_in_allowlist};
use crate::states::AuditAction;
use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, min};
use diesel::pg::PgConnection;
use diesel::prelude::*;

/// Length of every window.
pub const WINDOW: chrono::Duration = chrono::Duration::hours(1);

/// Rows counted in the hour before `now`, and the oldest of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub count: i64,
    pub oldest: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

impl Window {
    /// When one more row fits again: the oldest counted row leaves the window (at least one second).
    pub fn retry_after(&self) -> std::time::Duration {
        let secs = self
            .oldest
            .map(|o| (o + WINDOW - self.now).num_seconds())
            .unwrap_or(0)
            .max(1);
        std::time::Duration::from_secs(secs as u64)
    }
}

/// Account links created in the hour before `now` (the provisioning budget, rule 1).
pub fn links_created(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Window, DbError> {
    let (count, oldest): (i64, Option<DateTime<Utc>>) = account_links::table
        .filter(account_links::created_at.gt(now - WINDOW))
        .select((count_star(), min(account_links::created_at)))
        .first(conn)?;
    Ok(Window { count, oldest, now })
}

/// Enable and disable actions of `pubkey` in the hour before `now` (from the audit trail, rule 1).
pub fn toggles(conn: &mut PgConnection, pubkey: &str, now: DateTime<Utc>) -> Result<Window, DbError> {
    let (count, oldest): (i64, Option<DateTime<Utc>>) = account_audit::table
        .filter(account_audit::nostr_pubkey.eq(pubkey))
        .filter(account_audit::action.eq_any([AuditAction::Enable.as_str(), AuditAction::Disable.as_str()]))
        .filter(account_audit::created_at.gt(now - WINDOW))
        .select((count_star(), min(account_audit::created_at)))
        .first(conn)?;
    Ok(Window { count, oldest, now })
}

/// Adds `pubkey` (64 lower-case hex) to the allowlist; `true` when it was not there yet.
pub fn allow(conn: &mut PgConnection, pubkey: &str) -> Result<bool, DbError> {
    let n = diesel::insert_into(opt_in_allowlist::table)
        .values(opt_in_allowlist::nostr_pubkey.eq(pubkey))
        .on_conflict_do_nothing()
        .execute(conn)?;
    Ok(n == 1)
}

/// Removes `pubkey` from the allowlist; `true` when it was there.
pub fn disallow(conn: &mut PgConnection, pubkey: &str) -> Result<bool, DbError> {
    let n = diesel::delete(opt_in_allowlist::table.find(pubkey)).execute(conn)?;
    Ok(n == 1)
}

/// Whether `pubkey` is on the allowlist.
pub fn is_allowed(conn: &mut PgConnection, pubkey: &str) -> Result<bool, DbError> {
    Ok(diesel::select(diesel::dsl::exists(opt_in_allowlist::table.find(pubkey))).get_result(conn)?)
}
