//! Job handlers: one module per job kind (`provision`, `publish` (publish + delete), `profile`, `backfill`). Each
//! handler decides, from the job's typed args (`args` for the event kinds, `divine_bridge_db::job_args` for the
//! account kinds; decoded once, in `handlers`) and the database, what side effects to perform and records every step so a
//! retry after a crash converges instead of repeating work. Handlers own the *policy* (gates, ordering, exactly-once
//! bookkeeping); the protocol work lives in `pds`, `plc`, `identity`, `translate` and `media`, reached through the
//! small ports defined here so the policy is testable against real Postgres without a PDS. Event jobs hand their
//! handler the event parsed once (`handlers`); `gates` holds the account gates, [`upload_media`] the upload step
//! publish and profile share.

pub mod args;
pub mod disconnect;
pub mod gates;
pub mod handlers;
pub mod profile;
pub mod provision;
pub mod publish;
pub mod sources;
pub mod store;

pub use store::upstream;

use crate::blob::{blob_ref_cid, MediaBody, PreparedMedia};
use crate::translate::{self, KnownRecord, TranslateError};
use atrium_api::types::BlobRef;
use divine_bridge_db::{Classified, ErrorClass, ErrorCode};
use futures::future::BoxFuture;
use std::time::Duration;

/// Why a job did not complete. Codes are stable (see docs/runbooks/troubleshooting.md).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job was correctly skipped; recorded as `ineligible` with this reason code.
    #[error("{code}: {detail}")]
    Ineligible { code: ErrorCode, detail: String },
    /// The account is still being provisioned: retry later (in order behind provisioning).
    #[error("account is not ready yet ({state})")]
    AccountNotReady { state: String },
    /// A lifecycle job found other jobs of its account running (the account barrier): retry after they finish.
    #[error("account has running jobs {running:?}; the lifecycle job waits for them")]
    AccountBusy { running: Vec<i64> },
    /// An error from a lower layer, keeping its own code and class.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("database: {0}")]
    Db(#[from] divine_bridge_db::DbError),
    /// The job payload is not what this handler expects (a bug or a hand-edited row).
    #[error("invalid job payload: {0}")]
    BadPayload(String),
    /// The event in a job payload fails the admission check ([`crate::nostr::check_event`]) when the worker checks
    /// it again: its id or signature does not verify (a row written or edited by anything but ingest).
    #[error("the event in the job payload is refused: {0}")]
    PayloadEventRefused(crate::nostr::Rejection),
    /// The event in a job payload is authored by another key than the job's account (`payload.account`).
    #[error("the event in the job payload is by {author}, not by the job's account {account}")]
    PayloadAuthorMismatch { author: String, account: String },
}

/// A classified error from another module, carried with its code, class and retry hint.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UpstreamError {
    pub code: ErrorCode,
    pub class: ErrorClass,
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl UpstreamError {
    /// Captures any classified error.
    pub fn of<E: Classified + ?Sized>(e: &E) -> UpstreamError {
        UpstreamError {
            code: e.code(),
            class: e.class(),
            retry_after: e.retry_after(),
            message: e.to_string(),
        }
    }
}

impl Classified for JobError {
    fn code(&self) -> ErrorCode {
        match self {
            JobError::Ineligible { code, .. } => *code,
            JobError::AccountNotReady { .. } => ErrorCode::AccountNotReady,
            JobError::AccountBusy { .. } => ErrorCode::AccountBusy,
            JobError::Upstream(u) => u.code,
            JobError::Db(e) => e.code(),
            JobError::BadPayload(_) => ErrorCode::InvalidJobPayload,
            JobError::PayloadEventRefused(_) => ErrorCode::JobEventUnverified,
            JobError::PayloadAuthorMismatch { .. } => ErrorCode::JobAuthorMismatch,
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            JobError::Ineligible { .. }
            | JobError::BadPayload(_)
            | JobError::PayloadEventRefused(_)
            | JobError::PayloadAuthorMismatch { .. } => ErrorClass::Permanent,
            JobError::AccountNotReady { .. } | JobError::AccountBusy { .. } => ErrorClass::Transient,
            JobError::Upstream(u) => u.class,
            JobError::Db(e) => e.class(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            JobError::Upstream(u) => u.retry_after,
            _ => None,
        }
    }
}

/// A translation error is always permanent: the event is `ineligible` with the error's code.
impl From<TranslateError> for JobError {
    fn from(e: TranslateError) -> JobError {
        JobError::ineligible(e.code(), e.to_string())
    }
}

impl JobError {
    pub fn ineligible(code: ErrorCode, detail: impl Into<String>) -> JobError {
        JobError::Ineligible {
            code,
            detail: detail.into(),
        }
    }
}

/// Writes to one account's repo, with that account's session. Implemented over `pds::SessionManager` in
/// production and by an in-memory repo in tests.
pub trait RepoWriter: Send + Sync {
    /// `uploadBlob` of `body`; every try reads the body afresh (a stream of the spool file), never a copy.
    fn upload_blob<'a>(
        &'a self,
        did: &'a str,
        body: &'a MediaBody,
        mime: &'a str,
    ) -> BoxFuture<'a, Result<BlobRef, UpstreamError>>;
    /// `putRecord`; returns `(uri, cid)`.
    fn put_record<'a>(
        &'a self,
        did: &'a str,
        collection: &'a str,
        rkey: &'a str,
        record: serde_json::Value,
    ) -> BoxFuture<'a, Result<(String, String), UpstreamError>>;
    /// `deleteRecord` (deleting a missing record succeeds).
    fn delete_record<'a>(
        &'a self,
        did: &'a str,
        collection: &'a str,
        rkey: &'a str,
    ) -> BoxFuture<'a, Result<(), UpstreamError>>;
}

/// Uploads a record's media and returns whether the record changed. The PDS normally returns exactly the locally
/// computed ref; if it sniffed another type, every blob of the record at that CID follows the PDS (deterministically,
/// so a retry builds the same record). Shared by `publish_post` and `sync_profile`.
pub async fn upload_media(
    repo: &dyn RepoWriter,
    did: &str,
    record: &mut KnownRecord,
    media: Vec<PreparedMedia>,
) -> Result<bool, JobError> {
    let mut changed = false;
    for m in media {
        let expected = m.local_blob_ref();
        let actual = repo.upload_blob(did, &m.body, &m.mime).await?;
        if actual != expected {
            let cid = blob_ref_cid(&expected);
            for blob in translate::record_blobs_mut(record) {
                if blob_ref_cid(blob) == cid {
                    *blob = actual.clone();
                }
            }
            changed = true;
        }
        // Dropping `m` here removes its spool file and releases its media budget before the next upload.
    }
    Ok(changed)
}
