//! `sync_profile`: a kind 0 event becomes the account's `app.bsky.actor.profile/self`, newest event wins. Owns the
//! ordering rule (via `profile_sync`) and the write; translation and the avatar/banner fetch come through
//! [`ProfileSource`].

use super::publish::{event_time, upkeep_gate, PreparedMedia};
use super::{JobError, RepoWriter};
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{records, Db};
use futures::future::BoxFuture;
use nostr::Event;

/// The profile collection and its only record key.
pub const PROFILE_COLLECTION: &str = "app.bsky.actor.profile";
pub const PROFILE_RKEY: &str = "self";

/// A translated profile: the record JSON (with `$type`) and its avatar and banner, if any.
#[derive(Debug, Clone)]
pub struct PreparedProfile {
    pub record: serde_json::Value,
    pub media: Vec<PreparedMedia>,
}

/// Turns a kind 0 event into a [`PreparedProfile`] (parsing, limits, safe avatar fetch). No side effects.
pub trait ProfileSource: Send + Sync {
    fn prepare<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<PreparedProfile, JobError>>;
}

/// Syncs one kind 0 event; `Err(ineligible superseded)` when a newer one was already claimed.
pub async fn sync_profile(
    db: &Db,
    source: &dyn ProfileSource,
    repo: &dyn RepoWriter,
    event: &Event,
) -> Result<(), JobError> {
    let pubkey = event.pubkey.to_hex();
    let event_id = event.id.to_hex();
    let created = event_time(event);
    let did = {
        let (pubkey, event_id) = (pubkey.clone(), event_id.clone());
        db.run(move |c| {
            let did = match upkeep_gate(c, &pubkey) {
                Ok(did) => did,
                Err(e) => return Ok(Err(e)),
            };
            if !records::claim_profile_event(c, &pubkey, &event_id, created)? {
                // Re-delivery of the current newest event is allowed to finish its sync; anything older is stale.
                let newest = records::newest_profile_event(c, &pubkey)?;
                if newest.as_ref().map(|(id, _)| id.as_str()) != Some(event_id.as_str()) {
                    return Ok(Err(JobError::ineligible(
                        ErrorCode::Superseded,
                        "a newer kind 0 profile was already synced",
                    )));
                }
            }
            Ok(Ok(did))
        })
        .await??
    };
    let prepared = source.prepare(event).await?;
    let mut record = prepared.record;
    for m in prepared.media {
        let cid = m.blob_cid();
        let expected = m.local_blob_ref();
        let actual = repo.upload_blob(&did, &m.body, &m.mime).await?;
        if actual != expected {
            for field in ["avatar", "banner"] {
                if let Some(image) = record.get_mut(field) {
                    if image.get("ref").and_then(|r| r.get("$link")).and_then(|l| l.as_str()) == Some(cid.as_str()) {
                        *image = actual.clone();
                    }
                }
            }
        }
    }
    crate::worker::note_record(&did, PROFILE_COLLECTION, PROFILE_RKEY);
    repo.put_record(&did, PROFILE_COLLECTION, PROFILE_RKEY, record).await?;
    db.run(move |c| records::mark_profile_synced(c, &pubkey, &event_id))
        .await?;
    Ok(())
}
