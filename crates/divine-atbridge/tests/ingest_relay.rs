//! Ingest against real in-process relays (nostr-relay-builder) and real Postgres: accepted events become exactly one
//! job each even when delivered by two relays, refused authors produce none, the subscription follows opt-in changes
//! without a restart, and events published while the bridge was down are picked up from the cursor after restart.
//! Relay limits are real relay policies here: a relay that refuses filters with too many authors (chunked
//! subscriptions), one that closes the first subscriptions (CLOSED → counted, cursor held, retried), and one that
//! replays at most 5 stored events per REQ (truncated replay paged back).

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
    #[diesel(sql_type = BigInt)]
    source_epoch: i64,
}

fn jobs(conn: &mut PgConnection) -> Vec<JobRow> {
    diesel::sql_query(
        "SELECT kind, unique_key, ordering_key, extract(epoch from source_created_at)::bigint AS source_epoch \
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
    let mut keys: Vec<&str> = rows.iter().map(|r| r.ordering_key.as_str()).collect();
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
        assert_eq!(r.ordering_key, alice.public_key().to_hex());
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

#[test]
fn refuses_bad_signatures_future_events_and_other_kinds() {
    let keys = Keys::generate();
    let now = chrono::Utc::now();
    let ok = video(&keys, "fine");
    assert_eq!(ingest::check_event(&ok, now), Ok(()));

    let future = EventBuilder::new(Kind::from(22u16), "later")
        .custom_created_at(Timestamp::from(now.timestamp() as u64 + 11 * 60))
        .sign_with_keys(&keys)
        .unwrap();
    assert_eq!(ingest::check_event(&future, now).unwrap_err().reason(), "future_dated");
    let near_future = EventBuilder::new(Kind::from(22u16), "soon")
        .custom_created_at(Timestamp::from(now.timestamp() as u64 + 9 * 60))
        .sign_with_keys(&keys)
        .unwrap();
    assert!(
        ingest::check_event(&near_future, now).is_ok(),
        "9 minutes of skew is tolerated"
    );

    let mut forged: serde_json::Value = serde_json::to_value(&ok).unwrap();
    forged["content"] = serde_json::json!("tampered");
    let forged: Event = serde_json::from_value(forged).unwrap();
    assert_eq!(ingest::check_event(&forged, now).unwrap_err().reason(), "bad_signature");

    let note = EventBuilder::text_note("plain note").sign_with_keys(&keys).unwrap();
    assert_eq!(
        ingest::check_event(&note, now).unwrap_err().reason(),
        "unsupported_kind"
    );
}
