//! Ingest shard leases: how the relay × shard subscriptions are divided among the live replicas of a fleet, and the
//! per-shard relay cursors. SQL only; the ingest loop (`divine-atbridge::ingest`) decides when to call it.
//!
//! Semantics (issue 11 §4):
//! 1. A replica is live while its `ingest_replicas` row is unexpired ([`register`] renews it every round); the live
//!    count decides every replica's fair share of a relay's shards, `ceil(shards / live)` ([`fair_share`]).
//! 2. A shard is held by at most one replica: `ingest_shards` has one row per (relay, shard) whose `owner`,
//!    `token` and `expires_at` are set together. A shard is free when `owner IS NULL` or `expires_at <= now()`; a
//!    replica that dies stops heartbeating and its shards are free within one lease period.
//! 3. Every lease gets a fresh token (`ingest_shard_token_seq`). [`heartbeat`], [`release`] and the cursor write
//!    ([`advance_shard_cursor`]) match on `(relay, shard, token)` and an unexpired lease, so a replica that lost a
//!    shard — paused past expiry, taken over — can no longer move that shard's cursor. Events it still enqueues are
//!    harmless: job unique keys absorb them.
//! 4. [`acquire`] takes free shards with `FOR UPDATE SKIP LOCKED`, so two replicas acquiring at once never take the
//!    same shard and never wait on each other. A replica above its share [`release`]s the surplus, so a replica that
//!    starts gets shards within one round of the others.
//! 5. With one shard the relay's `relay_cursors` row is the shard's cursor (the pre-shard layout, unchanged). With
//!    more, each shard has a `relay_shard_cursors` row keyed by the shard count too (a different count partitions the
//!    authors differently); a shard without a row starts from the relay's `relay_cursors` row (the seed).

use crate::error::DbError;
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Double, Int4, Nullable, Text, Timestamptz};
use std::time::Duration;

/// One held shard lease: the shard and the token that fences its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, QueryableByName)]
pub struct ShardLease {
    #[diesel(sql_type = Int4)]
    pub shard: i32,
    #[diesel(sql_type = BigInt)]
    pub token: i64,
}

/// A replica's fair share of `shards` among `live` replicas: `ceil(shards / live)` (`live` counts itself).
pub fn fair_share(shards: u32, live: u32) -> u32 {
    shards.div_ceil(live.max(1))
}

/// Registers or renews a replica (`$1` owner, `$2` seconds) and drops rows expired for an hour.
pub const REGISTER_SQL: &str = "WITH gc AS (DELETE FROM ingest_replicas WHERE expires_at < now() - interval '1 hour') \
     INSERT INTO ingest_replicas (owner, expires_at) VALUES ($1, now() + make_interval(secs => $2)) \
     ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Renews `owner`'s registration for `ttl` and returns the number of live replicas (itself included).
pub fn register(conn: &mut PgConnection, owner: &str, ttl: Duration) -> Result<u32, DbError> {
    diesel::sql_query(REGISTER_SQL)
        .bind::<Text, _>(owner)
        .bind::<Double, _>(ttl.as_secs_f64())
        .execute(conn)?;
    let live: Count =
        diesel::sql_query("SELECT count(*) AS n FROM ingest_replicas WHERE expires_at > now()").get_result(conn)?;
    Ok(live.n.clamp(1, u32::MAX as i64) as u32)
}

/// Removes `owner`'s registration (clean shutdown), so the others' shares grow at once.
pub fn unregister(conn: &mut PgConnection, owner: &str) -> Result<(), DbError> {
    diesel::sql_query("DELETE FROM ingest_replicas WHERE owner = $1")
        .bind::<Text, _>(owner)
        .execute(conn)?;
    Ok(())
}

/// Creates the lease rows of shards `0..$2` of relay `$1` (idempotent).
pub const ENSURE_SQL: &str =
    "INSERT INTO ingest_shards (relay_url, shard) SELECT $1, s FROM generate_series(0, $2 - 1) AS s \
     ON CONFLICT (relay_url, shard) DO NOTHING";

/// Makes sure relay `relay` has a lease row for each of its `shards` shards.
pub fn ensure(conn: &mut PgConnection, relay: &str, shards: u32) -> Result<(), DbError> {
    diesel::sql_query(ENSURE_SQL)
        .bind::<Text, _>(relay)
        .bind::<Int4, _>(shards as i32)
        .execute(conn)?;
    Ok(())
}

/// Renews leases (`$1` relay, `$2` owner, `$3` shards, `$4` their tokens, `$5` seconds); only unexpired leases with
/// a matching token are renewed.
pub const HEARTBEAT_SQL: &str = "UPDATE ingest_shards SET expires_at = now() + make_interval(secs => $5) \
     FROM unnest($3::int[], $4::bigint[]) AS l(shard, token) \
     WHERE ingest_shards.relay_url = $1 AND ingest_shards.owner = $2 AND ingest_shards.shard = l.shard \
       AND ingest_shards.token = l.token AND ingest_shards.expires_at > now() \
     RETURNING ingest_shards.shard, ingest_shards.token";

/// Renews `held` on `relay`; returns the leases still held (a missing one expired and may belong to another replica).
pub fn heartbeat(
    conn: &mut PgConnection,
    relay: &str,
    owner: &str,
    held: &[ShardLease],
    ttl: Duration,
) -> Result<Vec<ShardLease>, DbError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let shards: Vec<i32> = held.iter().map(|l| l.shard).collect();
    let tokens: Vec<i64> = held.iter().map(|l| l.token).collect();
    Ok(diesel::sql_query(HEARTBEAT_SQL)
        .bind::<Text, _>(relay)
        .bind::<Text, _>(owner)
        .bind::<Array<Int4>, _>(&shards)
        .bind::<Array<BigInt>, _>(&tokens)
        .bind::<Double, _>(ttl.as_secs_f64())
        .load(conn)?)
}

/// Takes up to `$4` free shards below `$3` of relay `$1` for owner `$2` for `$5` seconds, lowest shard first.
pub const ACQUIRE_SQL: &str = "WITH free AS ( \
       SELECT relay_url, shard FROM ingest_shards \
       WHERE relay_url = $1 AND shard < $3 AND (owner IS NULL OR expires_at <= now()) \
       ORDER BY shard LIMIT $4 FOR UPDATE SKIP LOCKED) \
     UPDATE ingest_shards SET owner = $2, token = nextval('ingest_shard_token_seq'), \
            expires_at = now() + make_interval(secs => $5) \
     FROM free WHERE ingest_shards.relay_url = free.relay_url AND ingest_shards.shard = free.shard \
     RETURNING ingest_shards.shard, ingest_shards.token";

/// Leases up to `want` free shards (of `0..shards`) of `relay` for `owner`.
pub fn acquire(
    conn: &mut PgConnection,
    relay: &str,
    owner: &str,
    shards: u32,
    want: u32,
    ttl: Duration,
) -> Result<Vec<ShardLease>, DbError> {
    if want == 0 {
        return Ok(Vec::new());
    }
    Ok(diesel::sql_query(ACQUIRE_SQL)
        .bind::<Text, _>(relay)
        .bind::<Text, _>(owner)
        .bind::<Int4, _>(shards as i32)
        .bind::<BigInt, _>(want as i64)
        .bind::<Double, _>(ttl.as_secs_f64())
        .load(conn)?)
}

/// Frees one lease (`$1` relay, `$2` shard, `$3` token); a lease already lost is left alone.
pub const RELEASE_SQL: &str = "UPDATE ingest_shards SET owner = NULL, token = NULL, expires_at = NULL \
     WHERE relay_url = $1 AND shard = $2 AND token = $3";

/// Frees `lease` on `relay` so another replica may take it at once. Returns whether it was still held.
pub fn release(conn: &mut PgConnection, relay: &str, lease: ShardLease) -> Result<bool, DbError> {
    Ok(diesel::sql_query(RELEASE_SQL)
        .bind::<Text, _>(relay)
        .bind::<Int4, _>(lease.shard)
        .bind::<BigInt, _>(lease.token)
        .execute(conn)?
        == 1)
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    id: Option<String>,
}

/// Resume point of shard `$3` of `$2` shards on relay `$1` (`shards > 1`): its own row, else the relay's row.
pub const GET_SHARD_CURSOR_SQL: &str = "SELECT COALESCE(s.last_created_at, r.last_created_at) AS at, \
            COALESCE(s.last_event_id, r.last_event_id) AS id \
     FROM (SELECT 1) AS one \
     LEFT JOIN relay_shard_cursors s ON s.relay_url = $1 AND s.shards = $2 AND s.shard = $3 \
     LEFT JOIN relay_cursors r ON r.relay_url = $1";

/// The resume point of one shard (semantics 5).
pub fn get_shard_cursor(
    conn: &mut PgConnection,
    relay: &str,
    shards: u32,
    shard: i32,
) -> Result<Option<(DateTime<Utc>, String)>, DbError> {
    if shards <= 1 {
        return crate::records::get_cursor(conn, relay);
    }
    let p: Position = diesel::sql_query(GET_SHARD_CURSOR_SQL)
        .bind::<Text, _>(relay)
        .bind::<Int4, _>(shards as i32)
        .bind::<Int4, _>(shard)
        .get_result(conn)?;
    Ok(p.at.zip(p.id))
}

/// The oldest resume point among a relay's shards (`shards > 1`; shards without a row count with the seed), for the
/// lag gauge: how far behind the furthest-behind shard is.
pub const RELAY_FLOOR_SQL: &str = "SELECT min(c.at) AS at, min(c.id) AS id FROM ( \
       SELECT COALESCE(s.last_created_at, r.last_created_at) AS at, COALESCE(s.last_event_id, r.last_event_id) AS id \
       FROM generate_series(0, $2 - 1) AS g(shard) \
       LEFT JOIN relay_shard_cursors s ON s.relay_url = $1 AND s.shards = $2 AND s.shard = g.shard \
       LEFT JOIN relay_cursors r ON r.relay_url = $1) AS c";

/// The oldest shard position of `relay` (with one shard: its cursor).
pub fn relay_floor(conn: &mut PgConnection, relay: &str, shards: u32) -> Result<Option<DateTime<Utc>>, DbError> {
    if shards <= 1 {
        return Ok(crate::records::get_cursor(conn, relay)?.map(|(at, _)| at));
    }
    let p: Position = diesel::sql_query(RELAY_FLOOR_SQL)
        .bind::<Text, _>(relay)
        .bind::<Int4, _>(shards as i32)
        .get_result(conn)?;
    Ok(p.at)
}

/// The lease fence of a cursor write (`$1` relay, `$3` shard, `$4` token).
const FENCE: &str = "EXISTS (SELECT 1 FROM ingest_shards l WHERE l.relay_url = $1 AND l.shard = $3 AND l.token = $4 \
                              AND l.expires_at > now())";

/// Advances shard `$3` of `$2` shards on relay `$1` to `(LEAST($5, now()), $6)` if lease token `$4` still holds it;
/// forward only, except that a stored position ahead of `now()` is always repaired (as `ADVANCE_CURSOR_SQL`).
pub fn advance_shard_cursor_sql(shards: u32) -> String {
    if shards <= 1 {
        format!(
            "INSERT INTO relay_cursors (relay_url, last_created_at, last_event_id, updated_at) \
             SELECT $1, LEAST($5, now()), $6, now() WHERE $2 = 1 AND {FENCE} \
             ON CONFLICT (relay_url) DO UPDATE \
             SET last_created_at = EXCLUDED.last_created_at, last_event_id = EXCLUDED.last_event_id, updated_at = now() \
             WHERE relay_cursors.last_created_at > now() \
                OR (relay_cursors.last_created_at, relay_cursors.last_event_id) \
                   < (EXCLUDED.last_created_at, EXCLUDED.last_event_id)"
        )
    } else {
        format!(
            "INSERT INTO relay_shard_cursors (relay_url, shards, shard, last_created_at, last_event_id, updated_at) \
             SELECT $1, $2, $3, LEAST($5, now()), $6, now() WHERE {FENCE} \
             ON CONFLICT (relay_url, shards, shard) DO UPDATE \
             SET last_created_at = EXCLUDED.last_created_at, last_event_id = EXCLUDED.last_event_id, updated_at = now() \
             WHERE relay_shard_cursors.last_created_at > now() \
                OR (relay_shard_cursors.last_created_at, relay_shard_cursors.last_event_id) \
                   < (EXCLUDED.last_created_at, EXCLUDED.last_event_id)"
        )
    }
}

/// Advances one shard's cursor under its lease ([`advance_shard_cursor_sql`]); a lost lease writes nothing.
pub fn advance_shard_cursor(
    conn: &mut PgConnection,
    relay: &str,
    shards: u32,
    lease: ShardLease,
    created_at: DateTime<Utc>,
    event_id: &str,
) -> Result<(), DbError> {
    diesel::sql_query(advance_shard_cursor_sql(shards))
        .bind::<Text, _>(relay)
        .bind::<Int4, _>(shards.max(1) as i32)
        .bind::<Int4, _>(lease.shard)
        .bind::<BigInt, _>(lease.token)
        .bind::<Timestamptz, _>(created_at)
        .bind::<Text, _>(event_id)
        .execute(conn)?;
    Ok(())
}

/// Who holds each shard of `relay` right now (unexpired leases only): `(shard, owner)`. Diagnostics and tests.
pub fn holders(conn: &mut PgConnection, relay: &str) -> Result<Vec<(i32, String)>, DbError> {
    use crate::schema::ingest_shards::dsl as s;
    let rows: Vec<(i32, Option<String>)> = s::ingest_shards
        .filter(s::relay_url.eq(relay))
        .filter(s::expires_at.gt(diesel::dsl::now))
        .order(s::shard)
        .select((s::shard, s::owner))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(shard, o)| o.map(|o| (shard, o)))
        .collect())
}

/// The live replicas (unexpired registrations). Diagnostics and tests.
pub fn live_replicas(conn: &mut PgConnection) -> Result<Vec<String>, DbError> {
    use crate::schema::ingest_replicas::dsl as r;
    Ok(r::ingest_replicas
        .filter(r::expires_at.gt(diesel::dsl::now))
        .order(r::owner)
        .select(r::owner)
        .load(conn)?)
}

/// One stored relay position, for `divine-atbridge status`: the relay cursor (`shards` 1, the single-shard layout)
/// or the oldest position of one shard layout (`shards` > 1: the floor its subscriptions resume from).
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct CursorPosition {
    #[diesel(sql_type = Text)]
    pub relay_url: String,
    #[diesel(sql_type = Int4)]
    pub shards: i32,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    /// `now()` minus `at`, in seconds (negative: the position is ahead of the database clock).
    #[diesel(sql_type = Double)]
    pub age_secs: f64,
}

/// Every relay's stored positions: `relay_cursors` rows and, per relay and shard count, the oldest
/// `relay_shard_cursors` row.
pub const CURSOR_POSITIONS_SQL: &str =
    "SELECT relay_url, shards, at, EXTRACT(EPOCH FROM now() - at)::float8 AS age_secs FROM ( \
        SELECT relay_url, 1 AS shards, last_created_at AS at FROM relay_cursors \
        UNION ALL \
        SELECT relay_url, shards, min(last_created_at) AS at FROM relay_shard_cursors GROUP BY relay_url, shards \
     ) p ORDER BY relay_url, shards";

/// [`CURSOR_POSITIONS_SQL`].
pub fn cursor_positions(conn: &mut PgConnection) -> Result<Vec<CursorPosition>, DbError> {
    Ok(diesel::sql_query(CURSOR_POSITIONS_SQL).load(conn)?)
}
