//! The publish/delete policy against real Postgres and an in-memory repo: exactly one record per event across
//! crashes at every step, gates (disabled, not ready, tombstoned), addressable revisions, and deletes by id and by
//! coordinate.

use atrium_api::types::BlobRef;
use diesel::prelude::*;
use diesel::sql_types::Text;
use divine_atbridge::blob::{local_blob_ref, MediaBody, PreparedMedia};
use divine_atbridge::jobs::publish::{self, PostSource, PreparedPost, Published};
use divine_atbridge::jobs::{JobError, RepoWriter, UpstreamError};
use divine_atbridge::nostr::{DeleteRequest, ProfileMeta, VideoEvent};
use divine_atbridge::translate::KnownRecord;
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{records, Classified, ErrorClass, RecordState};
use futures::future::BoxFuture;
use nostr::prelude::*;
use std::collections::BTreeMap;
use std::sync::Mutex;

const DID: &str = "did:plc:testtesttesttesttesttest";

/// An in-memory repo: records by (collection, rkey); can fail the next N puts after storing (a crash between the
/// PDS write and our bookkeeping) or before storing (a PDS outage).
#[derive(Default)]
struct MemRepo {
    records: Mutex<BTreeMap<(String, String), serde_json::Value>>,
    puts: Mutex<usize>,
    fail_after_store: Mutex<usize>,
    fail_before_store: Mutex<usize>,
    /// Fail the next N deleteRecord calls (a 502 from the PDS) without deleting.
    fail_delete: Mutex<usize>,
    /// Fail the next N uploadBlob calls (a 502) after reading the body.
    fail_upload: Mutex<usize>,
}

fn transient(msg: &str) -> UpstreamError {
    UpstreamError {
        code: ErrorCode::XrpcServerError,
        class: ErrorClass::Transient,
        retry_after: None,
        message: msg.into(),
    }
}

impl RepoWriter for MemRepo {
    fn upload_blob<'a>(
        &'a self,
        _did: &'a str,
        body: &'a MediaBody,
        mime: &'a str,
    ) -> BoxFuture<'a, Result<BlobRef, UpstreamError>> {
        Box::pin(async move {
            let bytes = body.to_vec().await.unwrap();
            let mut f = self.fail_upload.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(transient("PDS upload failed"));
            }
            Ok(local_blob_ref(&bytes, mime))
        })
    }
    fn put_record<'a>(
        &'a self,
        did: &'a str,
        collection: &'a str,
        rkey: &'a str,
        record: serde_json::Value,
    ) -> BoxFuture<'a, Result<(String, String), UpstreamError>> {
        Box::pin(async move {
            {
                let mut f = self.fail_before_store.lock().unwrap();
                if *f > 0 {
                    *f -= 1;
                    return Err(transient("PDS down"));
                }
            }
            *self.puts.lock().unwrap() += 1;
            self.records
                .lock()
                .unwrap()
                .insert((collection.into(), rkey.into()), record);
            let mut f = self.fail_after_store.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(transient("connection reset after write"));
            }
            Ok((format!("at://{did}/{collection}/{rkey}"), "bafyreicid".into()))
        })
    }
    fn delete_record<'a>(
        &'a self,
        _did: &'a str,
        collection: &'a str,
        rkey: &'a str,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            {
                let mut f = self.fail_delete.lock().unwrap();
                if *f > 0 {
                    *f -= 1;
                    return Err(transient("502 Bad Gateway"));
                }
            }
            self.records
                .lock()
                .unwrap()
                .remove(&(collection.to_string(), rkey.to_string()));
            Ok(())
        })
    }
}

/// A repo whose first putRecord is overtaken by a kind 5 delete: the delete job runs to completion (as after the
/// publish try's lease was reclaimed) between the reservation and the write of a stale publish try.
struct RacingRepo<'a> {
    inner: MemRepo,
    db: divine_bridge_db::Db,
    delete: &'a Event,
    raced: Mutex<bool>,
}

impl RepoWriter for RacingRepo<'_> {
    fn upload_blob<'a>(
        &'a self,
        did: &'a str,
        body: &'a MediaBody,
        mime: &'a str,
    ) -> BoxFuture<'a, Result<BlobRef, UpstreamError>> {
        self.inner.upload_blob(did, body, mime)
    }
    fn put_record<'a>(
        &'a self,
        did: &'a str,
        collection: &'a str,
        rkey: &'a str,
        record: serde_json::Value,
    ) -> BoxFuture<'a, Result<(String, String), UpstreamError>> {
        Box::pin(async move {
            let first = !std::mem::replace(&mut *self.raced.lock().unwrap(), true);
            if first {
                let removed = publish::delete(&self.db, &self.inner, &deletion(self.delete))
                    .await
                    .unwrap();
                assert_eq!(removed, 1, "the delete removed the reserved mapping");
            }
            self.inner.put_record(did, collection, rkey, record).await
        })
    }
    fn delete_record<'a>(
        &'a self,
        did: &'a str,
        collection: &'a str,
        rkey: &'a str,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        self.inner.delete_record(did, collection, rkey)
    }
}

/// The job's one parse of its event (what `jobs::handlers` does before calling the policy).
fn vid(event: &Event) -> VideoEvent {
    VideoEvent::from_event(event).unwrap()
}

fn deletion(event: &Event) -> DeleteRequest {
    DeleteRequest::from_event(event).unwrap()
}

fn delete_request(keys: &Keys, tags: Vec<Tag>, at: u64) -> DeleteRequest {
    deletion(&delete_event(keys, tags, at))
}

fn meta_of(event: &Event) -> ProfileMeta {
    ProfileMeta::from_event(event).unwrap()
}

/// A record as the sources build it: typed, from the JSON a test writes.
fn typed(json: serde_json::Value) -> KnownRecord {
    serde_json::from_value(json).unwrap()
}

fn blob_json(blob: BlobRef) -> serde_json::Value {
    serde_json::to_value(blob).unwrap()
}

struct FakeSource;

impl PostSource for FakeSource {
    fn prepare<'a>(&'a self, event: &'a VideoEvent) -> BoxFuture<'a, Result<PreparedPost, JobError>> {
        Box::pin(async move {
            if event.content.contains("no video") {
                return Err(JobError::ineligible(ErrorCode::NoVideo, "no imeta url"));
            }
            let bytes = format!("video of {}", event.id).into_bytes();
            let record = typed(serde_json::json!({
                "$type": "app.bsky.feed.post",
                "text": event.content,
                "createdAt": "2026-01-01T00:00:00.000Z",
                "embed": {"$type": "app.bsky.embed.video", "video": blob_json(local_blob_ref(&bytes, "video/mp4"))},
            }));
            Ok(PreparedPost {
                record,
                media: vec![PreparedMedia::in_memory(bytes, "video/mp4")],
            })
        })
    }
}

fn account(conn: &mut PgConnection, keys: &Keys, state: &str, enabled: bool) {
    diesel::sql_query(
        "INSERT INTO account_links (nostr_pubkey, handle, did, provisioning_state, crosspost_enabled) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind::<Text, _>(keys.public_key().to_hex())
    .bind::<Text, _>(format!("u{}.test", &keys.public_key().to_hex()[..8]))
    .bind::<Text, _>(format!("{DID}{}", &keys.public_key().to_hex()[..4]))
    .bind::<Text, _>(state)
    .bind::<diesel::sql_types::Bool, _>(enabled)
    .execute(conn)
    .unwrap();
}

fn video(keys: &Keys, text: &str, kind: u16, d: Option<&str>, at: u64) -> Event {
    let mut tags = vec![];
    if let Some(d) = d {
        tags.push(Tag::identifier(d));
    }
    EventBuilder::new(Kind::from(kind), text)
        .tags(tags)
        .custom_created_at(Timestamp::from(at))
        .sign_with_keys(keys)
        .unwrap()
}

fn delete_event(keys: &Keys, tags: Vec<Tag>, at: u64) -> Event {
    EventBuilder::new(Kind::from(5u16), "")
        .tags(tags)
        .custom_created_at(Timestamp::from(at))
        .sign_with_keys(keys)
        .unwrap()
}

const T: u64 = 1_790_000_000;

#[tokio::test]
async fn crashes_at_any_step_still_leave_exactly_one_record() {
    let tdb = TestDb::migrated("jobs_publish_once");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();
    let e = video(&keys, "hello", 22, None, T);

    // PDS down: nothing written, reservation kept.
    *repo.fail_before_store.lock().unwrap() = 1;
    let err = publish::publish(&db, &FakeSource, &repo, &vid(&e)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.class()),
        (ErrorCode::XrpcServerError, ErrorClass::Transient)
    );
    let reserved = records::get_record(&mut tdb.conn(), &e.id.to_hex()).unwrap().unwrap();
    assert_eq!(reserved.record_state().unwrap(), RecordState::Reserved);

    // Written but the answer was lost: the retry re-puts the same record at the same rkey.
    *repo.fail_after_store.lock().unwrap() = 1;
    assert!(publish::publish(&db, &FakeSource, &repo, &vid(&e)).await.is_err());
    let out = publish::publish(&db, &FakeSource, &repo, &vid(&e)).await.unwrap();
    assert!(matches!(out, Published::Written { .. }));
    assert_eq!(repo.records.lock().unwrap().len(), 1, "one record despite three tries");
    let done = records::get_record(&mut tdb.conn(), &e.id.to_hex()).unwrap().unwrap();
    assert_eq!(done.rkey, reserved.rkey, "the reserved rkey is kept");
    assert_eq!(done.record_state().unwrap(), RecordState::Published);
    assert_eq!(
        done.at_uri.unwrap(),
        format!(
            "at://{DID}{}/app.bsky.feed.post/{}",
            &keys.public_key().to_hex()[..4],
            done.rkey
        )
    );

    // A further duplicate delivery is a no-op.
    assert_eq!(
        publish::publish(&db, &FakeSource, &repo, &vid(&e)).await.unwrap(),
        Published::AlreadyDone
    );
    assert_eq!(*repo.puts.lock().unwrap(), 2, "no write after publication was recorded");
}

#[tokio::test]
async fn gates_disabled_not_ready_failed_and_untranslatable() {
    let tdb = TestDb::migrated("jobs_publish_gates");
    let db = tdb.pool(4);
    let repo = MemRepo::default();
    let (off, pending, failed, ok) = (Keys::generate(), Keys::generate(), Keys::generate(), Keys::generate());
    account(&mut tdb.conn(), &off, "disabled", false);
    account(&mut tdb.conn(), &pending, "provisioning", true);
    account(&mut tdb.conn(), &failed, "failed", true);
    account(&mut tdb.conn(), &ok, "ready", true);

    let e = publish::publish(&db, &FakeSource, &repo, &vid(&video(&off, "x", 22, None, T)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::AccountDisabled, ErrorClass::Permanent)
    );
    let e = publish::publish(&db, &FakeSource, &repo, &vid(&video(&pending, "x", 22, None, T)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::AccountNotReady, ErrorClass::Transient)
    );
    let e = publish::publish(&db, &FakeSource, &repo, &vid(&video(&failed, "x", 22, None, T)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::AccountNotReady, ErrorClass::Permanent)
    );
    let e = publish::publish(&db, &FakeSource, &repo, &vid(&video(&ok, "no video here", 22, None, T)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NoVideo);
    assert!(repo.records.lock().unwrap().is_empty());
    assert!(
        records::get_record(&mut tdb.conn(), &video(&ok, "no video here", 22, None, T).id.to_hex())
            .unwrap()
            .is_none(),
        "nothing reserved for an untranslatable event"
    );
}

#[tokio::test]
async fn deletes_win_in_either_order() {
    let tdb = TestDb::migrated("jobs_publish_delete");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();

    // Publish then delete.
    let a = video(&keys, "first", 22, None, T);
    publish::publish(&db, &FakeSource, &repo, &vid(&a)).await.unwrap();
    assert_eq!(
        publish::delete(&db, &repo, &delete_request(&keys, vec![Tag::event(a.id)], T + 10))
            .await
            .unwrap(),
        1
    );
    assert!(repo.records.lock().unwrap().is_empty());
    assert_eq!(
        records::get_record(&mut tdb.conn(), &a.id.to_hex())
            .unwrap()
            .unwrap()
            .record_state()
            .unwrap(),
        RecordState::Deleted
    );
    let again = publish::publish(&db, &FakeSource, &repo, &vid(&a)).await.unwrap_err();
    assert_eq!(again.code(), ErrorCode::Deleted, "a redelivered event stays deleted");

    // Delete first, video later.
    let b = video(&keys, "second", 22, None, T + 20);
    assert_eq!(
        publish::delete(&db, &repo, &delete_request(&keys, vec![Tag::event(b.id)], T + 30))
            .await
            .unwrap(),
        0
    );
    let late = publish::publish(&db, &FakeSource, &repo, &vid(&b)).await.unwrap_err();
    assert_eq!((late.code(), late.class()), (ErrorCode::Deleted, ErrorClass::Permanent));
    assert!(repo.records.lock().unwrap().is_empty());

    // Someone else's delete is ignored.
    let c = video(&keys, "third", 22, None, T + 40);
    publish::publish(&db, &FakeSource, &repo, &vid(&c)).await.unwrap();
    let stranger = Keys::generate();
    assert_eq!(
        publish::delete(&db, &repo, &delete_request(&stranger, vec![Tag::event(c.id)], T + 50))
            .await
            .unwrap(),
        0
    );
    assert_eq!(repo.records.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn addressable_revisions_supersede_and_coordinate_deletes_cover_older_ones() {
    let tdb = TestDb::migrated("jobs_publish_revisions");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();

    let v1 = video(&keys, "rev 1", 34235, Some("clip"), T);
    let v2 = video(&keys, "rev 2", 34235, Some("clip"), T + 100);
    let v0 = video(&keys, "rev 0", 34235, Some("clip"), T - 100);
    publish::publish(&db, &FakeSource, &repo, &vid(&v1)).await.unwrap();
    publish::publish(&db, &FakeSource, &repo, &vid(&v2)).await.unwrap();
    {
        let recs = repo.records.lock().unwrap();
        assert_eq!(recs.len(), 1, "the newer revision replaced the older post");
        assert_eq!(recs.values().next().unwrap()["text"], "rev 2");
    }
    let m1 = records::get_record(&mut tdb.conn(), &v1.id.to_hex()).unwrap().unwrap();
    assert_eq!(m1.record_state().unwrap(), RecordState::Superseded);
    let late = publish::publish(&db, &FakeSource, &repo, &vid(&v0)).await.unwrap_err();
    assert_eq!(
        late.code(),
        ErrorCode::Superseded,
        "an older revision arriving late is ignored"
    );

    // A coordinate delete removes revisions at or before its time; a later revision survives.
    let coord = format!("34235:{}:clip", keys.public_key().to_hex());
    let del = delete_event(&keys, vec![Tag::parse(["a", &coord]).unwrap()], T + 150);
    assert_eq!(publish::delete(&db, &repo, &deletion(&del)).await.unwrap(), 1);
    assert!(repo.records.lock().unwrap().is_empty());
    let v3 = video(&keys, "rev 3", 34235, Some("clip"), T + 200);
    publish::publish(&db, &FakeSource, &repo, &vid(&v3)).await.unwrap();
    assert_eq!(
        repo.records.lock().unwrap().len(),
        1,
        "a revision newer than the delete is bridged"
    );
}

#[test]
fn rkeys_are_tids_stable_per_event_and_ordered_by_time() {
    let keys = Keys::generate();
    let a = video(&keys, "a", 22, None, T);
    let b = video(&keys, "b", 22, None, T + 1);
    let ra = publish::rkey_for(&vid(&a)).unwrap();
    assert_eq!(ra, publish::rkey_for(&vid(&a)).unwrap());
    assert_eq!(ra.len(), 13);
    assert!(ra.chars().all(|c| "234567abcdefghijklmnopqrstuvwxyz".contains(c)));
    let tid = divine_atbridge::tid::parse(&ra).expect("a valid TID");
    assert_eq!(tid.micros() / 1_000_000, T, "the TID carries the event's second");
    assert!(
        ra < publish::rkey_for(&vid(&b)).unwrap(),
        "later events sort after earlier ones"
    );
    assert_ne!(
        publish::rkey_for(&vid(&video(&keys, "c", 22, None, T))).unwrap(),
        ra,
        "same second, different event"
    );
}

struct FakeProfiles;

impl divine_atbridge::jobs::profile::ProfileSource for FakeProfiles {
    fn prepare<'a>(
        &'a self,
        meta: &'a ProfileMeta,
    ) -> BoxFuture<'a, Result<divine_atbridge::jobs::profile::PreparedProfile, JobError>> {
        Box::pin(async move {
            // The production source's first step: content that cannot translate is refused here.
            divine_atbridge::translate::plan_profile(meta)?;
            Ok(divine_atbridge::jobs::profile::PreparedProfile {
                record: typed(serde_json::json!({"$type": "app.bsky.actor.profile", "displayName": meta.name})),
                media: vec![],
            })
        })
    }
}

/// The newest kind 0 wins; a stale one is `superseded`. A newer kind 0 whose content cannot translate still takes its
/// place in the order before it is refused (the job parses the event once, up front, but keeps the content's verdict
/// for the translation, as when it parsed the content only after claiming): it ends `invalid_event`, and a valid one
/// older than it is then `superseded`, so an older name never overwrites what the user last published.
#[tokio::test]
async fn the_newest_profile_wins() {
    use divine_atbridge::jobs::profile::sync_profile;
    let tdb = TestDb::migrated("jobs_profile");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();
    let meta = |name: &str, at: u64| {
        EventBuilder::new(Kind::Metadata, format!(r#"{{"name":"{name}"}}"#))
            .custom_created_at(Timestamp::from(at))
            .sign_with_keys(&keys)
            .unwrap()
    };
    let (newer, older) = (meta("new name", T + 10), meta("old name", T));
    sync_profile(&db, &FakeProfiles, &repo, &meta_of(&newer)).await.unwrap();
    let stale = sync_profile(&db, &FakeProfiles, &repo, &meta_of(&older))
        .await
        .unwrap_err();
    assert_eq!(
        (stale.code(), stale.class()),
        (ErrorCode::Superseded, ErrorClass::Permanent)
    );
    sync_profile(&db, &FakeProfiles, &repo, &meta_of(&newer))
        .await
        .expect("re-delivery of the newest is fine");
    let bad = EventBuilder::new(Kind::Metadata, "not json")
        .custom_created_at(Timestamp::from(T + 30))
        .sign_with_keys(&keys)
        .unwrap();
    let e = sync_profile(&db, &FakeProfiles, &repo, &meta_of(&bad))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (divine_bridge_db::ErrorCode::InvalidEvent, ErrorClass::Permanent)
    );
    let between = meta("between", T + 20);
    let e = sync_profile(&db, &FakeProfiles, &repo, &meta_of(&between))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        divine_bridge_db::ErrorCode::Superseded,
        "the untranslatable newer kind 0 holds its place"
    );
    let recs = repo.records.lock().unwrap();
    assert_eq!(
        recs[&("app.bsky.actor.profile".to_string(), "self".to_string())]["displayName"],
        "new name"
    );
}

/// Mentions: only a pubkey with a `ready` link and a DID is resolved to a DID (mention facet); pending, failed and
/// unknown pubkeys are not (they get a Divine profile link). Duplicates and nprofile forms resolve the same way.
#[tokio::test]
async fn mentioned_pubkeys_resolve_to_dids_only_when_ready() {
    use divine_atbridge::jobs::sources::bridged_users;
    use nostr::nips::nip19::{Nip19Profile, ToBech32};
    let tdb = TestDb::migrated("jobs_mentions");
    let db = tdb.pool(2);
    let (ready, pending, failed, unknown) = (Keys::generate(), Keys::generate(), Keys::generate(), Keys::generate());
    account(&mut tdb.conn(), &ready, "ready", true);
    account(&mut tdb.conn(), &pending, "pending", true);
    account(&mut tdb.conn(), &failed, "failed", true);
    let npub = |k: &Keys| k.public_key().to_bech32().unwrap();
    let nprofile = Nip19Profile::new(ready.public_key(), []).to_bech32().unwrap();
    let text = format!(
        "nostr:{} nostr:{nprofile} nostr:{} nostr:{} nostr:{}",
        npub(&ready),
        npub(&pending),
        npub(&failed),
        npub(&unknown)
    );
    let found = bridged_users(&db, &text).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let user = &found[&ready.public_key().to_hex()];
    assert_eq!(user.did, format!("{DID}{}", &ready.public_key().to_hex()[..4]));
    assert_eq!(user.handle, format!("u{}.test", &ready.public_key().to_hex()[..8]));
    assert!(bridged_users(&db, "no mentions here").await.unwrap().is_empty());
}

/// Issue 9 §5: the `d` identifier of a coordinate is case-sensitive. A delete of `34236:<pk>:MyClip` (pubkey in any
/// hex case) removes the clip `MyClip`, before or after it was bridged, and a delete of `myclip` does not.
#[tokio::test]
async fn a_tag_delete_keeps_the_case_of_d() {
    let tdb = TestDb::migrated("jobs_publish_d_case");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();
    let pk = keys.public_key().to_hex();

    let clip = video(&keys, "my clip", 34236, Some("MyClip"), T);
    publish::publish(&db, &FakeSource, &repo, &vid(&clip)).await.unwrap();
    let stored = records::get_record(&mut tdb.conn(), &clip.id.to_hex())
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.coordinate.as_deref(),
        Some(format!("34236:{pk}:MyClip").as_str())
    );

    let wrong_case = format!("34236:{pk}:myclip");
    let del = delete_event(&keys, vec![Tag::parse(["a", &wrong_case]).unwrap()], T + 10);
    assert_eq!(
        publish::delete(&db, &repo, &deletion(&del)).await.unwrap(),
        0,
        "myclip is another clip"
    );
    assert_eq!(repo.records.lock().unwrap().len(), 1);

    let exact = format!("34236:{}:MyClip", pk.to_uppercase());
    let del = delete_event(&keys, vec![Tag::parse(["a", &exact]).unwrap()], T + 20);
    assert_eq!(
        publish::delete(&db, &repo, &deletion(&del)).await.unwrap(),
        1,
        "the a-tag delete of MyClip matches"
    );
    assert!(repo.records.lock().unwrap().is_empty());

    // Delete seen first: the tombstone keeps the case too, so the clip arriving later is refused.
    let early = delete_event(
        &keys,
        vec![Tag::parse(["a", &format!("34236:{pk}:OtherClip")]).unwrap()],
        T + 40,
    );
    publish::delete(&db, &repo, &deletion(&early)).await.unwrap();
    let other = video(&keys, "other", 34236, Some("OtherClip"), T + 30);
    let refused = publish::publish(&db, &FakeSource, &repo, &vid(&other))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Deleted);
}

/// Issue 9 §5: tombstones are per (target, author). Another user's kind 5 naming my event id first must not claim
/// the row and hide my own later delete (seen before my video arrives).
#[tokio::test]
async fn another_users_delete_does_not_block_mine() {
    let tdb = TestDb::migrated("jobs_publish_tomb_author");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();
    let mine = video(&keys, "mine", 22, None, T);

    let stranger = Keys::generate();
    let theirs = delete_event(&stranger, vec![Tag::event(mine.id)], T + 5);
    assert_eq!(publish::delete(&db, &repo, &deletion(&theirs)).await.unwrap(), 0);
    let my_delete = delete_event(&keys, vec![Tag::event(mine.id)], T + 10);
    assert_eq!(publish::delete(&db, &repo, &deletion(&my_delete)).await.unwrap(), 0);

    let late = publish::publish(&db, &FakeSource, &repo, &vid(&mine))
        .await
        .unwrap_err();
    assert_eq!(
        late.code(),
        ErrorCode::Deleted,
        "my own delete counts although a stranger named my event first"
    );
    assert!(repo.records.lock().unwrap().is_empty());

    // And the stranger's delete alone never removes anything.
    let other = video(&keys, "other", 22, None, T + 20);
    let theirs = delete_event(&stranger, vec![Tag::event(other.id)], T + 25);
    publish::delete(&db, &repo, &deletion(&theirs)).await.unwrap();
    publish::publish(&db, &FakeSource, &repo, &vid(&other)).await.unwrap();
    assert_eq!(repo.records.lock().unwrap().len(), 1);
}

/// Issue 9 §6: exactly-once survives retention. After the finished publish job is pruned, its unique key is free, so
/// a redelivered event is enqueued again; the new job finds the ledger row and does not post a second time.
#[tokio::test]
async fn a_pruned_publish_job_redelivered_is_already_done() {
    let tdb = TestDb::migrated("jobs_publish_pruned");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();
    let e = video(&keys, "once", 22, None, T);

    let first = divine_atbridge::ingest::enqueue_event(&mut tdb.conn(), &e, 0)
        .unwrap()
        .unwrap();
    publish::publish(&db, &FakeSource, &repo, &vid(&e)).await.unwrap();
    diesel::sql_query("UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '30 days' WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(first)
        .execute(&mut tdb.conn())
        .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(14);
    assert_eq!(
        divine_bridge_db::queue::prune_finished(&mut tdb.conn(), cutoff, 1000).unwrap(),
        1
    );

    let again = divine_atbridge::ingest::enqueue_event(&mut tdb.conn(), &e, 0).unwrap();
    assert!(
        again.is_some(),
        "the pruned job's unique key is free: the redelivery is a new job"
    );
    assert_eq!(
        publish::publish(&db, &FakeSource, &repo, &vid(&e)).await.unwrap(),
        Published::AlreadyDone
    );
    assert_eq!(*repo.puts.lock().unwrap(), 1, "no second post");
}

#[tokio::test]
async fn a_delete_racing_a_stale_publish_try_ends_deleted() {
    let tdb = TestDb::migrated("jobs_publish_delete_race");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let v = video(&keys, "racing", 22, None, T);
    let del = delete_event(&keys, vec![Tag::event(v.id)], T + 10);
    let repo = RacingRepo {
        inner: MemRepo::default(),
        db: db.clone(),
        delete: &del,
        raced: Mutex::new(false),
    };
    // The stale try writes after the delete ran; its mark_published must not flip `deleted` back, and the record
    // it wrote must not stay live on the PDS.
    let err = publish::publish(&db, &FakeSource, &repo, &vid(&v)).await.unwrap_err();
    assert_eq!((err.code(), err.class()), (ErrorCode::Deleted, ErrorClass::Permanent));
    let m = records::get_record(&mut tdb.conn(), &v.id.to_hex()).unwrap().unwrap();
    assert_eq!(m.record_state().unwrap(), RecordState::Deleted);
    assert!(m.published_at.is_none());
    assert!(
        repo.inner.records.lock().unwrap().is_empty(),
        "the stale write was undone: deleted on Nostr, gone from Bluesky"
    );
    // A redelivery stays deleted.
    let again = publish::publish(&db, &FakeSource, &repo, &vid(&v)).await.unwrap_err();
    assert_eq!(again.code(), ErrorCode::Deleted);
    assert!(repo.inner.records.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_supersede_sweep_runs_on_the_already_done_path() {
    let tdb = TestDb::migrated("jobs_publish_sweep_retry");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();
    let v1 = video(&keys, "rev 1", 34235, Some("clip"), T);
    let v2 = video(&keys, "rev 2", 34235, Some("clip"), T + 100);
    publish::publish(&db, &FakeSource, &repo, &vid(&v1)).await.unwrap();

    // v2 is published, then deleting v1 from the PDS fails with a 502: the try fails transiently.
    *repo.fail_delete.lock().unwrap() = 1;
    let err = publish::publish(&db, &FakeSource, &repo, &vid(&v2)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(
        repo.records.lock().unwrap().len(),
        2,
        "both revisions live after the failed sweep"
    );
    let m2 = records::get_record(&mut tdb.conn(), &v2.id.to_hex()).unwrap().unwrap();
    assert_eq!(m2.record_state().unwrap(), RecordState::Published);

    // The retry finds v2 published (AlreadyDone) and still finishes the sweep.
    assert_eq!(
        publish::publish(&db, &FakeSource, &repo, &vid(&v2)).await.unwrap(),
        Published::AlreadyDone
    );
    {
        let recs = repo.records.lock().unwrap();
        assert_eq!(recs.len(), 1, "only the newest revision stays live");
        assert_eq!(recs.values().next().unwrap()["text"], "rev 2");
    }
    let m1 = records::get_record(&mut tdb.conn(), &v1.id.to_hex()).unwrap().unwrap();
    assert_eq!(m1.record_state().unwrap(), RecordState::Superseded);
}

/// A source whose video is spooled on disk, as the production source does.
struct SpooledSource {
    spool: divine_atbridge::spool::Spool,
    bytes: Vec<u8>,
}

impl PostSource for SpooledSource {
    fn prepare<'a>(&'a self, event: &'a VideoEvent) -> BoxFuture<'a, Result<PreparedPost, JobError>> {
        Box::pin(async move {
            let mut w = self.spool.create().unwrap();
            for chunk in self.bytes.chunks(8192) {
                w.write(chunk).unwrap();
            }
            let media = PreparedMedia {
                body: MediaBody::Spooled {
                    file: w.finish().unwrap(),
                    budget: None,
                },
                mime: "video/mp4".into(),
            };
            let record = typed(serde_json::json!({
                "$type": "app.bsky.feed.post",
                "text": event.content,
                "createdAt": "2026-01-01T00:00:00.000Z",
                "embed": {"$type": "app.bsky.embed.video", "video": blob_json(media.local_blob_ref())},
            }));
            Ok(PreparedPost {
                record,
                media: vec![media],
            })
        })
    }
}

/// A spooled video's blob ref (computed while spooling) is the one the repo computes from the uploaded bytes, and
/// the spool file is gone after a failed upload and after a successful publish.
#[tokio::test]
async fn spooled_media_uploads_from_disk_and_is_removed_on_failure_and_success() {
    let tdb = TestDb::migrated("jobs_publish_spool");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let root = tempfile::tempdir().unwrap();
    let spool =
        divine_atbridge::spool::Spool::open(root.path(), divine_atbridge::spool::MediaBudget::new(1 << 20)).unwrap();
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let source = SpooledSource {
        spool: spool.clone(),
        bytes: bytes.clone(),
    };
    let repo = MemRepo::default();
    let e = video(&keys, "spooled", 22, None, T);

    *repo.fail_upload.lock().unwrap() = 1;
    let err = publish::publish(&db, &source, &repo, &vid(&e)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::XrpcServerError);
    assert_eq!(spool.file_count(), 0, "a failed upload removes the spool file");

    let out = publish::publish(&db, &source, &repo, &vid(&e)).await.unwrap();
    assert!(matches!(out, Published::Written { .. }));
    assert_eq!(spool.file_count(), 0, "a published video's spool file is removed");
    let records = repo.records.lock().unwrap();
    let record = records.values().next().unwrap();
    assert_eq!(
        record["embed"]["video"],
        blob_json(local_blob_ref(&bytes, "video/mp4")),
        "the ref computed while spooling is the uploaded bytes' ref"
    );
}

/// Counts the statements a connection sends (diesel's instrumentation sees every one).
#[derive(Clone, Default)]
struct StatementCount(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl diesel::connection::Instrumentation for StatementCount {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        if let diesel::connection::InstrumentationEvent::StartQuery { .. } = event {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The publish gate runs on every try: three statements whatever the event (account, tombstones by id and
/// coordinate, the event's mapping with its coordinate's newest revision), where it used to take five for an
/// addressable video. Its verdicts are those of `gates_disabled_not_ready_failed_and_untranslatable`,
/// `deletes_win_in_either_order` and `addressable_revisions_supersede_and_coordinate_deletes_cover_older_ones`.
#[tokio::test]
async fn the_publish_gate_reads_in_three_statements() {
    let tdb = TestDb::migrated("jobs_publish_gate_statements");
    let db = tdb.pool(4);
    let keys = Keys::generate();
    account(&mut tdb.conn(), &keys, "ready", true);
    let repo = MemRepo::default();
    // An earlier revision is bridged and a delete of another event is remembered, so every lookup finds rows.
    let v1 = video(&keys, "rev 1", 34235, Some("clip"), T);
    publish::publish(&db, &FakeSource, &repo, &vid(&v1)).await.unwrap();
    let other = video(&keys, "other", 22, None, T);
    let del = delete_event(&keys, vec![Tag::event(other.id)], T + 1);
    publish::delete(&db, &repo, &deletion(&del)).await.unwrap();

    let mut conn = tdb.conn();
    let count = StatementCount::default();
    conn.set_instrumentation(count.clone());
    let pubkey = keys.public_key().to_hex();
    for event in [
        video(&keys, "rev 2", 34235, Some("clip"), T + 100),
        video(&keys, "plain", 22, None, T),
    ] {
        let v = vid(&event);
        let coord = v.coordinate.as_ref().map(|c| c.to_string());
        count.0.store(0, std::sync::atomic::Ordering::Relaxed);
        let (did, existing) = publish::gate(&mut conn, &pubkey, &v.id, coord.as_deref(), v.created_at).unwrap();
        assert!(did.starts_with(DID) && existing.is_none());
        assert_eq!(
            count.0.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "statements of the gate for {coord:?}"
        );
    }
}
