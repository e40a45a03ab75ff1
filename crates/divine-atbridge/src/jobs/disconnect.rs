//! `disconnect_account`: an account leaves the bridge for good (issue 10; divine_bridge_db::accounts, disconnect
//! semantics). Owns the protocol side of a disconnect — deleting the bridged records from the repo, deactivating the
//! PDS account — and hands the database side (crypto-shred, `disconnected`, tombstone) to
//! [`accounts::finish_disconnect`]. It never creates, writes or re-activates anything, and it never runs for an
//! account that did not ask to leave ([`accounts::begin_disconnect`] is the only path into `disconnecting`).
//!
//! Invariants:
//! 1. Steps run in this order: records deleted → profile record deleted → account deactivated → keys and sessions
//!    destroyed. Keys are destroyed LAST: without them no later try could delete or deactivate anything.
//! 2. Every step is idempotent, so a crash anywhere resumes with the next try: `deleteRecord` of a missing record
//!    succeeds and its mapping is marked `deleted` only after the PDS said so; the repo status decides whether the
//!    record and deactivation steps still have work (a deactivated repo was emptied first, invariant 1);
//!    `deactivateAccount` of a deactivated account succeeds; [`accounts::finish_disconnect`] is one transaction that
//!    moves only a `disconnecting` link.
//! 3. A repo found NOT active while mappings are still live was not deactivated by us (an operator or the PDS did):
//!    its records cannot be deleted, so the job fails permanently with `disconnect_repo_inactive` and keeps the keys
//!    — destroying them would leave those records on the network with nobody able to remove them.
//! 4. A repo the PDS does not know (`RepoNotFound`) has nothing left to delete: live mappings are marked `deleted`.

use super::profile::{PROFILE_COLLECTION, PROFILE_RKEY};
use super::store::upstream;
use super::{JobError, RepoWriter, UpstreamError};
use divine_bridge_db::accounts;
use divine_bridge_db::records;
use divine_bridge_db::states::{ProvisioningState, RecordState};
use divine_bridge_db::{Classified, Db, ErrorClass, ErrorCode};
use futures::future::BoxFuture;

/// The account-level PDS calls a disconnect needs (production: [`super::store::PdsRepo`]).
pub trait AccountCloser: Send + Sync {
    /// `com.atproto.sync.getRepoStatus`: `Some(active)`, or `None` when the PDS has no repo for `did`.
    fn repo_active<'a>(&'a self, did: &'a str) -> BoxFuture<'a, Result<Option<bool>, UpstreamError>>;
    /// `com.atproto.server.deactivateAccount` with the account's own session (idempotent).
    fn deactivate<'a>(&'a self, did: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>>;
    /// Drops any session of `did` cached in this process (its stored one is being destroyed).
    fn forget<'a>(&'a self, did: &'a str) -> BoxFuture<'a, ()>;
}

/// Errors born in the disconnect job.
#[derive(Debug, thiserror::Error)]
pub enum DisconnectError {
    /// Invariant 3: the repo is deactivated (or taken down) while bridged records are still live in it.
    #[error("repo {did} is not active but {live} bridged record(s) are still live; re-activate it and retry the job")]
    RepoInactive { did: String, live: usize },
}

impl Classified for DisconnectError {
    fn code(&self) -> ErrorCode {
        match self {
            DisconnectError::RepoInactive { .. } => ErrorCode::DisconnectRepoInactive,
        }
    }

    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnected {
    /// Records deleted from the repo by this run (profile record not counted).
    pub records_deleted: usize,
    /// Whether this run deactivated the PDS account.
    pub deactivated: bool,
    /// Whether this run destroyed the keys and moved the link to `disconnected`.
    pub finished: bool,
}

/// Runs (or resumes) the disconnect of `pubkey`. A link already `disconnected` or gone (handle released) is done;
/// any other state but `disconnecting` is ineligible `disconnect_not_requested` (a job that was not written by
/// [`accounts::begin_disconnect`]).
pub async fn disconnect(
    db: &Db,
    repo: &dyn RepoWriter,
    closer: &dyn AccountCloser,
    pubkey: &str,
) -> Result<Disconnected, JobError> {
    let mut out = Disconnected::default();
    let pk = pubkey.to_string();
    let Some(link) = db.run(move |c| accounts::get(c, &pk)).await? else {
        return Ok(out);
    };
    match link.state()? {
        ProvisioningState::Disconnected => return Ok(out),
        ProvisioningState::Disconnecting => {}
        other => {
            return Err(JobError::ineligible(
                ErrorCode::DisconnectNotRequested,
                format!("account is {other}, not disconnecting"),
            ))
        }
    }
    if let Some(did) = link.did.as_deref() {
        let pk = pubkey.to_string();
        let live = db.run(move |c| records::live_records_for_author(c, &pk)).await?;
        match closer.repo_active(did).await? {
            Some(true) => {
                for m in live {
                    repo.delete_record(&m.did, &m.collection, &m.rkey).await?;
                    let id = m.nostr_event_id.clone();
                    db.run(move |c| records::mark_removed(c, &id, RecordState::Deleted))
                        .await?;
                    out.records_deleted += 1;
                    crate::failpoint::hit("disconnect_after_record_delete");
                }
                repo.delete_record(did, PROFILE_COLLECTION, PROFILE_RKEY).await?;
                crate::failpoint::hit("disconnect_before_deactivate");
                closer.deactivate(did).await?;
                out.deactivated = true;
            }
            Some(false) if !live.is_empty() => {
                return Err(upstream(DisconnectError::RepoInactive {
                    did: did.to_string(),
                    live: live.len(),
                }))
            }
            Some(false) => {}
            None => {
                for m in live {
                    let id = m.nostr_event_id.clone();
                    db.run(move |c| records::mark_removed(c, &id, RecordState::Deleted))
                        .await?;
                }
            }
        }
    }
    crate::failpoint::hit("disconnect_before_shred");
    let pk = pubkey.to_string();
    out.finished = db
        .run(move |c| accounts::finish_disconnect(c, &pk).map_err(upstream))
        .await?;
    if let Some(did) = link.did.as_deref() {
        closer.forget(did).await;
    }
    metrics::counter!(crate::metrics::ACCOUNTS_DISCONNECTED).increment(out.finished as u64);
    Ok(out)
}
