//! Issue 11 §2 at the queue level (real Postgres, no PDS): ordering keys name what truly conflicts, so a video
//! whose job is in backoff (its media host answers 503) never holds back another video, delete or profile of the
//! same account; an edit chain of one addressable coordinate and a delete of one target stay behind their
//! predecessors; lifecycle jobs wait for the account's running jobs (the account barrier), not for queued ones.

mod support;

use chrono::Utc;
use divine_atbridge::ingest::{enqueue_event, ordering_key_for};
use divine_bridge_db::queue::{self, keys, Finish, LeasedJob};
use divine_bridge_db::states::priority;
use divine_bridge_db::testutil::TestDb;
use nostr_sdk::prelude::*;
use std::time::Duration;
use support::crosspost::*;

const LEASE: Duration = Duration::from_secs(60);
const URL: &str = "https://media.example/v.mp4";

fn lease_all(tdb: &TestDb) -> Vec<LeasedJob> {
    queue::lease(&mut tdb.conn(), "test", 100, LEASE).unwrap()
}

fn unique(job: &LeasedJob) -> &str {
    job.unique_key.as_deref().unwrap()
}

/// The handler's verdict for a video whose media host answers 503: retry in an hour (a backoff).
fn back_off(tdb: &TestDb, job: &LeasedJob) {
    let outcome = Finish::Retry {
        code: divine_bridge_db::ErrorCode::MediaHttpStatus,
        message: "503 from the media host".into(),
        run_at: Utc::now() + chrono::Duration::hours(1),
        max_age: Duration::from_secs(7 * 24 * 3600),
    };
    queue::finish(&mut tdb.conn(), job.lease(), &outcome).unwrap();
}

fn enqueue(tdb: &TestDb, event: &Event) {
    enqueue_event(&mut tdb.conn(), event, priority::LIVE)
        .unwrap()
        .expect("a new job");
}

#[test]
fn a_video_in_backoff_does_not_delay_other_jobs_of_its_account() {
    let tdb = TestDb::migrated("order_stuck_video");
    let keys = Keys::generate();
    let t0 = unix_now() - 600;
    let stuck = video_event(&keys, 22, None, "stuck", "", &[], URL, b"stuck", t0);
    let other = video_event(&keys, 22, None, "other", "", &[], URL, b"other", t0 + 1);
    let profile = profile_event(&keys, "Name", "about", t0 + 2);
    let edit = video_event(&keys, 34236, Some("Clip"), "addressable", "", &[], URL, b"a", t0 + 3);
    for e in [&stuck, &other, &profile, &edit] {
        enqueue(&tdb, e);
    }

    let first = lease_all(&tdb);
    assert_eq!(first.len(), 4, "unrelated jobs of one account are all heads");
    let stuck_job = first
        .iter()
        .find(|j| unique(j) == format!("publish:{}", stuck.id.to_hex()))
        .unwrap();
    back_off(&tdb, stuck_job);
    for j in first.iter().filter(|j| j.id != stuck_job.id) {
        queue::finish(&mut tdb.conn(), j.lease(), &Finish::Succeeded).unwrap();
    }

    // Later jobs of the same account arrive while the stuck video waits out its backoff.
    let later = video_event(&keys, 22, None, "later", "", &[], URL, b"later", t0 + 10);
    let delete_other = delete_event(&keys, &[other.id], &[], t0 + 11);
    enqueue(&tdb, &later);
    enqueue(&tdb, &delete_other);
    let mut leased: Vec<String> = lease_all(&tdb).iter().map(|j| unique(j).to_string()).collect();
    leased.sort();
    let mut want = vec![
        format!("publish:{}", later.id.to_hex()),
        format!("delete:{}", delete_other.id.to_hex()),
    ];
    want.sort();
    assert_eq!(leased, want, "the stuck video holds back nothing but itself");
}

#[test]
fn an_edit_chain_and_a_delete_of_one_target_stay_behind_their_predecessor() {
    let tdb = TestDb::migrated("order_chain");
    let keys = Keys::generate();
    let t0 = unix_now() - 600;
    let v1 = video_event(&keys, 34236, Some("MyClip"), "v1", "", &[], URL, b"1", t0);
    let v2 = video_event(&keys, 34236, Some("MyClip"), "v2", "", &[], URL, b"2", t0 + 1);
    // `d` is case-sensitive: another coordinate, another key.
    let other_d = video_event(&keys, 34236, Some("myclip"), "other", "", &[], URL, b"3", t0 + 2);
    let coord = format!("34236:{}:MyClip", keys.public_key().to_hex());
    let del = delete_event(&keys, &[], std::slice::from_ref(&coord), t0 + 3);
    for e in [&v1, &v2, &other_d, &del] {
        enqueue(&tdb, e);
    }
    assert_eq!(ordering_key_for(&v1), keys::coordinate(&coord));
    assert_eq!(ordering_key_for(&v2), ordering_key_for(&v1));
    assert_eq!(ordering_key_for(&del), ordering_key_for(&v1));
    assert_ne!(ordering_key_for(&other_d), ordering_key_for(&v1));

    let order = |tdb: &TestDb| -> Vec<String> { lease_all(tdb).iter().map(|j| unique(j).to_string()).collect() };
    let first = lease_all(&tdb);
    let mut got: Vec<&str> = first.iter().map(unique).collect();
    got.sort();
    let mut want = [
        format!("publish:{}", v1.id.to_hex()),
        format!("publish:{}", other_d.id.to_hex()),
    ];
    want.sort();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
    // v1 backs off: v2 and the delete wait (per-coordinate order is a hard guarantee).
    let v1_job = first.iter().find(|j| unique(j).ends_with(&v1.id.to_hex())).unwrap();
    back_off(&tdb, v1_job);
    assert!(
        order(&tdb).is_empty(),
        "nothing of the chain passes its head in backoff"
    );
    diesel::RunQueryDsl::execute(
        diesel::sql_query("UPDATE jobs SET run_at = now() WHERE state = 'queued'"),
        &mut tdb.conn(),
    )
    .unwrap();
    let again = lease_all(&tdb);
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), vec![v1_job.id]);
    queue::finish(&mut tdb.conn(), again[0].lease(), &Finish::Succeeded).unwrap();
    let next = lease_all(&tdb);
    assert_eq!(
        next.iter().map(unique).collect::<Vec<_>>(),
        vec![format!("publish:{}", v2.id.to_hex())]
    );
    queue::finish(&mut tdb.conn(), next[0].lease(), &Finish::Succeeded).unwrap();
    assert_eq!(order(&tdb), vec![format!("delete:{}", del.id.to_hex())]);

    // A delete of one event id runs behind that event's publish; a delete of several targets runs on its own.
    let plain = video_event(&keys, 22, None, "plain", "", &[], URL, b"p", t0);
    assert_eq!(
        ordering_key_for(&delete_event(&keys, &[plain.id], &[], t0 + 1)),
        ordering_key_for(&plain)
    );
    let multi = delete_event(&keys, &[plain.id, v1.id], &[], t0 + 1);
    assert_eq!(ordering_key_for(&multi), keys::event(&multi.id.to_hex()));
    assert_eq!(
        ordering_key_for(&profile_event(&keys, "n", "a", t0)),
        keys::profile(&keys.public_key().to_hex())
    );
}

#[test]
fn lifecycle_jobs_wait_for_running_jobs_of_the_account_not_for_queued_ones() {
    let tdb = TestDb::migrated("order_barrier");
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let t0 = unix_now() - 600;
    let a = video_event(&keys, 22, None, "a", "", &[], URL, b"a", t0);
    let b = video_event(&keys, 22, None, "b", "", &[], URL, b"b", t0 + 1);
    enqueue(&tdb, &a);
    enqueue(&tdb, &b);
    let leased = lease_all(&tdb);
    assert_eq!(leased.len(), 2);
    assert!(leased.iter().all(|j| j.account().unwrap() == pk));
    let (ja, jb) = (&leased[0], &leased[1]);
    back_off(&tdb, ja);
    // b runs: the barrier sees it; a (queued, in backoff) does not count.
    assert_eq!(
        queue::running_for_account(&mut tdb.conn(), &pk, -1).unwrap(),
        vec![jb.id]
    );
    assert_eq!(
        queue::running_for_account(&mut tdb.conn(), &pk, jb.id).unwrap(),
        Vec::<i64>::new()
    );
    queue::finish(&mut tdb.conn(), jb.lease(), &Finish::Succeeded).unwrap();
    assert!(queue::running_for_account(&mut tdb.conn(), &pk, -1).unwrap().is_empty());
    // Disabling the account reaches its jobs under every key.
    let other = Keys::generate();
    enqueue(&tdb, &video_event(&other, 22, None, "x", "", &[], URL, b"x", t0));
    assert_eq!(
        queue::cancel_for_account(&mut tdb.conn(), &pk, &[divine_bridge_db::JobKind::PublishPost]).unwrap(),
        1,
        "only the account's queued video (a) is cancelled, not another account's"
    );
}
