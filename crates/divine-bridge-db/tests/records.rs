//! Stores behind exactly-once publishing and ordering: reservation reuse, tombstones by id and by coordinate,
//! newest-wins profiles, monotonic relay cursors, keys inserted once.

use chrono::{Duration, TimeZone, Utc};
use diesel::prelude::*;
use divine_bridge_db::records::*;
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::RecordState;

const PK: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn link(conn: &mut PgConnection) {
    diesel::sql_query(format!(
        "INSERT INTO account_links (nostr_pubkey, handle) VALUES ('{PK}', 'alice.test')"
    ))
    .execute(conn)
    .unwrap();
}

fn mapping(event_id: &str, rkey: &str, created: chrono::DateTime<Utc>, coordinate: Option<&str>) -> RecordMapping {
    RecordMapping {
        coordinate: coordinate.map(str::to_string),
        record: Some(serde_json::json!({"text": rkey})),
        ..RecordMapping::reservation(
            event_id,
            PK,
            "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
            "app.bsky.feed.post",
            rkey,
            34235,
            created,
        )
    }
}

#[test]
fn reservation_is_reused_by_retries() {
    let db = TestDb::migrated("records_reserve");
    let mut conn = db.conn();
    let id = "a".repeat(64);
    let first = reserve_record(&mut conn, &mapping(&id, "3kaaaaaaaaa22", Utc::now(), None)).unwrap();
    let retry = reserve_record(&mut conn, &mapping(&id, "3kbbbbbbbbb22", Utc::now(), None)).unwrap();
    assert_eq!(retry.rkey, "3kaaaaaaaaa22", "a retry keeps the first try's rkey");
    assert_eq!(retry.record, first.record);
    mark_published(&mut conn, &id, "at://did/app.bsky.feed.post/3kaaaaaaaaa22", "bafycid").unwrap();
    let got = get_record(&mut conn, &id).unwrap().unwrap();
    assert_eq!(got.record_state().unwrap(), RecordState::Published);
    assert_eq!(got.cid.as_deref(), Some("bafycid"));
    assert!(
        !update_reserved_record(&mut conn, &id, &serde_json::json!({})).unwrap(),
        "published rows are frozen"
    );
}

#[test]
fn record_transitions_are_guarded_by_the_expected_previous_state() {
    let db = TestDb::migrated("records_guarded");
    let mut conn = db.conn();
    link(&mut conn);
    // A delete marks the reserved mapping deleted while a stale publish try is still writing to the PDS.
    let id = "b".repeat(64);
    reserve_record(&mut conn, &mapping(&id, "3kaaaaaaaaa23", Utc::now(), None)).unwrap();
    assert!(mark_removed(&mut conn, &id, RecordState::Deleted).unwrap());
    // The stale try's mark_published must not bring it back.
    assert!(!mark_published(&mut conn, &id, "at://did/app.bsky.feed.post/3kaaaaaaaaa23", "bafycid").unwrap());
    let got = get_record(&mut conn, &id).unwrap().unwrap();
    assert_eq!(got.record_state().unwrap(), RecordState::Deleted);
    assert!(got.at_uri.is_none() && got.published_at.is_none());
    // A deletion is not rewritten as a supersede (nor deleted twice).
    assert!(!mark_removed(&mut conn, &id, RecordState::Superseded).unwrap());
    assert!(!mark_removed(&mut conn, &id, RecordState::Deleted).unwrap());
    assert_eq!(
        get_record(&mut conn, &id).unwrap().unwrap().record_state().unwrap(),
        RecordState::Deleted
    );

    // The ordinary path applies: reserved → published → superseded; a second publish is a no-op.
    let id = "c".repeat(64);
    reserve_record(&mut conn, &mapping(&id, "3kaaaaaaaaa24", Utc::now(), None)).unwrap();
    assert!(mark_published(&mut conn, &id, "at://did/app.bsky.feed.post/3kaaaaaaaaa24", "bafy1").unwrap());
    assert!(!mark_published(&mut conn, &id, "at://did/app.bsky.feed.post/3kaaaaaaaaa24", "bafy2").unwrap());
    assert_eq!(
        get_record(&mut conn, &id).unwrap().unwrap().cid.as_deref(),
        Some("bafy1")
    );
    assert!(mark_removed(&mut conn, &id, RecordState::Superseded).unwrap());
    assert!(!mark_published(&mut conn, &id, "at://did/app.bsky.feed.post/3kaaaaaaaaa24", "bafy3").unwrap());
    assert_eq!(
        get_record(&mut conn, &id).unwrap().unwrap().record_state().unwrap(),
        RecordState::Superseded
    );
}

#[test]
fn tombstones_cover_ids_and_older_revisions_of_a_coordinate() {
    let db = TestDb::migrated("records_tomb");
    let mut conn = db.conn();
    let t0 = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let coord = format!("34235:{PK}:clip");
    put_tombstone(
        &mut conn,
        &Tombstone {
            target: coord.clone(),
            nostr_pubkey: PK.into(),
            delete_event_id: "d1".into(),
            deleted_at: t0,
            created_at: Utc::now(),
        },
    )
    .unwrap();
    assert!(is_tombstoned(&mut conn, PK, &"b".repeat(64), Some(&coord), t0 - Duration::seconds(5)).unwrap());
    assert!(is_tombstoned(&mut conn, PK, &"b".repeat(64), Some(&coord), t0).unwrap());
    assert!(
        !is_tombstoned(&mut conn, PK, &"b".repeat(64), Some(&coord), t0 + Duration::seconds(5)).unwrap(),
        "newer revision survives"
    );
    assert!(
        !is_tombstoned(&mut conn, &"2".repeat(64), &"b".repeat(64), Some(&coord), t0).unwrap(),
        "other author"
    );
    // An older delete does not move the tombstone backwards.
    put_tombstone(
        &mut conn,
        &Tombstone {
            target: coord.clone(),
            nostr_pubkey: PK.into(),
            delete_event_id: "d0".into(),
            deleted_at: t0 - Duration::seconds(100),
            created_at: Utc::now(),
        },
    )
    .unwrap();
    assert!(is_tombstoned(&mut conn, PK, &"b".repeat(64), Some(&coord), t0 - Duration::seconds(5)).unwrap());
    let id = "c".repeat(64);
    put_tombstone(
        &mut conn,
        &Tombstone {
            target: id.clone(),
            nostr_pubkey: PK.into(),
            delete_event_id: "d2".into(),
            deleted_at: t0,
            created_at: Utc::now(),
        },
    )
    .unwrap();
    assert!(
        is_tombstoned(&mut conn, PK, &id, None, t0 + Duration::days(1)).unwrap(),
        "id deletes ignore time"
    );
}

#[test]
fn newest_profile_wins_and_cursors_never_move_back() {
    let db = TestDb::migrated("records_profile");
    let mut conn = db.conn();
    link(&mut conn);
    let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    assert!(claim_profile_event(&mut conn, PK, "e2", t).unwrap());
    assert!(
        !claim_profile_event(&mut conn, PK, "e1", t - Duration::seconds(1)).unwrap(),
        "older loses"
    );
    assert!(
        claim_profile_event(&mut conn, PK, "e3", t + Duration::seconds(1)).unwrap(),
        "newer wins"
    );
    assert!(
        !mark_profile_synced(&mut conn, PK, "e2").unwrap(),
        "superseded event cannot mark synced"
    );
    assert!(mark_profile_synced(&mut conn, PK, "e3").unwrap());
    assert_eq!(newest_profile_event(&mut conn, PK).unwrap().unwrap().0, "e3");

    advance_cursor(&mut conn, "wss://r", t, "bb").unwrap();
    advance_cursor(&mut conn, "wss://r", t - Duration::seconds(10), "ff").unwrap();
    advance_cursor(&mut conn, "wss://r", t, "aa").unwrap();
    assert_eq!(
        get_cursor(&mut conn, "wss://r").unwrap().unwrap(),
        (t, "bb".to_string())
    );
    advance_cursor(&mut conn, "wss://r", t, "cc").unwrap();
    assert_eq!(
        get_cursor(&mut conn, "wss://r").unwrap().unwrap(),
        (t, "cc".to_string())
    );
}

/// A relay cursor is never stored ahead of the database clock, and a stored one that is ahead (written by an older
/// version, which took positions from refused future-dated events) is replaced by the next advance.
#[test]
fn relay_cursor_is_never_stored_ahead_of_now_and_a_future_one_is_repaired() {
    let db = TestDb::migrated("records_cursor_future");
    let mut conn = db.conn();
    let ten_years = Utc::now() + Duration::days(3650);
    advance_cursor(&mut conn, "wss://f", ten_years, "ee").unwrap();
    let (at, id) = get_cursor(&mut conn, "wss://f").unwrap().unwrap();
    assert!(at <= Utc::now(), "clamped to now(), not stored 10 years ahead: {at}");
    assert_eq!(id, "ee");

    // A row left in the future by an older version: the next ordinary position replaces it although it is "older".
    diesel::sql_query(
        "UPDATE relay_cursors SET last_created_at = now() + interval '10 years' WHERE relay_url = 'wss://f'",
    )
    .execute(&mut conn)
    .unwrap();
    let ordinary = Utc::now() - Duration::seconds(5);
    advance_cursor(&mut conn, "wss://f", ordinary, "aa").unwrap();
    let (at, id) = get_cursor(&mut conn, "wss://f").unwrap().unwrap();
    assert_eq!(id, "aa", "the future cursor was repaired");
    assert!((at - ordinary).num_milliseconds().abs() < 1, "{at} vs {ordinary}");
    // …and from there it is monotonic again.
    advance_cursor(&mut conn, "wss://f", ordinary - Duration::seconds(60), "bb").unwrap();
    assert_eq!(get_cursor(&mut conn, "wss://f").unwrap().unwrap().1, "aa");
}

#[test]
fn keys_are_inserted_once() {
    let db = TestDb::migrated("records_keys");
    let mut conn = db.conn();
    link(&mut conn);
    let keys = |sig: &str| AccountKeys {
        nostr_pubkey: PK.into(),
        kek_id: "k1".into(),
        signing_key_sealed: sig.as_bytes().to_vec(),
        rotation_key_sealed: vec![2],
        password_sealed: vec![3],
        signing_did_key: format!("did:key:{sig}"),
        rotation_did_key: "did:key:r".into(),
        provision_state: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        seal_generation: 0,
    };
    let first = insert_keys_once(&mut conn, &keys("first")).unwrap();
    let second = insert_keys_once(&mut conn, &keys("second")).unwrap();
    assert_eq!(
        second.signing_key_sealed, first.signing_key_sealed,
        "second generation never replaces the first"
    );
    save_provision_state(&mut conn, PK, &serde_json::json!({"step": "plc_registered"})).unwrap();
    assert_eq!(
        get_keys(&mut conn, PK).unwrap().unwrap().provision_state.unwrap()["step"],
        "plc_registered"
    );
}

/// The publish gate's one read: a video's own mapping and the newest revision of its coordinate, whichever of them
/// exist and whether or not they are the same row.
#[test]
fn own_mapping_and_newest_revision_come_from_one_read() {
    let db = TestDb::migrated("records_newest_revision");
    let mut conn = db.conn();
    link(&mut conn);
    let coord = format!("34236:{PK}:Vine-A");
    let other = format!("34236:{PK}:vine-a");
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let (old, mid, new) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let ids = |(own, newest): (Option<RecordMapping>, Option<RecordMapping>)| {
        (own.map(|m| m.nostr_event_id), newest.map(|m| m.nostr_event_id))
    };

    // Nothing bridged yet.
    assert_eq!(
        ids(record_and_newest_revision(&mut conn, &mid, Some(&coord)).unwrap()),
        (None, None)
    );
    // Only the event itself: it is its own newest revision.
    reserve_record(&mut conn, &mapping(&mid, "3kaaaaaaaaa22", t0, Some(&coord))).unwrap();
    assert_eq!(
        ids(record_and_newest_revision(&mut conn, &mid, Some(&coord)).unwrap()),
        (Some(mid.clone()), Some(mid.clone()))
    );
    // Two older revisions and a revision of another coordinate (d tags are case-sensitive) do not displace it.
    reserve_record(
        &mut conn,
        &mapping(&old, "3kbbbbbbbbb22", t0 - Duration::seconds(10), Some(&coord)),
    )
    .unwrap();
    reserve_record(
        &mut conn,
        &mapping(
            &"d".repeat(64),
            "3kccccccccc22",
            t0 - Duration::seconds(5),
            Some(&coord),
        ),
    )
    .unwrap();
    reserve_record(
        &mut conn,
        &mapping(&"e".repeat(64), "3kddddddddd22", t0 + Duration::days(1), Some(&other)),
    )
    .unwrap();
    assert_eq!(
        ids(record_and_newest_revision(&mut conn, &mid, Some(&coord)).unwrap()),
        (Some(mid.clone()), Some(mid.clone()))
    );
    assert_eq!(
        ids(record_and_newest_revision(&mut conn, &old, Some(&coord)).unwrap()),
        (Some(old.clone()), Some(mid.clone())),
        "an older revision's own row and the newest other"
    );
    // A newer revision (any state counts) is the newest, for its elders and for an event not yet bridged.
    reserve_record(
        &mut conn,
        &mapping(&new, "3keeeeeeeee22", t0 + Duration::seconds(1), Some(&coord)),
    )
    .unwrap();
    mark_removed(&mut conn, &new, RecordState::Deleted).unwrap();
    assert_eq!(
        ids(record_and_newest_revision(&mut conn, &mid, Some(&coord)).unwrap()),
        (Some(mid.clone()), Some(new.clone()))
    );
    assert_eq!(
        ids(record_and_newest_revision(&mut conn, &"f".repeat(64), Some(&coord)).unwrap()),
        (None, Some(new.clone()))
    );
    // The same second: the larger event id is the newer revision.
    let tie = "0".repeat(64);
    reserve_record(
        &mut conn,
        &mapping(&tie, "3kfffffffff22", t0 + Duration::seconds(1), Some(&coord)),
    )
    .unwrap();
    assert_eq!(
        ids(record_and_newest_revision(&mut conn, &tie, Some(&coord)).unwrap()),
        (Some(tie.clone()), Some(new.clone()))
    );
    // No coordinate: only the event's own row.
    assert_eq!(
        ids(record_and_newest_revision(&mut conn, &mid, None).unwrap()),
        (Some(mid.clone()), None)
    );
}
