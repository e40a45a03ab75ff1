//! Maps each job kind to its handler for the worker pool, and converts handler results into queue outcomes
//! (success, ineligible with a reason, retry with backoff or Retry-After, permanent failure). Owns the wiring of
//! production adapters (PDS session repo, translation + media post source); no policy lives here.

use super::args::{DeletePostArgs, EventPayload, PublishPostArgs, SyncProfileArgs};
use super::profile::{self, ProfileSource};
use super::provision::{self, ProvisionDeps};
use super::publish::{self, PostSource};
use super::store::{DbSessionStore, PdsRepo};
use super::JobError;
use crate::config::{CrosspostConfig, IdentityConfig};
use crate::keys::KeyRing;
use crate::nostr::{DeleteRequest, ProfileMeta, VideoEvent};
use crate::pds::{PdsClient, SessionManager};
use crate::translate::TranslateError;
use crate::worker::{JobHandler, LeasedJob, Outcome, Registry};
use crate::xrpc::XrpcClient;
use divine_bridge_db::job_args::{BackfillAuthorArgs, DisconnectAccountArgs, ProvisionAccountArgs};
use divine_bridge_db::states::priority;
use divine_bridge_db::{Db, ErrorClass, ErrorCode, JobKind};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// Everything the handlers share.
pub struct Handlers {
    pub db: Db,
    pub xrpc: XrpcClient,
    pub kek: Arc<KeyRing>,
    pub identity: IdentityConfig,
    pub crosspost: CrosspostConfig,
    pub repo: PdsRepo,
    pub posts: Box<dyn PostSource>,
    pub profiles: Box<dyn ProfileSource>,
}

impl Handlers {
    pub fn new(
        db: Db,
        xrpc: XrpcClient,
        kek: Arc<KeyRing>,
        identity: IdentityConfig,
        crosspost: CrosspostConfig,
    ) -> Result<Handlers, crate::spool::SpoolError> {
        // Opening the spool removes what dead processes left in it (spool rule 3).
        let spool = crate::spool::Spool::open(
            &crosspost.media_spool_dir,
            crate::spool::MediaBudget::new(crosspost.media_budget_bytes),
        )?;
        let pds = PdsClient::new(xrpc.clone(), &identity.pds_url);
        let sessions = Arc::new(SessionManager::new(
            pds,
            DbSessionStore {
                db: db.clone(),
                kek: kek.clone(),
            },
        ));
        let media = super::sources::media_config(&crosspost);
        Ok(Handlers {
            posts: Box::new(super::sources::TranslatedPosts::new(db.clone(), &crosspost, spool)),
            profiles: Box::new(super::sources::TranslatedProfiles::new(media)),
            repo: PdsRepo { sessions },
            db,
            xrpc,
            kek,
            identity,
            crosspost,
        })
    }

    /// The worker registry: one entry per job kind.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::new();
        for kind in [
            JobKind::ProvisionAccount,
            JobKind::PublishPost,
            JobKind::DeletePost,
            JobKind::SyncProfile,
            JobKind::BackfillAuthor,
            JobKind::DisconnectAccount,
        ] {
            r.register(
                kind,
                Arc::new(KindHandler {
                    kind,
                    handlers: self.clone(),
                }),
            );
        }
        r
    }

    /// Runs `job` (of `kind`): the account barrier for lifecycle kinds, then the kind's handler with the job's typed
    /// args, decoded here once (`LeasedJob::args`: a payload that does not decode is `invalid_job_payload`).
    async fn handle(&self, kind: JobKind, job: &LeasedJob) -> Result<(), JobError> {
        if kind.is_lifecycle() {
            account_barrier(&self.db, job).await?;
        }
        match kind {
            JobKind::ProvisionAccount => {
                let pubkey = job.args::<ProvisionAccountArgs>()?.nostr_pubkey;
                let deps = ProvisionDeps {
                    db: &self.db,
                    xrpc: &self.xrpc,
                    kek: &self.kek,
                    identity: &self.identity,
                };
                provision::provision(&deps, &pubkey).await.map(|_| ())
            }
            JobKind::PublishPost => {
                let t = std::time::Instant::now();
                // Parsed once; a malformed video is ineligible with the translation's code. Decision: the parse comes
                // before the account gates, so a malformed video of a paused or not-yet-ready account ends
                // `invalid_event` at once; when the source parsed after the gates it ended `account_disabled` (or
                // retried) first and `invalid_event` only after re-enable. The end state is the same and nothing is
                // written either way; a profile keeps its old order (see `nostr::ProfileMeta::content_error`).
                let video = VideoEvent::from_event(&verified_event(job.args::<PublishPostArgs>()?.0)?)?;
                crate::metrics::phase("verify", t);
                publish::publish(&self.db, self.posts.as_ref(), &self.repo, &video).await?;
                if job.priority <= priority::LIVE {
                    let lag = (chrono::Utc::now() - video.created_at).num_milliseconds() as f64 / 1000.0;
                    metrics::histogram!(crate::metrics::PUBLISH_LAG).record(lag.max(0.0));
                }
                Ok(())
            }
            JobKind::DeletePost => {
                let event = verified_event(job.args::<DeletePostArgs>()?.0)?;
                let request = DeleteRequest::from_event(&event).map_err(|e| match e {
                    TranslateError::UnsupportedKind(k) => JobError::BadPayload(format!("delete_post job for kind {k}")),
                    e => e.into(),
                })?;
                publish::delete(&self.db, &self.repo, &request).await.map(|_| ())
            }
            JobKind::SyncProfile => {
                let meta = ProfileMeta::from_event(&verified_event(job.args::<SyncProfileArgs>()?.0)?)?;
                profile::sync_profile(&self.db, self.profiles.as_ref(), &self.repo, &meta).await
            }
            JobKind::BackfillAuthor if self.crosspost.relays.is_empty() => Ok(()),
            JobKind::BackfillAuthor => {
                let pubkey = job.args::<BackfillAuthorArgs>()?.nostr_pubkey;
                crate::ingest::backfill(
                    &self.db,
                    &self.crosspost.relays,
                    &pubkey,
                    self.crosspost.backfill_max_events,
                    Duration::from_secs(10),
                )
                .await
                .map(|n| tracing::info!(pubkey, enqueued = n, "backfill enqueued history"))
                .map_err(|e| {
                    JobError::Upstream(super::UpstreamError {
                        code: ErrorCode::BackfillRelayError,
                        class: ErrorClass::Transient,
                        retry_after: None,
                        message: e.to_string(),
                    })
                })
            }
            JobKind::DisconnectAccount => {
                let pubkey = job.args::<DisconnectAccountArgs>()?.nostr_pubkey;
                let done = super::disconnect::disconnect(&self.db, &self.repo, &self.repo, &pubkey).await?;
                tracing::info!(
                    pubkey,
                    records_deleted = done.records_deleted,
                    deactivated = done.deactivated,
                    finished = done.finished,
                    "disconnect ran"
                );
                Ok(())
            }
            JobKind::Noop => Ok(()),
        }
    }
}

/// The account barrier (see `divine_bridge_db::queue`): a lifecycle job starts only when no other job of its
/// account is running; otherwise it retries (`account_busy`, transient) and the running ones finish first. Queued
/// jobs (even one in backoff) do not hold it back.
pub async fn account_barrier(db: &Db, job: &LeasedJob) -> Result<(), JobError> {
    let account = job.account()?.to_string();
    let id = job.id;
    let running = db
        .run(move |c| divine_bridge_db::queue::running_for_account(c, &account, id))
        .await?;
    if running.is_empty() {
        Ok(())
    } else {
        Err(JobError::AccountBusy { running })
    }
}

/// The event carried by an event job (`publish_post`, `delete_post`, `sync_profile`; its decoded args), checked
/// again before the handler may write anything: the job row is not trusted (anything with database access could
/// have inserted or edited it), so the event must pass the one admission check ([`crate::nostr::check_event_now`]:
/// id and signature — an event ingest admitted passes again, it only gets older) and be authored by the job's
/// account (`payload.account`, the pubkey the ingest enqueued it under). Either failure is permanent
/// (`job_event_unverified`, `job_author_mismatch`). The handler then parses the event once into its typed value
/// (`VideoEvent`, `DeleteRequest`, `ProfileMeta`) and the job works from that.
pub fn verified_event(args: EventPayload) -> Result<nostr::Event, JobError> {
    let EventPayload { account, event } = args;
    crate::nostr::check_event_now(&event).map_err(JobError::PayloadEventRefused)?;
    let author = event.pubkey.to_hex();
    if author != account {
        return Err(JobError::PayloadAuthorMismatch { author, account });
    }
    Ok(event)
}

/// Converts a handler result into the queue's outcome.
pub fn outcome_of(result: Result<(), JobError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Succeeded,
        Err(JobError::Ineligible { code, detail }) => Outcome::Ineligible { code, detail },
        Err(e) => Outcome::from_error(&e),
    }
}

struct KindHandler {
    kind: JobKind,
    handlers: Arc<Handlers>,
}

impl JobHandler for KindHandler {
    fn handle<'a>(&'a self, job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async move { outcome_of(self.handlers.handle(self.kind, job).await) })
    }
}
