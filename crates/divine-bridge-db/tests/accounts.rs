//! The account_links store against a real Postgres: opt-in writes link + provisioning job atomically and is
//! idempotent, handle clashes, disable cancels only that account's queued work, enable re-drives provisioning, the
//! worker's fenced transitions, the operator's reset of failed links, and the cross-post status derived from
//! record_mappings + jobs for every status.

use chrono::Utc;
use diesel::prelude::*;
use divine_bridge_db::accounts::{self, AccountError, OptIn, OptInOutcome, PublishStatus};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::records::{self, RecordMapping};
use divine_bridge_db::schema::jobs;
use divine_bridge_db::states::priority;
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::{Classified, ErrorCode, JobKind, ProvisioningState, RecordState};

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn req(pk: &str, handle: &str) -> OptIn {
    OptIn {
        nostr_pubkey: pk.to_string(),
        handle: handle.to_string(),
        crosspost_enabled: true,
    }
}

#[derive(Debug, Queryable)]
struct JobFacts {
    _id: i64, // Queryable maps by position; the tests compare kind, key and state
    kind: String,
    ordering_key: String,
    unique_key: Option<String>,
    payload: serde_json::Value,
    state: String,
    priority: i16,
}

fn jobs_of(conn: &mut PgConnection, key: &str) -> Vec<JobFacts> {
    jobs::table
        .filter(jobs::ordering_key.eq(key))
        .order(jobs::id)
        .select((
            jobs::id,
            jobs::kind,
            jobs::ordering_key,
            jobs::unique_key,
            jobs::payload,
            jobs::state,
            jobs::priority,
        ))
        .load(conn)
        .unwrap()
}

fn link_count(conn: &mut PgConnection) -> i64 {
    divine_bridge_db::schema::account_links::table
        .count()
        .get_result(conn)
        .unwrap()
}

/// Sets a job's state directly (respecting the table's lease/finished constraints) to simulate worker outcomes.
fn force_job(conn: &mut PgConnection, unique_key: &str, state: &str, attempt: i32, code: Option<&str>) {
    let sql = match state {
        "running" => "UPDATE jobs SET state = 'running', attempt = $2, last_error_code = $3, lease_owner = 'w1', \
                      lease_token = nextval('jobs_lease_token_seq'), lease_expires_at = now() + interval '1 minute', finished_at = NULL WHERE unique_key = $1"
            .to_string(),
        "queued" => "UPDATE jobs SET state = 'queued', attempt = $2, last_error_code = $3, lease_owner = NULL, \
                     lease_token = NULL, lease_expires_at = NULL, finished_at = NULL WHERE unique_key = $1"
            .to_string(),
        terminal => format!(
            "UPDATE jobs SET state = '{terminal}', attempt = $2, last_error_code = $3, lease_owner = NULL, \
             lease_token = NULL, lease_expires_at = NULL, finished_at = now() WHERE unique_key = $1"
        ),
    };
    let n = diesel::sql_query(sql)
        .bind::<diesel::sql_types::Text, _>(unique_key)
        .bind::<diesel::sql_types::Integer, _>(attempt)
        .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(code)
        .execute(conn)
        .unwrap();
    assert_eq!(n, 1, "job {unique_key} exists");
}

fn publish_job(conn: &mut PgConnection, pk: &str, event_id: &str) -> i64 {
    queue::enqueue(
        conn,
        &NewJob::for_account(
            JobKind::PublishPost,
            pk,
            queue::keys::event(event_id),
            serde_json::json!({"id": event_id}),
        )
        .unique(format!("publish:{event_id}")),
    )
    .unwrap()
    .expect("new job")
}

fn job_state(conn: &mut PgConnection, id: i64) -> String {
    queue::get(conn, id).unwrap().unwrap().state.to_string()
}

#[test]
fn opt_in_writes_link_and_one_provisioning_job() {
    let db = TestDb::migrated("acc_optin");
    let mut c = db.conn();
    let r = accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    assert_eq!(r.outcome, OptInOutcome::Created);
    assert_eq!(r.link.nostr_pubkey, A);
    assert_eq!(r.link.handle, "alice.divine.test");
    assert_eq!(r.link.state().unwrap(), ProvisioningState::Pending);
    assert!(r.link.crosspost_enabled);
    assert_eq!(r.link.did, None);

    let jobs = jobs_of(&mut c, A);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let j = &jobs[0];
    assert_eq!(j.kind, "provision_account");
    assert_eq!(j.ordering_key, A);
    assert_eq!(j.unique_key.as_deref(), Some(format!("provision:{A}").as_str()));
    assert_eq!(j.payload, serde_json::json!({"nostr_pubkey": A, "account": A}));
    assert_eq!(j.state, "queued");
    assert_eq!(j.priority, priority::ACCOUNT);

    let got = accounts::get(&mut c, A).unwrap().unwrap();
    assert_eq!(got, r.link);
    assert_eq!(
        accounts::get_by_handle(&mut c, "alice.divine.test").unwrap().unwrap(),
        r.link
    );
    assert!(accounts::get(&mut c, B).unwrap().is_none());
}

#[test]
fn opt_in_is_atomic_when_the_job_cannot_be_written() {
    let db = TestDb::migrated("acc_atomic");
    let mut c = db.conn();
    diesel::sql_query(
        "CREATE FUNCTION refuse_jobs() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'jobs refused by test'; END $$",
    )
    .execute(&mut c)
    .unwrap();
    diesel::sql_query("CREATE TRIGGER refuse BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse_jobs()")
        .execute(&mut c)
        .unwrap();
    let err = accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap_err();
    assert!(matches!(err, AccountError::Db(_)), "{err:?}");
    assert_eq!(link_count(&mut c), 0, "the link rolled back with its job");

    diesel::sql_query("DROP TRIGGER refuse ON jobs")
        .execute(&mut c)
        .unwrap();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    assert_eq!(link_count(&mut c), 1);
    assert_eq!(jobs_of(&mut c, A).len(), 1);
}

#[test]
fn repeated_opt_in_is_idempotent() {
    let db = TestDb::migrated("acc_repeat");
    let mut c = db.conn();
    let first = accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    let second = accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    assert_eq!(second.outcome, OptInOutcome::Existing);
    assert_eq!(second.link, first.link);
    assert_eq!(jobs_of(&mut c, A).len(), 1);
}

#[test]
fn concurrent_opt_ins_of_one_pubkey_write_one_link_and_one_job() {
    let db = TestDb::migrated("acc_concurrent");
    let url = db.url.clone();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = PgConnection::establish(&url).unwrap();
                accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap().outcome
            })
        })
        .collect();
    let outcomes: Vec<OptInOutcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == OptInOutcome::Created).count(),
        1,
        "{outcomes:?}"
    );
    let mut c = db.conn();
    assert_eq!(link_count(&mut c), 1);
    assert_eq!(jobs_of(&mut c, A).len(), 1);
}

#[test]
fn handle_clashes_are_refused() {
    let db = TestDb::migrated("acc_clash");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();

    let taken = accounts::opt_in(&mut c, &req(B, "alice.divine.test")).unwrap_err();
    assert!(matches!(&taken, AccountError::HandleTaken { handle } if handle == "alice.divine.test"));
    assert_eq!(taken.code(), ErrorCode::HandleTaken);
    assert!(accounts::get(&mut c, B).unwrap().is_none());
    assert!(jobs_of(&mut c, B).is_empty(), "no job for a refused opt-in");

    let mismatch = accounts::opt_in(&mut c, &req(A, "other.divine.test")).unwrap_err();
    assert!(matches!(&mismatch, AccountError::HandleMismatch { existing } if existing == "alice.divine.test"));
    assert_eq!(mismatch.code(), ErrorCode::HandleMismatch);
    assert_eq!(accounts::get(&mut c, A).unwrap().unwrap().handle, "alice.divine.test");

    // Under a race the unique constraint still decides: a different pubkey racing for the handle loses.
    let url = db.url.clone();
    let racers: Vec<_> = ["c", "d", "e", "f"]
        .into_iter()
        .map(|ch| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = PgConnection::establish(&url).unwrap();
                accounts::opt_in(&mut c, &req(&ch.repeat(64), "race.divine.test")).map(|_| ())
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code() == ErrorCode::HandleTaken));
}

#[test]
fn disable_cancels_only_this_accounts_queued_publishing_and_keeps_deletes_and_profiles() {
    let db = TestDb::migrated("acc_disable");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    accounts::opt_in(&mut c, &req(B, "bob.divine.test")).unwrap();
    let a1 = publish_job(&mut c, A, &"1".repeat(64));
    let a2 = publish_job(&mut c, A, &"2".repeat(64));
    let a_profile = queue::enqueue(
        &mut c,
        &NewJob::for_account(JobKind::SyncProfile, A, queue::keys::profile(A), serde_json::json!({}))
            .unique(format!("profile:{}", "3".repeat(64))),
    )
    .unwrap()
    .unwrap();
    let a_delete = queue::enqueue(
        &mut c,
        &NewJob::new(JobKind::DeletePost, A, serde_json::json!({})).unique(format!("delete:{}", "6".repeat(64))),
    )
    .unwrap()
    .unwrap();
    let a_running = publish_job(&mut c, A, &"5".repeat(64));
    force_job(&mut c, &format!("publish:{}", "5".repeat(64)), "running", 1, None);
    let a_backfill = queue::enqueue(&mut c, &accounts::backfill_job(A).unwrap())
        .unwrap()
        .unwrap();
    let b1 = publish_job(&mut c, B, &"4".repeat(64));

    let d = accounts::disable(&mut c, A).unwrap();
    assert_eq!(d.link.state().unwrap(), ProvisioningState::Disabled);
    assert!(!d.link.crosspost_enabled);
    let disabled_at = d.link.disabled_at.expect("disabled_at set");
    assert_eq!(d.cancelled_jobs, 3, "2 queued publishes + the queued backfill");

    for id in [a1, a2, a_backfill] {
        let j = queue::get(&mut c, id).unwrap().unwrap();
        assert_eq!(j.state, "cancelled");
        assert_eq!(j.last_error_code.as_deref(), Some(accounts::DISABLE_CODE.as_str()));
    }
    // A paused account's deletes and profile changes are still honoured.
    assert_eq!(job_state(&mut c, a_profile), "queued");
    assert_eq!(job_state(&mut c, a_delete), "queued");
    let running = queue::get(&mut c, a_running).unwrap().unwrap();
    assert_eq!(running.state, "running", "a publish under way finishes");
    assert!(running.cancel_requested_at.is_none());
    assert_eq!(job_state(&mut c, b1), "queued", "other accounts are untouched");
    let provision = jobs_of(&mut c, A)
        .into_iter()
        .find(|j| j.kind == "provision_account")
        .unwrap();
    assert_eq!(provision.state, "queued", "provisioning is left alone");
    assert_eq!(
        accounts::get(&mut c, B).unwrap().unwrap().state().unwrap(),
        ProvisioningState::Pending
    );

    // Repeat: still disabled, the first disabled_at is kept.
    let again = accounts::disable(&mut c, A).unwrap();
    assert_eq!(again.link.disabled_at, Some(disabled_at));
    assert_eq!(again.cancelled_jobs, 0);

    assert!(matches!(
        accounts::disable(&mut c, &"9".repeat(64)),
        Err(AccountError::NotFound)
    ));
}

#[test]
fn operator_reset_only_touches_failed_links() {
    let db = TestDb::migrated("acc_reset");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    assert!(!accounts::reset_failed(&mut c, A).unwrap(), "pending: nothing to reset");
    assert!(accounts::mark_failed(&mut c, A, ErrorCode::PdsRejected, "HTTP 400").unwrap());
    assert!(accounts::reset_failed(&mut c, A).unwrap());
    let l = accounts::get(&mut c, A).unwrap().unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Pending);
    assert_eq!((l.provisioning_error, l.provisioning_error_detail), (None, None));
    accounts::disable(&mut c, A).unwrap();
    assert!(
        !accounts::reset_failed(&mut c, A).unwrap(),
        "a disabled link stays disabled"
    );
    assert!(!accounts::reset_failed(&mut c, B).unwrap(), "unknown pubkey");
}

#[test]
fn worker_transitions_never_leave_disabled() {
    let db = TestDb::migrated("acc_fence");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    assert!(accounts::mark_provisioning(&mut c, A).unwrap());
    assert_eq!(
        accounts::get(&mut c, A).unwrap().unwrap().state().unwrap(),
        ProvisioningState::Provisioning
    );
    assert!(accounts::mark_failed(&mut c, A, ErrorCode::PlcRejected, "bad op").unwrap());
    let l = accounts::get(&mut c, A).unwrap().unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Failed);
    assert_eq!(l.provisioning_error.as_deref(), Some("plc_rejected"));
    assert_eq!(l.provisioning_error_detail.as_deref(), Some("bad op"));

    accounts::disable(&mut c, A).unwrap();
    assert!(!accounts::mark_provisioning(&mut c, A).unwrap());
    assert!(!accounts::mark_ready(&mut c, A, "did:plc:aaaa").unwrap());
    let l = accounts::get(&mut c, A).unwrap().unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Disabled);
    assert_eq!(
        l.did.as_deref(),
        Some("did:plc:aaaa"),
        "the DID is kept under a disabled account"
    );
    assert_eq!(accounts::resolve_handle(&mut c, "alice.divine.test").unwrap(), None);
    assert_eq!(
        accounts::get_by_did(&mut c, "did:plc:aaaa")
            .unwrap()
            .unwrap()
            .nostr_pubkey,
        A
    );

    // Enable goes straight to ready (it has a DID) and imports history.
    let l = accounts::enable(&mut c, A).unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Ready);
    assert_eq!(l.provisioning_error, None);
    assert_eq!(
        accounts::resolve_handle(&mut c, "alice.divine.test")
            .unwrap()
            .as_deref(),
        Some("did:plc:aaaa")
    );

    // Another account cannot claim the same DID.
    accounts::opt_in(&mut c, &req(B, "bob.divine.test")).unwrap();
    let e = accounts::mark_ready(&mut c, B, "did:plc:aaaa").unwrap_err();
    assert!(e.is_unique_violation(), "{e:?}");
    assert!(!accounts::mark_ready(&mut c, &"9".repeat(64), "did:plc:zzzz").unwrap());
}

#[test]
fn enable_redrives_provisioning_when_needed() {
    let db = TestDb::migrated("acc_enable");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    let provision_key = format!("provision:{A}");

    // Already on and pending: enable is a no-op (no backfill, no state change).
    let before = accounts::get(&mut c, A).unwrap().unwrap();
    let same = accounts::enable(&mut c, A).unwrap();
    assert_eq!(same, before);
    assert_eq!(jobs_of(&mut c, A).len(), 1);

    // Provisioning failed permanently: enable → pending, error cleared, the same job row queued again.
    force_job(&mut c, &provision_key, "failed", 3, Some("plc_rejected"));
    accounts::mark_failed(&mut c, A, ErrorCode::PlcRejected, "bad op").unwrap();
    let l = accounts::enable(&mut c, A).unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Pending);
    assert_eq!(l.provisioning_error, None);
    assert_eq!(l.provisioning_error_detail, None);
    let jobs = jobs_of(&mut c, A);
    let provisions: Vec<_> = jobs.iter().filter(|j| j.kind == "provision_account").collect();
    assert_eq!(provisions.len(), 1, "re-driven in place, not duplicated");
    assert_eq!(provisions[0].state, "queued");
    let backfills: Vec<_> = jobs.iter().filter(|j| j.kind == "backfill_author").collect();
    assert_eq!(backfills.len(), 1);
    assert_eq!(backfills[0].priority, priority::BACKFILL);
    assert_eq!(
        backfills[0].unique_key.as_deref(),
        Some(format!("backfill:{A}").as_str())
    );

    // Disabled before provisioning finished (job ineligible, no DID): enable re-drives it too.
    force_job(&mut c, &provision_key, "ineligible", 1, Some("account_disabled"));
    accounts::disable(&mut c, A).unwrap();
    let l = accounts::enable(&mut c, A).unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Pending);
    assert!(l.crosspost_enabled);
    assert_eq!(l.disabled_at, None);
    let provision = jobs_of(&mut c, A)
        .into_iter()
        .find(|j| j.kind == "provision_account")
        .unwrap();
    assert_eq!(provision.state, "queued");

    // A provisioned account (DID, job succeeded): enable after disable → ready, provisioning not re-run.
    force_job(&mut c, &provision_key, "succeeded", 1, None);
    assert!(accounts::mark_ready(&mut c, A, "did:plc:alice").unwrap());
    accounts::disable(&mut c, A).unwrap();
    let l = accounts::enable(&mut c, A).unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Ready);
    let provision = jobs_of(&mut c, A)
        .into_iter()
        .find(|j| j.kind == "provision_account")
        .unwrap();
    assert_eq!(provision.state, "succeeded");

    assert!(matches!(
        accounts::enable(&mut c, &"9".repeat(64)),
        Err(AccountError::NotFound)
    ));
}

/// Issue 10: what the pause skipped runs after enable — publish jobs cancelled by disable (their unique key would
/// make a re-enqueue a no-op) and publish jobs that ran while paused and ended `ineligible account_disabled` — and
/// nothing else: other accounts' jobs, jobs cancelled or ineligible for other reasons stay as they are.
#[test]
fn enable_requeues_what_the_pause_skipped_and_nothing_else() {
    let db = TestDb::migrated("acc_enable_requeue");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    accounts::opt_in(&mut c, &req(B, "bob.divine.test")).unwrap();
    accounts::mark_ready(&mut c, A, "did:plc:alice").unwrap();
    accounts::mark_ready(&mut c, B, "did:plc:bob").unwrap();
    let queued_at_disable = publish_job(&mut c, A, &"1".repeat(64));
    accounts::disable(&mut c, A).unwrap();
    accounts::disable(&mut c, B).unwrap();
    assert_eq!(job_state(&mut c, queued_at_disable), "cancelled");
    // Posted while paused: the worker's gate ended it ineligible account_disabled.
    let posted_while_paused = publish_job(&mut c, A, &"2".repeat(64));
    force_job(
        &mut c,
        &format!("publish:{}", "2".repeat(64)),
        "ineligible",
        1,
        Some("account_disabled"),
    );
    // Skipped for other reasons: stay.
    let superseded = publish_job(&mut c, A, &"3".repeat(64));
    force_job(
        &mut c,
        &format!("publish:{}", "3".repeat(64)),
        "ineligible",
        1,
        Some("superseded"),
    );
    let operator_cancelled = publish_job(&mut c, A, &"4".repeat(64));
    assert!(queue::cancel(&mut c, operator_cancelled).unwrap());
    let other_account = publish_job(&mut c, B, &"5".repeat(64));
    force_job(
        &mut c,
        &format!("publish:{}", "5".repeat(64)),
        "ineligible",
        1,
        Some("account_disabled"),
    );

    // Re-enqueueing the same event is a no-op (the unique key is held): only enable can bring it back.
    assert_eq!(
        queue::enqueue(
            &mut c,
            &NewJob::new(JobKind::PublishPost, A, serde_json::json!({})).unique(format!("publish:{}", "1".repeat(64)))
        )
        .unwrap(),
        None
    );

    accounts::enable(&mut c, A).unwrap();
    assert_eq!(job_state(&mut c, queued_at_disable), "queued");
    assert_eq!(job_state(&mut c, posted_while_paused), "queued");
    let p = queue::get(&mut c, posted_while_paused).unwrap().unwrap();
    assert_eq!((p.attempt, p.finished_at), (1, None), "attempt kept, live again");
    assert_eq!(job_state(&mut c, superseded), "ineligible");
    assert_eq!(job_state(&mut c, operator_cancelled), "cancelled");
    assert_eq!(job_state(&mut c, other_account), "ineligible");
}

/// Any number of disable/enable rounds leaves at most one live backfill per account: one key, re-driven in place.
#[test]
fn repeated_enable_disable_keeps_at_most_one_backfill() {
    let db = TestDb::migrated("acc_one_backfill");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    accounts::mark_ready(&mut c, A, "did:plc:alice").unwrap();
    let live = |c: &mut PgConnection| {
        jobs_of(c, A)
            .into_iter()
            .filter(|j| j.kind == "backfill_author" && matches!(j.state.as_str(), "queued" | "running"))
            .count()
    };
    for _ in 0..5 {
        accounts::disable(&mut c, A).unwrap();
        assert_eq!(live(&mut c), 0, "disable cancels the queued backfill");
        accounts::enable(&mut c, A).unwrap();
        assert_eq!(live(&mut c), 1);
    }
    // Enable while the backfill runs (disable asked it to cancel; it has not finished yet): still one.
    force_job(&mut c, &accounts::backfill_unique_key(A), "running", 1, None);
    accounts::disable(&mut c, A).unwrap();
    let backfill = jobs_of(&mut c, A)
        .into_iter()
        .find(|j| j.kind == "backfill_author")
        .unwrap();
    assert_eq!(
        backfill.state, "running",
        "a running backfill is asked to cancel, not forced"
    );
    accounts::enable(&mut c, A).unwrap();
    assert_eq!(live(&mut c), 1);
    // A finished backfill is re-driven under the same key (the old row keeps its history under a renamed key).
    force_job(&mut c, &accounts::backfill_unique_key(A), "succeeded", 1, None);
    accounts::disable(&mut c, A).unwrap();
    accounts::enable(&mut c, A).unwrap();
    assert_eq!(live(&mut c), 1);
    let all: Vec<_> = jobs_of(&mut c, A)
        .into_iter()
        .filter(|j| j.kind == "backfill_author")
        .collect();
    assert_eq!(all.len(), 2, "{all:?}");
}

#[test]
fn ingest_follows_enabled_accounts_and_paused_ones_that_have_a_did() {
    let db = TestDb::migrated("acc_followed");
    let mut c = db.conn();
    let cpk = "c".repeat(64);
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    accounts::opt_in(&mut c, &req(B, "bob.divine.test")).unwrap();
    accounts::opt_in(&mut c, &req(&cpk, "carol.divine.test")).unwrap();
    accounts::mark_ready(&mut c, A, "did:plc:alice").unwrap();
    accounts::disable(&mut c, A).unwrap(); // paused with a DID: followed (deletes, profile)
    accounts::disable(&mut c, B).unwrap(); // paused, never provisioned: nothing to keep in step
    let followed = accounts::followed_pubkeys(&mut c).unwrap();
    assert_eq!(followed.into_iter().collect::<Vec<_>>(), vec![A.to_string(), cpk]);
}

#[test]
fn opt_in_of_a_disabled_link_enables_it() {
    let db = TestDb::migrated("acc_reoptin");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    accounts::mark_ready(&mut c, A, "did:plc:alice").unwrap();
    accounts::disable(&mut c, A).unwrap();
    let r = accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    assert_eq!(r.outcome, OptInOutcome::Reenabled);
    assert_eq!(r.link.state().unwrap(), ProvisioningState::Ready);
    assert!(r.link.crosspost_enabled);
    let again = accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    assert_eq!(again.outcome, OptInOutcome::Existing);
}

fn mapping(event_id: &str, pk: &str, rkey: &str) -> RecordMapping {
    RecordMapping::reservation(
        event_id,
        pk,
        &format!("did:plc:{}", &pk[..24]),
        "app.bsky.feed.post",
        rkey,
        22,
        Utc::now(),
    )
}

#[test]
fn crosspost_status_covers_every_status() {
    let db = TestDb::migrated("acc_status");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    accounts::opt_in(&mut c, &req(B, "bob.divine.test")).unwrap();
    let id = |n: u8| format!("{:064x}", n);

    // queued: attempt 0
    publish_job(&mut c, A, &id(1));
    // retrying: queued after a failed attempt
    publish_job(&mut c, A, &id(2));
    force_job(&mut c, &format!("publish:{}", id(2)), "queued", 1, Some("xrpc_timeout"));
    // publishing: running
    publish_job(&mut c, A, &id(3));
    force_job(&mut c, &format!("publish:{}", id(3)), "running", 1, None);
    // published: mapping published (job succeeded)
    publish_job(&mut c, A, &id(4));
    force_job(&mut c, &format!("publish:{}", id(4)), "succeeded", 1, None);
    records::reserve_record(&mut c, &mapping(&id(4), A, "3kaaaaaaaaa24")).unwrap();
    records::mark_published(
        &mut c,
        &id(4),
        "at://did:plc:x/app.bsky.feed.post/3kaaaaaaaaa24",
        "bafyreiabc",
    )
    .unwrap();
    // failed and ineligible → failed with the job's code
    publish_job(&mut c, A, &id(5));
    force_job(
        &mut c,
        &format!("publish:{}", id(5)),
        "failed",
        4,
        Some("pds_validation"),
    );
    publish_job(&mut c, A, &id(6));
    force_job(&mut c, &format!("publish:{}", id(6)), "ineligible", 1, Some("no_video"));
    // cancelled job
    let seven = publish_job(&mut c, A, &id(7));
    assert!(queue::cancel(&mut c, seven).unwrap());
    // deleted mapping → cancelled "deleted"; superseded → cancelled "superseded"
    records::reserve_record(&mut c, &mapping(&id(8), A, "3kaaaaaaaaa28")).unwrap();
    records::mark_published(&mut c, &id(8), "at://x/y/z", "bafy").unwrap();
    records::mark_removed(&mut c, &id(8), RecordState::Deleted).unwrap();
    records::reserve_record(&mut c, &mapping(&id(9), A, "3kaaaaaaaaa29")).unwrap();
    records::mark_removed(&mut c, &id(9), RecordState::Superseded).unwrap();
    // a reservation whose job is gone → publishing
    records::reserve_record(&mut c, &mapping(&id(10), A, "3kaaaaaaaa210")).unwrap();
    // another account's event and record: invisible to A
    publish_job(&mut c, B, &id(11));
    records::reserve_record(&mut c, &mapping(&id(12), B, "3kaaaaaaaa212")).unwrap();
    records::mark_published(&mut c, &id(12), "at://b/app.bsky.feed.post/1", "bafyb").unwrap();

    let ids: Vec<String> = (0..=12).map(id).collect();
    let got = accounts::crosspost_status(&mut c, A, &ids).unwrap();
    let summary: Vec<(String, PublishStatus, Option<String>)> = got
        .iter()
        .map(|s| (s.nostr_event_id.clone(), s.status, s.error_code.clone()))
        .collect();
    let expect = |n: u8, st: PublishStatus, code: Option<&str>| (id(n), st, code.map(str::to_string));
    assert_eq!(
        summary,
        vec![
            expect(0, PublishStatus::NotFound, None),
            expect(1, PublishStatus::Queued, None),
            expect(2, PublishStatus::Retrying, Some("xrpc_timeout")),
            expect(3, PublishStatus::Publishing, None),
            expect(4, PublishStatus::Published, None),
            expect(5, PublishStatus::Failed, Some("pds_validation")),
            expect(6, PublishStatus::Failed, Some("no_video")),
            expect(7, PublishStatus::Cancelled, Some("cancelled")),
            expect(8, PublishStatus::Cancelled, Some("deleted")),
            expect(9, PublishStatus::Cancelled, Some("superseded")),
            expect(10, PublishStatus::Publishing, None),
            expect(11, PublishStatus::NotFound, None),
            expect(12, PublishStatus::NotFound, None),
        ]
    );
    assert_eq!(
        got[4].at_uri.as_deref(),
        Some("at://did:plc:x/app.bsky.feed.post/3kaaaaaaaaa24")
    );
    assert_eq!(got[4].cid.as_deref(), Some("bafyreiabc"));
    assert!(got.iter().enumerate().all(|(i, s)| i == 4 || s.at_uri.is_none()));

    // B sees its own.
    let b = accounts::crosspost_status(&mut c, B, &[id(11), id(12), id(1)]).unwrap();
    assert_eq!(
        b.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![PublishStatus::Queued, PublishStatus::Published, PublishStatus::NotFound]
    );
    assert!(accounts::crosspost_status(&mut c, A, &[]).unwrap().is_empty());

    // JSON shape: optional fields are omitted, status is snake_case.
    let v = serde_json::to_value(&got[2]).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"nostr_event_id": id(2), "status": "retrying", "error_code": "xrpc_timeout"})
    );
    let v = serde_json::to_value(&got[0]).unwrap();
    assert_eq!(v, serde_json::json!({"nostr_event_id": id(0), "status": "not_found"}));
}

/// Suspension: like disable (queued publishing cancelled, deletes kept, still followed for deletes), but enable,
/// disable, opt-in and the worker's transitions cannot take the account out of `suspended`; unsuspend → disabled.
#[test]
fn suspend_is_a_pause_only_the_operator_lifts() {
    let db = TestDb::migrated("acc_suspend");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    accounts::mark_ready(&mut c, A, "did:plc:alice").unwrap();
    let p = publish_job(&mut c, A, &"1".repeat(64));
    let s = accounts::suspend(&mut c, A, "abuse report").unwrap();
    assert_eq!(s.link.state().unwrap(), ProvisioningState::Suspended);
    assert_eq!(s.link.suspended_reason.as_deref(), Some("abuse report"));
    assert!(!s.link.crosspost_enabled);
    assert_eq!(job_state(&mut c, p), "cancelled");
    assert!(accounts::followed_pubkeys(&mut c).unwrap().contains(A));

    let e = accounts::enable(&mut c, A).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccountSuspended);
    assert!(e.to_string().contains("abuse report"));
    assert_eq!(
        accounts::opt_in(&mut c, &req(A, "alice.divine.test"))
            .unwrap_err()
            .code(),
        ErrorCode::AccountSuspended
    );
    let d = accounts::disable(&mut c, A).unwrap();
    assert_eq!(
        d.link.state().unwrap(),
        ProvisioningState::Suspended,
        "disable does not lift it"
    );
    assert!(
        !accounts::mark_ready(&mut c, A, "did:plc:alice").unwrap(),
        "worker fence"
    );
    assert_eq!(job_state(&mut c, p), "cancelled", "nothing re-queued while suspended");

    let l = accounts::unsuspend(&mut c, A).unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Disabled);
    assert_eq!(l.suspended_reason, None);
    let l = accounts::enable(&mut c, A).unwrap();
    assert_eq!(l.state().unwrap(), ProvisioningState::Ready);
    assert_eq!(
        job_state(&mut c, p),
        "queued",
        "what the suspension skipped runs after enable"
    );
}

/// The audit row is written in the action's transaction: a committed action has its row, a refused one has none.
#[test]
fn audited_actions_record_actor_reason_and_states_atomically() {
    use divine_bridge_db::audit::{self, audited, Actor};
    use divine_bridge_db::states::AuditAction;
    let db = TestDb::migrated("acc_audit");
    let mut c = db.conn();
    audited(&mut c, A, &Actor::Service, AuditAction::OptIn, None, |c| {
        accounts::opt_in(c, &req(A, "alice.divine.test"))
    })
    .unwrap();
    audited(
        &mut c,
        A,
        &Actor::Cli("ops".into()),
        AuditAction::Suspend,
        Some("spam"),
        |c| accounts::suspend(c, A, "spam"),
    )
    .unwrap();
    let refused = audited(&mut c, A, &Actor::Nip98(A.into()), AuditAction::Enable, None, |c| {
        accounts::enable(c, A)
    });
    assert_eq!(refused.unwrap_err().code(), ErrorCode::AccountSuspended);
    let trail = audit::list(&mut c, A, 10).unwrap();
    assert_eq!(trail.len(), 2, "{trail:?}");
    assert_eq!(
        (
            trail[0].actor.as_str(),
            trail[0].action.as_str(),
            trail[0].reason.as_deref()
        ),
        ("cli:ops", "suspend", Some("spam"))
    );
    assert_eq!(trail[0].before_state.as_ref().unwrap()["provisioning_state"], "pending");
    assert_eq!(
        trail[0].after_state.as_ref().unwrap()["provisioning_state"],
        "suspended"
    );
    assert_eq!(trail[0].after_state.as_ref().unwrap()["suspended_reason"], "spam");
    assert_eq!(
        (trail[1].actor.as_str(), trail[1].action.as_str()),
        ("service", "opt_in")
    );
    assert_eq!(trail[1].before_state, None);
}

/// A publish try that read the paused account before an enable and finalizes after it: the enable's
/// `requeue_skipped` could not see it (still running), so its own finalize re-queues it, also when the enable is
/// still in flight (it waits for it on the link row). Still paused, the skip stands. (CI: e2e_lifecycle's
/// enable/disable/enable left such a post `ineligible account_disabled` for good.)
#[test]
fn a_skip_finalized_after_an_enable_is_requeued() {
    let db = TestDb::migrated("acc_skip_after_enable");
    let mut c = db.conn();
    accounts::opt_in(&mut c, &req(A, "alice.divine.test")).unwrap();
    accounts::mark_ready(&mut c, A, "did:plc:alice").unwrap();
    let skipped = queue::Finish::Ineligible {
        code: accounts::DISABLE_CODE,
        detail: "account is disabled or suspended".into(),
    };
    let lease_publish = |c: &mut PgConnection, event: &str| {
        let id = publish_job(c, A, event);
        let leased = queue::lease(c, "w1", 100, std::time::Duration::from_secs(60)).unwrap();
        leased
            .iter()
            .find(|j| j.id == id)
            .expect("the publish job is leased")
            .lease()
    };

    // Paused when the gate read it, enabled before the finalize: re-queued, attempt kept.
    let raced = lease_publish(&mut c, &"1".repeat(64));
    accounts::disable(&mut c, A).unwrap();
    accounts::enable(&mut c, A).unwrap();
    assert_eq!(
        job_state(&mut c, raced.id),
        "running",
        "enable leaves a running try alone"
    );
    assert_eq!(
        accounts::finish_skipped(&mut c, raced, A, &skipped).unwrap(),
        queue::Finished::Applied(divine_bridge_db::JobState::Ineligible)
    );
    let j = queue::get(&mut c, raced.id).unwrap().unwrap();
    assert_eq!(
        (j.state.to_string(), j.attempt, j.finished_at),
        ("queued".into(), 1, None)
    );

    // Still paused: the skip stands (enable will re-queue it).
    let paused = lease_publish(&mut c, &"2".repeat(64));
    accounts::disable(&mut c, A).unwrap();
    accounts::finish_skipped(&mut c, paused, A, &skipped).unwrap();
    assert_eq!(job_state(&mut c, paused.id), "ineligible");

    // An enable in flight (its link update not yet committed): the finalize waits for it, then re-queues.
    let in_flight = lease_publish(&mut c, &"3".repeat(64));
    use diesel::connection::SimpleConnection;
    let mut enabler = db.conn();
    enabler
        .batch_execute(&format!(
            "BEGIN; UPDATE account_links SET crosspost_enabled = true, provisioning_state = 'ready', \
             disabled_at = NULL WHERE nostr_pubkey = '{A}'"
        ))
        .unwrap();
    let finalizer = {
        let url = db.url.clone();
        let skipped = skipped.clone();
        std::thread::spawn(move || {
            let mut c = PgConnection::establish(&url).unwrap();
            accounts::finish_skipped(&mut c, in_flight, A, &skipped).unwrap()
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!finalizer.is_finished(), "the finalize waits for the enable in flight");
    enabler.batch_execute("COMMIT").unwrap();
    finalizer.join().unwrap();
    assert_eq!(job_state(&mut c, in_flight.id), "queued");
}
