//! Ingest logs say which relay read they belong to (issue 14 §3, issue 13 §4), read as an operator's log pipeline
//! reads them: JSON lines (`LOG_FORMAT=json`) captured through tracing-subscriber's own JSON formatter, as
//! `job_logs.rs` does. An event delivered on the live subscription, an event paged in by the catch-up of a truncated
//! stored replay, and a page of a backfill each log inside a span naming the relay and the mode (`live`, `catchup`,
//! `backfill`); before, only live events had a span, so catch-up and backfill lines did not say what they were about.
//! Real in-process relays (nostr-relay-builder) and real Postgres.

use diesel::prelude::*;
use diesel::sql_types::Text;
use divine_atbridge::ingest::{self, IngestConfig};
use divine_bridge_db::testutil::logs::{self, Capture};
use divine_bridge_db::testutil::TestDb;
use nostr_relay_builder::prelude::*;
use nostr_sdk::Client;
use std::time::Duration;
use tokio::sync::watch;

fn capture() -> &'static Capture {
    logs::capture("warn,divine_atbridge=debug")
}

/// The captured lines whose current span names `relay`.
fn lines_of(relay: &str) -> Vec<serde_json::Value> {
    capture()
        .lines()
        .into_iter()
        .filter(|l| l["span"]["relay"] == relay)
        .collect()
}

/// A relay that returns at most `cap` stored events per request (like a relay's `max_limit`).
async fn capped_relay(cap: usize) -> (LocalRelay, String) {
    let relay = LocalRelay::new(RelayBuilder::default().max_filter_limit(cap).default_filter_limit(cap));
    relay.run().await.unwrap();
    let url = relay.url().await.to_string();
    (relay, url)
}

async fn publisher(url: &str) -> Client {
    let client = Client::default();
    client.add_relay(url).await.unwrap();
    client.connect().await;
    client
}

fn video_at(keys: &Keys, text: &str, created_at: u64) -> Event {
    EventBuilder::new(Kind::from(22u16), text)
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .unwrap()
}

fn opt_in(conn: &mut PgConnection, keys: &Keys, handle: &str) {
    diesel::sql_query(
        "INSERT INTO account_links (nostr_pubkey, handle, provisioning_state, crosspost_enabled) VALUES ($1, $2, 'ready', true)",
    )
    .bind::<Text, _>(keys.public_key().to_hex())
    .bind::<Text, _>(handle)
    .execute(conn)
    .unwrap();
}

fn job_count(conn: &mut PgConnection) -> i64 {
    use diesel::dsl::sql;
    diesel::select(sql::<diesel::sql_types::BigInt>("(SELECT count(*) FROM jobs)"))
        .get_result(conn)
        .unwrap()
}

async fn wait_for_jobs(conn: &mut PgConnection, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while job_count(conn) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} jobs",
            job_count(conn)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_catch_up_lines_carry_relay_chunk_and_mode() {
    capture();
    let db = TestDb::migrated("ingest_logs_live");
    let mut conn = db.conn();
    // 5 stored events per REQ: the stored replay of 12 events is truncated, so ingest pages back (catch-up).
    let (_relay, url) = capped_relay(5).await;
    let alice = Keys::generate();
    opt_in(&mut conn, &alice, "logged.test");
    let client = publisher(&url).await;
    let now = Timestamp::now().as_secs();
    for i in 0..12u64 {
        client
            .send_event(&video_at(&alice, &format!("backlog {i}"), now - 2 * i))
            .await
            .unwrap();
    }
    let mut cfg = IngestConfig::new(vec![url.clone()], Duration::from_secs(300), Duration::from_millis(200));
    cfg.replay_truncation_hint = 5;
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(ingest::run(db.pool(4), cfg, rx));
    wait_for_jobs(&mut conn, 12).await;
    let live = video_at(&alice, "live", Timestamp::now().as_secs());
    client.send_event(&live).await.unwrap();
    wait_for_jobs(&mut conn, 13).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();

    let lines = lines_of(&url);
    let enqueued: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "event enqueued")
        .collect();
    assert_eq!(
        enqueued.len(),
        13,
        "every enqueued event logs inside a span naming its relay: {lines:#?}"
    );
    for line in &enqueued {
        let span = &line["span"];
        assert_eq!(span["name"], "relay_subscription", "{line}");
        assert!(span["shard"].is_u64() && span["chunk"].is_u64(), "{line}");
        assert!(span["mode"] == "live" || span["mode"] == "catchup", "{line}");
    }
    let caught_up = enqueued.iter().filter(|l| l["span"]["mode"] == "catchup").count();
    assert!(
        caught_up >= 1,
        "the events only the catch-up read log with mode=catchup: {enqueued:#?}"
    );
    let live_line = enqueued
        .iter()
        .find(|l| l["fields"]["event_id"] == live.id.to_hex())
        .expect("the live event's line");
    assert_eq!(live_line["span"]["mode"], "live", "{live_line}");
    let truncated = lines
        .iter()
        .find(|l| l["fields"]["message"] == "stored replay may be truncated; paging back")
        .expect("the catch-up's first line");
    assert_eq!(truncated["span"]["mode"], "catchup", "{truncated}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_pages_log_inside_a_span_naming_relay_and_mode() {
    capture();
    let db = TestDb::migrated("ingest_logs_backfill");
    let (_relay, url) = capped_relay(5).await;
    let alice = Keys::generate();
    let client = publisher(&url).await;
    let now = Timestamp::now().as_secs();
    for i in 0..8u64 {
        client
            .send_event(&video_at(&alice, &format!("old {i}"), now - 100 - i))
            .await
            .unwrap();
    }
    client.shutdown().await;
    let n = ingest::backfill(
        &db.pool(2),
        std::slice::from_ref(&url),
        &alice.public_key().to_hex(),
        1000,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(n, 8);

    let pages: Vec<serde_json::Value> = lines_of(&url)
        .into_iter()
        .filter(|l| l["fields"]["message"] == "relay history page read")
        .collect();
    assert!(pages.len() >= 2, "8 events, 5 per page: {pages:#?}");
    for page in &pages {
        assert_eq!(page["span"]["name"], "relay_history", "{page}");
        assert_eq!(page["span"]["mode"], "backfill", "{page}");
    }
}
