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
//! is finished by the retry. This module owns that policy; it must not talk HTTP itself (it goes through [`RepoWriter`])
//! nor translate events (it goes through [`PostSource`]).

use super::{BlobJson, JobError, RepoWriter};
use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use divine_bridge_db::records::{self, RecordMapping, Tombstone};
use divine_bridge_db::schema::account_links;
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{Db, ProvisioningState, RecordState};
use futures::future::BoxFuture;
use nostr::{Event, Kind};

/// The collection bridged posts live in.
pub const POST_COLLECTION: &str = "app.bsky.feed.post";

/// Media to upload for a post; its blob ref (computed locally from the body's digest) is already in the record.
#[derive(Debug, Clone)]
pub struct PreparedMedia {
    pub body: MediaBody,
    pub mime: String,
}

impl PreparedMedia {
    /// Small media held in memory (captions, profile images).
    pub fn in_memory(bytes: impl Into<bytes::Bytes>, mime: impl Into<String>) -> PreparedMedia {
        PreparedMedia {
            body: MediaBody::Memory(bytes.into()),
            mime: mime.into(),
        }
    }

    /// The blob ref the PDS will return for this body.
    pub fn local_blob_ref(&self) -> BlobJson {
        blob_ref_of(&self.body.sha256(), self.body.size(), &self.mime)
    }

    /// The body's blob CID.
    pub fn blob_cid(&self) -> String {
        cid_of_digest(&self.body.sha256())
    }
}

/// A media body: small ones in memory, videos in the spool ([`crate::spool`]), never a whole video in memory.
/// Cloning is cheap (reference counted); an upload try reads the body afresh, it never copies it.
#[derive(Debug, Clone)]
pub enum MediaBody {
    Memory(bytes::Bytes),
    /// A spooled file and the media budget it holds (released when the last clone is dropped, after the upload).
    Spooled {
        file: crate::spool::SpoolFile,
        budget: Option<std::sync::Arc<crate::spool::BudgetPermit>>,
    },
}

impl MediaBody {
    pub fn size(&self) -> u64 {
        match self {
            MediaBody::Memory(b) => b.len() as u64,
            MediaBody::Spooled { file, .. } => file.size(),
        }
    }

    /// SHA-256 of the body (computed while spooling for spooled bodies).
    pub fn sha256(&self) -> [u8; 32] {
        use sha2::Digest;
        match self {
            MediaBody::Memory(b) => sha2::Sha256::digest(b).into(),
            MediaBody::Spooled { file, .. } => file.sha256(),
        }
    }

    /// A request body for one upload try: the bytes (a reference-counted handle) or a fresh stream of the file.
    pub fn request_body(&self) -> reqwest::Body {
        match self {
            MediaBody::Memory(b) => reqwest::Body::from(b.clone()),
            MediaBody::Spooled { file, .. } => reqwest::Body::wrap_stream(file.stream()),
        }
    }

    /// The whole body (tests; small bodies).
    pub async fn to_vec(&self) -> Result<Vec<u8>, crate::spool::SpoolError> {
        match self {
            MediaBody::Memory(b) => Ok(b.to_vec()),
            MediaBody::Spooled { file, .. } => file.read_all().await,
        }
    }
}

/// A translated post ready to write: the record JSON (with `$type`) and the blobs it references.
#[derive(Debug, Clone)]
pub struct PreparedPost {
    pub record: serde_json::Value,
    pub media: Vec<PreparedMedia>,
}

/// Turns an event into a [`PreparedPost`]: parsing, translation and safe media fetch. No side effects.
pub trait PostSource: Send + Sync {
    fn prepare<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<PreparedPost, JobError>>;
}

/// What a publish or delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Written (or confirmed) at this URI.
    Written { uri: String, cid: String },
    /// Already published by an earlier try.
    AlreadyDone,
}

/// CIDv1 (raw, sha2-256) of `bytes` in base32 multibase: the PDS's blob address.
pub fn blob_cid(bytes: &[u8]) -> String {
    use sha2::Digest;
    cid_of_digest(&sha2::Sha256::digest(bytes).into())
}

/// CIDv1 (raw, sha2-256) of a body with this SHA-256 digest (computed while streaming), base32 multibase.
pub fn cid_of_digest(sha256: &[u8; 32]) -> String {
    let mut raw = vec![0x01, 0x55, 0x12, 0x20];
    raw.extend_from_slice(sha256);
    format!("b{}", data_encoding::BASE32_NOPAD.encode(&raw).to_lowercase())
}

/// The blob ref the PDS will return for `bytes` uploaded as `mime`.
pub fn local_blob_ref(bytes: &[u8], mime: &str) -> BlobJson {
    use sha2::Digest;
    blob_ref_of(&sha2::Sha256::digest(bytes).into(), bytes.len() as u64, mime)
}

/// The blob ref of a body with this digest and size uploaded as `mime`.
pub fn blob_ref_of(sha256: &[u8; 32], size: u64, mime: &str) -> BlobJson {
    serde_json::json!({"$type": "blob", "ref": {"$link": cid_of_digest(sha256)}, "mimeType": mime, "size": size})
}

/// The stored coordinate key `<kind>:<lower-case hex pubkey>:<d>` of an addressable video event, built by
/// rust-nostr ([`crate::nostr::event_coordinate`]); the `d` identifier keeps its case. Same format as rows written
/// before (`record_mappings.coordinate`), so existing rows stay comparable.
pub fn coordinate(event: &Event) -> Option<String> {
    crate::nostr::event_coordinate(event).map(|c| c.to_string())
}

pub(crate) fn event_time(event: &Event) -> DateTime<Utc> {
    Utc.timestamp_opt(event.created_at.as_secs() as i64, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// The account's DID if its repo may still be kept in step with Nostr — deletes and profile changes — now: any
/// account that has a DID, paused or not (a user who pauses cross-posting and then deletes a video or changes their
/// name must not keep the old copy on Bluesky; divine_bridge_db::accounts rule 1). No link or no DID → ineligible
/// `account_disabled` (there is nothing on the PDS to keep in step); disconnecting or disconnected → ineligible
/// `account_disconnected`.
pub fn upkeep_gate(conn: &mut PgConnection, pubkey: &str) -> Result<String, JobError> {
    let row: Option<(Option<String>, String)> = account_links::table
        .find(pubkey)
        .select((account_links::did, account_links::provisioning_state))
        .first(conn)
        .optional()
        .map_err(divine_bridge_db::DbError::from)?;
    let Some((did, state)) = row else {
        return Err(JobError::ineligible(
            divine_bridge_db::accounts::DISABLE_CODE,
            "no bridged account for this pubkey",
        ));
    };
    let state: ProvisioningState = state.parse().map_err(divine_bridge_db::DbError::from)?;
    if state.is_leaving() {
        // The disconnect job deletes everything; nothing may be written to a repo that is being let go.
        return Err(JobError::ineligible(
            divine_bridge_db::accounts::DISCONNECT_CODE,
            "account is disconnecting or disconnected",
        ));
    }
    did.ok_or_else(|| {
        JobError::ineligible(
            divine_bridge_db::accounts::DISABLE_CODE,
            "no bridged account for this pubkey",
        )
    })
}

/// The account's DID if bridging NEW posts is allowed now: disabled → ineligible `account_disabled` (re-queued on
/// enable); provisioning failed → ineligible; still provisioning → retry (it runs before the account's posts, so
/// this is rare).
pub fn account_gate(conn: &mut PgConnection, pubkey: &str) -> Result<String, JobError> {
    let row: Option<(Option<String>, bool, String)> = account_links::table
        .find(pubkey)
        .select((
            account_links::did,
            account_links::crosspost_enabled,
            account_links::provisioning_state,
        ))
        .first(conn)
        .optional()
        .map_err(divine_bridge_db::DbError::from)?;
    let Some((did, enabled, state)) = row else {
        return Err(JobError::ineligible(
            ErrorCode::AccountDisabled,
            "no account link for this pubkey",
        ));
    };
    let state: ProvisioningState = state.parse().map_err(divine_bridge_db::DbError::from)?;
    match (state, did) {
        (s, _) if s.is_leaving() => Err(JobError::ineligible(
            divine_bridge_db::accounts::DISCONNECT_CODE,
            "account is disconnecting or disconnected",
        )),
        (s, _) if s.is_paused() => Err(JobError::ineligible(
            divine_bridge_db::accounts::DISABLE_CODE,
            "account is disabled or suspended",
        )),
        _ if !enabled => Err(JobError::ineligible(
            ErrorCode::AccountDisabled,
            "cross-posting is turned off",
        )),
        (ProvisioningState::Ready, Some(did)) => Ok(did),
        (ProvisioningState::Failed, _) => Err(JobError::ineligible(
            ErrorCode::AccountNotReady,
            "account provisioning failed; re-drive it first",
        )),
        (other, _) => Err(JobError::AccountNotReady {
            state: other.to_string(),
        }),
    }
}

/// The deterministic TID rkey of an event ([`crate::tid::tid_for_event`]): its `created_at` second plus a
/// sub-second offset and clock id from the hash of its id, so a retry reserves the same rkey, two events of one
/// second differ, and posts sort by their original time. An event dated beyond the TID range (year 2255+) cannot be
/// posted: `invalid_tid`.
pub fn rkey_for(event: &Event) -> Result<String, crate::tid::TidError> {
    crate::tid::tid_for_event(event.created_at.as_secs(), &event.id.to_hex()).map(|t| t.to_string())
}

fn replace_blob_refs(value: &mut serde_json::Value, cid: &str, actual: &BlobJson) {
    match value {
        serde_json::Value::Object(map) => {
            let is_target = map.get("$type").and_then(|t| t.as_str()) == Some("blob")
                && map.get("ref").and_then(|r| r.get("$link")).and_then(|l| l.as_str()) == Some(cid);
            if is_target {
                *value = actual.clone();
            } else {
                for v in map.values_mut() {
                    replace_blob_refs(v, cid, actual);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| replace_blob_refs(v, cid, actual)),
        _ => {}
    }
}

/// Records the time since `since` as one phase of a `publish_post` try (`bridge_publish_phase_seconds{phase}`, phases
/// in [`crate::metrics::PUBLISH_PHASES`]) and returns now, the start of the next phase. Measurement only.
pub fn phase(name: &'static str, since: std::time::Instant) -> std::time::Instant {
    debug_assert!(crate::metrics::PUBLISH_PHASES.contains(&name));
    let now = std::time::Instant::now();
    metrics::histogram!(crate::metrics::PUBLISH_PHASE, "phase" => name).record((now - since).as_secs_f64());
    now
}

/// Publishes one video event exactly once.
pub async fn publish(
    db: &Db,
    source: &dyn PostSource,
    repo: &dyn RepoWriter,
    event: &Event,
) -> Result<Published, JobError> {
    let pubkey = event.pubkey.to_hex();
    let event_id = event.id.to_hex();
    let created = event_time(event);
    let coord = coordinate(event);
    let t = std::time::Instant::now();

    // Gates, all from the database (no side effects yet).
    let (did, existing) = {
        let (pubkey, event_id, coord) = (pubkey.clone(), event_id.clone(), coord.clone());
        db.run(move |c| {
            let did = match account_gate(c, &pubkey) {
                Ok(did) => did,
                Err(e) => return Ok(Err(e)),
            };
            if records::is_tombstoned(c, &pubkey, &event_id, coord.as_deref(), created)? {
                return Ok(Err(JobError::ineligible(
                    ErrorCode::Deleted,
                    "a kind 5 deletion for this event was seen",
                )));
            }
            let existing = records::get_record(c, &event_id)?;
            if let Some(coord) = coord.as_deref() {
                if let Some(newest) = records::newest_for_coordinate(c, coord)? {
                    let newer =
                        (newest.event_created_at, newest.nostr_event_id.as_str()) > (created, event_id.as_str());
                    if newer && newest.nostr_event_id != event_id {
                        return Ok(Err(JobError::ineligible(
                            ErrorCode::Superseded,
                            format!(
                                "a newer revision ({}) of {coord} is already bridged",
                                newest.nostr_event_id
                            ),
                        )));
                    }
                }
            }
            Ok(Ok((did, existing)))
        })
        .await??
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
    let prepared = source.prepare(event).await?;
    let t = std::time::Instant::now();
    let rkey = rkey_for(event).map_err(|e| JobError::ineligible(ErrorCode::InvalidTid, e.to_string()))?;
    crate::worker::note_record(&did, POST_COLLECTION, &rkey);
    let mapping = RecordMapping {
        nostr_event_id: event_id.clone(),
        nostr_pubkey: pubkey.clone(),
        did: did.clone(),
        collection: POST_COLLECTION.to_string(),
        rkey,
        event_kind: event.kind.as_u16() as i32,
        coordinate: coord.clone(),
        event_created_at: created,
        state: RecordState::Reserved.as_str().to_string(),
        record: Some(prepared.record.clone()),
        at_uri: None,
        cid: None,
        published_at: None,
        deleted_at: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    let reserved = {
        let mapping = mapping.clone();
        let record = prepared.record.clone();
        db.run(move |c| {
            let row = records::reserve_record(c, &mapping)?;
            // A reservation from an earlier try keeps its rkey; its record follows the current translation.
            if row.record.as_ref() != Some(&record) {
                records::update_reserved_record(c, &row.nostr_event_id, &record)?;
            }
            Ok(row)
        })
        .await?
    };
    let t = phase("reserve", t);
    crate::failpoint::hit("publish_after_reserve");

    // Upload media; the PDS normally returns exactly the locally computed ref. If it sniffed another type, the
    // record follows the PDS (deterministically, so a retry builds the same record).
    let mut record = prepared.record;
    let mut record_changed = false;
    for m in prepared.media {
        let expected = m.local_blob_ref();
        let cid = m.blob_cid();
        let actual = repo.upload_blob(&did, &m.body, &m.mime).await?;
        if actual != expected {
            replace_blob_refs(&mut record, &cid, &actual);
            record_changed = true;
        }
        // Dropping `m` here removes its spool file and releases its media budget before the next upload.
    }
    let t = phase("upload", t);
    crate::failpoint::hit("publish_after_upload");

    let (uri, cid) = repo
        .put_record(&did, POST_COLLECTION, &reserved.rkey, record.clone())
        .await?;
    let t = phase("put", t);
    crate::failpoint::hit("publish_after_put");
    let now_state = {
        let (event_id, uri, cid) = (event_id.clone(), uri.clone(), cid.clone());
        db.run(move |c| {
            // The reservation already holds the prepared record; it is rewritten only when the PDS's blob refs
            // changed it (one statement, one commit per publish in the common case).
            if record_changed {
                records::update_reserved_record(c, &event_id, &record)?;
            }
            if records::mark_published(c, &event_id, &uri, &cid)? {
                return Ok(RecordState::Published);
            }
            let row = records::get_record(c, &event_id)?.ok_or_else(|| {
                divine_bridge_db::DbError::Corrupt(format!("record_mappings row {event_id} vanished"))
            })?;
            row.record_state()
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
    if let Some(coord) = coord.as_deref() {
        supersede_older(db, repo, coord, &event_id, created).await?;
    }
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

/// Targets of a kind 5 event as stored keys: event ids (lower-case hex) and coordinates of the same author
/// (`<kind>:<lower-case hex pubkey>:<d>`, `d` as published). Parsing is [`crate::nostr::deletion_targets`].
pub fn delete_targets(event: &Event) -> (Vec<String>, Vec<String>) {
    let (ids, coords) = crate::nostr::deletion_targets(event);
    (
        ids.iter().map(|id| id.to_hex()).collect(),
        coords.iter().map(|c| c.to_string()).collect(),
    )
}

/// Applies a kind 5 deletion: remembers tombstones, removes bridged records of the same author. Returns how many
/// records were deleted from the repo.
pub async fn delete(db: &Db, repo: &dyn RepoWriter, event: &Event) -> Result<usize, JobError> {
    if event.kind != Kind::from(5u16) {
        return Err(JobError::BadPayload(format!(
            "delete_post job for kind {}",
            event.kind.as_u16()
        )));
    }
    let pubkey = event.pubkey.to_hex();
    let deleted_at = event_time(event);
    let (ids, coords) = delete_targets(event);
    let victims: Vec<RecordMapping> = {
        let (pubkey, delete_id) = (pubkey.clone(), event.id.to_hex());
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
            Ok(victims)
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
