//! Ingest against real in-process relays (nostr-relay-builder) and real Postgres: accepted events become exactly one
//! job each even when delivered by two relays, refused authors produce none, the subscription follows opt-in changes
//! without a restart, and events published while the bridge was down are picked up from the cursor after restart.
//! Relay limits are real relay policies here: a relay that refuses filters with too many authors (chunked
//! subscriptions), one that closes the first subscriptions (CLOSED → counted, cursor held, retried), and one that
//! replays at most 5 stored events per REQ (truncated replay paged back). The cursor is safe against future-dated
//! and refused events (issue 9 §1): neither a refused event nor one dated ahead of its receive time moves it past
//! events still to come, and a stored cursor ahead of now is shown by the lag gauge, ignored and repaired.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use divine_atbridge::ingest::{self, IngestConfig};
use divine_bridge_db::testutil::TestDb;
use nostr_relay_builder::prelude::*;
use nostr_sdk::Client;
use std::time::Duration;
use tokio::sync::watch;

async fn relay() -> (LocalRelay, String) {
    let relay = LocalRelay::new(RelayBuilder::default());
    relay.run().await.unwrap();
    let url = relay.url().await.to_string();
    (relay, url)
}

fn opt_in(conn: &mut PgConnection, keys: &Keys, handle: &str, state: &str, enabled: bool) {
    diesel::sql_query(
        "INSERT INTO account_links (nostr_pubkey, handle, provisioning_state, crosspost_enabled) VALUES ($1, $2, $3, $4)",
    )
    .bind::<Text, _>(keys.public_key().to_hex())
    .bind::<Text, _>(handle)
    .bind::<Text, _>(state)
    .bind::<diesel::sql_types::Bool, _>(enabled)
    .execute(conn)
    .unwrap();
}

#[derive(QueryableByName, Debug)]
struct JobRow {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    unique_key: String,
    #[diesel(sql_type = Text)]
    ordering_key: String,
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = BigInt)]
    source_epoch: i64,
}

fn jobs(conn: &mut PgConnection) -> Vec<JobRow> {
    diesel::sql_query(
        "SELECT kind, unique_key, ordering_key, payload ->> 'account' AS account, extract(epoch from source_created_at)::bigint AS source_epoch \
         FROM jobs ORDER BY id",
    )
    .load(conn)
    .unwrap()
}

async fn wait_for_jobs(conn: &mut PgConnection, n: usize) -> Vec<JobRow> {
    wait_until(conn, |rows| rows.len() >= n).await
}

async fn wait_until(conn: &mut PgConnection, done: impl Fn(&[JobRow]) -> bool) -> Vec<JobRow> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = jobs(conn);
        if done(&rows) || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn video(keys: &Keys, text: &str) -> Event {
    EventBuilder::new(Kind::from(22u16), text)
        .tags([Tag::parse(["imeta", "url https://media.divine.video/a.mp4", "m video/mp4"]).unwrap()])
        .sign_with_keys(keys)
        .unwrap()
}

async fn publisher(urls: &[String]) -> Client {
    let client = Client::default();
    for u in urls {
        client.add_relay(u.as_str()).await.unwrap();
    }
    client.connect().await;
    client
}

/// Ingest with a short (300 s, the old default) overlap: what these tests check must not depend on a long one.
fn start(db: &TestDb, urls: Vec<String>) -> (watch::Sender<bool>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    start_with(
        db,
        IngestConfig::new(urls, Duration::from_secs(300), Duration::from_millis(200)),
    )
}

fn start_with(db: &TestDb, cfg: IngestConfig) -> (watch::Sender<bool>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(ingest::run(db.pool(4), cfg, rx));
    (tx, handle)
}

/// A relay query policy: refuses filters with more than `max_authors` authors, and the first `refuse_first`
/// queries whatever they are. Counts the queries it saw.
#[derive(Debug)]
struct Policy {
    max_authors: usize,
    refuse_first: usize,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl QueryPolicy for Policy {
    fn admit_query<'a>(&'a self, query: &'a Filter, _addr: &'a std::net::SocketAddr) -> BoxedFuture<'a, PolicyResult> {
        Box::pin(async move {
            let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let authors = query.authors.as_ref().map_or(0, |a| a.len());
            if n < self.refuse_first {
                PolicyResult::Reject("rate-limited: slow down".into())
            } else if authors > self.max_authors {
                PolicyResult::Reject(format!("too many authors ({authors} > {})", self.max_authors))
            } else {
                PolicyResult::Accept
            }
        })
    }
}

async fn relay_with(builder: RelayBuilder) -> (LocalRelay, String) {
    let relay = LocalRelay::new(builder);
    relay.run().await.unwrap();
    let url = relay.url().await.to_string();
    (relay, url)
}

fn cursor_count(conn: &mut PgConnection) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM relay_cursors")
        .get_result(conn)
        .unwrap();
    n.n
}

fn closed_total(relay_url: &str, reason: &str) -> u64 {
    let text = divine_atbridge::metrics::render();
    let key = nostr_sdk::RelayUrl::parse(relay_url).unwrap().to_string();
    text.lines()
        .filter(|l| l.starts_with("bridge_relay_subscriptions_closed_total{"))
        .filter(|l| l.contains(&format!("relay=\"{key}\"")) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authors_are_split_over_subscriptions_a_capped_relay_accepts() {
    divine_atbridge::metrics::install();
    let db = TestDb::migrated("ingest_chunks");
    let mut conn = db.conn();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let policy = Policy {
        max_authors: 2,
        refuse_first: 0,
        seen: seen.clone(),
    };
    let (_relay, url) = relay_with(RelayBuilder::default().query_policy(policy)).await;
    let authors: Vec<Keys> = (0..5).map(|_| Keys::generate()).collect();
    for (i, k) in authors.iter().enumerate() {
        opt_in(&mut conn, k, &format!("chunk{i}.test"), "ready", true);
    }
    let mut cfg = IngestConfig::new(vec![url.clone()], Duration::from_secs(300), Duration::from_millis(200));
    cfg.authors_per_subscription = 2;
    let (stop, task) = start_with(&db, cfg);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = publisher(std::slice::from_ref(&url)).await;
    for (i, k) in authors.iter().enumerate() {
        client.send_event(&video(k, &format!("clip {i}"))).await.unwrap();
    }
    let rows = wait_for_jobs(&mut conn, 5).await;
    let mut keys: Vec<&str> = rows.iter().map(|r| r.account.as_str()).collect();
    keys.sort();
    let mut expected: Vec<String> = authors.iter().map(|k| k.public_key().to_hex()).collect();
    expected.sort();
    assert_eq!(keys, expected, "one job per author across three subscriptions");
    assert!(
        seen.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "three chunk subscriptions were sent"
    );
    assert_eq!(closed_total(&url, "error"), 0, "no subscription was refused");
    // Every chunk reached EOSE, so the cursor moves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cursor_count(&mut conn) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cursor_count(&mut conn), 1);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_subscription_is_counted_holds_the_cursor_and_is_retried() {
    divine_atbridge::metrics::install();
    let db = TestDb::migrated("ingest_closed");
    let mut conn = db.conn();
    let policy = Policy {
        max_authors: 1000,
        refuse_first: 2,
        seen: Default::default(),
    };
    let (_relay, url) = relay_with(RelayBuilder::default().query_policy(policy)).await;
    let alice = Keys::generate();
    opt_in(&mut conn, &alice, "closed.test", "ready", true);
    // Published before the bridge subscribes: only a successful (retried) subscription can deliver it.
    let client = publisher(std::slice::from_ref(&url)).await;
    let early = video(&alice, "before the relay let us in");
    client.send_event(&early).await.unwrap();

    let mut cfg = IngestConfig::new(vec![url.clone()], Duration::from_secs(300), Duration::from_millis(200));
    cfg.closed_retry = Duration::from_millis(500);
    let (stop, task) = start_with(&db, cfg);
    // The first two REQs are refused (nostr-relay-builder sends `CLOSED` with the NIP-01 prefix `error:`): counted
    // by that prefix, and no cursor is written meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while closed_total(&url, "error") < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed_total(&url, "error") >= 1, "CLOSED counted by reason");
    assert_eq!(
        cursor_count(&mut conn),
        0,
        "a refused subscription never advances the cursor"
    );
    let key = format!("publish:{}", early.id.to_hex());
    let rows = wait_until(&mut conn, |rows| rows.iter().any(|r| r.unique_key == key)).await;
    assert!(
        rows.iter().any(|r| r.unique_key == key),
        "the retried subscription delivered it: {rows:?}"
    );
    assert_eq!(closed_total(&url, "error"), 2, "both refusals counted, then accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cursor_count(&mut conn) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cursor_count(&mut conn),
        1,
        "caught up after the retry: the cursor moves"
    );
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_truncated_by_the_relay_is_paged_back_to_since() {
    let db = TestDb::migrated("ingest_truncated");
    let mut conn = db.conn();
    // This relay returns at most 5 stored events per REQ, like a relay's max limit.
    let (_relay, url) = relay_with(RelayBuilder::default().max_filter_limit(5).default_filter_limit(5)).await;
    let alice = Keys::generate();
    opt_in(&mut conn, &alice, "paged.test", "ready", true);
    let client = publisher(std::slice::from_ref(&url)).await;
    let now = Timestamp::now().as_secs();
    let mut ids = Vec::new();
    for i in 0..12u64 {
        // Two seconds apart, all inside the 300 s overlap window the first subscription asks for.
        let e = EventBuilder::new(Kind::from(22u16), format!("backlog {i}"))
            .custom_created_at(Timestamp::from(now - 2 * i))
            .sign_with_keys(&alice)
            .unwrap();
        client.send_event(&e).await.unwrap();
        ids.push(format!("publish:{}", e.id.to_hex()));
    }
    let mut cfg = IngestConfig::new(vec![url.clone()], Duration::from_secs(300), Duration::from_millis(200));
    cfg.replay_truncation_hint = 5;
    let (stop, task) = start_with(&db, cfg);
    let rows = wait_for_jobs(&mut conn, 12).await;
    let got: std::collections::HashSet<&str> = rows.iter().map(|r| r.unique_key.as_str()).collect();
    for id in &ids {
        assert!(got.contains(id.as_str()), "{id} was paged in: {} of 12", got.len());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jobs(&mut conn).len(), 12, "no duplicates from overlapping pages");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[test]
fn closed_reasons_are_a_closed_set() {
    assert_eq!(ingest::closed_reason("rate-limited: slow down"), "rate-limited");
    assert_eq!(ingest::closed_reason("auth-required: sign in"), "auth-required");
    assert_eq!(ingest::closed_reason("error: too many authors"), "error");
    assert_eq!(ingest::closed_reason("something else"), "other");
    assert_eq!(ingest::closed_reason(""), "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_events_become_exactly_one_job_each() {
    let db = TestDb::migrated("ingest_relay");
    let mut conn = db.conn();
    let (_r1, url1) = relay().await;
    let (_r2, url2) = relay().await;
    let alice = Keys::generate();
    let bob = Keys::generate(); // opted in but disabled
    let carol = Keys::generate(); // never opted in
    opt_in(&mut conn, &alice, "alice.test", "ready", true);
    opt_in(&mut conn, &bob, "bob.test", "disabled", false);

    let (stop, task) = start(&db, vec![url1.clone(), url2.clone()]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = publisher(&[url1.clone(), url2.clone()]).await;

    let v = video(&alice, "first clip");
    client.send_event(&v).await.unwrap(); // reaches both relays: must still be one job
    client.send_event(&video(&bob, "disabled account")).await.unwrap();
    client.send_event(&video(&carol, "stranger")).await.unwrap();
    let del = EventBuilder::new(Kind::from(5u16), "")
        .tags([Tag::event(v.id)])
        .sign_with_keys(&alice)
        .unwrap();
    client.send_event(&del).await.unwrap();
    let profile = EventBuilder::new(Kind::Metadata, r#"{"name":"alice"}"#)
        .sign_with_keys(&alice)
        .unwrap();
    client.send_event(&profile).await.unwrap();

    let rows = wait_for_jobs(&mut conn, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // would let a duplicate arrive
    let rows2 = jobs(&mut conn);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows2.len(), 3, "no duplicate job from the second relay: {rows2:?}");
    let keys: Vec<&str> = rows2.iter().map(|r| r.unique_key.as_str()).collect();
    assert!(keys.contains(&format!("publish:{}", v.id.to_hex()).as_str()));
    assert!(keys.contains(&format!("delete:{}", del.id.to_hex()).as_str()));
    assert!(keys.contains(&format!("profile:{}", profile.id.to_hex()).as_str()));
    for r in &rows2 {
        assert_eq!(r.account, alice.public_key().to_hex());
        assert_eq!(
            r.ordering_key,
            divine_atbridge::ingest::ordering_key_for(if r.kind == "publish_post" {
                &v
            } else if r.kind == "delete_post" {
                &del
            } else {
                &profile
            })
        );
    }
    let publish = rows2.iter().find(|r| r.kind == "publish_post").unwrap();
    assert_eq!(
        publish.source_epoch,
        v.created_at.as_secs() as i64,
        "dispatch order follows the event time"
    );

    // Enabling bob is picked up without a restart. The resubscription's overlap window also re-delivers bob's post
    // from while he was disabled; that matches re-enable semantics (re-enable backfills history anyway).
    diesel::sql_query(
        "UPDATE account_links SET crosspost_enabled = true, provisioning_state = 'ready' WHERE handle = 'bob.test'",
    )
    .execute(&mut conn)
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let b2 = video(&bob, "bob is back");
    client.send_event(&b2).await.unwrap();
    let b2_key = format!("publish:{}", b2.id.to_hex());
    let rows = wait_until(&mut conn, |rows| rows.iter().any(|r| r.unique_key == b2_key)).await;
    assert!(rows.iter().any(|r| r.unique_key == b2_key), "{rows:?}");
    let before_restart = rows.len();
    assert_eq!(before_restart, 5, "bob's two posts join alice's three jobs: {rows:?}");

    // Cursors were persisted for both relays.
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: N = diesel::sql_query("SELECT count(*) AS n FROM relay_cursors")
            .get_result(&mut conn)
            .unwrap();
        if n.n == 2 || tokio::time::Instant::now() > deadline {
            assert_eq!(n.n, 2, "one cursor per relay");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Restart: an event published while ingest is down is picked up from the cursor; nothing is duplicated.
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let offline = video(&alice, "posted while the bridge was down");
    client.send_event(&offline).await.unwrap();
    let (stop, task) = start(&db, vec![url1, url2]);
    wait_for_jobs(&mut conn, before_restart + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = jobs(&mut conn);
    assert_eq!(
        rows.len(),
        before_restart + 1,
        "exactly one new job after restart: {rows:?}"
    );
    assert!(rows
        .iter()
        .any(|r| r.unique_key == format!("publish:{}", offline.id.to_hex())));
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

fn rejected_total(reason: &str) -> u64 {
    divine_atbridge::metrics::render()
        .lines()
        .filter(|l| l.starts_with("bridge_nostr_events_rejected_total{"))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `bridge_relay_cursor_lag_seconds{relay}` for one relay, when exported.
fn cursor_lag(relay_url: &str) -> Option<f64> {
    let key = nostr_sdk::RelayUrl::parse(relay_url).unwrap().to_string();
    divine_atbridge::metrics::render()
        .lines()
        .filter(|l| l.starts_with("bridge_relay_cursor_lag_seconds{"))
        .find(|l| l.contains(&format!("relay=\"{key}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// The stored cursor of a relay as `(epoch seconds, event id)`.
fn stored_cursor(conn: &mut PgConnection, relay_url: &str) -> Option<(i64, String)> {
    #[derive(QueryableByName)]
    struct C {
        #[diesel(sql_type = BigInt)]
        at: i64,
        #[diesel(sql_type = Text)]
        id: String,
    }
    let key = nostr_sdk::RelayUrl::parse(relay_url).unwrap().to_string();
    let rows: Vec<C> = diesel::sql_query(
        "SELECT extract(epoch from last_created_at)::bigint AS at, last_event_id AS id FROM relay_cursors \
         WHERE relay_url = $1",
    )
    .bind::<Text, _>(key)
    .load(conn)
    .unwrap();
    rows.into_iter().next().map(|c| (c.at, c.id))
}

async fn wait_for_cursor(conn: &mut PgConnection, relay_url: &str, done: impl Fn(&(i64, String)) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !stored_cursor(conn, relay_url).is_some_and(|c| done(&c)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn video_at(keys: &Keys, text: &str, created_at: u64) -> Event {
    EventBuilder::new(Kind::from(22u16), text)
        .tags([Tag::parse(["imeta", "url https://media.divine.video/a.mp4", "m video/mp4"]).unwrap()])
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .unwrap()
}

fn has_job(rows: &[JobRow], event: &Event) -> bool {
    let key = format!("publish:{}", event.id.to_hex());
    rows.iter().any(|r| r.unique_key == key)
}

/// Issue 9 §1: one signed event dated ten years ahead, stored by the relay, used to move the shared cursor into the
/// future, so after the next resubscription nothing on that relay was bridged any more — neither the same user's
/// next video nor a newly opted-in user's first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_dated_ten_years_ahead_does_not_stop_the_relay() {
    divine_atbridge::metrics::install();
    let db = TestDb::migrated("ingest_future_10y");
    let mut conn = db.conn();
    let (_relay, url) = relay().await;
    let alice = Keys::generate();
    opt_in(&mut conn, &alice, "alice.test", "ready", true);
    let (stop, task) = start_with(
        &db,
        IngestConfig::new(
            vec![url.clone()],
            Duration::from_secs(ingest::DEFAULT_CURSOR_OVERLAP_SECS),
            Duration::from_millis(200),
        ),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = publisher(std::slice::from_ref(&url)).await;

    let first = video(&alice, "an ordinary clip");
    client.send_event(&first).await.unwrap();
    let rows = wait_until(&mut conn, |rows| has_job(rows, &first)).await;
    assert!(has_job(&rows, &first), "{rows:?}");
    let now = Timestamp::now().as_secs();
    let future = video_at(&alice, "from 2036", now + 10 * 365 * 24 * 3600);
    let refused_before = rejected_total("future_dated");
    client.send_event(&future).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rejected_total("future_dated") == refused_before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rejected_total("future_dated") > refused_before,
        "the relay delivered it and it was refused"
    );
    // Let a few cursor flushes happen (the old code wrote the refused event's date here).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A new opt-in changes the author set: every relay is resubscribed from its cursor.
    let bob = Keys::generate();
    opt_in(&mut conn, &bob, "bob.test", "ready", true);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let next = video(&alice, "alice's next clip");
    let bobs_first = video(&bob, "bob's first clip");
    client.send_event(&next).await.unwrap();
    client.send_event(&bobs_first).await.unwrap();
    let rows = wait_until(&mut conn, |rows| has_job(rows, &next) && has_job(rows, &bobs_first)).await;
    assert!(has_job(&rows, &next), "the same user's next video is bridged: {rows:?}");
    assert!(
        has_job(&rows, &bobs_first),
        "a new user's first video is bridged: {rows:?}"
    );
    assert!(!has_job(&rows, &future), "the future-dated event itself is not");
    let (at, _) = stored_cursor(&mut conn, &url).expect("cursor written");
    assert!(
        at <= Timestamp::now().as_secs() as i64,
        "cursor not in the future: {at}"
    );
    let lag = cursor_lag(&url).expect("lag exported");
    assert!(lag >= 0.0, "lag {lag}");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// Issue 9 §1: an ACCEPTED event nine minutes ahead (within the 600 s skew) used to carry the cursor nine minutes
/// into the future, so after a resubscription the same user's next ordinary video fell before `since`. The overlap
/// here is deliberately short (the old 300 s default): the clamp of positions to the receive time alone must
/// prevent it; the startup minimum of `CURSOR_OVERLAP_SECS` is a second line of defence tested in `config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_event_nine_minutes_ahead_does_not_hide_the_next_video() {
    let db = TestDb::migrated("ingest_future_9m");
    let mut conn = db.conn();
    let (_relay, url) = relay().await;
    let alice = Keys::generate();
    opt_in(&mut conn, &alice, "alice9.test", "ready", true);
    let (stop, task) = start(&db, vec![url.clone()]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = publisher(std::slice::from_ref(&url)).await;

    let now = Timestamp::now().as_secs();
    let ahead = video_at(&alice, "clock nine minutes fast", now + 9 * 60);
    client.send_event(&ahead).await.unwrap();
    let rows = wait_until(&mut conn, |rows| has_job(rows, &ahead)).await;
    assert!(has_job(&rows, &ahead), "accepted: within the skew: {rows:?}");
    let ahead_id = ahead.id.to_hex();
    wait_for_cursor(&mut conn, &url, |(_, id)| *id == ahead_id).await;
    let (at, id) = stored_cursor(&mut conn, &url).expect("cursor written");
    assert_eq!(id, ahead_id);

    // Force a resubscription (new opt-in), then the same user posts an ordinary video.
    let bob = Keys::generate();
    opt_in(&mut conn, &bob, "bob9.test", "ready", true);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let next = video(&alice, "an ordinary clip");
    client.send_event(&next).await.unwrap();
    let rows = wait_until(&mut conn, |rows| has_job(rows, &next)).await;
    assert!(has_job(&rows, &next), "the next ordinary video is not hidden: {rows:?}");
    assert!(
        at <= Timestamp::now().as_secs() as i64,
        "position clamped to the receive time, not {} s ahead",
        at - now as i64
    );
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// Issue 9 §1: a refused event never moves the cursor (the old `accept` returned the position of refused events too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_never_moves_the_cursor() {
    divine_atbridge::metrics::install();
    let db = TestDb::migrated("ingest_refused_cursor");
    let mut conn = db.conn();
    let (_relay, url) = relay().await;
    let alice = Keys::generate();
    opt_in(&mut conn, &alice, "alice-r.test", "ready", true);
    let (stop, task) = start(&db, vec![url.clone()]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = publisher(std::slice::from_ref(&url)).await;

    let ok = video(&alice, "accepted");
    client.send_event(&ok).await.unwrap();
    let ok_id = ok.id.to_hex();
    wait_for_cursor(&mut conn, &url, |(_, id)| *id == ok_id).await;
    let before = stored_cursor(&mut conn, &url).expect("cursor written by the accepted event");
    assert_eq!(before.1, ok_id);

    // Refused: dated just past the 600 s skew (a little later in created_at order than the accepted one).
    let now = Timestamp::now().as_secs();
    let refused = video_at(&alice, "eleven minutes ahead", now + 11 * 60);
    let refused_before = rejected_total("future_dated");
    client.send_event(&refused).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rejected_total("future_dated") == refused_before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rejected_total("future_dated") > refused_before, "delivered and refused");
    tokio::time::sleep(Duration::from_millis(2500)).await; // two flushes and more
    assert_eq!(
        stored_cursor(&mut conn, &url).unwrap(),
        before,
        "the refused event did not move the cursor"
    );
    assert!(!has_job(&jobs(&mut conn), &refused));
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// A cursor left in the future by an older version (or by hand) does not stop bridging: the gauge shows it negative
/// from startup, the resubscription starts at now minus the overlap, and the next flush repairs the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_cursor_ahead_of_now_is_shown_ignored_and_repaired() {
    divine_atbridge::metrics::install();
    let db = TestDb::migrated("ingest_stored_future");
    let mut conn = db.conn();
    let (_relay, url) = relay().await;
    let key = nostr_sdk::RelayUrl::parse(&url).unwrap().to_string();
    diesel::sql_query(
        "INSERT INTO relay_cursors (relay_url, last_created_at, last_event_id, updated_at) \
         VALUES ($1, now() + interval '10 years', 'ff', now())",
    )
    .bind::<Text, _>(&key)
    .execute(&mut conn)
    .unwrap();
    let alice = Keys::generate();
    opt_in(&mut conn, &alice, "alice-s.test", "ready", true);
    let (stop, task) = start(&db, vec![url.clone()]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cursor_lag(&url).is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lag = cursor_lag(&url).expect("gauge exported at startup, before any event");
    assert!(
        lag < -9.0 * 365.0 * 24.0 * 3600.0,
        "a cursor 10 years ahead shows as negative lag: {lag}"
    );

    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = publisher(std::slice::from_ref(&url)).await;
    let v = video(&alice, "still bridged");
    client.send_event(&v).await.unwrap();
    let rows = wait_until(&mut conn, |rows| has_job(rows, &v)).await;
    assert!(has_job(&rows, &v), "{rows:?}");
    let v_id = v.id.to_hex();
    wait_for_cursor(&mut conn, &url, |(_, id)| *id == v_id).await;
    let (at, id) = stored_cursor(&mut conn, &url).unwrap();
    assert_eq!(id, v_id, "repaired");
    assert!(at <= Timestamp::now().as_secs() as i64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cursor_lag(&url).is_some_and(|l| l < 0.0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cursor_lag(&url).unwrap() >= 0.0);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// `since` never lies after `now - overlap`, and positions are clamped to the receive time.
#[test]
fn resume_since_and_positions_are_never_in_the_future() {
    let now = chrono::Utc::now();
    let overlap = Duration::from_secs(900);
    let floor = now.timestamp() as u64 - 900;
    assert_eq!(ingest::resume_since(None, now, overlap).as_secs(), floor);
    let ahead = now + chrono::Duration::days(3650);
    assert_eq!(ingest::resume_since(Some(ahead), now, overlap).as_secs(), floor);
    let behind = now - chrono::Duration::seconds(3600);
    assert_eq!(
        ingest::resume_since(Some(behind), now, overlap).as_secs(),
        behind.timestamp() as u64 - 900
    );

    let keys = Keys::generate();
    let ahead = video_at(&keys, "ahead", now.timestamp() as u64 + 540);
    let (at, id) = ingest::cursor_position(&ahead, now);
    assert_eq!((at, id), (now, ahead.id.to_hex()), "clamped to the receive time");
    let past = video_at(&keys, "past", now.timestamp() as u64 - 30);
    assert_eq!(ingest::cursor_position(&past, now).0.timestamp(), now.timestamp() - 30);
}

/// Ingest admits through the one shared check (`nostr::check_event`): a tampered id is `bad_id` (the old ingest
/// copy reported every verification failure as `bad_signature` and never emitted `bad_id`), and each refusal is
/// counted under its reason.
#[test]
fn admission_is_the_shared_check_plus_the_opt_in_set() {
    divine_atbridge::metrics::install();
    let keys = Keys::generate();
    let authors = std::collections::BTreeSet::from([keys.public_key().to_hex()]);
    let now = chrono::Utc::now().timestamp() as u64;
    let ok = video(&keys, "fine");
    assert_eq!(ingest::admit(&ok, &authors, now), Ok(()));

    let mut forged: serde_json::Value = serde_json::to_value(&ok).unwrap();
    forged["content"] = serde_json::json!("tampered");
    let forged: Event = serde_json::from_value(forged).unwrap();
    let bad_id_before = rejected_total("bad_id");
    assert_eq!(ingest::admit(&forged, &authors, now).unwrap_err().reason(), "bad_id");
    assert_eq!(rejected_total("bad_id"), bad_id_before + 1, "counted as bad_id");

    let mut badsig: serde_json::Value = serde_json::to_value(&ok).unwrap();
    let sig = badsig["sig"].as_str().unwrap().to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    badsig["sig"] = serde_json::json!(format!("{flipped}{}", &sig[1..]));
    let badsig: Event = serde_json::from_value(badsig).unwrap();
    assert_eq!(
        ingest::admit(&badsig, &authors, now).unwrap_err().reason(),
        "bad_signature"
    );

    let future = video_at(&keys, "later", now + 11 * 60);
    assert_eq!(
        ingest::admit(&future, &authors, now).unwrap_err().reason(),
        "future_dated"
    );
    let near_future = video_at(&keys, "soon", now + 9 * 60);
    assert!(
        ingest::admit(&near_future, &authors, now).is_ok(),
        "9 minutes of skew is tolerated"
    );

    let note = EventBuilder::text_note("plain note").sign_with_keys(&keys).unwrap();
    assert_eq!(
        ingest::admit(&note, &authors, now).unwrap_err().reason(),
        "unsupported_kind"
    );

    let stranger = video(&Keys::generate(), "not opted in");
    let before = rejected_total("not_opted_in");
    assert_eq!(
        ingest::admit(&stranger, &authors, now).unwrap_err().reason(),
        "not_opted_in"
    );
    assert_eq!(rejected_total("not_opted_in"), before + 1);
    // The shared check runs first: a stranger's forged event is refused for its id, not for the author.
    let mut forged_stranger: serde_json::Value = serde_json::to_value(&stranger).unwrap();
    forged_stranger["content"] = serde_json::json!("tampered");
    let forged_stranger: Event = serde_json::from_value(forged_stranger).unwrap();
    assert_eq!(
        ingest::admit(&forged_stranger, &authors, now).unwrap_err().reason(),
        "bad_id"
    );
}

/// Issue 11 §4: shards are stable — an author's shard depends on its key alone, so adding one author changes
/// exactly one shard's list (the old sorted chunking shifted every chunk after the new key), and only that shard is
/// re-subscribed.
#[test]
fn a_new_author_changes_exactly_one_shard() {
    let keys: Vec<Keys> = (0..30).map(|_| Keys::generate()).collect();
    let mut authors: std::collections::BTreeSet<String> = keys.iter().map(|k| k.public_key().to_hex()).collect();
    let before = ingest::shard_authors(&authors, 8);
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 30);
    assert!(
        before.iter().filter(|s| !s.is_empty()).count() > 1,
        "30 authors spread over several shards"
    );
    let newcomer = Keys::generate().public_key();
    authors.insert(newcomer.to_hex());
    let after = ingest::shard_authors(&authors, 8);
    let shard = ingest::shard_of(&newcomer, 8);
    assert_eq!(ingest::changed_shards(&before, &after), vec![shard]);
    assert_eq!(ingest::shard_of(&newcomer, 8), shard, "stable");
    for k in &keys {
        let s = ingest::shard_of(&k.public_key(), 8) as usize;
        assert!(before[s].contains(&k.public_key()) && after[s].contains(&k.public_key()));
    }
    assert!(ingest::changed_shards(&after, &after).is_empty());
}

fn live_and_holders(conn: &mut PgConnection, relay: &str) -> (Vec<String>, Vec<(i32, String)>) {
    (
        divine_bridge_db::shards::live_replicas(conn).unwrap(),
        divine_bridge_db::shards::holders(conn, relay).unwrap(),
    )
}

/// Every one of `shards` held by a live replica, `replicas` live replicas, each holding its fair share.
fn divided(live: &[String], holders: &[(i32, String)], shards: usize, replicas: usize) -> bool {
    let owners: std::collections::BTreeSet<&String> = holders.iter().map(|(_, o)| o).collect();
    live.len() == replicas
        && holders.len() == shards
        && owners.len() == replicas
        && owners.iter().all(|o| live.contains(o))
        && owners
            .iter()
            .all(|o| holders.iter().filter(|(_, h)| h == *o).count() <= shards.div_ceil(replicas))
}

/// Issue 11 §4, in process: three ingest replicas on one relay divide its 6 shards (2 each); one is aborted without
/// releasing anything (as a SIGKILL), another is started; 300 events over 30 accounts become exactly one job each
/// and at the end every shard is held by exactly one live replica, the dead one's share taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_divide_the_shards_and_a_dead_ones_share_is_taken_over() {
    let db = TestDb::migrated("ingest_shards3");
    let mut conn = db.conn();
    // Without the builder's default limit of 60 events a minute per client: 300 are published here.
    let limit = RateLimit {
        notes_per_minute: 1_000_000,
        ..RateLimit::default()
    };
    let (_relay, url) = relay_with(RelayBuilder::default().rate_limit(limit)).await;
    let keys: Vec<Keys> = (0..30).map(|_| Keys::generate()).collect();
    for (i, k) in keys.iter().enumerate() {
        opt_in(&mut conn, k, &format!("s{i}.test"), "ready", true);
    }
    let cfg = IngestConfig {
        shards: 6,
        lease: Duration::from_secs(3),
        ..IngestConfig::new(vec![url.clone()], Duration::from_secs(300), Duration::from_millis(200))
    };
    let relay_key = nostr_sdk::RelayUrl::parse(&url).unwrap().to_string();
    let mut replicas: Vec<_> = (0..3).map(|_| start_with(&db, cfg.clone())).collect();
    let wait_divided = |conn: &mut PgConnection, replicas: usize, within: Duration| {
        let deadline = std::time::Instant::now() + within;
        loop {
            let (live, holders) = live_and_holders(conn, &relay_key);
            if divided(&live, &holders, 6, replicas) || std::time::Instant::now() > deadline {
                return (live, holders);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (live, holders) = wait_divided(&mut conn, 3, Duration::from_secs(15));
    assert!(
        divided(&live, &holders, 6, 3),
        "three replicas share six shards: {live:?} {holders:?}"
    );
    let owners_before: std::collections::BTreeSet<String> = live.iter().cloned().collect();

    let client = publisher(std::slice::from_ref(&url)).await;
    let events: Vec<Event> = (0..300).map(|i| video(&keys[i % 30], &format!("clip {i}"))).collect();
    for e in &events[..150] {
        client.send_event(e).await.unwrap();
    }
    // SIGKILL-like: the task is dropped mid-flight, nothing released or unregistered.
    let (_tx0, dead) = replicas.remove(0);
    dead.abort();
    replicas.push(start_with(&db, cfg.clone()));
    for e in &events[150..] {
        client.send_event(e).await.unwrap();
    }
    let rows = wait_until(&mut conn, |rows| rows.len() >= 300).await;
    assert_eq!(rows.len(), 300, "every event ingested");
    // Within about one lease period (3 s) plus a round, the dead replica's shards belong to live replicas again.
    let (live, holders) = wait_divided(&mut conn, 3, Duration::from_secs(15));
    assert!(divided(&live, &holders, 6, 3), "after the kill: {live:?} {holders:?}");
    let dead_owner: Vec<&String> = owners_before.iter().filter(|o| !live.contains(o)).collect();
    assert_eq!(
        dead_owner.len(),
        1,
        "exactly the killed replica is gone: {owners_before:?} → {live:?}"
    );
    assert!(holders.iter().all(|(_, o)| o != dead_owner[0]));

    let mut keys_seen: Vec<&str> = rows.iter().map(|r| r.unique_key.as_str()).collect();
    keys_seen.sort();
    let mut want: Vec<String> = events.iter().map(|e| format!("publish:{}", e.id.to_hex())).collect();
    want.sort();
    assert_eq!(
        keys_seen,
        want.iter().map(String::as_str).collect::<Vec<_>>(),
        "exactly one job per event"
    );
    for (tx, handle) in replicas {
        tx.send(true).unwrap();
        handle.await.unwrap().unwrap();
    }
    // A clean shutdown releases everything at once.
    let (live, holders) = live_and_holders(&mut conn, &relay_key);
    assert!(live.is_empty() && holders.is_empty(), "{live:?} {holders:?}");
}

/// A catch-up larger than the live relay pool's notification channel must settle. Catch-up pages used to be
/// read through the live pool, whose channel the loop does not read while it awaits a catch-up: the channel
/// overflowed, the loop saw `Lagged`, resubscribed every shard from the cursor minus the overlap, and the replay
/// started the same catch-up again — the relay was queried without end (seen on the localnet with ~10,000 events in
/// the overlap window). Now the catch-up has its own pool: once every event is a job the relay sees no more queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_larger_than_the_notification_channel_settles() {
    // 1,000 events through a 256-entry channel (the default is 4,096: the same overflow, 16 times the events).
    const BACKLOG: u64 = 1_000;
    let db = TestDb::migrated("ingest_big_catch_up");
    let mut conn = db.conn();
    let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let policy = Policy {
        max_authors: usize::MAX,
        refuse_first: 0,
        seen: queries.clone(),
    };
    let alice = Keys::generate();
    opt_in(&mut conn, &alice, "flood.test", "ready", true);
    // The backlog is written straight into the relay's store (publishing it event by event is slower).
    let store = MemoryDatabase::with_opts(MemoryDatabaseOptions {
        events: true,
        max_events: None,
    });
    let now = Timestamp::now().as_secs();
    for i in 0..BACKLOG {
        // All inside the 300 s overlap window the first subscription asks for (several per second).
        let e = EventBuilder::new(Kind::from(22u16), format!("backlog {i}"))
            .custom_created_at(Timestamp::from(now - i / 20))
            .sign_with_keys(&alice)
            .unwrap();
        assert!(
            store.save_event(&e).await.unwrap().is_success(),
            "backlog event {i} stored"
        );
    }
    let (_relay, url) = relay_with(
        RelayBuilder::default()
            .database(store)
            .max_filter_limit(100)
            .default_filter_limit(100)
            .query_policy(policy),
    )
    .await;
    let mut cfg = IngestConfig::new(vec![url.clone()], Duration::from_secs(300), Duration::from_millis(200));
    cfg.replay_truncation_hint = 100;
    cfg.notification_capacity = 256;
    let (stop, task) = start_with(&db, cfg);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (jobs(&mut conn).len() as u64) < BACKLOG {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {BACKLOG} events enqueued",
            jobs(&mut conn).len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It settles: within 30 s comes a 3 s window in which no query reaches the relay (the author set does not
    // change and nothing closes, so nothing has to be read again). The old loop re-queried every second or so.
    let settle_by = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut windows = Vec::new();
    loop {
        let before = queries.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = queries.load(std::sync::atomic::Ordering::SeqCst);
        windows.push(after - before);
        if after == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < settle_by,
            "the ingest keeps re-querying the relay after its catch-up (queries per 3 s: {windows:?})"
        );
    }
    assert_eq!(jobs(&mut conn).len() as u64, BACKLOG, "one job per event");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}
