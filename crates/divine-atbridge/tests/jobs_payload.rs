//! Issue 9 §5: the worker does not trust job rows. The event in an event job's payload is checked again (id and
//! signature through the one admission check, author = the job's account) before the handler writes anything.

use diesel::prelude::*;
use divine_atbridge::config::{CrosspostConfig, IdentityConfig};
use divine_atbridge::ingest::enqueue_event;
use divine_atbridge::jobs::handlers::Handlers;
use divine_atbridge::keys::KeyEncryptionKey;
use divine_atbridge::worker::Outcome;
use divine_atbridge::xrpc::{XrpcClient, XrpcConfig};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::schema::{nostr_tombstones, record_mappings};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::JobKind;
use nostr::prelude::*;
use std::sync::Arc;
use std::time::Duration;

fn handlers(db: divine_bridge_db::Db) -> Arc<Handlers> {
    let kek: Arc<divine_atbridge::keys::KeyRing> = Arc::new(
        KeyEncryptionKey::from_base64(&base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            [7u8; 32],
        ))
        .unwrap()
        .into(),
    );
    let identity = IdentityConfig {
        plc_url: "http://127.0.0.1:9".into(),
        pds_url: "http://127.0.0.1:9".into(),
        key_encryption_keys: Vec::new(),
        recovery_keys: vec![],
        email_domain: "bridge.test".into(),
        pds_admin_password: "admin-pass".into(),
    };
    let crosspost = CrosspostConfig {
        relays: vec![],
        cursor_overlap: Duration::from_secs(60),
        account_refresh: Duration::from_secs(60),
        authors_per_subscription: 250,
        ingest_shards: 1,
        ingest_lease: Duration::from_secs(30),
        media_allowed_hosts: vec![],
        media_allow_loopback: false,
        media_require_video_hash: false,
        media_timeout: Duration::from_secs(1),
        media_spool_dir: divine_atbridge::spool::default_spool_root(),
        media_budget_bytes: divine_atbridge::spool::DEFAULT_MEDIA_BUDGET_BYTES,
        backfill_max_events: 10,
        post_url_template: None,
        profile_url_template: None,
    };
    let xrpc = XrpcClient::new(&XrpcConfig::default()).unwrap();
    Arc::new(Handlers::new(db, xrpc, kek, identity, crosspost).unwrap())
}

/// Leases the single queued job and runs it through the production registry.
async fn run_one(tdb: &TestDb, h: &Arc<Handlers>) -> Outcome {
    let job = queue::lease(&mut tdb.conn(), "test", 1, Duration::from_secs(60))
        .unwrap()
        .pop()
        .expect("a queued job");
    let handler = h.registry().get(job.kind).unwrap();
    handler.handle(&job).await
}

fn writes(tdb: &TestDb) -> (i64, i64) {
    let mut c = tdb.conn();
    (
        nostr_tombstones::table.count().get_result(&mut c).unwrap(),
        record_mappings::table.count().get_result(&mut c).unwrap(),
    )
}

fn kind5(keys: &Keys, target: EventId) -> Event {
    EventBuilder::new(Kind::from(5u16), "")
        .tags([Tag::event(target)])
        .sign_with_keys(keys)
        .unwrap()
}

fn fail_code(outcome: Outcome) -> String {
    match outcome {
        Outcome::Fail { code, .. } => code.to_string(),
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_tampered_payload_event_is_refused_before_any_write() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tdb = TestDb::migrated("jobs_payload_tampered");
    let h = handlers(tdb.pool(2));
    let keys = Keys::generate();
    let event = kind5(&keys, EventId::all_zeros());
    enqueue_event(&mut tdb.conn(), &event, 0).unwrap().unwrap();
    // Someone with database access retargets the deletion at another event, keeping id and signature.
    diesel::sql_query(format!(
        "UPDATE jobs SET payload = jsonb_set(payload, '{{event,tags}}', '[[\"e\", \"{}\"]]')",
        "1".repeat(64)
    ))
    .execute(&mut tdb.conn())
    .unwrap();

    assert_eq!(fail_code(run_one(&tdb, &h).await), "job_event_unverified");
    assert_eq!(writes(&tdb), (0, 0), "nothing was written for the forged event");
}

#[tokio::test]
async fn a_payload_event_by_another_author_is_refused_before_any_write() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tdb = TestDb::migrated("jobs_payload_author");
    let h = handlers(tdb.pool(2));
    let author = Keys::generate();
    let account = Keys::generate().public_key().to_hex();
    let event = kind5(&author, EventId::all_zeros());
    // A validly signed event, but queued under another account.
    let job = NewJob::for_account(
        JobKind::DeletePost,
        &account,
        queue::keys::account(&account),
        serde_json::json!({ "event": serde_json::to_value(&event).unwrap() }),
    );
    queue::enqueue(&mut tdb.conn(), &job).unwrap().unwrap();

    assert_eq!(fail_code(run_one(&tdb, &h).await), "job_author_mismatch");
    assert_eq!(writes(&tdb), (0, 0), "nothing was written for the mismatched event");
}

#[tokio::test]
async fn an_untouched_payload_event_still_runs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tdb = TestDb::migrated("jobs_payload_ok");
    let h = handlers(tdb.pool(2));
    let keys = Keys::generate();
    enqueue_event(&mut tdb.conn(), &kind5(&keys, EventId::all_zeros()), 0)
        .unwrap()
        .unwrap();
    assert!(matches!(run_one(&tdb, &h).await, Outcome::Succeeded));
    assert_eq!(writes(&tdb), (1, 0), "the genuine deletion is remembered");
}

/// Issue 13 §3, no data migration for typed jobs: a row built exactly as ingest built it before typed jobs
/// (`NewJob::for_account` with a hand-written `{"event": …}` payload) is leased, decoded as `DeletePostArgs` and run.
#[tokio::test]
async fn a_job_queued_by_the_pre_typed_code_still_runs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tdb = TestDb::migrated("jobs_payload_old_row");
    let h = handlers(tdb.pool(2));
    let keys = Keys::generate();
    let event = kind5(&keys, EventId::all_zeros());
    let old = NewJob::for_account(
        JobKind::DeletePost,
        &keys.public_key().to_hex(),
        divine_atbridge::ingest::ordering_key_for(&event),
        serde_json::json!({ "event": serde_json::to_value(&event).unwrap() }),
    )
    .unique(format!("delete:{}", event.id.to_hex()));
    queue::enqueue(&mut tdb.conn(), &old).unwrap().unwrap();
    assert!(matches!(run_one(&tdb, &h).await, Outcome::Succeeded));
    assert_eq!(writes(&tdb), (1, 0), "the deletion is remembered");
    // The typed producer builds the same job: a second enqueue of the event is absorbed by the same unique key.
    assert_eq!(enqueue_event(&mut tdb.conn(), &event, 0).unwrap(), None);
}

/// Issue 11 §2, the account barrier through the production registry: a lifecycle job (provision) leased while a
/// post of its account is running retries `account_busy` before any provisioning step (no PLC call is attempted:
/// the PLC here is unreachable and would answer with another code); once the post finished it proceeds.
#[tokio::test]
async fn a_lifecycle_job_waits_for_a_running_job_of_its_account() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tdb = TestDb::migrated("jobs_payload_barrier");
    let h = handlers(tdb.pool(2));
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    enqueue_event(&mut tdb.conn(), &kind5(&keys, EventId::all_zeros()), 0)
        .unwrap()
        .unwrap();
    let running = queue::lease(&mut tdb.conn(), "test", 1, Duration::from_secs(60))
        .unwrap()
        .pop()
        .unwrap();
    queue::enqueue(
        &mut tdb.conn(),
        &divine_bridge_db::accounts::provision_job(&pk).unwrap(),
    )
    .unwrap()
    .unwrap();
    let provision = queue::lease(&mut tdb.conn(), "test", 1, Duration::from_secs(60))
        .unwrap()
        .pop()
        .unwrap();
    let handler = h.registry().get(JobKind::ProvisionAccount).unwrap();
    match handler.handle(&provision).await {
        Outcome::Retry { code, .. } => assert_eq!(code, divine_bridge_db::ErrorCode::AccountBusy),
        other => panic!("expected an account_busy retry, got {other:?}"),
    }
    queue::release(&mut tdb.conn(), "test", &[provision.lease()]).unwrap();
    queue::finish(&mut tdb.conn(), running.lease(), &queue::Finish::Succeeded).unwrap();
    // Past the barrier, provisioning itself runs (and fails on the missing account link), not account_busy.
    let code = match run_one(&tdb, &h).await {
        Outcome::Retry { code, .. } | Outcome::Fail { code, .. } => code.to_string(),
        other => format!("{other:?}"),
    };
    assert_ne!(code, "account_busy");
}
