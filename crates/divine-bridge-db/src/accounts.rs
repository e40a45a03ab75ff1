//! The `account_links` store: one row per opted-in Nostr pubkey with its handle, DID and provisioning state, plus
//! the per-event cross-post status view over `record_mappings` and `jobs`.
//!
//! Owns every state change of an account link and the jobs that must be written atomically with it: opt-in writes
//! the link and its `provision_account` job in one transaction; disable cancels the account's queued publish and
//! backfill jobs (never its deletes or profile syncs) in the same transaction; enable re-drives provisioning when the
//! account never got a DID, re-queues what the pause skipped and re-drives the account's one backfill job.
//!
//! Pause semantics (issue 10; docs/runbooks/account-lifecycle.md), decided here:
//! 1. A paused (disabled) account that has a DID keeps being followed by ingest. Its deletes (kind 5) and profile
//!    changes (kind 0) are still applied to its repo: pausing must never leave a video the user deleted on Bluesky.
//! 2. Disable cancels only queued `publish_post` / `backfill_author` jobs, with `last_error_code =
//!    account_disabled` ([`DISABLE_CODE`]); a running backfill is asked to cancel. A publish running at that moment
//!    finishes (it was already under way); one that runs later ends `ineligible` with the same code.
//! 3. Enable re-queues every publish job of the account that ended `cancelled` or `ineligible` with
//!    `account_disabled` ([`queue::requeue_skipped`]): a cancelled job keeps its unique key, so re-enqueueing the
//!    event would be a no-op and the post would never be bridged. A publish try that read the paused account
//!    before an enable and ends after it is re-queued by its own finalize ([`finish_skipped`]), so no skip outlives
//!    the pause that caused it.
//! 4. An account has ONE backfill job key, `backfill:<pubkey>`, re-driven with [`queue::requeue_or_enqueue`]: any
//!    number of enable/disable rounds leaves at most one live backfill.
//!
//! The worker's transitions ([`mark_provisioning`], [`mark_ready`], [`mark_failed`]) are fenced so they never take
//! an account out of `disabled` or `suspended`. This module validates nothing about handle or pubkey syntax (the
//! gateway's `handle` module does) and performs no protocol calls.
//!
//! Lifecycle: `pending → provisioning → ready | failed`, any state → `disabled` (operator or user), any state →
//! `suspended` (operator only, with a reason), `suspended → disabled` (operator unsuspend), and
//! `disabled | failed → pending | ready` on enable (ready when the account already has a DID). A suspended account
//! behaves like a disabled one (module rules 1–3 apply), but [`enable`], [`disable`] and a repeated [`opt_in`] cannot
//! take it out of `suspended`: enable and opt-in are refused with [`AccountError::Suspended`].
//!
//! Disconnect semantics (issue 10 "when I leave, the bridge lets go"; docs/runbooks/account-lifecycle.md):
//! 1. [`begin_disconnect`] (user or service) moves any state to `disconnecting`, turns cross-posting off, stamps
//!    `disconnected_at` (kept on repeats), cancels every queued job of the account ([`DISCONNECT_CANCELS`], code
//!    [`DISCONNECT_CODE`]), asks running ones to cancel, opens the account's tombstone (`account_tombstones`: the
//!    audited pubkey → DID link) and queues its one `disconnect_account` job ([`disconnect_job`]) — one
//!    transaction. Repeating it re-drives that job (a failed run resumes) and changes nothing else.
//! 2. From `disconnecting` on, nothing leaves: ingest stops following the pubkey ([`followed_pubkeys`]), the
//!    publish and upkeep gates refuse with `account_disconnected`, and [`enable`], [`disable`], [`suspend`],
//!    [`opt_in`] and the worker's [`set_state`] do not change the state ([`AccountError::Disconnected`] for the
//!    user-facing ones).
//! 3. The job (divine-atbridge `jobs::disconnect`) deletes the records, deactivates the PDS account, then calls
//!    [`finish_disconnect`]: keys and sessions deleted (crypto-shred), state `disconnected`, tombstone completed —
//!    one transaction, so a crash leaves either all of it or none.
//! 4. The link row keeps holding the handle (opt-in of it answers `handle_taken`) until [`release_handles`] deletes
//!    it `HANDLE_RELEASE_GRACE_SECS` after `disconnected_at`; the tombstone stays, with `handle_released_at`.
//! 5. Coming back: while the link row exists, opt-in is refused with `account_disconnected`; after the release the
//!    pubkey may opt in again as a NEW account (new keys, new DID; the old DID stays deactivated). Decided so a user
//!    who left is never silently re-attached to the identity they asked to be cut from.
//! 6. An opt-in that never finished provisioning (`pending` or `failed`, no DID) releases its handle
//!    `UNPROVISIONED_HANDLE_RELEASE_SECS` after it was created, by the same [`release_handles`] pass (issue 12 §1:
//!    opt-in floods must not squat names). The pubkey may opt in again; its provisioning job is re-driven.

use crate::class::{Classified, ErrorClass};
use crate::code::ErrorCode;
use crate::error::DbError;
use crate::job_args::{BackfillAuthorArgs, BackfillRun, DisconnectAccountArgs, ProvisionAccountArgs};
use crate::queue::{self, NewJob};
use crate::schema::{account_keys, account_links, account_sessions, account_tombstones, jobs, record_mappings};
use crate::states::{JobKind, JobState, ProvisioningState, RecordState};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::collections::HashMap;

/// Job kinds cancelled when an account is disabled. Provisioning is deliberately absent: a run in flight finishes
/// (the DID is kept) and the worker's state fence leaves the account `disabled`. Deletes and profile syncs are absent
/// too: they are honoured while paused (module rule 1).
pub const DISABLE_CANCELS: &[JobKind] = &[JobKind::PublishPost, JobKind::BackfillAuthor];

/// `last_error_code` of a job skipped because its account was disabled: set by [`disable`] on the jobs it cancels and
/// by the publish gate on jobs that run while paused; [`enable`] re-queues exactly these.
pub const DISABLE_CODE: ErrorCode = ErrorCode::AccountDisabled;

/// Job kinds cancelled by [`begin_disconnect`]: every kind but the disconnect itself (disconnect rule 1).
pub const DISCONNECT_CANCELS: &[JobKind] = &[
    JobKind::ProvisionAccount,
    JobKind::PublishPost,
    JobKind::DeletePost,
    JobKind::SyncProfile,
    JobKind::BackfillAuthor,
];

/// `last_error_code` of a job skipped because its account is disconnecting or disconnected (the gates' verdict too).
pub const DISCONNECT_CODE: ErrorCode = ErrorCode::AccountDisconnected;

/// Most event ids accepted by one [`crosspost_status`] call.
pub const MAX_STATUS_IDS: usize = 100;

/// One `account_links` row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = account_links)]
pub struct AccountLink {
    pub nostr_pubkey: String,
    pub handle: String,
    pub did: Option<String>,
    pub crosspost_enabled: bool,
    pub provisioning_state: String,
    /// Stable error code of the last permanent provisioning failure (see troubleshooting.md).
    pub provisioning_error: Option<String>,
    /// Human-readable detail of that failure (operator-facing; not shown by the gateway).
    pub provisioning_error_detail: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The operator's reason while `suspended`.
    pub suspended_reason: Option<String>,
    /// When the disconnect was requested (`disconnecting` / `disconnected`); the handle grace counts from here.
    pub disconnected_at: Option<DateTime<Utc>>,
}

impl AccountLink {
    /// The parsed provisioning state.
    pub fn state(&self) -> Result<ProvisioningState, DbError> {
        Ok(self.provisioning_state.parse()?)
    }
}

/// Errors of the account-link operations that callers turn into user-facing answers.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Another pubkey already holds this handle.
    #[error("handle {handle} is already taken by another account")]
    HandleTaken { handle: String },
    /// The pubkey is already linked under a different handle (handle changes are not supported).
    #[error("this pubkey is already linked as {existing}; handle changes are not supported")]
    HandleMismatch { existing: String },
    /// No link for this pubkey.
    #[error("no account link for this pubkey")]
    NotFound,
    /// An operator suspended the account; only an operator can lift it.
    #[error("this account is suspended by the operator: {reason}")]
    Suspended { reason: String },
    /// The account is disconnecting or disconnected; it cannot be enabled or opted in again until its handle is
    /// released (disconnect rule 5).
    #[error("this account was disconnected from the bridge")]
    Disconnected,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for AccountError {
    fn from(e: diesel::result::Error) -> Self {
        AccountError::Db(DbError::from_diesel(e))
    }
}

impl Classified for AccountError {
    fn code(&self) -> ErrorCode {
        match self {
            AccountError::HandleTaken { .. } => ErrorCode::HandleTaken,
            AccountError::HandleMismatch { .. } => ErrorCode::HandleMismatch,
            AccountError::NotFound => ErrorCode::AccountNotFound,
            AccountError::Suspended { .. } => ErrorCode::AccountSuspended,
            AccountError::Disconnected => ErrorCode::AccountDisconnected,
            AccountError::Db(e) => e.code(),
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            AccountError::Db(e) => e.class(),
            _ => ErrorClass::Permanent,
        }
    }
}

pub use crate::job_args::{backfill_unique_key, disconnect_unique_key, provision_unique_key};

/// The `provision_account` job for `pubkey` ([`ProvisionAccountArgs`]: account priority, so it precedes the
/// account's posts).
pub fn provision_job(pubkey: &str) -> Result<NewJob, DbError> {
    NewJob::of(&ProvisionAccountArgs {
        nostr_pubkey: pubkey.to_string(),
    })
}

/// The `disconnect_account` job for `pubkey` ([`DisconnectAccountArgs`]). Enqueue it with
/// [`queue::requeue_or_enqueue`] (as [`begin_disconnect`] does) so a failed run is re-driven and a live one is not
/// doubled.
pub fn disconnect_job(pubkey: &str) -> Result<NewJob, DbError> {
    NewJob::of(&DisconnectAccountArgs {
        nostr_pubkey: pubkey.to_string(),
    })
}

/// The account's one re-drivable `backfill_author` job for `pubkey` ([`BackfillAuthorArgs`], [`BackfillRun::Account`]).
/// Enqueue it with [`queue::requeue_or_enqueue`] so a finished one is re-driven and a live one is not doubled.
pub fn backfill_job(pubkey: &str) -> Result<NewJob, DbError> {
    NewJob::of(&BackfillAuthorArgs {
        nostr_pubkey: pubkey.to_string(),
        run: BackfillRun::Account,
    })
}

/// An opt-in request, already normalised and validated by the caller.
#[derive(Debug, Clone)]
pub struct OptIn {
    /// 64 lower-case hex characters.
    pub nostr_pubkey: String,
    /// Lower-case handle under the operator's domain.
    pub handle: String,
    pub crosspost_enabled: bool,
}

/// What [`opt_in`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptInOutcome {
    /// A new link and its provisioning job were written.
    Created,
    /// The same pubkey + handle was already linked; nothing changed (idempotent repeat).
    Existing,
    /// The link existed but was disabled; it was enabled again (as by [`enable`]).
    Reenabled,
}

/// Result of [`opt_in`].
#[derive(Debug, Clone)]
pub struct OptInResult {
    pub link: AccountLink,
    pub outcome: OptInOutcome,
}

fn lock(conn: &mut PgConnection, pubkey: &str) -> Result<Option<AccountLink>, DbError> {
    Ok(account_links::table
        .find(pubkey)
        .select(AccountLink::as_select())
        .for_update()
        .first(conn)
        .optional()?)
}

fn handle_error(e: diesel::result::Error, handle: &str) -> AccountError {
    match DbError::from_diesel(e) {
        DbError::UniqueViolation { constraint } if constraint.contains("handle") => AccountError::HandleTaken {
            handle: handle.to_string(),
        },
        other => AccountError::Db(other),
    }
}

/// Opts a pubkey in: writes the link (`pending`) and its `provision_account` job (unique key
/// `provision:<pubkey>`) in one transaction. Repeating the same pubkey + handle returns the existing link without a
/// second job; a disabled link with the same handle is enabled again. A handle held by another pubkey is
/// [`AccountError::HandleTaken`]; the same pubkey with another handle is [`AccountError::HandleMismatch`].
pub fn opt_in(conn: &mut PgConnection, req: &OptIn) -> Result<OptInResult, AccountError> {
    conn.transaction(|c| {
        if let Some(existing) = lock(c, &req.nostr_pubkey)? {
            return opt_in_existing(c, existing, &req.handle);
        }
        let holder: Option<String> = account_links::table
            .filter(account_links::handle.eq(&req.handle))
            .select(account_links::nostr_pubkey)
            .first(c)
            .optional()?;
        match holder {
            Some(pk) if pk == req.nostr_pubkey => {
                // The same opt-in committed since the first read: answer as a repeat of it.
                let existing = lock(c, &req.nostr_pubkey)?.ok_or(AccountError::NotFound)?;
                return opt_in_existing(c, existing, &req.handle);
            }
            Some(_) => {
                return Err(AccountError::HandleTaken {
                    handle: req.handle.clone(),
                })
            }
            None => {}
        }
        let now = Utc::now();
        let inserted = diesel::insert_into(account_links::table)
            .values((
                account_links::nostr_pubkey.eq(&req.nostr_pubkey),
                account_links::handle.eq(&req.handle),
                account_links::crosspost_enabled.eq(req.crosspost_enabled),
                account_links::provisioning_state.eq(ProvisioningState::Pending.as_str()),
                account_links::created_at.eq(now),
                account_links::updated_at.eq(now),
            ))
            // No conflict target: a concurrent opt-in that committed first may collide on the pubkey, the handle
            // or both; every such collision is decided below by re-reading, never by a constraint error.
            .on_conflict_do_nothing()
            .returning(AccountLink::as_returning())
            .get_result(c)
            .optional()
            .map_err(|e| handle_error(e, &req.handle))?;
        let Some(link) = inserted else {
            return match lock(c, &req.nostr_pubkey)? {
                // The same pubkey committed first: answer as a repeat of it.
                Some(existing) => opt_in_existing(c, existing, &req.handle),
                // Another pubkey took the handle first.
                None => Err(AccountError::HandleTaken {
                    handle: req.handle.clone(),
                }),
            };
        };
        // A pubkey whose earlier link was released (after a disconnect, or an opt-in that never finished
        // provisioning) still has its old job holding the one provisioning key: then that job is re-driven (or, if
        // it had succeeded, gives the key up) so the new link is provisioned. Plain `enqueue` first, so a first
        // opt-in writes its job in this very transaction, not in a savepoint.
        if queue::enqueue(c, &provision_job(&req.nostr_pubkey)?)?.is_none() {
            queue::requeue_or_enqueue(c, &provision_job(&req.nostr_pubkey)?)?;
        }
        Ok(OptInResult {
            link,
            outcome: OptInOutcome::Created,
        })
    })
}

fn opt_in_existing(conn: &mut PgConnection, existing: AccountLink, handle: &str) -> Result<OptInResult, AccountError> {
    if existing.handle != handle {
        return Err(AccountError::HandleMismatch {
            existing: existing.handle,
        });
    }
    refuse_suspended(&existing)?;
    refuse_leaving(&existing)?;
    if existing.state()? == ProvisioningState::Disabled {
        let link = enable_locked(conn, existing)?;
        return Ok(OptInResult {
            link,
            outcome: OptInOutcome::Reenabled,
        });
    }
    Ok(OptInResult {
        link: existing,
        outcome: OptInOutcome::Existing,
    })
}

/// The link of `pubkey`.
pub fn get(conn: &mut PgConnection, pubkey: &str) -> Result<Option<AccountLink>, DbError> {
    Ok(account_links::table
        .find(pubkey)
        .select(AccountLink::as_select())
        .first(conn)
        .optional()?)
}

/// The link holding `handle` (exact, lower-case).
pub fn get_by_handle(conn: &mut PgConnection, handle: &str) -> Result<Option<AccountLink>, DbError> {
    Ok(account_links::table
        .filter(account_links::handle.eq(handle))
        .select(AccountLink::as_select())
        .first(conn)
        .optional()?)
}

/// The link of `did`.
pub fn get_by_did(conn: &mut PgConnection, did: &str) -> Result<Option<AccountLink>, DbError> {
    Ok(account_links::table
        .filter(account_links::did.eq(did))
        .select(AccountLink::as_select())
        .first(conn)
        .optional()?)
}

/// Pubkeys (hex) ingest must follow: accounts with cross-posting on and not disabled, plus every account that has a
/// DID whatever its state (module rule 1: a paused account's deletes and profile changes are still honoured).
pub fn followed_pubkeys(conn: &mut PgConnection) -> Result<std::collections::BTreeSet<String>, DbError> {
    let rows: Vec<String> = account_links::table
        .filter(
            account_links::did
                .is_not_null()
                .or(account_links::crosspost_enabled
                    .eq(true)
                    .and(account_links::provisioning_state.ne_all([
                        ProvisioningState::Disabled.as_str(),
                        ProvisioningState::Suspended.as_str(),
                    ]))),
        )
        // Disconnect rule 2: a leaving account is not followed at all (its disconnect job deletes everything).
        .filter(account_links::provisioning_state.ne_all(leaving()))
        .select(account_links::nostr_pubkey)
        .load(conn)?;
    Ok(rows.into_iter().collect())
}

/// The DID published for `handle` by `/.well-known/atproto-did`: only `ready` accounts resolve.
pub fn resolve_handle(conn: &mut PgConnection, handle: &str) -> Result<Option<String>, DbError> {
    Ok(account_links::table
        .filter(account_links::handle.eq(handle))
        .filter(account_links::provisioning_state.eq(ProvisioningState::Ready.as_str()))
        .select(account_links::did)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// Finalizes a try that ended `ineligible` with [`DISABLE_CODE`] (the publish gate found the account paused), and
/// re-queues it at once when the account is enabled by then (module rule 3).
///
/// Why: the gate reads the account before the try finalizes. An enable committing in between re-queues the jobs
/// already skipped ([`queue::requeue_skipped`]), but not this one, still running; written `ineligible` afterwards, it
/// would stay skipped although the pause is over (seen in e2e_lifecycle: enable, disable, enable in quick
/// succession). So the verdict is written under a share lock on the account's link row, which an enable updates
/// first: an enable in flight is waited for and then seen here (the job is re-queued, [`queue::retry`]: attempt and
/// key order kept); an enable that starts later waits for this commit, and its `requeue_skipped` sees the verdict.
/// Only this job is re-queued: two finalizes re-queueing each other's rows could deadlock.
pub fn finish_skipped(
    conn: &mut PgConnection,
    lease: queue::Lease,
    account: &str,
    outcome: &queue::Finish,
) -> Result<queue::Finished, DbError> {
    conn.transaction(|conn| {
        let link: Option<(bool, String)> = account_links::table
            .find(account)
            .select((account_links::crosspost_enabled, account_links::provisioning_state))
            .for_share()
            .first(conn)
            .optional()?;
        let finished = queue::finish(conn, lease, outcome)?;
        let enabled_now = match link {
            Some((enabled, state)) => {
                let state: ProvisioningState = state.parse()?;
                enabled && !state.is_paused() && !state.is_leaving()
            }
            None => false,
        };
        if finished == queue::Finished::Applied(JobState::Ineligible) && enabled_now {
            queue::retry(conn, lease.id)?;
        }
        Ok(finished)
    })
}

/// Turns cross-posting back on. No-op (returns the link) when it is already on and the account is neither
/// `disabled` nor `failed`. Otherwise: `crosspost_enabled = true`, `disabled_at = NULL`, error cleared; the state
/// becomes `ready` when the account already has a DID, else `pending` with provisioning re-driven
/// ([`queue::requeue_or_enqueue`] on `provision:<pubkey>`: a terminal failed/cancelled/ineligible job is queued
/// again; a live one is left alone); the publish jobs skipped while paused are re-queued (module rule 3); and the
/// account's one `backfill_author` job (`backfill:<pubkey>`) is re-driven to import the history missed meanwhile
/// (module rule 4). All in one transaction.
pub fn enable(conn: &mut PgConnection, pubkey: &str) -> Result<AccountLink, AccountError> {
    conn.transaction(|c| {
        let link = lock(c, pubkey)?.ok_or(AccountError::NotFound)?;
        enable_locked(c, link)
    })
}

fn refuse_suspended(link: &AccountLink) -> Result<(), AccountError> {
    if link.state()? == ProvisioningState::Suspended {
        return Err(AccountError::Suspended {
            reason: link.suspended_reason.clone().unwrap_or_default(),
        });
    }
    Ok(())
}

fn refuse_leaving(link: &AccountLink) -> Result<(), AccountError> {
    if link.state()?.is_leaving() {
        return Err(AccountError::Disconnected);
    }
    Ok(())
}

/// The stored values of the leaving states ([`ProvisioningState::is_leaving`]).
fn leaving() -> [&'static str; 2] {
    [
        ProvisioningState::Disconnecting.as_str(),
        ProvisioningState::Disconnected.as_str(),
    ]
}

fn enable_locked(conn: &mut PgConnection, link: AccountLink) -> Result<AccountLink, AccountError> {
    refuse_suspended(&link)?;
    refuse_leaving(&link)?;
    let state = link.state()?;
    let off = state.is_paused() || state == ProvisioningState::Failed;
    if link.crosspost_enabled && !off {
        return Ok(link);
    }
    let now = Utc::now();
    let new_state = match (&link.did, state) {
        (Some(_), _) => ProvisioningState::Ready,
        (None, ProvisioningState::Pending | ProvisioningState::Provisioning) => state,
        (None, _) => ProvisioningState::Pending,
    };
    let updated = diesel::update(account_links::table.find(&link.nostr_pubkey))
        .set((
            account_links::crosspost_enabled.eq(true),
            account_links::disabled_at.eq(None::<DateTime<Utc>>),
            account_links::provisioning_state.eq(new_state.as_str()),
            account_links::provisioning_error.eq(None::<String>),
            account_links::provisioning_error_detail.eq(None::<String>),
            account_links::updated_at.eq(now),
        ))
        .returning(AccountLink::as_returning())
        .get_result(conn)?;
    if updated.did.is_none() {
        queue::requeue_or_enqueue(conn, &provision_job(&updated.nostr_pubkey)?)?;
    }
    queue::requeue_skipped(
        conn,
        &updated.nostr_pubkey,
        &[JobKind::PublishPost],
        DISABLE_CODE.as_str(),
    )?;
    queue::requeue_or_enqueue(conn, &backfill_job(&updated.nostr_pubkey)?)?;
    Ok(updated)
}

/// Result of [`disable`].
#[derive(Debug, Clone)]
pub struct Disabled {
    pub link: AccountLink,
    /// Jobs cancelled (queued) or asked to cancel (running) by this call.
    pub cancelled_jobs: usize,
}

/// Turns the account off: state `disabled`, `crosspost_enabled = false`, `disabled_at = now` (kept from the first
/// disable on repeats), and — in the same transaction — cancels the account's queued publish and backfill jobs
/// ([`DISABLE_CANCELS`], code [`DISABLE_CODE`]) and requests cancellation of a running backfill. Deletes and profile
/// syncs keep running (module rule 1); provisioning in flight is left alone (the worker checks the state). A
/// suspended account stays suspended (nothing changes).
pub fn disable(conn: &mut PgConnection, pubkey: &str) -> Result<Disabled, AccountError> {
    pause(conn, pubkey, ProvisioningState::Disabled, None)
}

/// Operator suspension: like [`disable`] (same cancellations, deletes and profile changes still honoured) but the
/// state is `suspended` with `reason`, and the user cannot lift it ([`enable`] and [`opt_in`] answer
/// [`AccountError::Suspended`]). Repeating it updates the reason.
pub fn suspend(conn: &mut PgConnection, pubkey: &str, reason: &str) -> Result<Disabled, AccountError> {
    pause(conn, pubkey, ProvisioningState::Suspended, Some(reason))
}

/// Operator lift of a suspension: `suspended → disabled` (reason cleared). Cross-posting stays off until the user or
/// the service enables it again. Any other state: no change. Returns the link.
pub fn unsuspend(conn: &mut PgConnection, pubkey: &str) -> Result<AccountLink, AccountError> {
    conn.transaction(|c| {
        let link = lock(c, pubkey)?.ok_or(AccountError::NotFound)?;
        if link.state()? != ProvisioningState::Suspended {
            return Ok(link);
        }
        Ok(diesel::update(account_links::table.find(pubkey))
            .set((
                account_links::provisioning_state.eq(ProvisioningState::Disabled.as_str()),
                account_links::suspended_reason.eq(None::<String>),
                account_links::updated_at.eq(Utc::now()),
            ))
            .returning(AccountLink::as_returning())
            .get_result(c)?)
    })
}

fn pause(
    conn: &mut PgConnection,
    pubkey: &str,
    to: ProvisioningState,
    reason: Option<&str>,
) -> Result<Disabled, AccountError> {
    debug_assert!(to.is_paused());
    conn.transaction(|c| {
        let link = lock(c, pubkey)?.ok_or(AccountError::NotFound)?;
        let keep = (to == ProvisioningState::Disabled && link.state()? == ProvisioningState::Suspended)
            || link.state()?.is_leaving();
        if keep {
            return Ok(Disabled {
                link,
                cancelled_jobs: 0,
            });
        }
        let now = Utc::now();
        let updated = diesel::update(account_links::table.find(pubkey))
            .set((
                account_links::provisioning_state.eq(to.as_str()),
                account_links::suspended_reason.eq(reason),
                account_links::crosspost_enabled.eq(false),
                account_links::disabled_at.eq(link.disabled_at.unwrap_or(now)),
                account_links::updated_at.eq(now),
            ))
            .returning(AccountLink::as_returning())
            .get_result(c)?;
        let cancelled_jobs = queue::cancel_queued_for_account(c, pubkey, DISABLE_CANCELS, DISABLE_CODE.as_str())?
            + queue::cancel_for_account(c, pubkey, &[JobKind::BackfillAuthor])?;
        Ok(Disabled {
            link: updated,
            cancelled_jobs,
        })
    })
}

/// Worker transition: sets `state` (and the error code/detail, cleared when `None`) unless the account is paused
/// (`disabled` or `suspended`) or leaving (`disconnecting` / `disconnected`) — a paused account stays paused and a
/// leaving one leaves, whatever provisioning does underneath. Returns whether a row changed (false: no such account,
/// or paused / leaving).
pub fn set_state(
    conn: &mut PgConnection,
    pubkey: &str,
    state: ProvisioningState,
    error: Option<(&str, &str)>,
) -> Result<bool, DbError> {
    let n = diesel::update(
        account_links::table
            .find(pubkey)
            .filter(account_links::provisioning_state.ne_all([
                ProvisioningState::Disabled.as_str(),
                ProvisioningState::Suspended.as_str(),
            ]))
            .filter(account_links::provisioning_state.ne_all(leaving())),
    )
    .set((
        account_links::provisioning_state.eq(state.as_str()),
        account_links::provisioning_error.eq(error.map(|e| e.0)),
        account_links::provisioning_error_detail.eq(error.map(|e| e.1)),
        account_links::updated_at.eq(Utc::now()),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Worker: a provisioning run started (`provisioning`, error cleared). Fenced like [`set_state`].
pub fn mark_provisioning(conn: &mut PgConnection, pubkey: &str) -> Result<bool, DbError> {
    set_state(conn, pubkey, ProvisioningState::Provisioning, None)
}

/// Worker: provisioning finished with `did`. The DID is always recorded (even on a disabled account, so a later
/// enable goes straight to `ready`); the state becomes `ready` unless the account is disabled. Returns whether the
/// state became `ready`. A DID already held by another account is a [`DbError::UniqueViolation`].
pub fn mark_ready(conn: &mut PgConnection, pubkey: &str, did: &str) -> Result<bool, DbError> {
    conn.transaction(|c| {
        let now = Utc::now();
        diesel::update(account_links::table.find(pubkey))
            .set((account_links::did.eq(did), account_links::updated_at.eq(now)))
            .execute(c)
            .map_err(DbError::from_diesel)?;
        set_state(c, pubkey, ProvisioningState::Ready, None)
    })
}

/// Operator re-drive (`accounts reprovision`): a `failed` link goes back to `pending` with its error cleared, so the
/// status endpoint shows the new attempt. Keys and the provisioning checkpoint are untouched, so the run resumes with
/// the same DID. Returns false when the link is not `failed` (nothing to reset).
pub fn reset_failed(conn: &mut PgConnection, pubkey: &str) -> Result<bool, DbError> {
    let n = diesel::update(
        account_links::table
            .find(pubkey)
            .filter(account_links::provisioning_state.eq(ProvisioningState::Failed.as_str())),
    )
    .set((
        account_links::provisioning_state.eq(ProvisioningState::Pending.as_str()),
        account_links::provisioning_error.eq(None::<String>),
        account_links::provisioning_error_detail.eq(None::<String>),
        account_links::updated_at.eq(Utc::now()),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Worker: provisioning failed permanently with a stable `code` (troubleshooting.md) and an operator-facing
/// `detail`. Fenced like [`set_state`].
pub fn mark_failed(conn: &mut PgConnection, pubkey: &str, code: ErrorCode, detail: &str) -> Result<bool, DbError> {
    set_state(conn, pubkey, ProvisioningState::Failed, Some((code.as_str(), detail)))
}

/// Cross-post status of one Nostr event, as shown to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishStatus {
    /// Neither a publish job nor a record is known for this event (of this account).
    NotFound,
    /// Waiting for its first attempt.
    Queued,
    /// A worker holds it now (or a reservation exists without a live job).
    Publishing,
    /// On the PDS: `at_uri` and `cid` are set.
    Published,
    /// Queued again after a transient failure; `error_code` says why.
    Retrying,
    /// Failed or ineligible; `error_code` says why.
    Failed,
    /// Cancelled (account disabled, deleted on Nostr, superseded by a newer revision).
    Cancelled,
}

/// One entry of [`crosspost_status`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CrosspostStatus {
    pub nostr_event_id: String,
    pub status: PublishStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// The facts about one event that decide its status.
#[derive(Debug, Clone, Default)]
pub struct StatusFacts {
    /// `(state, at_uri, cid)` of its `record_mappings` row.
    pub mapping: Option<(String, Option<String>, Option<String>)>,
    /// `(state, attempt, last_error_code)` of its `publish:<event id>` job.
    pub job: Option<(String, i32, Option<String>)>,
}

/// Decides the status of one event. The record mapping wins when it is final (published / deleted / superseded);
/// otherwise the job decides: queued & attempt 0 → queued, queued & attempt > 0 → retrying, running → publishing,
/// failed / ineligible → failed, cancelled → cancelled, succeeded → published. A reservation without a job →
/// publishing; nothing → not_found.
pub fn derive_status(event_id: &str, facts: &StatusFacts) -> Result<CrosspostStatus, DbError> {
    let mut out = CrosspostStatus {
        nostr_event_id: event_id.to_string(),
        status: PublishStatus::NotFound,
        at_uri: None,
        cid: None,
        error_code: None,
    };
    if let Some((state, at_uri, cid)) = &facts.mapping {
        match state.parse::<RecordState>()? {
            RecordState::Published => {
                out.status = PublishStatus::Published;
                out.at_uri = at_uri.clone();
                out.cid = cid.clone();
                return Ok(out);
            }
            RecordState::Deleted => {
                out.status = PublishStatus::Cancelled;
                out.error_code = Some("deleted".to_string());
                return Ok(out);
            }
            RecordState::Superseded => {
                out.status = PublishStatus::Cancelled;
                out.error_code = Some("superseded".to_string());
                return Ok(out);
            }
            RecordState::Reserved => out.status = PublishStatus::Publishing,
        }
    }
    if let Some((state, attempt, code)) = &facts.job {
        let (status, with_code) = match state.parse::<JobState>()? {
            JobState::Queued if *attempt == 0 => (PublishStatus::Queued, false),
            JobState::Queued => (PublishStatus::Retrying, true),
            JobState::Running => (PublishStatus::Publishing, false),
            JobState::Succeeded => (PublishStatus::Published, false),
            JobState::Failed | JobState::Ineligible => (PublishStatus::Failed, true),
            JobState::Cancelled => (PublishStatus::Cancelled, true),
        };
        out.status = status;
        if with_code {
            out.error_code = code.clone();
        }
    }
    Ok(out)
}

/// Status of each of `event_ids` (lower-case hex, at most [`MAX_STATUS_IDS`]; answered in the given order) for
/// events authored by `pubkey`: mappings and publish jobs of other accounts are invisible.
pub fn crosspost_status(
    conn: &mut PgConnection,
    pubkey: &str,
    event_ids: &[String],
) -> Result<Vec<CrosspostStatus>, DbError> {
    let mut facts: HashMap<String, StatusFacts> = HashMap::new();
    if !event_ids.is_empty() {
        type MappingRow = (String, String, Option<String>, Option<String>);
        let mappings: Vec<MappingRow> = record_mappings::table
            .filter(record_mappings::nostr_event_id.eq_any(event_ids))
            .filter(record_mappings::nostr_pubkey.eq(pubkey))
            .select((
                record_mappings::nostr_event_id,
                record_mappings::state,
                record_mappings::at_uri,
                record_mappings::cid,
            ))
            .load(conn)?;
        for (id, state, at_uri, cid) in mappings {
            facts.entry(id).or_default().mapping = Some((state, at_uri, cid));
        }
        let keys: Vec<String> = event_ids.iter().map(|id| format!("publish:{id}")).collect();
        type JobFactRow = (Option<String>, String, i32, Option<String>);
        let rows: Vec<JobFactRow> = jobs::table
            .filter(jobs::unique_key.eq_any(&keys))
            .filter(jobs::payload.retrieve_as_text("account").eq(pubkey))
            .filter(jobs::kind.eq(JobKind::PublishPost.as_str()))
            .select((jobs::unique_key, jobs::state, jobs::attempt, jobs::last_error_code))
            .load(conn)?;
        for (key, state, attempt, code) in rows {
            if let Some(id) = key.as_deref().and_then(|k| k.strip_prefix("publish:")) {
                facts.entry(id.to_string()).or_default().job = Some((state, attempt, code));
            }
        }
    }
    let empty = StatusFacts::default();
    event_ids
        .iter()
        .map(|id| derive_status(id, facts.get(id).unwrap_or(&empty)))
        .collect()
}

/// Most entries of one [`history`] page.
pub const MAX_HISTORY_PAGE: i64 = 100;

/// One page of an account's bridged-post history (newest first).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryPage {
    pub posts: Vec<CrosspostStatus>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page. Opaque to callers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The account's bridged posts, newest publish job first, `limit` (1..=[`MAX_HISTORY_PAGE`]) at a time, each with
/// the status [`crosspost_status`] gives it (state, AT-URI, error code). `before` is the cursor of the previous page
/// (a publish job id: keyset pagination, so entries added meanwhile never shift a page). Other accounts' jobs are
/// invisible.
pub fn history(conn: &mut PgConnection, pubkey: &str, before: Option<i64>, limit: i64) -> Result<HistoryPage, DbError> {
    let limit = limit.clamp(1, MAX_HISTORY_PAGE);
    let mut q = jobs::table
        .filter(jobs::payload.retrieve_as_text("account").eq(pubkey))
        .filter(jobs::kind.eq(JobKind::PublishPost.as_str()))
        .select((jobs::id, jobs::unique_key))
        .order(jobs::id.desc())
        .limit(limit + 1)
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(jobs::id.lt(b));
    }
    let rows: Vec<(i64, Option<String>)> = q.load(conn)?;
    let more = rows.len() as i64 > limit;
    let page: Vec<(i64, String)> = rows
        .into_iter()
        .take(limit as usize)
        .filter_map(|(id, key)| Some((id, key?.strip_prefix("publish:")?.to_string())))
        .collect();
    let cursor = more.then(|| page.last().map(|(id, _)| id.to_string())).flatten();
    let ids: Vec<String> = page.into_iter().map(|(_, event_id)| event_id).collect();
    Ok(HistoryPage {
        posts: crosspost_status(conn, pubkey, &ids)?,
        cursor,
    })
}

/// One `account_tombstones` row: the audited pubkey → DID link of a disconnect (disconnect rules 1, 3, 4).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = account_tombstones)]
pub struct AccountTombstone {
    pub id: i64,
    pub nostr_pubkey: String,
    pub did: Option<String>,
    pub handle: String,
    pub disconnected_at: DateTime<Utc>,
    /// When the disconnect job finished (records deleted, PDS account deactivated, keys destroyed).
    pub completed_at: Option<DateTime<Utc>>,
    /// When [`release_handles`] freed the handle (deleted the link row).
    pub handle_released_at: Option<DateTime<Utc>>,
}

/// The tombstones of `pubkey`, newest first.
pub fn tombstones(conn: &mut PgConnection, pubkey: &str) -> Result<Vec<AccountTombstone>, DbError> {
    Ok(account_tombstones::table
        .filter(account_tombstones::nostr_pubkey.eq(pubkey))
        .order(account_tombstones::id.desc())
        .select(AccountTombstone::as_select())
        .load(conn)?)
}

/// Result of [`begin_disconnect`].
#[derive(Debug, Clone)]
pub struct Disconnecting {
    pub link: AccountLink,
    /// Jobs cancelled (queued) or asked to cancel (running) by this call.
    pub cancelled_jobs: usize,
    /// Id of the account's `disconnect_account` job (new, re-driven, or the live one left alone); `None` when the
    /// account is already `disconnected` (no job).
    pub job_id: Option<i64>,
}

/// Starts (or re-drives) the disconnect of `pubkey` (disconnect rule 1): state `disconnecting`, cross-posting off,
/// `disconnected_at` stamped (kept on repeats), every queued job of [`DISCONNECT_CANCELS`] cancelled with
/// [`DISCONNECT_CODE`] and running ones asked to cancel, the tombstone opened with the link's DID and handle, and the
/// account's `disconnect_account` job queued (or a failed one re-driven) — one transaction. Works from any state,
/// suspended included (leaving is never refused). On a `disconnected` link: no change, no job.
pub fn begin_disconnect(conn: &mut PgConnection, pubkey: &str) -> Result<Disconnecting, AccountError> {
    conn.transaction(|c| {
        let link = lock(c, pubkey)?.ok_or(AccountError::NotFound)?;
        if link.state()? == ProvisioningState::Disconnected {
            return Ok(Disconnecting {
                link,
                cancelled_jobs: 0,
                job_id: None,
            });
        }
        let now = Utc::now();
        let since = link.disconnected_at.unwrap_or(now);
        let updated = diesel::update(account_links::table.find(pubkey))
            .set((
                account_links::provisioning_state.eq(ProvisioningState::Disconnecting.as_str()),
                account_links::crosspost_enabled.eq(false),
                account_links::disconnected_at.eq(since),
                account_links::updated_at.eq(now),
            ))
            .returning(AccountLink::as_returning())
            .get_result(c)?;
        let cancelled_jobs = queue::cancel_queued_for_account(c, pubkey, DISCONNECT_CANCELS, DISCONNECT_CODE.as_str())?
            + queue::cancel_for_account(c, pubkey, DISCONNECT_CANCELS)?;
        // The open tombstone (at most one per pubkey: partial unique index); a repeat keeps the first.
        diesel::insert_into(account_tombstones::table)
            .values((
                account_tombstones::nostr_pubkey.eq(pubkey),
                account_tombstones::did.eq(&updated.did),
                account_tombstones::handle.eq(&updated.handle),
                account_tombstones::disconnected_at.eq(since),
            ))
            .on_conflict_do_nothing()
            .execute(c)?;
        let job_id = queue::requeue_or_enqueue(c, &disconnect_job(pubkey)?)?;
        Ok(Disconnecting {
            link: updated,
            cancelled_jobs,
            job_id,
        })
    })
}

/// Worker, last step of a disconnect (disconnect rule 3), after the records were deleted and the PDS account
/// deactivated: deletes the account's `account_sessions` and `account_keys` rows (crypto-shred: the KEK-sealed
/// signing key, rotation key, password and tokens are gone with them; docs/key-custody.md), sets `disconnected`,
/// and completes the tombstone with the DID — one transaction. Only a `disconnecting` link moves; repeating it on a
/// `disconnected` one changes nothing. Returns whether the link moved now.
pub fn finish_disconnect(conn: &mut PgConnection, pubkey: &str) -> Result<bool, AccountError> {
    conn.transaction(|c| {
        let link = lock(c, pubkey)?.ok_or(AccountError::NotFound)?;
        if link.state()? != ProvisioningState::Disconnecting {
            return Ok(false);
        }
        let now = Utc::now();
        diesel::delete(account_sessions::table.filter(account_sessions::nostr_pubkey.eq(pubkey))).execute(c)?;
        diesel::delete(account_keys::table.find(pubkey)).execute(c)?;
        diesel::update(account_links::table.find(pubkey))
            .set((
                account_links::provisioning_state.eq(ProvisioningState::Disconnected.as_str()),
                account_links::updated_at.eq(now),
            ))
            .execute(c)?;
        diesel::update(
            account_tombstones::table
                .filter(account_tombstones::nostr_pubkey.eq(pubkey))
                .filter(account_tombstones::handle_released_at.is_null()),
        )
        .set((
            account_tombstones::did.eq(&link.did),
            account_tombstones::completed_at.eq(now),
        ))
        .execute(c)?;
        Ok(true)
    })
}

/// When [`release_handles`] frees a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseAfter {
    /// `HANDLE_RELEASE_GRACE_SECS`: after `disconnected_at` of a `disconnected` link (disconnect rule 4).
    pub disconnected: std::time::Duration,
    /// `UNPROVISIONED_HANDLE_RELEASE_SECS`: after `created_at` of a link that never finished provisioning
    /// (`pending` or `failed`, no DID): an opt-in that never became an account must not hold its handle forever
    /// (issue 12 §1: a flood of opt-ins would otherwise squat names).
    pub unprovisioned: std::time::Duration,
}

/// Link states of an opt-in that never finished provisioning, released by [`ReleaseAfter::unprovisioned`]. Not
/// `provisioning` (a worker is on it and may be creating the DID right now), not `disabled` or `suspended` (a user's
/// or the operator's decision holds the link).
pub const UNFINISHED_STATES: &[ProvisioningState] = &[ProvisioningState::Pending, ProvisioningState::Failed];

fn cutoff(now: DateTime<Utc>, after: std::time::Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX)
}

/// Why a locked link is due for release at `now`, if it is.
fn release_reason(
    link: &AccountLink,
    after: &ReleaseAfter,
    now: DateTime<Utc>,
) -> Result<Option<&'static str>, DbError> {
    let state = link.state()?;
    if state == ProvisioningState::Disconnected
        && link
            .disconnected_at
            .is_some_and(|t| t < cutoff(now, after.disconnected))
    {
        return Ok(Some("handle release grace period over"));
    }
    if UNFINISHED_STATES.contains(&state) && link.did.is_none() && link.created_at < cutoff(now, after.unprovisioned) {
        return Ok(Some("provisioning never finished within the release period"));
    }
    Ok(None)
}

/// Frees the handles [`ReleaseAfter`] says are due: links `disconnected` more than `after.disconnected` ago
/// (disconnect rule 4), and links that never finished provisioning ([`UNFINISHED_STATES`], no DID) created more than
/// `after.unprovisioned` ago. Each release deletes the link row (its profile-sync state goes with it; keys and
/// sessions of a disconnected account are already gone; `record_mappings` rows stay), stamps the open tombstone's
/// `handle_released_at` (a disconnect's; an unfinished opt-in has none), cancels what is left of the account's jobs
/// (an unfinished opt-in's queued provisioning) and writes a `release_handle` audit row with `actor` and the reason —
/// one transaction per link, the link re-checked under its row lock. A `disconnecting` link is never released (its
/// job has not finished), nor an unfinished one whose provisioning job is running right now (the next pass decides).
/// Returns the pubkeys released.
pub fn release_handles(
    conn: &mut PgConnection,
    after: &ReleaseAfter,
    actor: &crate::audit::Actor,
) -> Result<Vec<String>, AccountError> {
    let now = Utc::now();
    let unfinished: Vec<&str> = UNFINISHED_STATES.iter().map(|s| s.as_str()).collect();
    let due: Vec<String> = account_links::table
        .filter(
            account_links::provisioning_state
                .eq(ProvisioningState::Disconnected.as_str())
                .and(account_links::disconnected_at.lt(cutoff(now, after.disconnected)))
                .or(account_links::provisioning_state
                    .eq_any(&unfinished)
                    .and(account_links::did.is_null())
                    .and(account_links::created_at.lt(cutoff(now, after.unprovisioned)))
                    .nullable()),
        )
        .select(account_links::nostr_pubkey)
        .load(conn)?;
    let mut released = Vec::new();
    for pubkey in due {
        let done = conn.transaction(|c| {
            // Re-checked under the row lock: a concurrent pass may have released it already, or the worker moved on.
            let Some(link) = lock(c, &pubkey)? else {
                return Ok(false);
            };
            let Some(reason) = release_reason(&link, after, now)? else {
                return Ok(false);
            };
            let provisioning_now: bool = diesel::select(diesel::dsl::exists(
                jobs::table
                    .filter(jobs::unique_key.eq(provision_unique_key(&pubkey)))
                    .filter(jobs::state.eq(crate::states::JobState::Running.as_str())),
            ))
            .get_result(c)?;
            if provisioning_now {
                return Ok(false);
            }
            crate::audit::audited(
                c,
                &pubkey,
                actor,
                crate::states::AuditAction::ReleaseHandle,
                Some(reason),
                |c| {
                    diesel::update(
                        account_tombstones::table
                            .filter(account_tombstones::nostr_pubkey.eq(&pubkey))
                            .filter(account_tombstones::handle_released_at.is_null()),
                    )
                    .set(account_tombstones::handle_released_at.eq(Utc::now()))
                    .execute(c)?;
                    queue::cancel_for_account(c, &pubkey, DISCONNECT_CANCELS)?;
                    diesel::delete(account_links::table.find(&pubkey)).execute(c)?;
                    Ok(true)
                },
            )
        })?;
        if done {
            released.push(pubkey);
        }
    }
    Ok(released)
}

/// Account links per provisioning state (every state, 0 included), for `divine-atbridge status`.
pub fn count_by_state(conn: &mut PgConnection) -> Result<Vec<(ProvisioningState, i64)>, DbError> {
    let rows: Vec<(String, i64)> = account_links::table
        .group_by(account_links::provisioning_state)
        .select((account_links::provisioning_state, diesel::dsl::count_star()))
        .load(conn)?;
    let mut counts: Vec<(ProvisioningState, i64)> = ProvisioningState::ALL.iter().map(|s| (*s, 0)).collect();
    for (state, n) in rows {
        let state: ProvisioningState = state.parse()?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = n;
        }
    }
    Ok(counts)
}
