//! History import (`ingest::backfill`) against several real in-process relays (nostr-relay-builder) and real
//! Postgres: relays of different densities that each return only a few events per request, so the import takes
//! many pages per relay. Every event of every relay becomes exactly one job, at backfill priority, oldest first.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, SmallInt, Text};
use divine_atbridge::ingest;
use divine_bridge_db::states::priority;
use divine_bridge_db::testutil::TestDb;
use nostr_relay_builder::prelude::*;
use nostr_sdk::Client;
use std::collections::HashSet;
use std::time::Duration;

/// A relay that returns at most `cap` stored events per request (like a relay's `max_limit`).
async fn capped_relay(cap: usize) -> (LocalRelay, String) {
    let relay = LocalRelay::new(RelayBuilder::default().max_filter_limit(cap).default_filter_limit(cap));
    relay.run().await.unwrap();
    let url = relay.url().await.to_string();
    (relay, url)
}

async fn publish_to(url: &str, events: &[Event]) {
    let client = Client::default();
    client.add_relay(url).await.unwrap();
    client.connect().await;
    for e in events {
        client.send_event(e).await.unwrap();
    }
    client.shutdown().await;
}

fn video_at(keys: &Keys, text: &str, created_at: u64) -> Event {
    EventBuilder::new(Kind::from(22u16), text)
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .unwrap()
}

#[derive(QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = Text)]
    unique_key: String,
    #[diesel(sql_type = SmallInt)]
    priority: i16,
    #[diesel(sql_type = BigInt)]
    source_epoch: i64,
}

fn jobs(conn: &mut PgConnection) -> Vec<Row> {
    diesel::sql_query(
        "SELECT unique_key, priority, extract(epoch from source_created_at)::bigint AS source_epoch FROM jobs ORDER BY id",
    )
    .load(conn)
    .unwrap()
}

/// Relay A is dense (40 events one second apart), relay B sparse (5 events 10 s apart over the same span, two of
/// them also on A), relay C holds a single old event, and every relay returns at most 5 events per request. A walk
/// that continued all relays from the oldest event of the merged page would jump from A's fifth-newest event to
/// B's fifth-newest and lose the 30 events of A in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_pages_each_relay_to_the_end_across_densities() {
    let db = TestDb::migrated("backfill_relays");
    let mut conn = db.conn();
    let alice = Keys::generate();
    let now = Timestamp::now().as_secs();
    let (_a, url_a) = capped_relay(5).await;
    let (_b, url_b) = capped_relay(5).await;
    let (_c, url_c) = capped_relay(5).await;
    let dense: Vec<Event> = (0..40u64)
        .map(|i| video_at(&alice, &format!("dense {i}"), now - 100 - i))
        .collect();
    let mut sparse: Vec<Event> = (0..5u64)
        .map(|i| video_at(&alice, &format!("sparse {i}"), now - 100 - 10 * i - 5))
        .collect();
    // Two events on both A and B: one job each.
    sparse.push(dense[3].clone());
    sparse.push(dense[25].clone());
    let old = vec![video_at(&alice, "old", now - 86_400 * 365)];
    publish_to(&url_a, &dense).await;
    publish_to(&url_b, &sparse).await;
    publish_to(&url_c, &old).await;

    let mut expected: HashSet<String> = HashSet::new();
    for e in dense.iter().chain(&sparse).chain(&old) {
        expected.insert(format!("publish:{}", e.id.to_hex()));
    }
    assert_eq!(expected.len(), 46);

    let relays = vec![url_a, url_b, url_c];
    let n = ingest::backfill(
        &db.pool(2),
        &relays,
        &alice.public_key().to_hex(),
        1000,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let rows = jobs(&mut conn);
    let got: HashSet<String> = rows.iter().map(|r| r.unique_key.clone()).collect();
    let missing: Vec<&String> = expected.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} of 46 events not imported: {missing:?}",
        missing.len()
    );
    assert_eq!(n, 46, "one new job per distinct event");
    assert_eq!(rows.len(), 46, "no duplicates for events on two relays");
    assert!(rows.iter().all(|r| r.priority == priority::BACKFILL));
    let times: Vec<i64> = rows.iter().map(|r| r.source_epoch).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "enqueued oldest first: {times:?}"
    );

    // Importing again adds nothing (unique keys).
    let again = ingest::backfill(
        &db.pool(2),
        &relays,
        &alice.public_key().to_hex(),
        1000,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(again, 0);
}

/// `max_events` keeps the newest events across relays, even when the newest ones are on a relay that needs several
/// pages to reach them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_keeps_the_newest_max_events_over_several_pages() {
    let db = TestDb::migrated("backfill_max");
    let mut conn = db.conn();
    let bob = Keys::generate();
    let now = Timestamp::now().as_secs();
    let (_a, url_a) = capped_relay(4).await;
    let (_b, url_b) = capped_relay(4).await;
    // A: 12 events at now-100..now-111; B: 12 older events at now-1000..now-1011.
    let newer: Vec<Event> = (0..12u64)
        .map(|i| video_at(&bob, &format!("new {i}"), now - 100 - i))
        .collect();
    let older: Vec<Event> = (0..12u64)
        .map(|i| video_at(&bob, &format!("old {i}"), now - 1000 - i))
        .collect();
    publish_to(&url_a, &newer).await;
    publish_to(&url_b, &older).await;
    let n = ingest::backfill(
        &db.pool(2),
        &[url_b, url_a],
        &bob.public_key().to_hex(),
        14,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(n, 14);
    let got: HashSet<String> = jobs(&mut conn).into_iter().map(|r| r.unique_key).collect();
    for e in &newer {
        assert!(
            got.contains(&format!("publish:{}", e.id.to_hex())),
            "every newer event kept"
        );
    }
    for e in &older[..2] {
        assert!(
            got.contains(&format!("publish:{}", e.id.to_hex())),
            "the two newest older events fill the rest"
        );
    }
}
