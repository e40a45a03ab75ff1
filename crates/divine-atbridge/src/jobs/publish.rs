//! `publish_post` and `delete_post`: exactly-once bridging of Nostr video events and their deletions.
//!
//! Exactly-once rests on three rules: (1) the rkey and the prepared record are reserved in `record_mappings` BEFORE
//! any side effect, and a retry re-uses that reservation; (2) the write is `putRecord` at the reserved rkey, which the
//! PDS treats as a no-op when the content is identical; (3) blob refs are content addresses computed locally, so a
//! re-upload after a crash yields the same record. Deletions are remembered as tombstones so a delete seen before
//! its video still wins. Two more rules make a stale try (one whose lease was reclaimed while it still ran) harmless:
//! (4) record state changes are guarded by the expected previous state (`reserved → published`, live → `deleted` /
//! `superseded`), so a stale `mark_published` cannot flip a `deleted` mapping back; a publish that finds its mapping
//! removed under it deletes the record it just wrote and ends `deleted` / `superseded`; (5) the supersede sweep
//! runs on every path that ends published, including `AlreadyDone`, so a sweep that failed after `mark_published`
//! is finished by the retry. This module owns that policy and nothing else: it receives the event already parsed once
//! ([`VideoEvent`], [`DeleteRequest`]: typed time, rust-nostr coordinates and NIP-09 targets), must not talk HTTP
//! itself (it goes through [`RepoWriter`]) nor translate events (it goes through [`PostSource`]); blob refs, account
//! gates and the phase timer live in `crate::blob`, [`super::gates`] and `crate::metrics`.

use super::gates::account_gate;
use super::upload_media;
use super::{JobError, RepoWriter};
use crate::blob::PreparedMedia;
use crate::metrics::phase;
use crate::nostr::{DeleteRequest, VideoEvent};
use crate::translate::{self, KnownRecord};
use chrono::{DateTime, Utc};
use diesel::PgConnection;
use divine_bridge_db::records::{self, RecordMapping, Tombstone};
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{Db, RecordState};
use futures::future::BoxFuture;

/// The collection bridged posts live in.
pub const POST_COLLECTION: &str = translate::POST_NSID;

/// A translated post ready to write: the typed record (serialised once, by [`translate::record_json`], for the
/// reservation and `putRecord`) and the blobs it references.
#[derive(Debug, Clone)]
pub struct PreparedPost {
    pub record: KnownRecord,
    pub media: Vec<PreparedMedia>,
}

/// Turns a parsed video event into a [`PreparedPost`]: translation and safe media fetch. No side effects.
pub trait PostSource: Send + Sync {
    fn prepare<'a>(&'a self, video: &'a VideoEvent) -> BoxFuture<'a, Result<PreparedPost, JobError>>;
}

/// What a publish or delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Written (or confirmed) at this URI.
    Written { uri: String, cid: String },
    /// Already published by an earlier try.
    AlreadyDone,
}

/// The deterministic TID rkey of a video ([`crate::tid::tid_for_event`]): its `created_at` second plus a
/// sub-second offset and clock id from the hash of its id, so a retry reserves the same rkey, two events of one
/// second differ, and posts sort by their original time. An event dated beyond the TID range (year 2255+) cannot be
/// posted: `invalid_tid`.
pub fn rkey_for(video: &VideoEvent) -> Result<String, crate::tid::TidError> {
    // `created_at` came from a u64 (`nostr::event_time`), so it is never before the epoch.
    let secs = u64::try_from(video.created_at.timestamp()).unwrap_or(0);
    crate::tid::tid_for_event(secs, &video.id).map(|t| t.to_string())
}

/// The publish gate, from the database alone (no side effects): the account admits new posts ([`account_gate`]), no
/// kind 5 covers the event (`deleted`) and no newer revision of its coordinate is bridged (`superseded`). Returns the
/// account's DID and the event's mapping from an earlier try, if any. Three statements, one round trip each: it
/// runs on every try, next to a PDS that shares the machine's CPU in small deployments (issue 11 §5).
pub fn gate(
    c: &mut PgConnection,
    pubkey: &str,
    event_id: &str,
    coord: Option<&str>,
    created: DateTime<Utc>,
) -> Result<(String, Option<RecordMapping>), JobError> {
    let did = account_gate(c, pubkey)?;
    if records::is_tombstoned(c, pubkey, event_id, coord, created)? {
        return Err(JobError::ineligible(
            ErrorCode::Deleted,
            "a kind 5 deletion for this event was seen",
        ));
    }
    let (existing, newest) = records::record_and_newest_revision(c, event_id, coord)?;
    if let (Some(coord), Some(newest)) = (coord, newest) {
        let newer = (newest.event_created_at, newest.nostr_event_id.as_str()) > (created, event_id);
        if newer && newest.nostr_event_id != event_id {
            return Err(JobError::ineligible(
                ErrorCode::Superseded,
                format!(
                    "a newer revision ({}) of {coord} is already bridged",
                    newest.nostr_event_id
                ),
            ));
        }
    }
    Ok((did, existing))
}

/// Publishes one video event exactly once.
pub async fn publish(
    db: &Db,
    source: &dyn PostSource,
    repo: &dyn RepoWriter,
    video: &VideoEvent,
) -> Result<Published, JobError> {
    let pubkey = video.pubkey.clone();
    let event_id = video.id.clone();
    let created = video.created_at;
    let coord = video.coordinate.as_ref().map(|c| c.to_string());
    let t = std::time::Instant::now();

    // Gates, all from the database (no side effects yet).
    let (did, existing) = {
        let (pubkey, event_id, coord) = (pubkey.clone(), event_id.clone(), coord.clone());
        db.run(move |c| gate(c, &pubkey, &event_id, coord.as_deref(), created))
            .await?
    };
    phase("gate", t);
    if let Some(m) = &existing {
        match m.record_state().map_err(JobError::Db)? {
            RecordState::Published => {
                // An earlier try published; its supersede sweep may have failed after mark_published (rule 5).
                if let Some(coord) = coord.as_deref() {
                    supersede_older(db, repo, coord, &event_id, created).await?;
                }
                return Ok(Published::AlreadyDone);
            }
            state @ (RecordState::Deleted | RecordState::Superseded) => {
                // A stale try may have re-written the record after the removal (rule 4); deleteRecord is idempotent.
                repo.delete_record(&m.did, &m.collection, &m.rkey).await?;
                return Err(removed_under_us(state));
            }
            RecordState::Reserved => {}
        }
    }

    // Translate and fetch (no side effects), then reserve before the first write.
    let prepared = source.prepare(video).await?;
    let record_json = translate::record_json(&prepared.record)?;
    let t = std::time::Instant::now();
    let rkey = rkey_for(video).map_err(|e| JobError::ineligible(ErrorCode::InvalidTid, e.to_string()))?;
    crate::worker::note_record(&did, POST_COLLECTION, &rkey);
    let mapping = RecordMapping {
        coordinate: coord.clone(),
        record: Some(record_json.clone()),
        ..RecordMapping::reservation(
            &event_id,
            &pubkey,
            &did,
            POST_COLLECTION,
            &rkey,
            i32::from(video.kind),
            created,
        )
    };
    let reserved = {
        let mapping = mapping.clone();
        let record = record_json.clone();
        db.run(move |c| {
            let row = records::reserve_record(c, &mapping)?;
            // A reservation from an earlier try keeps its rkey; its record follows the current translation.
            if row.record.as_ref() != Some(&record) {
                records::update_reserved_record(c, &row.nostr_event_id, &record)?;
            }
            Ok::<_, divine_bridge_db::DbError>(row)
        })
        .await?
    };
    let t = phase("reserve", t);
    crate::failpoint::hit("publish_after_reserve");

    // Upload media; the record follows the PDS's blob refs if they differ from the local ones ([`upload_media`]).
    let mut record = prepared.record;
    let record_changed = upload_media(repo, &did, &mut record, prepared.media).await?;
    let record = if record_changed {
        translate::record_json(&record)?
    } else {
        record_json
    };
    let t = phase("upload", t);
    crate::failpoint::hit("publish_after_upload");

    let (uri, cid) = repo
        .put_record(&did, POST_COLLECTION, &reserved.rkey, record.clone())
        .await?;
    let t = phase("put", t);
    crate::failpoint::hit("publish_after_put");
    let (now_state, live) = {
        let (event_id, uri, cid, coord) = (event_id.clone(), uri.clone(), cid.clone(), coord.clone());
        db.run(move |c| {
            // The reservation already holds the prepared record; it is rewritten only when the PDS's blob refs
            // changed it (one statement, one commit per publish in the common case).
            if record_changed {
                records::update_reserved_record(c, &event_id, &record)?;
            }
            if records::mark_published(c, &event_id, &uri, &cid)? {
                // The supersede sweep's read goes with the mark (one checkout instead of two).
                let live = match coord.as_deref() {
                    Some(coord) => records::live_records_for_coordinate(c, coord)?,
                    None => Vec::new(),
                };
                return Ok((RecordState::Published, live));
            }
            let row = records::get_record(c, &event_id)?.ok_or_else(|| {
                divine_bridge_db::DbError::Corrupt(format!("record_mappings row {event_id} vanished"))
            })?;
            Ok::<_, divine_bridge_db::DbError>((row.record_state()?, Vec::new()))
        })
        .await?
    };
    phase("mark", t);
    match now_state {
        RecordState::Published => {}
        state @ (RecordState::Deleted | RecordState::Superseded) => {
            // A delete (or newer revision) won while this try was writing: its verdict stands, undo our write.
            repo.delete_record(&did, POST_COLLECTION, &reserved.rkey).await?;
            return Err(removed_under_us(state));
        }
        RecordState::Reserved => {
            return Err(JobError::Db(divine_bridge_db::DbError::Corrupt(format!(
                "mapping {event_id} still reserved after mark_published"
            ))))
        }
    }

    // A newer revision of an addressable video replaces the older bridged ones.
    remove_older(db, repo, live, &event_id, created).await?;
    Ok(Published::Written { uri, cid })
}

/// The ineligible verdict for a mapping that a delete or a newer revision removed while (or before) this try ran.
fn removed_under_us(state: RecordState) -> JobError {
    match state {
        RecordState::Superseded => JobError::ineligible(ErrorCode::Superseded, "a newer revision replaced it"),
        _ => JobError::ineligible(ErrorCode::Deleted, "the bridged post was deleted"),
    }
}

/// The supersede sweep: deletes the live revisions of `coord` older than `(created, event_id)` from the repo and
/// marks them `superseded` (a mapping a delete already removed stays `deleted`). Idempotent, so every path that ends
/// with this revision published runs it.
async fn supersede_older(
    db: &Db,
    repo: &dyn RepoWriter,
    coord: &str,
    event_id: &str,
    created: DateTime<Utc>,
) -> Result<(), JobError> {
    let live = {
        let coord = coord.to_string();
        db.run(move |c| records::live_records_for_coordinate(c, &coord)).await?
    };
    remove_older(db, repo, live, event_id, created).await
}

/// The supersede sweep's writes: of `live` (the live revisions of one coordinate), deletes those older than
/// `(created, event_id)` from the repo and marks them `superseded`.
async fn remove_older(
    db: &Db,
    repo: &dyn RepoWriter,
    live: Vec<RecordMapping>,
    event_id: &str,
    created: DateTime<Utc>,
) -> Result<(), JobError> {
    for old in live
        .into_iter()
        .filter(|m| (m.event_created_at, m.nostr_event_id.as_str()) < (created, event_id))
    {
        crate::worker::note_record(&old.did, &old.collection, &old.rkey);
        repo.delete_record(&old.did, &old.collection, &old.rkey).await?;
        let id = old.nostr_event_id.clone();
        db.run(move |c| records::mark_removed(c, &id, RecordState::Superseded))
            .await?;
    }
    Ok(())
}

/// Applies a parsed kind 5 deletion ([`DeleteRequest`], targets from [`crate::nostr::deletion_targets`]): remembers tombstones, removes bridged records of the same author. Returns how many
/// records were deleted from the repo.
pub async fn delete(db: &Db, repo: &dyn RepoWriter, request: &DeleteRequest) -> Result<usize, JobError> {
    let pubkey = request.pubkey.to_hex();
    let deleted_at = request.created_at;
    let (ids, coords) = request.target_keys();
    let victims: Vec<RecordMapping> = {
        let (pubkey, delete_id) = (pubkey.clone(), request.id.to_hex());
        db.run(move |c| {
            let mut victims = Vec::new();
            for target in ids.iter().chain(coords.iter()) {
                records::put_tombstone(
                    c,
                    &Tombstone {
                        target: target.clone(),
                        nostr_pubkey: pubkey.clone(),
                        delete_event_id: delete_id.clone(),
                        deleted_at,
                        created_at: Utc::now(),
                    },
                )?;
            }
            for id in &ids {
                if let Some(m) = records::get_record(c, id)? {
                    if m.nostr_pubkey == pubkey {
                        victims.push(m);
                    }
                }
            }
            for coord in &coords {
                for m in records::live_records_for_coordinate(c, coord)? {
                    if m.event_created_at <= deleted_at && m.nostr_pubkey == pubkey {
                        victims.push(m);
                    }
                }
            }
            Ok::<_, divine_bridge_db::DbError>(victims)
        })
        .await?
    };
    let mut removed = 0;
    for m in victims {
        let state = m.record_state()?;
        if !matches!(state, RecordState::Published | RecordState::Reserved) {
            continue;
        }
        crate::worker::note_record(&m.did, &m.collection, &m.rkey);
        repo.delete_record(&m.did, &m.collection, &m.rkey).await?;
        let id = m.nostr_event_id.clone();
        db.run(move |c| records::mark_removed(c, &id, RecordState::Deleted))
            .await?;
        removed += 1;
    }
    Ok(removed)
}
