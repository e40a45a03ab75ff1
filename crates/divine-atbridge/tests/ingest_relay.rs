//! Ingest against real in-process relays (nostr-relay-builder) and real Postgres: accepted events become exactly one
//! job each even when delivered by two relays, refused authors produce none, the subscription follows opt-in changes
//! without a restart, and events published while the bridge was down are picked up from the cursor after restart.

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
    let (tx, rx) = watch::channel(false);
    let cfg = IngestConfig {
        relays: urls,
        cursor_overlap: Duration::from_secs(300),
        account_refresh: Duration::from_millis(200),
    };
    let handle = tokio::spawn(ingest::run(db.pool(4), cfg, rx));
    (tx, handle)
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
