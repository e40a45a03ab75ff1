//! `sync_profile`: a kind 0 event becomes the account's `app.bsky.actor.profile/self`, newest event wins. Owns the
//! ordering rule (via `profile_sync`) and the write; translation and the avatar/banner fetch come through
//! [`ProfileSource`]. The job parses its event once ([`ProfileMeta`]); a kind 0 whose content cannot translate still
//! claims its place in the order before the source refuses it.

use super::gates::upkeep_gate;
use super::{upload_media, JobError, RepoWriter};
use crate::blob::PreparedMedia;
use crate::nostr::ProfileMeta;
use crate::translate::{self, KnownRecord};
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{records, Db};
use futures::future::BoxFuture;

/// The profile collection and its only record key.
pub const PROFILE_COLLECTION: &str = translate::PROFILE_NSID;
pub const PROFILE_RKEY: &str = "self";

/// A translated profile: the typed record and its avatar and banner, if any.
#[derive(Debug, Clone)]
pub struct PreparedProfile {
    pub record: KnownRecord,
    pub media: Vec<PreparedMedia>,
}

/// Turns parsed kind 0 metadata into a [`PreparedProfile`] (limits, safe avatar fetch). No side effects.
pub trait ProfileSource: Send + Sync {
    fn prepare<'a>(&'a self, meta: &'a ProfileMeta) -> BoxFuture<'a, Result<PreparedProfile, JobError>>;
}

/// Syncs one kind 0 event; `Err(ineligible superseded)` when a newer one was already claimed.
pub async fn sync_profile(
    db: &Db,
    source: &dyn ProfileSource,
    repo: &dyn RepoWriter,
    meta: &ProfileMeta,
) -> Result<(), JobError> {
    let pubkey = meta.pubkey.clone();
    let event_id = meta.id.clone();
    let created = meta.created_at;
    let did = {
        let (pubkey, event_id) = (pubkey.clone(), event_id.clone());
        db.run(move |c| {
            let did = upkeep_gate(c, &pubkey)?;
            if !records::claim_profile_event(c, &pubkey, &event_id, created)? {
                // Re-delivery of the current newest event is allowed to finish its sync; anything older is stale.
                let newest = records::newest_profile_event(c, &pubkey)?;
                if newest.as_ref().map(|(id, _)| id.as_str()) != Some(event_id.as_str()) {
                    return Err(JobError::ineligible(
                        ErrorCode::Superseded,
                        "a newer kind 0 profile was already synced",
                    ));
                }
            }
            Ok(did)
        })
        .await?
    };
    let prepared = source.prepare(meta).await?;
    let mut record = prepared.record;
    upload_media(repo, &did, &mut record, prepared.media).await?;
    let record = translate::record_json(&record)?;
    crate::worker::note_record(&did, PROFILE_COLLECTION, PROFILE_RKEY);
    repo.put_record(&did, PROFILE_COLLECTION, PROFILE_RKEY, record).await?;
    db.run(move |c| records::mark_profile_synced(c, &pubkey, &event_id))
        .await?;
    Ok(())
}
