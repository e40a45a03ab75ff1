//! Stores for what the worker remembers between jobs: sealed account keys and provisioning progress, PDS sessions,
//! Nostr event → ATProto record mappings (the exactly-once ledger), deletion tombstones, profile sync marks and relay
//! cursors. Plain row access only: no crypto (callers pass sealed bytes), no protocol logic, no job state.

use crate::error::DbError;
use crate::schema::{account_keys, account_sessions, nostr_tombstones, profile_sync, record_mappings, relay_cursors};
use crate::states::RecordState;
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz};

// ---------------------------------------------------------------------------------------------------------------
// account_keys
// ---------------------------------------------------------------------------------------------------------------

/// Sealed key material of one account.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = account_keys)]
pub struct AccountKeys {
    pub nostr_pubkey: String,
    pub kek_id: String,
    pub signing_key_sealed: Vec<u8>,
    pub rotation_key_sealed: Vec<u8>,
    pub password_sealed: Vec<u8>,
    pub signing_did_key: String,
    pub rotation_did_key: String,
    pub provision_state: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Re-seals of this row (keys.rs rotation rule 2); 0 as provisioned.
    pub seal_generation: i64,
}

/// Inserts keys unless the account already has some; returns the stored row either way, so a retried provisioning
/// job always continues with the keys generated on its first try (never a second identity).
pub fn insert_keys_once(conn: &mut PgConnection, keys: &AccountKeys) -> Result<AccountKeys, DbError> {
    diesel::insert_into(account_keys::table)
        .values(keys)
        .on_conflict(account_keys::nostr_pubkey)
        .do_nothing()
        .execute(conn)?;
    get_keys(conn, &keys.nostr_pubkey)?.ok_or_else(|| DbError::Corrupt("account_keys row vanished".into()))
}

/// The sealed keys of an account, if generated.
pub fn get_keys(conn: &mut PgConnection, pubkey: &str) -> Result<Option<AccountKeys>, DbError> {
    Ok(account_keys::table
        .find(pubkey)
        .select(AccountKeys::as_select())
        .first(conn)
        .optional()?)
}

/// Persists the provisioning checkpoint (serialized `identity::ProvisionState`).
pub fn save_provision_state(conn: &mut PgConnection, pubkey: &str, state: &serde_json::Value) -> Result<(), DbError> {
    let n = diesel::update(account_keys::table.find(pubkey))
        .set((
            account_keys::provision_state.eq(state),
            account_keys::updated_at.eq(Utc::now()),
        ))
        .execute(conn)?;
    if n == 1 {
        Ok(())
    } else {
        Err(DbError::Corrupt(format!("no account_keys row for {pubkey}")))
    }
}

/// Key rows not sealed by `kek_id`, after `after` in pubkey order (keyset paging: a resumed rotation never
/// rereads what it finished), at most `limit`.
pub fn keys_not_under(
    conn: &mut PgConnection,
    kek_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<AccountKeys>, DbError> {
    Ok(account_keys::table
        .filter(account_keys::kek_id.ne(kek_id))
        .filter(account_keys::nostr_pubkey.gt(after))
        .order(account_keys::nostr_pubkey)
        .limit(limit)
        .select(AccountKeys::as_select())
        .load(conn)?)
}

/// Rows of `account_keys` / `account_sessions` not sealed by `kek_id` (rotation progress).
pub fn count_not_under(conn: &mut PgConnection, kek_id: &str) -> Result<(i64, i64), DbError> {
    let keys = account_keys::table
        .filter(account_keys::kek_id.ne(kek_id))
        .count()
        .get_result(conn)?;
    let sessions = account_sessions::table
        .filter(account_sessions::kek_id.ne(kek_id))
        .count()
        .get_result(conn)?;
    Ok((keys, sessions))
}

/// New sealed secrets of one key row, at `from_generation + 1`.
#[derive(Debug, Clone)]
pub struct Resealed {
    pub kek_id: String,
    pub signing_key_sealed: Vec<u8>,
    pub rotation_key_sealed: Vec<u8>,
    pub password_sealed: Vec<u8>,
}

/// Fenced re-seal: writes `new` and generation `from_generation + 1` only while the row is still at
/// `from_generation`. `false` when another writer got there first (the caller rereads; nothing is overwritten).
pub fn reseal_keys(
    conn: &mut PgConnection,
    pubkey: &str,
    from_generation: i64,
    new: &Resealed,
) -> Result<bool, DbError> {
    let n = diesel::update(
        account_keys::table
            .find(pubkey)
            .filter(account_keys::seal_generation.eq(from_generation)),
    )
    .set((
        account_keys::kek_id.eq(&new.kek_id),
        account_keys::signing_key_sealed.eq(&new.signing_key_sealed),
        account_keys::rotation_key_sealed.eq(&new.rotation_key_sealed),
        account_keys::password_sealed.eq(&new.password_sealed),
        account_keys::seal_generation.eq(from_generation + 1),
        account_keys::updated_at.eq(Utc::now()),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

// ---------------------------------------------------------------------------------------------------------------
// account_sessions
// ---------------------------------------------------------------------------------------------------------------

/// Sealed PDS session tokens of one account.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = account_sessions)]
pub struct AccountSession {
    pub did: String,
    pub nostr_pubkey: String,
    pub access_jwt_sealed: Vec<u8>,
    pub refresh_jwt_sealed: Vec<u8>,
    pub access_expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The KEK that sealed both tokens.
    pub kek_id: String,
}

/// Upserts the session of `did`.
pub fn save_session(conn: &mut PgConnection, session: &AccountSession) -> Result<(), DbError> {
    diesel::insert_into(account_sessions::table)
        .values(session)
        .on_conflict(account_sessions::did)
        .do_update()
        .set(session)
        .execute(conn)?;
    Ok(())
}

/// Sessions not sealed by `kek_id`, after `after` in DID order, at most `limit`.
pub fn sessions_not_under(
    conn: &mut PgConnection,
    kek_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<AccountSession>, DbError> {
    Ok(account_sessions::table
        .filter(account_sessions::kek_id.ne(kek_id))
        .filter(account_sessions::did.gt(after))
        .order(account_sessions::did)
        .limit(limit)
        .select(AccountSession::as_select())
        .load(conn)?)
}

/// Fenced session re-seal: only while the row still holds what was read (`updated_at` and `kek_id` unchanged; a
/// refresh in between wins and is already sealed by the current KEK). `false` when it lost.
pub fn reseal_session(
    conn: &mut PgConnection,
    read: &AccountSession,
    kek_id: &str,
    access_jwt_sealed: &[u8],
    refresh_jwt_sealed: &[u8],
) -> Result<bool, DbError> {
    let n = diesel::update(
        account_sessions::table
            .find(&read.did)
            .filter(account_sessions::updated_at.eq(read.updated_at))
            .filter(account_sessions::kek_id.eq(&read.kek_id)),
    )
    .set((
        account_sessions::kek_id.eq(kek_id),
        account_sessions::access_jwt_sealed.eq(access_jwt_sealed),
        account_sessions::refresh_jwt_sealed.eq(refresh_jwt_sealed),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// The stored session of `did`.
pub fn get_session(conn: &mut PgConnection, did: &str) -> Result<Option<AccountSession>, DbError> {
    Ok(account_sessions::table
        .find(did)
        .select(AccountSession::as_select())
        .first(conn)
        .optional()?)
}

// ---------------------------------------------------------------------------------------------------------------
// record_mappings: the exactly-once ledger
// ---------------------------------------------------------------------------------------------------------------

/// One bridged (or reserved) record.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = record_mappings)]
pub struct RecordMapping {
    pub nostr_event_id: String,
    pub nostr_pubkey: String,
    pub did: String,
    pub collection: String,
    pub rkey: String,
    pub event_kind: i32,
    pub coordinate: Option<String>,
    pub event_created_at: DateTime<Utc>,
    pub state: String,
    pub record: Option<serde_json::Value>,
    pub at_uri: Option<String>,
    pub cid: Option<String>,
    pub published_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RecordMapping {
    /// A fresh `reserved` row for [`reserve_record`]: no coordinate and no record yet (set them with struct update
    /// syntax), nothing published or deleted, timestamps now. The one place a reservation's defaults are written.
    pub fn reservation(
        event_id: &str,
        pubkey: &str,
        did: &str,
        collection: &str,
        rkey: &str,
        event_kind: i32,
        event_created_at: DateTime<Utc>,
    ) -> RecordMapping {
        RecordMapping {
            nostr_event_id: event_id.to_string(),
            nostr_pubkey: pubkey.to_string(),
            did: did.to_string(),
            collection: collection.to_string(),
            rkey: rkey.to_string(),
            event_kind,
            coordinate: None,
            event_created_at,
            state: RecordState::Reserved.as_str().to_string(),
            record: None,
            at_uri: None,
            cid: None,
            published_at: None,
            deleted_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    /// The parsed state.
    pub fn record_state(&self) -> Result<RecordState, DbError> {
        Ok(self.state.parse()?)
    }
}

/// Reserves the rkey and stores the prepared record BEFORE any side effect. If a reservation for the event already
/// exists it is returned unchanged (a retry reuses the first try's rkey and record), so the write that follows is an
/// idempotent `putRecord`.
pub fn reserve_record(conn: &mut PgConnection, row: &RecordMapping) -> Result<RecordMapping, DbError> {
    // A fresh reservation comes back from the INSERT itself (one round trip); only an existing one is read.
    let inserted = diesel::insert_into(record_mappings::table)
        .values(row)
        .on_conflict(record_mappings::nostr_event_id)
        .do_nothing()
        .returning(RecordMapping::as_returning())
        .get_result(conn)
        .optional()
        .map_err(DbError::from_diesel)?;
    match inserted {
        Some(row) => Ok(row),
        None => get_record(conn, &row.nostr_event_id)?
            .ok_or_else(|| DbError::Corrupt("record_mappings row vanished".into())),
    }
}

/// The mapping of a Nostr event.
pub fn get_record(conn: &mut PgConnection, event_id: &str) -> Result<Option<RecordMapping>, DbError> {
    Ok(record_mappings::table
        .find(event_id)
        .select(RecordMapping::as_select())
        .first(conn)
        .optional()?)
}

/// Replaces the prepared record of a still-`reserved` mapping (e.g. after re-uploading media whose blob ref changed).
pub fn update_reserved_record(
    conn: &mut PgConnection,
    event_id: &str,
    record: &serde_json::Value,
) -> Result<bool, DbError> {
    let n = diesel::update(
        record_mappings::table
            .find(event_id)
            .filter(record_mappings::state.eq(RecordState::Reserved.as_str())),
    )
    .set((
        record_mappings::record.eq(record),
        record_mappings::updated_at.eq(Utc::now()),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Marks a mapping published with the PDS's answer, guarded by the expected previous state `reserved`; returns
/// whether it applied. `false` means the mapping left `reserved` meanwhile — typically a delete (or a newer revision)
/// that raced a stale publish try: that verdict stands and is never flipped back to `published` (the caller must
/// undo the write it just made). Re-marking an already `published` mapping is also `false` (nothing to do).
pub fn mark_published(conn: &mut PgConnection, event_id: &str, at_uri: &str, cid: &str) -> Result<bool, DbError> {
    let now = Utc::now();
    let n = diesel::update(
        record_mappings::table
            .find(event_id)
            .filter(record_mappings::state.eq(RecordState::Reserved.as_str())),
    )
    .set((
        record_mappings::state.eq(RecordState::Published.as_str()),
        record_mappings::at_uri.eq(at_uri),
        record_mappings::cid.eq(cid),
        record_mappings::published_at.eq(now),
        record_mappings::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// The states of a live mapping: one a delete, supersede or disconnect must still remove.
const LIVE_STATES: [&str; 2] = [RecordState::Reserved.as_str(), RecordState::Published.as_str()];

/// Marks a live (`reserved` or `published`) mapping deleted (kind 5) or superseded (newer addressable revision);
/// returns whether it applied. A mapping already `deleted` or `superseded` keeps its first verdict (`false`): a
/// supersede sweep can never turn a deletion into a supersede, nor the reverse.
pub fn mark_removed(conn: &mut PgConnection, event_id: &str, state: RecordState) -> Result<bool, DbError> {
    debug_assert!(matches!(state, RecordState::Deleted | RecordState::Superseded));
    let now = Utc::now();
    let n = diesel::update(
        record_mappings::table
            .find(event_id)
            .filter(record_mappings::state.eq_any(LIVE_STATES)),
    )
    .set((
        record_mappings::state.eq(state.as_str()),
        record_mappings::deleted_at.eq(now),
        record_mappings::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Every live (reserved or published) mapping of `pubkey`, oldest first: what a disconnect must delete.
pub fn live_records_for_author(conn: &mut PgConnection, pubkey: &str) -> Result<Vec<RecordMapping>, DbError> {
    Ok(record_mappings::table
        .filter(record_mappings::nostr_pubkey.eq(pubkey))
        .filter(record_mappings::state.eq_any(LIVE_STATES))
        .order(record_mappings::event_created_at.asc())
        .select(RecordMapping::as_select())
        .load(conn)?)
}

/// Live (reserved or published) mappings for an addressable coordinate, newest revision first.
pub fn live_records_for_coordinate(conn: &mut PgConnection, coordinate: &str) -> Result<Vec<RecordMapping>, DbError> {
    Ok(record_mappings::table
        .filter(record_mappings::coordinate.eq(coordinate))
        .filter(record_mappings::state.eq_any(LIVE_STATES))
        .order(record_mappings::event_created_at.desc())
        .select(RecordMapping::as_select())
        .load(conn)?)
}

/// A video's own mapping and the newest revision (any state) of its coordinate, read together in one round trip
/// (the publish gate needs both). The query orders this event's row first, then the coordinate's rows newest first,
/// and keeps two: the event's own row (when it exists) and the newest other revision, or the two newest revisions.
/// Either way the newest revision is the larger of the two by `(event_created_at, nostr_event_id)`. Without a
/// coordinate only the event's row is read.
pub fn record_and_newest_revision(
    conn: &mut PgConnection,
    event_id: &str,
    coordinate: Option<&str>,
) -> Result<(Option<RecordMapping>, Option<RecordMapping>), DbError> {
    let Some(coordinate) = coordinate else {
        return Ok((get_record(conn, event_id)?, None));
    };
    let rows: Vec<RecordMapping> = record_mappings::table
        .filter(
            record_mappings::nostr_event_id
                .eq(event_id)
                .or(record_mappings::coordinate.eq(coordinate)),
        )
        .order((
            record_mappings::nostr_event_id.eq(event_id).desc(),
            record_mappings::event_created_at.desc(),
            record_mappings::nostr_event_id.desc(),
        ))
        .limit(2)
        .select(RecordMapping::as_select())
        .load(conn)?;
    let newest = rows
        .iter()
        .filter(|r| r.coordinate.as_deref() == Some(coordinate))
        .max_by(|a, b| (a.event_created_at, &a.nostr_event_id).cmp(&(b.event_created_at, &b.nostr_event_id)))
        .cloned();
    let own = rows.into_iter().find(|r| r.nostr_event_id == event_id);
    Ok((own, newest))
}

// ---------------------------------------------------------------------------------------------------------------
// nostr_tombstones
// ---------------------------------------------------------------------------------------------------------------

/// A remembered deletion.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = nostr_tombstones)]
pub struct Tombstone {
    pub target: String,
    pub nostr_pubkey: String,
    pub delete_event_id: String,
    pub deleted_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// Records a tombstone of `(target, author)`; per author, the newest delete of a target wins (matters for
/// coordinates, where the delete time decides which revisions it covers). Keyed by author too, so a kind 5 by
/// someone else naming my event id can never claim the row my own deletion needs.
pub fn put_tombstone(conn: &mut PgConnection, t: &Tombstone) -> Result<(), DbError> {
    diesel::sql_query(
        "INSERT INTO nostr_tombstones (target, nostr_pubkey, delete_event_id, deleted_at, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (target, nostr_pubkey) DO UPDATE \
         SET delete_event_id = EXCLUDED.delete_event_id, deleted_at = EXCLUDED.deleted_at \
         WHERE nostr_tombstones.deleted_at < EXCLUDED.deleted_at",
    )
    .bind::<Text, _>(&t.target)
    .bind::<Text, _>(&t.nostr_pubkey)
    .bind::<Text, _>(&t.delete_event_id)
    .bind::<Timestamptz, _>(t.deleted_at)
    .bind::<Timestamptz, _>(t.created_at)
    .execute(conn)?;
    Ok(())
}

/// Whether an event is deleted: by id, or (for addressable events) by a coordinate delete dated at or after the
/// revision's created_at. Only tombstones by the same author count. One round trip (`EXISTS` over both keys).
pub fn is_tombstoned(
    conn: &mut PgConnection,
    pubkey: &str,
    event_id: &str,
    coordinate: Option<&str>,
    created_at: DateTime<Utc>,
) -> Result<bool, DbError> {
    use diesel::dsl::exists;
    let by_author = nostr_tombstones::table.filter(nostr_tombstones::nostr_pubkey.eq(pubkey));
    let by_id = nostr_tombstones::target.eq(event_id);
    Ok(match coordinate {
        None => diesel::select(exists(by_author.filter(by_id))).get_result(conn)?,
        Some(coord) => diesel::select(exists(
            by_author.filter(
                by_id.or(nostr_tombstones::target
                    .eq(coord)
                    .and(nostr_tombstones::deleted_at.ge(created_at))),
            ),
        ))
        .get_result(conn)?,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// profile_sync
// ---------------------------------------------------------------------------------------------------------------

/// Claims the right to sync a kind 0 event: true when it is newer than the last synced one (newest wins).
pub fn claim_profile_event(
    conn: &mut PgConnection,
    pubkey: &str,
    event_id: &str,
    created_at: DateTime<Utc>,
) -> Result<bool, DbError> {
    let n = diesel::sql_query(
        "INSERT INTO profile_sync (nostr_pubkey, event_id, event_created_at, updated_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (nostr_pubkey) DO UPDATE \
         SET event_id = EXCLUDED.event_id, event_created_at = EXCLUDED.event_created_at, synced_at = NULL, \
             updated_at = now() \
         WHERE (profile_sync.event_created_at, profile_sync.event_id) < (EXCLUDED.event_created_at, EXCLUDED.event_id)",
    )
    .bind::<Text, _>(pubkey)
    .bind::<Text, _>(event_id)
    .bind::<Timestamptz, _>(created_at)
    .execute(conn)?;
    Ok(n == 1)
}

/// Marks the profile event synced, if it is still the newest one.
pub fn mark_profile_synced(conn: &mut PgConnection, pubkey: &str, event_id: &str) -> Result<bool, DbError> {
    let n = diesel::update(
        profile_sync::table
            .find(pubkey)
            .filter(profile_sync::event_id.eq(event_id)),
    )
    .set(profile_sync::synced_at.eq(Utc::now()))
    .execute(conn)?;
    Ok(n == 1)
}

/// The newest claimed profile event `(event_id, created_at)` of an account.
pub fn newest_profile_event(conn: &mut PgConnection, pubkey: &str) -> Result<Option<(String, DateTime<Utc>)>, DbError> {
    Ok(profile_sync::table
        .find(pubkey)
        .select((profile_sync::event_id, profile_sync::event_created_at))
        .first(conn)
        .optional()?)
}

// ---------------------------------------------------------------------------------------------------------------
// relay_cursors
// ---------------------------------------------------------------------------------------------------------------

/// The resume point of a relay.
pub fn get_cursor(conn: &mut PgConnection, relay: &str) -> Result<Option<(DateTime<Utc>, String)>, DbError> {
    Ok(relay_cursors::table
        .find(relay)
        .select((relay_cursors::last_created_at, relay_cursors::last_event_id))
        .first(conn)
        .optional()?)
}

/// Advances a relay cursor. The stored position is `(LEAST(created_at, now()), id)`: a position later than the
/// database clock is clamped to it (the second line of defence behind ingest's own clamp to the receive time; a
/// cursor in the future would make every resubscription ask for events that do not exist yet). The row only moves
/// forward in `(created_at, id)` order, except that a stored position ahead of `now()` (written by an older version
/// or by hand) is always replaced, which repairs it on the next flush.
pub const ADVANCE_CURSOR_SQL: &str =
    "INSERT INTO relay_cursors (relay_url, last_created_at, last_event_id, updated_at) \
     VALUES ($1, LEAST($2, now()), $3, now()) \
     ON CONFLICT (relay_url) DO UPDATE \
     SET last_created_at = EXCLUDED.last_created_at, last_event_id = EXCLUDED.last_event_id, updated_at = now() \
     WHERE relay_cursors.last_created_at > now() \
        OR (relay_cursors.last_created_at, relay_cursors.last_event_id) \
           < (EXCLUDED.last_created_at, EXCLUDED.last_event_id)";

/// Advances the cursor of a relay ([`ADVANCE_CURSOR_SQL`]): never backwards, never later than `now()`.
pub fn advance_cursor(
    conn: &mut PgConnection,
    relay: &str,
    created_at: DateTime<Utc>,
    event_id: &str,
) -> Result<(), DbError> {
    diesel::sql_query(ADVANCE_CURSOR_SQL)
        .bind::<Text, _>(relay)
        .bind::<Timestamptz, _>(created_at)
        .bind::<Text, _>(event_id)
        .execute(conn)?;
    Ok(())
}
