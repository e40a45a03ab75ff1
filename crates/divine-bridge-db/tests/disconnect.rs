//! Disconnect semantics of the account store (divine_bridge_db::accounts, "Disconnect semantics") against a real
//! Postgres: begin cancels everything and queues one job, repeats are idempotent, a leaving account is not followed
//! and cannot be enabled/opted in/moved by the worker, finish destroys keys and sessions once (a crashed and retried
//! finish is a no-op), and the handle stays taken until the release pass frees it after the grace period, the
//! tombstone (pubkey → DID) staying for audit.

use chrono::Utc;
use diesel::prelude::*;
use divine_bridge_db::accounts::{self, AccountError, OptIn};
use divine_bridge_db::audit::{self, Actor};
use divine_bridge_db::queue;
use divine_bridge_db::records::{self, AccountKeys, AccountSession};
use divine_bridge_db::schema::{account_keys, account_sessions, jobs};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::{Classified, ErrorCode, JobKind, ProvisioningState};
use std::time::Duration;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";

fn opt_in(conn: &mut PgConnection, pk: &str, handle: &str) -> Result<accounts::OptInResult, AccountError> {
    accounts::opt_in(
        conn,
        &OptIn {
            nostr_pubkey: pk.to_string(),
            handle: handle.to_string(),
            crosspost_enabled: true,
        },
    )
}

/// A ready account with sealed keys, a session and queued work of every kind.
fn ready_account(conn: &mut PgConnection) {
    opt_in(conn, A, "alice.example.com").unwrap();
    let now = Utc::now();
    records::insert_keys_once(
        conn,
        &AccountKeys {
            nostr_pubkey: A.into(),
            kek_id: "k1".into(),
            signing_key_sealed: vec![1; 48],
            rotation_key_sealed: vec![2; 48],
            password_sealed: vec![3; 48],
            signing_did_key: "did:key:zSigning".into(),
            rotation_did_key: "did:key:zRotation".into(),
            provision_state: None,
            created_at: now,
            updated_at: now,
            seal_generation: 0,
        },
    )
    .unwrap();
    accounts::mark_ready(conn, A, DID).unwrap();
    records::save_session(
        conn,
        &AccountSession {
            did: DID.into(),
            nostr_pubkey: A.into(),
            access_jwt_sealed: vec![4; 48],
            refresh_jwt_sealed: vec![5; 48],
            access_expires_at: None,
            refresh_expires_at: None,
            updated_at: now,
            kek_id: "k1".into(),
        },
    )
    .unwrap();
    for (kind, key) in [
        (JobKind::PublishPost, "publish:1"),
        (JobKind::DeletePost, "delete:1"),
        (JobKind::SyncProfile, "profile:1"),
    ] {
        // Jobs of the account under their own ordering keys (issue 11 §2): found through `payload.account`.
        let job = queue::NewJob::for_account(kind, A, format!("event:{key}"), serde_json::json!({})).unique(key);
        queue::enqueue(conn, &job).unwrap();
    }
}

fn job_states(conn: &mut PgConnection, pk: &str) -> Vec<(String, String, Option<String>)> {
    jobs::table
        .filter(jobs::payload.retrieve_as_text("account").eq(pk))
        .order(jobs::id)
        .select((jobs::kind, jobs::state, jobs::last_error_code))
        .load(conn)
        .unwrap()
}

fn key_rows(conn: &mut PgConnection) -> (i64, i64) {
    (
        account_keys::table.count().get_result(conn).unwrap(),
        account_sessions::table.count().get_result(conn).unwrap(),
    )
}

#[test]
fn begin_cancels_all_work_queues_one_job_and_is_idempotent() {
    let db = TestDb::migrated("disc_begin");
    let mut conn = db.conn();
    ready_account(&mut conn);

    let first = accounts::begin_disconnect(&mut conn, A).unwrap();
    assert_eq!(first.link.state().unwrap(), ProvisioningState::Disconnecting);
    assert!(!first.link.crosspost_enabled);
    let since = first.link.disconnected_at.expect("disconnected_at stamped");
    assert!(first.job_id.is_some());
    // The still-queued provisioning job and the publish, delete and profile jobs: all cancelled.
    for (kind, state, code) in job_states(&mut conn, A) {
        if kind == JobKind::DisconnectAccount.as_str() {
            assert_eq!(state, "queued");
        } else {
            assert_eq!(state, "cancelled", "{kind}");
            assert_eq!(code.as_deref(), Some(accounts::DISCONNECT_CODE.as_str()), "{kind}");
        }
    }

    let again = accounts::begin_disconnect(&mut conn, A).unwrap();
    assert_eq!(again.link.disconnected_at, Some(since), "first request time kept");
    assert_eq!(again.job_id, first.job_id, "the live job is left alone, not doubled");
    let disconnect_jobs = job_states(&mut conn, A)
        .into_iter()
        .filter(|(k, _, _)| k == JobKind::DisconnectAccount.as_str())
        .count();
    assert_eq!(disconnect_jobs, 1);
    let stones = accounts::tombstones(&mut conn, A).unwrap();
    assert_eq!(stones.len(), 1, "one open tombstone");
    assert_eq!(stones[0].did.as_deref(), Some(DID));
    assert_eq!(stones[0].handle, "alice.example.com");
    assert_eq!(stones[0].completed_at, None);
    assert_eq!(key_rows(&mut conn), (1, 1), "nothing is destroyed before the job ran");
}

#[test]
fn leaving_account_is_not_followed_and_cannot_be_revived_or_moved() {
    let db = TestDb::migrated("disc_fence");
    let mut conn = db.conn();
    ready_account(&mut conn);
    assert!(accounts::followed_pubkeys(&mut conn).unwrap().contains(A));
    accounts::begin_disconnect(&mut conn, A).unwrap();

    assert!(!accounts::followed_pubkeys(&mut conn).unwrap().contains(A));
    let e = accounts::enable(&mut conn, A).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccountDisconnected);
    let e = opt_in(&mut conn, A, "alice.example.com").unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccountDisconnected);
    accounts::disable(&mut conn, A).unwrap();
    accounts::suspend(&mut conn, A, "spam").unwrap();
    assert!(!accounts::mark_ready(&mut conn, A, DID).unwrap());
    assert!(!accounts::mark_failed(&mut conn, A, ErrorCode::PdsRejected, "y").unwrap());
    let link = accounts::get(&mut conn, A).unwrap().unwrap();
    assert_eq!(link.state().unwrap(), ProvisioningState::Disconnecting);
    // The handle stays taken.
    let e = opt_in(&mut conn, B, "alice.example.com").unwrap_err();
    assert_eq!(e.code(), ErrorCode::HandleTaken);
}

#[test]
fn finish_shreds_keys_once_and_a_retry_after_a_crash_is_a_no_op() {
    let db = TestDb::migrated("disc_finish");
    let mut conn = db.conn();
    ready_account(&mut conn);
    // Not requested: finish refuses to move the account (no key is destroyed).
    assert!(!accounts::finish_disconnect(&mut conn, A).unwrap());
    assert_eq!(key_rows(&mut conn), (1, 1));

    accounts::begin_disconnect(&mut conn, A).unwrap();
    assert!(accounts::finish_disconnect(&mut conn, A).unwrap());
    assert_eq!(key_rows(&mut conn), (0, 0), "sealed keys and sessions are gone");
    let link = accounts::get(&mut conn, A).unwrap().unwrap();
    assert_eq!(link.state().unwrap(), ProvisioningState::Disconnected);
    assert_eq!(link.did.as_deref(), Some(DID), "the DID is kept for audit");
    let stone = &accounts::tombstones(&mut conn, A).unwrap()[0];
    assert!(stone.completed_at.is_some());
    assert_eq!(stone.did.as_deref(), Some(DID));

    // The worker died after the commit, before finishing the job: the retry finds nothing to do.
    assert!(!accounts::finish_disconnect(&mut conn, A).unwrap());
    // A repeated request after the end queues nothing.
    let again = accounts::begin_disconnect(&mut conn, A).unwrap();
    assert_eq!(again.job_id, None);
    assert_eq!(again.link.state().unwrap(), ProvisioningState::Disconnected);
}

#[test]
fn failed_disconnect_job_is_redriven_by_a_repeated_request() {
    let db = TestDb::migrated("disc_redrive");
    let mut conn = db.conn();
    ready_account(&mut conn);
    accounts::begin_disconnect(&mut conn, A).unwrap();
    diesel::update(jobs::table.filter(jobs::kind.eq(JobKind::DisconnectAccount.as_str())))
        .set((jobs::state.eq("failed"), jobs::finished_at.eq(Utc::now())))
        .execute(&mut conn)
        .unwrap();
    let again = accounts::begin_disconnect(&mut conn, A).unwrap();
    assert!(again.job_id.is_some(), "the failed job is queued again");
    let (_, state, _) = job_states(&mut conn, A)
        .into_iter()
        .find(|(k, _, _)| k == JobKind::DisconnectAccount.as_str())
        .unwrap();
    assert_eq!(state, "queued");
}

/// Release periods with `disconnected` grace and unfinished opt-ins kept (a year).
fn after(disconnected: Duration) -> accounts::ReleaseAfter {
    accounts::ReleaseAfter {
        disconnected,
        unprovisioned: Duration::from_secs(365 * 24 * 3600),
    }
}

#[test]
fn handle_is_released_after_the_grace_period_and_the_tombstone_stays() {
    let db = TestDb::migrated("disc_release");
    let mut conn = db.conn();
    ready_account(&mut conn);
    accounts::begin_disconnect(&mut conn, A).unwrap();
    let grace = Duration::from_secs(3600);

    // Disconnecting (job not done): never released, whatever the age.
    diesel::update(divine_bridge_db::schema::account_links::table.find(A))
        .set(divine_bridge_db::schema::account_links::disconnected_at.eq(Utc::now() - chrono::Duration::days(2)))
        .execute(&mut conn)
        .unwrap();
    assert!(accounts::release_handles(&mut conn, &after(grace), &Actor::Service)
        .unwrap()
        .is_empty());
    accounts::finish_disconnect(&mut conn, A).unwrap();
    // Within the grace period: kept.
    assert!(
        accounts::release_handles(&mut conn, &after(Duration::from_secs(3 * 24 * 3600)), &Actor::Service)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        opt_in(&mut conn, B, "alice.example.com").unwrap_err().code(),
        ErrorCode::HandleTaken
    );

    assert_eq!(
        accounts::release_handles(&mut conn, &after(grace), &Actor::Service).unwrap(),
        vec![A.to_string()]
    );
    assert!(accounts::get(&mut conn, A).unwrap().is_none());
    let stones = accounts::tombstones(&mut conn, A).unwrap();
    assert_eq!(stones.len(), 1);
    assert_eq!(stones[0].did.as_deref(), Some(DID));
    assert!(stones[0].handle_released_at.is_some());
    let trail = audit::list(&mut conn, A, 10).unwrap();
    assert_eq!(trail[0].action, "release_handle");
    // A second pass has nothing to do.
    assert!(accounts::release_handles(&mut conn, &after(grace), &Actor::Service)
        .unwrap()
        .is_empty());

    // The handle is free for someone else; the old pubkey may come back as a new account (new DID).
    opt_in(&mut conn, B, "alice.example.com").unwrap();
    let back = opt_in(&mut conn, A, "alice2.example.com").unwrap();
    assert_eq!(back.link.did, None);
    assert_eq!(back.link.state().unwrap(), ProvisioningState::Pending);
    // …and is provisioned again: the old (succeeded) job gave the provisioning key up to a new queued one.
    let provision: Vec<String> = job_states(&mut conn, A)
        .into_iter()
        .filter(|(k, _, _)| k == JobKind::ProvisionAccount.as_str())
        .map(|(_, state, _)| state)
        .collect();
    assert!(provision.iter().any(|s| s == "queued"), "{provision:?}");
}

#[test]
fn an_opt_in_that_never_finished_provisioning_releases_its_handle_by_the_same_pass() {
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const D: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    let db = TestDb::migrated("unprov_release");
    let mut conn = db.conn();
    let hour = Duration::from_secs(3600);
    let after = accounts::ReleaseAfter {
        disconnected: Duration::from_secs(30 * 24 * 3600),
        unprovisioned: hour,
    };
    opt_in(&mut conn, A, "alice.example.com").unwrap(); // pending, never ran
    opt_in(&mut conn, B, "bob.example.com").unwrap(); // failed without a DID
    opt_in(&mut conn, C, "carol.example.com").unwrap(); // provisioning right now
    opt_in(&mut conn, D, "dave.example.com").unwrap(); // got its DID, then failed later
    let set = |conn: &mut PgConnection, sql: &str| diesel::sql_query(sql).execute(conn).unwrap();
    set(
        &mut conn,
        &format!("UPDATE account_links SET provisioning_state = 'failed' WHERE nostr_pubkey = '{B}'"),
    );
    set(
        &mut conn,
        &format!("UPDATE account_links SET provisioning_state = 'provisioning' WHERE nostr_pubkey = '{C}'"),
    );
    set(
        &mut conn,
        &format!("UPDATE jobs SET state = 'running', lease_owner = 'w1', lease_expires_at = now() + interval '5 minutes', lease_token = nextval('jobs_lease_token_seq') WHERE unique_key = 'provision:{C}'"),
    );
    set(
        &mut conn,
        &format!("UPDATE account_links SET provisioning_state = 'failed', did = '{DID}' WHERE nostr_pubkey = '{D}'"),
    );

    // Young links are kept, whatever their state.
    assert!(accounts::release_handles(&mut conn, &after, &Actor::Service)
        .unwrap()
        .is_empty());
    set(
        &mut conn,
        "UPDATE account_links SET created_at = now() - interval '2 hours'",
    );
    let mut released = accounts::release_handles(&mut conn, &after, &Actor::Service).unwrap();
    released.sort();
    assert_eq!(released, vec![A.to_string(), B.to_string()]);
    assert!(accounts::get(&mut conn, A).unwrap().is_none());
    assert!(accounts::get(&mut conn, C).unwrap().is_some(), "a worker is on it");
    assert!(accounts::get(&mut conn, D).unwrap().is_some(), "it has an identity");
    let trail = audit::list(&mut conn, A, 10).unwrap();
    assert_eq!(trail[0].action, "release_handle");
    assert_eq!(
        trail[0].reason.as_deref(),
        Some("provisioning never finished within the release period")
    );
    assert_eq!(
        job_states(&mut conn, A),
        vec![(
            JobKind::ProvisionAccount.as_str().to_string(),
            "cancelled".to_string(),
            Some("cancelled".to_string())
        )],
        "its queued provisioning is cancelled with it"
    );
    // The handle is free for someone else, and the pubkey may come back: its provisioning is re-driven.
    set(
        &mut conn,
        &format!("DELETE FROM account_links WHERE nostr_pubkey = '{D}'"),
    );
    opt_in(&mut conn, D, "alice.example.com").unwrap();
    let back = opt_in(&mut conn, A, "alice3.example.com").unwrap();
    assert_eq!(back.link.state().unwrap(), ProvisioningState::Pending);
    assert_eq!(job_states(&mut conn, A)[0].1, "queued");
    assert_eq!(
        accounts::release_handles(&mut conn, &after, &Actor::Service).unwrap(),
        Vec::<String>::new(),
        "the new links are young"
    );
}
