//! The reconciliation sweep (`reconcile`, issue 10 §2) against real in-process relays and real Postgres: it finds
//! what the live path missed — a back-dated event outside the live overlap, events never pushed (publish, delete,
//! profile), jobs that ended `retry_window_exhausted` — counts each by reason, and finds nothing in a healthy
//! system. One leader at a time: the advisory lock is exclusive and dies with its session.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use divine_atbridge::ingest::{self, IngestConfig};
use divine_atbridge::reconcile::{self, Leader, Reason, ReconcileConfig};
use divine_bridge_db::states::priority;
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::{records, JobKind};
use nostr_relay_builder::prelude::*;
use nostr_sdk::Client;
use std::time::Duration;
use tokio::sync::watch;

async fn relay(cap: usize) -> (LocalRelay, String) {
    let relay = LocalRelay::new(RelayBuilder::default().max_filter_limit(cap).default_filter_limit(cap));
    relay.run().await.unwrap();
    let url = relay.url().await.to_string();
    (relay, url)
}

fn opt_in(conn: &mut PgConnection, keys: &Keys) {
    diesel::sql_query(
        "INSERT INTO account_links (nostr_pubkey, handle, provisioning_state, crosspost_enabled) \
         VALUES ($1, $2, 'ready', true)",
    )
    .bind::<Text, _>(keys.public_key().to_hex())
    .bind::<Text, _>(format!("{}.test", &keys.public_key().to_hex()[..8]))
    .execute(conn)
    .unwrap();
}

async fn publish(url: &str, events: &[&Event]) {
    let client = Client::default();
    client.add_relay(url).await.unwrap();
    client.connect().await;
    for e in events {
        client.send_event(e).await.unwrap();
    }
    client.shutdown().await;
}

fn at(keys: &Keys, kind: u16, content: &str, tags: Vec<Tag>, created_at: u64) -> Event {
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags)
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .unwrap()
}

fn video_at(keys: &Keys, text: &str, created_at: u64) -> Event {
    at(keys, 22, text, vec![], created_at)
}

fn cfg(relays: Vec<String>, interval: Duration) -> ReconcileConfig {
    ReconcileConfig {
        relays,
        interval,
        window: Duration::from_secs(86_400),
        grace: Duration::from_secs(30),
        page_size: 500,
        authors_per_query: 250,
    }
}

fn has_job(conn: &mut PgConnection, unique: &str) -> bool {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM jobs WHERE unique_key = $1")
        .bind::<Text, _>(unique)
        .get_result(conn)
        .unwrap();
    n.n == 1
}

fn found_total(reason: &str) -> u64 {
    divine_atbridge::metrics::render()
        .lines()
        .filter(|l| l.starts_with("bridge_reconcile_found_total{") && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Done-when of issue 10 §2: with ingest running (300 s overlap), a video back-dated two hours is never delivered
/// by the live subscription; the sweep enqueues it within one interval and counts it as `missing_publish`. A video
/// the live path delivered is not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_dated_event_outside_the_overlap_is_found_within_one_interval() {
    divine_atbridge::metrics::install();
    let db = TestDb::migrated("reconcile_backdated");
    let mut conn = db.conn();
    let (_relay, url) = relay(500).await;
    let alice = Keys::generate();
    opt_in(&mut conn, &alice);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ingest_task = tokio::spawn(ingest::run(
        db.pool(3),
        IngestConfig::new(vec![url.clone()], Duration::from_secs(300), Duration::from_millis(200)),
        stop_rx.clone(),
    ));
    let interval = Duration::from_secs(3);
    let sweeper = tokio::spawn(reconcile::run(
        db.pool(3),
        db.url.clone(),
        cfg(vec![url.clone()], interval),
        stop_rx,
    ));
    // Let ingest subscribe and the first sweep (nothing to find) pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = found_total("missing_publish");

    let now = Timestamp::now().as_secs();
    let live = video_at(&alice, "live", now);
    let back_dated = video_at(&alice, "signed two hours before the upload finished", now - 7200);
    publish(&url, &[&live, &back_dated]).await;
    let published = tokio::time::Instant::now();
    let live_key = format!("publish:{}", live.id.to_hex());
    let late_key = format!("publish:{}", back_dated.id.to_hex());
    while !has_job(&mut conn, &late_key) && published.elapsed() < interval * 4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = published.elapsed();
    assert!(has_job(&mut conn, &late_key), "the back-dated video was never enqueued");
    assert!(
        took <= interval + Duration::from_secs(3),
        "found after {took:?}, more than one interval"
    );
    assert!(has_job(&mut conn, &live_key), "the live path delivered the live video");
    assert_eq!(
        found_total("missing_publish") - before,
        1,
        "only the back-dated video was missing"
    );
    stop_tx.send(true).unwrap();
    sweeper.await.unwrap();
    ingest_task.await.unwrap().unwrap();
}

/// Every reason is found once, through the existing constructors (unique keys, live priority), on two relays; a
/// second sweep over the same history finds nothing (the measurement of loss is 0 when healthy); a result recorded
/// after its job was purged is not re-enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_finds_each_reason_once_and_nothing_when_healthy() {
    let db = TestDb::migrated("reconcile_reasons");
    let mut conn = db.conn();
    let pool = db.pool(3);
    let (_a, url_a) = relay(3).await;
    let (_b, url_b) = relay(3).await;
    let alice = Keys::generate();
    let stranger = Keys::generate();
    opt_in(&mut conn, &alice);
    let now = Timestamp::now().as_secs();
    // Already enqueued by the live path.
    let seen = video_at(&alice, "seen", now - 4000);
    ingest::enqueue_event(&mut conn, &seen, priority::LIVE)
        .unwrap()
        .unwrap();
    // Never pushed: several pages on relay A (cap 3), one on B.
    let missed: Vec<Event> = (0..7u64)
        .map(|i| video_at(&alice, &format!("missed {i}"), now - 3000 - i))
        .collect();
    let only_b = video_at(&alice, "only on b", now - 5000);
    let target = video_at(&alice, "deleted later", now - 90_000); // outside the window itself
    let delete = at(&alice, 5, "", vec![Tag::event(target.id)], now - 2000);
    let profile = at(&alice, 0, r#"{"name":"alice"}"#, vec![], now - 1500);
    // Not opted in, and too young (inside the grace): never the sweep's.
    let foreign = video_at(&stranger, "not opted in", now - 3000);
    let young = video_at(&alice, "just posted", now);
    let mut on_a: Vec<&Event> = missed.iter().collect();
    on_a.extend([&seen, &delete, &profile, &foreign, &young]);
    publish(&url_a, &on_a).await;
    publish(&url_b, &[&only_b, &missed[0]]).await;
    // A job that gave up after its retry window.
    let exhausted = video_at(&alice, "pds was down for a day", now - 80_000);
    let exhausted_id = ingest::enqueue_event(&mut conn, &exhausted, priority::LIVE)
        .unwrap()
        .unwrap();
    diesel::sql_query(
        "UPDATE jobs SET state = 'failed', last_error_code = 'retry_window_exhausted', finished_at = now() WHERE id = $1",
    )
    .bind::<BigInt, _>(exhausted_id)
    .execute(&mut conn)
    .unwrap();

    let c = cfg(vec![url_a.clone(), url_b.clone()], Duration::from_secs(60));
    let (found, ok) = reconcile::sweep(&pool, &c).await;
    ok.unwrap();
    assert_eq!(found.get(Reason::MissingPublish), 8, "{found:?}");
    assert_eq!(found.get(Reason::MissingDelete), 1, "{found:?}");
    assert_eq!(found.get(Reason::MissingProfile), 1, "{found:?}");
    assert_eq!(found.get(Reason::RetryWindowExhausted), 1, "{found:?}");
    for e in missed.iter().chain([&only_b]) {
        assert!(has_job(&mut conn, &format!("publish:{}", e.id.to_hex())));
    }
    assert!(has_job(&mut conn, &format!("delete:{}", delete.id.to_hex())));
    assert!(has_job(&mut conn, &format!("profile:{}", profile.id.to_hex())));
    assert!(
        !has_job(&mut conn, &format!("publish:{}", foreign.id.to_hex())),
        "not opted in"
    );
    assert!(
        !has_job(&mut conn, &format!("publish:{}", young.id.to_hex())),
        "inside the grace: the live path's"
    );
    let state: Vec<(String, i16)> = divine_bridge_db::schema::jobs::table
        .filter(divine_bridge_db::schema::jobs::id.eq(exhausted_id))
        .select((
            divine_bridge_db::schema::jobs::state,
            divine_bridge_db::schema::jobs::priority,
        ))
        .load(&mut conn)
        .unwrap();
    assert_eq!(state[0].0, "queued", "re-driven");
    let kinds: Vec<(String, i16)> = divine_bridge_db::schema::jobs::table
        .select((
            divine_bridge_db::schema::jobs::kind,
            divine_bridge_db::schema::jobs::priority,
        ))
        .load(&mut conn)
        .unwrap();
    assert!(
        kinds.iter().all(|(_, p)| *p == priority::LIVE),
        "found events run at live priority"
    );
    assert!(kinds.iter().any(|(k, _)| k == JobKind::DeletePost.as_str()));

    // Healthy now: nothing to find.
    let (again, ok) = reconcile::sweep(&pool, &c).await;
    ok.unwrap();
    for r in Reason::ALL {
        assert_eq!(again.get(*r), 0, "{r:?} after a complete sweep: {again:?}");
    }

    // Job retention purged the delete job, but its tombstone records the result: not missing.
    records::put_tombstone(
        &mut conn,
        &records::Tombstone {
            target: target.id.to_hex(),
            nostr_pubkey: alice.public_key().to_hex(),
            delete_event_id: delete.id.to_hex(),
            deleted_at: chrono::Utc::now(),
            created_at: chrono::Utc::now(),
        },
    )
    .unwrap();
    diesel::sql_query("DELETE FROM jobs WHERE kind = 'delete_post'")
        .execute(&mut conn)
        .unwrap();
    let (after_purge, ok) = reconcile::sweep(&pool, &c).await;
    ok.unwrap();
    assert_eq!(after_purge.get(Reason::MissingDelete), 0, "recorded by its tombstone");
}

/// A relay that cannot be read makes the sweep incomplete (no last-success), but what the other relay had is still
/// enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_relay_makes_the_sweep_incomplete() {
    let db = TestDb::migrated("reconcile_relay_down");
    let mut conn = db.conn();
    let (_a, url_a) = relay(500).await;
    let alice = Keys::generate();
    opt_in(&mut conn, &alice);
    let missed = video_at(&alice, "missed", Timestamp::now().as_secs() - 3000);
    publish(&url_a, &[&missed]).await;
    // Nothing listens there.
    let dead = "ws://127.0.0.1:9".to_string();
    let (found, ok) = reconcile::sweep(&db.pool(2), &cfg(vec![url_a, dead], Duration::from_secs(60))).await;
    let err = ok.unwrap_err();
    assert_eq!(
        divine_bridge_db::Classified::code(&err).as_str(),
        "reconcile_relay_unavailable"
    );
    assert_eq!(found.get(Reason::MissingPublish), 1);
}

/// One leader at a time: a second session cannot take the lock; it can once the leader's session is gone — closed
/// or killed — and the killed leader notices it lost the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_the_lock_dies_with_its_session() {
    let db = TestDb::migrated("reconcile_leader");
    let first = Leader::try_acquire(&db.url).await.unwrap().expect("free lock");
    assert!(first.holds().await.unwrap());
    assert!(
        Leader::try_acquire(&db.url).await.unwrap().is_none(),
        "a second replica waits"
    );
    drop(first);
    let mut second = None;
    for _ in 0..50 {
        second = Leader::try_acquire(&db.url).await.unwrap();
        if second.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = second.expect("the lock is free once the leader's session closed");
    // Kill the leader's backend (only sessions of this test database).
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let mut admin = PgConnection::establish(db.admin_url()).unwrap();
    diesel::sql_query(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.objid = $1::oid AND a.datname = $2",
    )
    .bind::<BigInt, _>(reconcile::LOCK_KEY)
    .bind::<Text, _>(name)
    .execute(&mut admin)
    .unwrap();
    assert!(
        !second.holds().await.unwrap_or(false),
        "a killed leader knows it lost the lock"
    );
    let mut third = None;
    for _ in 0..50 {
        third = Leader::try_acquire(&db.url).await.unwrap();
        if third.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(third.is_some(), "another replica takes over");
}
