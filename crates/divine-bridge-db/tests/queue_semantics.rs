//! Job-queue semantics against a real Postgres (one throwaway database per test): head-of-key leasing, attempt
//! accounting, fenced finalize, backoff and the retry window, cancel paths, heartbeat, release, watchdog reclaim,
//! operator retry / re-drive and listing.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use divine_bridge_db::queue::{self, Finish, Finished, JobFilter, Lease, NewJob};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::{JobKind, JobState};
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(60);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// A live noop job for `key`, dispatched at `t0 + n` ms so order is explicit.
fn job(key: &str, n: i64) -> NewJob {
    let mut j = NewJob::new(JobKind::Noop, key, serde_json::json!({ "n": n }));
    j.source_created_at = Some(t0() + ChronoDuration::milliseconds(n));
    j
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn enq(conn: &mut PgConnection, j: &NewJob) -> i64 {
    queue::enqueue(conn, j).unwrap().expect("new job")
}

fn row(conn: &mut PgConnection, id: i64) -> queue::JobRow {
    queue::get(conn, id).unwrap().expect("job exists")
}

fn ids(jobs: &[queue::LeasedJob]) -> Vec<i64> {
    jobs.iter().map(|j| j.id).collect()
}

/// Moves a running job's lease into the past, as if its owner stopped heartbeating long ago.
fn expire_lease(conn: &mut PgConnection, id: i64) {
    diesel::sql_query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind::<BigInt, _>(id)
        .execute(conn)
        .unwrap();
}

/// Reclaims re-queue at once in tests that are not about the reclaim backoff, and never park.
const POLICY: queue::ReclaimPolicy = queue::ReclaimPolicy {
    base: Duration::ZERO,
    cap: Duration::ZERO,
    limit: 1000,
};

/// The lease a running job holds now (what the worker that leased it would present).
fn held(conn: &mut PgConnection, id: i64) -> Lease {
    let token = row(conn, id).lease_token.expect("job is running");
    Lease { id, token }
}

/// Finishes a running job under its current lease.
fn finish(conn: &mut PgConnection, id: i64, outcome: &Finish) -> Finished {
    let lease = held(conn, id);
    queue::finish(conn, lease, outcome).unwrap()
}

/// Completes running jobs under their current leases.
fn complete(conn: &mut PgConnection, ids: &[i64]) -> Vec<i64> {
    let leases: Vec<Lease> = ids.iter().map(|id| held(conn, *id)).collect();
    queue::complete_many(conn, &leases).unwrap()
}

fn retry_now(code: &str) -> Finish {
    Finish::Retry {
        code: code.parse().expect("a code of ErrorCode"),
        message: format!("{code} happened"),
        run_at: Utc::now() - ChronoDuration::seconds(1),
        max_age: WEEK,
    }
}

#[test]
fn only_the_head_of_each_key_is_leased_and_attempt_counts_tries() {
    let db = TestDb::migrated("queue_head");
    let mut c = db.conn();
    let a1 = enq(&mut c, &job("a", 1));
    let a2 = enq(&mut c, &job("a", 2));
    let b1 = enq(&mut c, &job("b", 3));
    let a3 = enq(&mut c, &job("a", 4));

    let first = queue::lease(&mut c, "w1", 10, LEASE).unwrap();
    assert_eq!(ids(&first), vec![a1, b1], "one job per key, in dispatch order");
    assert!(first.iter().all(|j| j.attempt == 1), "attempt counts the lease");
    assert!(
        queue::lease(&mut c, "w2", 10, LEASE).unwrap().is_empty(),
        "successors wait behind running heads"
    );

    assert_eq!(complete(&mut c, &[a1]), vec![a1]);
    assert_eq!(ids(&queue::lease(&mut c, "w2", 10, LEASE).unwrap()), vec![a2]);
    assert_eq!(complete(&mut c, &[a2]), vec![a2]);
    assert_eq!(ids(&queue::lease(&mut c, "w2", 10, LEASE).unwrap()), vec![a3]);
    assert_eq!(row(&mut c, a3).state, "running");
    assert_eq!(row(&mut c, a3).lease_owner.as_deref(), Some("w2"));
}

#[test]
fn lower_priority_value_runs_first_across_and_within_keys() {
    let db = TestDb::migrated("queue_priority");
    let mut c = db.conn();
    let live = enq(&mut c, &job("a", 1));
    let mut backfill = job("b", 0);
    backfill.priority = divine_bridge_db::states::priority::BACKFILL;
    let backfill = enq(&mut c, &backfill);
    // Enqueued last for key "a", but provisioning priority puts it ahead of the account's posts.
    let mut account = job("a", 50);
    account.priority = divine_bridge_db::states::priority::ACCOUNT;
    let account = enq(&mut c, &account);

    let got = queue::lease(&mut c, "w", 1, LEASE).unwrap();
    assert_eq!(ids(&got), vec![account]);
    let got = queue::lease(&mut c, "w", 10, LEASE).unwrap();
    assert_eq!(
        ids(&got),
        vec![backfill],
        "key a is busy; b's backfill is the only head left"
    );
    complete(&mut c, &[account, backfill]);
    assert_eq!(ids(&queue::lease(&mut c, "w", 10, LEASE).unwrap()), vec![live]);
}

#[test]
fn a_head_in_backoff_blocks_its_successors_but_not_other_keys() {
    let db = TestDb::migrated("queue_backoff_head");
    let mut c = db.conn();
    let a1 = enq(&mut c, &job("a", 1));
    let a2 = enq(&mut c, &job("a", 2));
    let b1 = enq(&mut c, &job("b", 3));
    assert_eq!(ids(&queue::lease(&mut c, "w", 1, LEASE).unwrap()), vec![a1]);
    let later = Finish::Retry {
        code: divine_bridge_db::ErrorCode::XrpcServerError,
        message: "503".into(),
        run_at: Utc::now() + ChronoDuration::hours(1),
        max_age: WEEK,
    };
    assert_eq!(finish(&mut c, a1, &later), Finished::Applied(JobState::Queued));
    let got = queue::lease(&mut c, "w", 10, LEASE).unwrap();
    assert_eq!(
        ids(&got),
        vec![b1],
        "a2 waits for a1's backoff: per-key order beats latency"
    );
    assert_eq!(row(&mut c, a2).state, "queued");
    assert_eq!(row(&mut c, a1).attempt, 1);
    assert_eq!(row(&mut c, a1).last_error_code.as_deref(), Some("xrpc_server_error"));
}

#[test]
fn a_unique_violation_at_lease_time_is_an_empty_lease() {
    let db = TestDb::migrated("queue_lease_race");
    let mut c1 = db.conn();
    let mut setup = db.conn();
    let a1 = enq(&mut setup, &job("a", 10));
    let url = db.url.clone();
    let conflicts_before = queue::lease_conflicts();
    let (holder, other) = c1
        .transaction::<_, divine_bridge_db::DbError, _>(|c1| {
            // Holder leases a1 but has not committed yet.
            let held = queue::lease(c1, "holder", 10, LEASE)?;
            // Meanwhile an earlier job of the same key commits: for a fresh snapshot it is the head of key "a".
            enq(&mut setup, &job("a", 1));
            let other = std::thread::spawn(move || {
                let mut c2 = PgConnection::establish(&url).unwrap();
                // Blocks on the partial unique index until the holder commits, then trips it.
                let started = std::time::Instant::now();
                (queue::lease(&mut c2, "other", 10, LEASE), started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(500));
            Ok((held, other))
        })
        .unwrap();
    assert_eq!(ids(&holder), vec![a1]);
    let (other, waited) = other.join().unwrap();
    assert!(
        waited >= Duration::from_millis(300),
        "the racing lease must have waited on the unique index (took {waited:?})"
    );
    assert!(
        matches!(&other, Ok(v) if v.is_empty()),
        "racing lease must be empty, got {other:?}"
    );
    assert!(queue::lease_conflicts() > conflicts_before, "the conflict is counted");
    let running: i64 = divine_bridge_db::schema::jobs::table
        .filter(divine_bridge_db::schema::jobs::state.eq("running"))
        .count()
        .get_result(&mut setup)
        .unwrap();
    assert_eq!(running, 1);
}

#[test]
fn a_reclaimed_try_cannot_write_even_when_the_same_owner_leased_the_job_again() {
    let db = TestDb::migrated("queue_fencing");
    let mut c = db.conn();
    let id = enq(&mut c, &job("a", 1));
    // One owner id per process: the stale try and the new try share it (old code fenced on it and let both write).
    let stale = queue::lease(&mut c, "w", 1, LEASE).unwrap()[0].lease();
    assert_eq!(stale.id, id);
    expire_lease(&mut c, id);
    assert_eq!(queue::expired_lease_count(&mut c).unwrap(), 1);

    let reclaimed = queue::reclaim_expired(&mut c, &POLICY).unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!((reclaimed[0].id, reclaimed[0].state.as_str()), (id, "queued"));
    let r = row(&mut c, id);
    assert_eq!((r.state.as_str(), r.attempt, r.reclaim_count), ("queued", 1, 1));
    assert_eq!(r.last_error_code.as_deref(), Some("lease_expired"));
    assert!(
        r.last_error.as_deref().unwrap().contains("lease of w"),
        "{:?}",
        r.last_error
    );
    assert!(r.lease_token.is_none());
    assert_eq!(queue::expired_lease_count(&mut c).unwrap(), 0);

    let again = queue::lease(&mut c, "w", 1, LEASE).unwrap();
    assert_eq!(
        (again[0].id, again[0].attempt),
        (id, 2),
        "the next real try counts once"
    );
    let fresh = again[0].lease();
    assert_ne!(fresh.token, stale.token, "a fresh token per lease");

    // The stale try wakes up: every write it attempts is fenced off, though its owner id is the current one.
    let fail = Finish::Failed {
        code: divine_bridge_db::ErrorCode::PdsRejected,
        message: "late".into(),
    };
    assert_eq!(queue::finish(&mut c, stale, &fail).unwrap(), Finished::LostLease);
    assert_eq!(
        queue::finish(&mut c, stale, &Finish::Succeeded).unwrap(),
        Finished::LostLease
    );
    assert!(queue::complete_many(&mut c, &[stale]).unwrap().is_empty());
    assert!(queue::heartbeat(&mut c, &[stale], LEASE).unwrap().is_empty());
    assert_eq!(queue::release(&mut c, "w", &[stale]).unwrap(), 0);
    let r = row(&mut c, id);
    assert_eq!(
        (r.state.as_str(), r.attempt),
        ("running", 2),
        "the new try is untouched"
    );
    assert_eq!(r.lease_token, Some(fresh.token));

    assert_eq!(queue::heartbeat(&mut c, &[fresh], LEASE).unwrap(), vec![id]);
    assert_eq!(
        queue::finish(&mut c, fresh, &Finish::Succeeded).unwrap(),
        Finished::Applied(JobState::Succeeded)
    );
    // Once finished, nobody (not even the last lease) can finalize again.
    assert_eq!(queue::finish(&mut c, fresh, &fail).unwrap(), Finished::LostLease);
    let r = row(&mut c, id);
    assert_eq!(r.state, "succeeded");
    assert!(r.finished_at.is_some() && r.lease_owner.is_none() && r.lease_token.is_none());
}

#[test]
fn reclaims_back_off_and_park_a_suspected_poison_job_at_the_limit() {
    let db = TestDb::migrated("queue_reclaim_limit");
    let mut c = db.conn();
    let id = enq(&mut c, &job("a", 1));
    let policy = queue::ReclaimPolicy {
        base: Duration::from_secs(5),
        cap: Duration::from_secs(3600),
        limit: 3,
    };
    for n in 1..=2 {
        queue::lease(&mut c, "w", 1, LEASE).unwrap();
        expire_lease(&mut c, id);
        let before = Utc::now();
        let rec = queue::reclaim_expired(&mut c, &policy).unwrap();
        assert_eq!(
            (rec[0].id, rec[0].state.as_str(), rec[0].reclaim_count),
            (id, "queued", n)
        );
        assert!(!rec[0].parked());
        let r = row(&mut c, id);
        // backoff(n): uniform in [ceiling/2, ceiling], ceiling = 5 s * 2^n.
        let ceiling = 5 * 2i64.pow(n as u32);
        let wait = (r.run_at - before).num_milliseconds();
        assert!(
            wait >= ceiling * 1000 / 2 - 50 && wait <= ceiling * 1000 + 1000,
            "reclaim {n}: run_at {wait} ms after now, expected within [{}, {}] s",
            ceiling / 2,
            ceiling
        );
        assert!(
            queue::lease(&mut c, "w", 1, LEASE).unwrap().is_empty(),
            "reclaim {n}: not re-leased at once"
        );
        diesel::sql_query("UPDATE jobs SET run_at = now() WHERE id = $1")
            .bind::<BigInt, _>(id)
            .execute(&mut c)
            .unwrap();
    }
    // The third expired lease parks it.
    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    expire_lease(&mut c, id);
    let rec = queue::reclaim_expired(&mut c, &policy).unwrap();
    assert_eq!((rec[0].state.as_str(), rec[0].reclaim_count), ("failed", 3));
    assert!(rec[0].parked());
    let r = row(&mut c, id);
    assert_eq!(r.state, "failed");
    assert_eq!(r.last_error_code.as_deref(), Some("suspected_poison"));
    assert!(
        r.last_error.as_deref().unwrap().contains("3 expired leases"),
        "{:?}",
        r.last_error
    );
    assert!(r.finished_at.is_some() && r.lease_token.is_none());
    assert!(queue::lease(&mut c, "w", 1, LEASE).unwrap().is_empty(), "parked");
    // The operator re-drives it.
    assert!(queue::retry(&mut c, id).unwrap());
    assert_eq!(ids(&queue::lease(&mut c, "w", 1, LEASE).unwrap()), vec![id]);
}

#[test]
fn panics_are_retried_until_the_panic_limit_then_fail_keeping_the_message() {
    let db = TestDb::migrated("queue_panic_limit");
    let mut c = db.conn();
    let id = enq(&mut c, &job("a", 1));
    let panicked = |n: i32| Finish::Panicked {
        message: format!("handler panicked: boom {n}"),
        run_at: Utc::now() - ChronoDuration::seconds(1),
        max_age: WEEK,
        limit: 3,
    };
    // Transient failures in between do not count as panics.
    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    assert_eq!(
        finish(&mut c, id, &retry_now("xrpc_server_error")),
        Finished::Applied(JobState::Queued)
    );
    for n in 1..=2 {
        queue::lease(&mut c, "w", 1, LEASE).unwrap();
        assert_eq!(finish(&mut c, id, &panicked(n)), Finished::Applied(JobState::Queued));
        let r = row(&mut c, id);
        assert_eq!(
            (r.panic_count, r.last_error_code.as_deref()),
            (n, Some("handler_panicked"))
        );
    }
    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    assert_eq!(finish(&mut c, id, &panicked(3)), Finished::Applied(JobState::Failed));
    let r = row(&mut c, id);
    assert_eq!((r.state.as_str(), r.panic_count, r.attempt), ("failed", 3, 4));
    assert_eq!(r.last_error_code.as_deref(), Some("handler_panicked"));
    let text = r.last_error.unwrap();
    assert!(text.contains("boom 3") && text.contains("PANIC_LIMIT"), "{text}");
}

#[test]
fn backoff_has_a_floor_within_the_capped_exponential_ceiling() {
    let base = Duration::from_secs(5);
    let cap = Duration::from_secs(3600);
    assert_eq!(queue::backoff_ceiling(1, base, cap), Duration::from_secs(10));
    assert_eq!(queue::backoff_ceiling(3, base, cap), Duration::from_secs(40));
    assert_eq!(queue::backoff_ceiling(9, base, cap), Duration::from_secs(2560));
    assert_eq!(queue::backoff_ceiling(10, base, cap), cap);
    assert_eq!(
        queue::backoff_ceiling(10_000, base, cap),
        cap,
        "no overflow on huge attempts"
    );
    for attempt in 1..=40 {
        let ceiling = base.saturating_mul(2u32.saturating_pow(attempt as u32)).min(cap);
        let samples: Vec<Duration> = (0..300).map(|_| queue::backoff(attempt, base, cap)).collect();
        assert!(
            samples.iter().all(|d| *d <= ceiling && *d >= ceiling / 2),
            "attempt {attempt} left [{:?}, {ceiling:?}]",
            ceiling / 2
        );
        // Jittered over the upper half: not pinned to either end.
        assert!(
            samples.iter().any(|d| *d < ceiling * 5 / 8),
            "attempt {attempt}: no low draws"
        );
        assert!(
            samples.iter().any(|d| *d > ceiling * 7 / 8),
            "attempt {attempt}: no high draws"
        );
    }
    // A longer Retry-After wins, capped at the cap.
    assert_eq!(
        queue::retry_delay(1, Some(Duration::from_secs(42)), base, cap),
        Duration::from_secs(42)
    );
    assert_eq!(queue::retry_delay(1, Some(Duration::from_secs(86_400)), base, cap), cap);
    assert!(queue::retry_delay(2, None, base, cap) <= Duration::from_secs(20));
}

#[test]
fn retry_after_zero_or_a_past_reset_never_retries_sooner_than_the_backoff() {
    let base = Duration::from_secs(5);
    let cap = Duration::from_secs(3600);
    for attempt in 1..=12 {
        let floor = queue::backoff_ceiling(attempt, base, cap) / 2;
        for _ in 0..100 {
            // `Retry-After: 0`, and a `RateLimit-Reset` in the past (parsed to a zero wait).
            let d = queue::retry_delay(attempt, Some(Duration::ZERO), base, cap);
            assert!(d >= floor, "attempt {attempt}: Retry-After 0 gave {d:?} < {floor:?}");
            let d = queue::retry_delay(attempt, Some(Duration::from_millis(1)), base, cap);
            assert!(d >= floor, "attempt {attempt}: a 1 ms hint gave {d:?} < {floor:?}");
        }
    }
    assert!(queue::retry_delay(1, Some(Duration::ZERO), base, cap) >= base);
}

#[test]
fn transient_failures_never_become_terminal_by_count_alone() {
    let db = TestDb::migrated("queue_transient");
    let mut c = db.conn();
    let id = enq(&mut c, &job("a", 1));
    for n in 1..=50 {
        let got = queue::lease(&mut c, "w", 1, LEASE).unwrap();
        assert_eq!((got[0].id, got[0].attempt), (id, n));
        assert_eq!(
            finish(&mut c, id, &retry_now("xrpc_server_error")),
            Finished::Applied(JobState::Queued)
        );
    }
    let r = row(&mut c, id);
    assert_eq!((r.state.as_str(), r.attempt), ("queued", 50));
    assert_eq!(r.last_error_code.as_deref(), Some("xrpc_server_error"));
    assert!(r.finished_at.is_none());
}

#[test]
fn a_retry_schedules_run_at_and_records_the_error() {
    let db = TestDb::migrated("queue_retry_at");
    let mut c = db.conn();
    let id = enq(&mut c, &job("a", 1));
    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    let at = Utc::now() + ChronoDuration::seconds(90);
    let outcome = Finish::Retry {
        code: divine_bridge_db::ErrorCode::XrpcRateLimited,
        message: "429, retry after 90 s".into(),
        run_at: at,
        max_age: WEEK,
    };
    assert_eq!(finish(&mut c, id, &outcome), Finished::Applied(JobState::Queued));
    let r = row(&mut c, id);
    assert!(
        (r.run_at - at).num_milliseconds().abs() < 5,
        "run_at {} vs {at}",
        r.run_at
    );
    assert_eq!(r.last_error.as_deref(), Some("429, retry after 90 s"));
    assert!(r.lease_owner.is_none() && r.lease_expires_at.is_none());
    assert!(
        queue::lease(&mut c, "w", 1, LEASE).unwrap().is_empty(),
        "not before run_at"
    );
}

#[test]
fn the_retry_window_ends_in_retry_window_exhausted_keeping_the_last_error() {
    let db = TestDb::migrated("queue_max_age");
    let mut c = db.conn();
    let id = enq(&mut c, &job("a", 1));
    diesel::sql_query("UPDATE jobs SET created_at = now() - interval '8 days' WHERE id = $1")
        .bind::<BigInt, _>(id)
        .execute(&mut c)
        .unwrap();
    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    assert_eq!(
        finish(&mut c, id, &retry_now("xrpc_server_error")),
        Finished::Applied(JobState::Failed)
    );
    let r = row(&mut c, id);
    assert_eq!(r.state, "failed");
    assert_eq!(r.last_error_code.as_deref(), Some("retry_window_exhausted"));
    let text = r.last_error.unwrap();
    assert!(
        text.contains("xrpc_server_error") && text.contains("xrpc_server_error happened"),
        "{text}"
    );
    assert!(r.finished_at.is_some());

    // A younger job with the same failure is still retried.
    let young = enq(&mut c, &job("b", 2));
    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    assert_eq!(
        finish(&mut c, young, &retry_now("xrpc_server_error")),
        Finished::Applied(JobState::Queued)
    );
}

#[test]
fn permanent_failure_and_ineligible_record_their_codes() {
    let db = TestDb::migrated("queue_terminal");
    let mut c = db.conn();
    let f = enq(&mut c, &job("a", 1));
    let i = enq(&mut c, &job("b", 2));
    queue::lease(&mut c, "w", 2, LEASE).unwrap();
    let failed = Finish::Failed {
        code: divine_bridge_db::ErrorCode::InvalidEvent,
        message: "no video url".into(),
    };
    let inel = Finish::Ineligible {
        code: divine_bridge_db::ErrorCode::AccountDisabled,
        detail: "cross-posting disabled by the user".into(),
    };
    assert_eq!(finish(&mut c, f, &failed), Finished::Applied(JobState::Failed));
    assert_eq!(finish(&mut c, i, &inel), Finished::Applied(JobState::Ineligible));
    let rf = row(&mut c, f);
    assert_eq!(
        (
            rf.state.as_str(),
            rf.last_error_code.as_deref(),
            rf.last_error.as_deref()
        ),
        ("failed", Some("invalid_event"), Some("no video url"))
    );
    let ri = row(&mut c, i);
    assert_eq!(
        (ri.state.as_str(), ri.last_error_code.as_deref()),
        ("ineligible", Some("account_disabled"))
    );
    assert!(rf.finished_at.is_some() && ri.finished_at.is_some());
}

#[test]
fn cancel_queued_is_immediate_and_cancel_running_is_honoured_at_finalize() {
    let db = TestDb::migrated("queue_cancel");
    let mut c = db.conn();
    let queued = enq(&mut c, &job("q", 1));
    assert!(queue::cancel(&mut c, queued).unwrap());
    let r = row(&mut c, queued);
    assert_eq!(
        (r.state.as_str(), r.last_error_code.as_deref()),
        ("cancelled", Some("cancelled"))
    );
    assert!(!queue::cancel(&mut c, queued).unwrap(), "already finished");
    assert!(!queue::cancel(&mut c, 999_999).unwrap(), "no such job");

    // Running + retry → cancelled; running + failure → cancelled; running + success → stays succeeded.
    let r1 = enq(&mut c, &job("r1", 2));
    let r2 = enq(&mut c, &job("r2", 3));
    let r3 = enq(&mut c, &job("r3", 4));
    assert_eq!(queue::lease(&mut c, "w", 10, LEASE).unwrap().len(), 3);
    for id in [r1, r2, r3] {
        assert!(queue::cancel(&mut c, id).unwrap());
        let r = row(&mut c, id);
        assert_eq!(r.state, "running", "a running job is not interrupted");
        assert!(r.cancel_requested_at.is_some());
    }
    assert_eq!(
        finish(&mut c, r1, &retry_now("xrpc_server_error")),
        Finished::Applied(JobState::Cancelled)
    );
    let fail = Finish::Failed {
        code: divine_bridge_db::ErrorCode::PdsRejected,
        message: "400".into(),
    };
    assert_eq!(finish(&mut c, r2, &fail), Finished::Applied(JobState::Cancelled));
    assert_eq!(complete(&mut c, &[r3]), vec![r3]);
    let c1 = row(&mut c, r1);
    assert_eq!(c1.last_error_code.as_deref(), Some("cancelled"));
    assert!(c1.last_error.unwrap().contains("xrpc_server_error"));
    assert_eq!(row(&mut c, r3).state, "succeeded", "the side effect happened");

    // A running job whose owner died with a cancel pending is cancelled by the watchdog, not re-queued.
    let r4 = enq(&mut c, &job("r4", 5));
    queue::lease(&mut c, "dead", 1, LEASE).unwrap();
    assert!(queue::cancel(&mut c, r4).unwrap());
    expire_lease(&mut c, r4);
    let rec = queue::reclaim_expired(&mut c, &POLICY).unwrap();
    assert_eq!((rec[0].id, rec[0].state.as_str()), (r4, "cancelled"));
    assert!(row(&mut c, r4).finished_at.is_some());

    // cancel_for_account: queued ones at once, running ones by request.
    let of_account = |n: i64| {
        let mut j = NewJob::for_account(JobKind::Noop, "k", "k", serde_json::json!({ "n": n }));
        j.source_created_at = Some(t0() + ChronoDuration::milliseconds(n));
        j
    };
    let k1 = enq(&mut c, &of_account(6));
    let k2 = enq(&mut c, &of_account(7));
    queue::lease(&mut c, "w", 10, LEASE).unwrap();
    assert_eq!(queue::cancel_for_account(&mut c, "k", &[JobKind::Noop]).unwrap(), 2);
    assert_eq!(row(&mut c, k2).state, "cancelled");
    assert!(row(&mut c, k1).cancel_requested_at.is_some());
}

#[test]
fn enqueue_is_idempotent_by_unique_key() {
    let db = TestDb::migrated("queue_idem");
    let mut c = db.conn();
    let j = job("a", 1).unique("publish:abc");
    let first = queue::enqueue(&mut c, &j).unwrap();
    assert!(first.is_some());
    assert_eq!(queue::enqueue(&mut c, &j).unwrap(), None);
    let many = queue::enqueue_many(&mut c, &[j.clone(), job("a", 2).unique("publish:def"), job("a", 3)]).unwrap();
    assert_eq!(many.len(), 2, "the duplicate is skipped in bulk too");
    let n: i64 = divine_bridge_db::schema::jobs::table
        .filter(divine_bridge_db::schema::jobs::unique_key.eq("publish:abc"))
        .count()
        .get_result(&mut c)
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn heartbeat_extends_only_the_owners_leases() {
    let db = TestDb::migrated("queue_heartbeat");
    let mut c = db.conn();
    let id = enq(&mut c, &job("a", 1));
    let lease = queue::lease(&mut c, "w", 1, Duration::from_secs(5)).unwrap()[0].lease();
    let before = row(&mut c, id).lease_expires_at.unwrap();
    let unknown = Lease { id: 12345, token: 1 };
    assert_eq!(
        queue::heartbeat(&mut c, &[lease, unknown], Duration::from_secs(600)).unwrap(),
        vec![id]
    );
    let after = row(&mut c, id).lease_expires_at.unwrap();
    assert!(after - before > ChronoDuration::seconds(590), "{before} → {after}");
    let forged = Lease {
        id,
        token: lease.token + 1,
    };
    assert!(queue::heartbeat(&mut c, &[forged], Duration::from_secs(6000))
        .unwrap()
        .is_empty());
    assert_eq!(row(&mut c, id).lease_expires_at.unwrap(), after);
}

#[test]
fn release_at_shutdown_requeues_and_gives_the_try_back() {
    let db = TestDb::migrated("queue_release");
    let mut c = db.conn();
    let id = enq(&mut c, &job("a", 1));
    let lease = queue::lease(&mut c, "w", 1, LEASE).unwrap()[0].lease();
    let forged = Lease {
        id,
        token: lease.token - 1,
    };
    assert_eq!(queue::release(&mut c, "w", &[forged]).unwrap(), 0);
    assert_eq!(queue::release(&mut c, "w", &[lease]).unwrap(), 1);
    let r = row(&mut c, id);
    assert!(r.lease_token.is_none(), "the token dies with the lease");
    assert_eq!((r.state.as_str(), r.attempt, r.reclaim_count), ("queued", 0, 0));
    assert_eq!(r.last_error_code.as_deref(), Some("released_at_shutdown"));
    let again = queue::lease(&mut c, "w2", 1, LEASE).unwrap();
    assert_eq!(again[0].attempt, 1);
}

#[test]
fn operator_retry_requeue_and_listing() {
    let db = TestDb::migrated("queue_operator");
    let mut c = db.conn();
    let failed = enq(&mut c, &job("a", 1));
    let other_kind = {
        let mut j = job("b", 2);
        j.kind = JobKind::SyncProfile;
        enq(&mut c, &j)
    };
    queue::lease(&mut c, "w", 10, LEASE).unwrap();
    let fail = Finish::Failed {
        code: divine_bridge_db::ErrorCode::PdsRejected,
        message: "bad".into(),
    };
    finish(&mut c, failed, &fail);
    finish(&mut c, other_kind, &fail);

    assert!(queue::retry(&mut c, failed).unwrap());
    let r = row(&mut c, failed);
    assert_eq!((r.state.as_str(), r.attempt), ("queued", 1), "attempt kept");
    assert!(r.finished_at.is_none());
    assert!(!queue::retry(&mut c, failed).unwrap(), "queued is not retryable");

    assert_eq!(queue::retry_failed(&mut c, Some(JobKind::Noop)).unwrap(), 0);
    assert_eq!(queue::failed_ids(&mut c, None).unwrap(), vec![other_kind]);
    assert_eq!(queue::retry_failed(&mut c, Some(JobKind::SyncProfile)).unwrap(), 1);
    assert_eq!(row(&mut c, other_kind).state, "queued");

    let listed = queue::list(
        &mut c,
        &JobFilter {
            state: Some(JobState::Queued),
            kind: Some(JobKind::Noop),
            ordering_key: Some("a".into()),
            account: None,
        },
        10,
    )
    .unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![failed]);
    let all = queue::list(&mut c, &JobFilter::default(), 1).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, other_kind, "newest first");
}

#[test]
fn requeue_or_enqueue_redrives_terminal_jobs() {
    let db = TestDb::migrated("queue_redrive");
    let mut c = db.conn();
    let j = job("a", 1).unique("provision:a");
    let first = queue::requeue_or_enqueue(&mut c, &j).unwrap().unwrap();
    assert_eq!(
        queue::requeue_or_enqueue(&mut c, &j).unwrap(),
        Some(first),
        "live job left alone"
    );

    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    let inel = Finish::Ineligible {
        code: divine_bridge_db::ErrorCode::AccountDisabled,
        detail: "off".into(),
    };
    finish(&mut c, first, &inel);
    assert_eq!(queue::requeue_or_enqueue(&mut c, &j).unwrap(), Some(first));
    assert_eq!(row(&mut c, first).state, "queued", "ineligible → queued");

    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    complete(&mut c, &[first]);
    let second = queue::requeue_or_enqueue(&mut c, &j).unwrap().unwrap();
    assert_ne!(
        second, first,
        "a succeeded job is never re-run; a fresh job takes the key"
    );
    let old = row(&mut c, first);
    assert_eq!(old.state, "succeeded");
    assert_eq!(old.unique_key, Some(format!("provision:a@{first}")));
    assert_eq!(row(&mut c, second).unique_key.as_deref(), Some("provision:a"));
    assert_eq!(queue::enqueue(&mut c, &j).unwrap(), None, "the key still deduplicates");
}

#[test]
fn stats_group_by_kind_and_state() {
    let db = TestDb::migrated("queue_stats");
    let mut c = db.conn();
    enq(&mut c, &job("a", 1));
    enq(&mut c, &job("b", 2));
    enq(&mut c, &job("a", 3));
    diesel::sql_query("UPDATE jobs SET source_created_at = now() - interval '100 seconds' WHERE ordering_key = 'b'")
        .execute(&mut c)
        .unwrap();
    queue::lease(&mut c, "w", 1, LEASE).unwrap();
    let stats = queue::stats(&mut c).unwrap();
    let get = |state: &str| stats.iter().find(|s| s.kind == "noop" && s.state == state).unwrap();
    assert_eq!(get("queued").count, 2);
    assert_eq!(get("running").count, 1);
    assert!(
        get("queued").oldest_age_secs >= 99.0,
        "{}",
        get("queued").oldest_age_secs
    );
}

/// `bridge_oldest_queued_job_age_seconds` counts from the source event and includes jobs waiting out a backoff: a
/// post that has been retrying for two days is two days old (the old gauge, `now - run_at` over runnable jobs only,
/// showed 0 for it). History imported at backfill priority counts from its enqueue time.
#[test]
fn oldest_queued_age_counts_from_the_event_including_backoff() {
    let db = TestDb::migrated("queue_stats_age");
    let mut c = db.conn();
    let mut live = NewJob::new(JobKind::PublishPost, "a", serde_json::json!({}));
    live.source_created_at = Some(Utc::now() - ChronoDuration::days(2));
    live.run_at = Some(Utc::now() + ChronoDuration::minutes(30)); // in backoff
    enq(&mut c, &live);
    let mut history = NewJob::new(JobKind::SyncProfile, "b", serde_json::json!({}));
    history.priority = divine_bridge_db::states::priority::BACKFILL;
    history.source_created_at = Some(Utc::now() - ChronoDuration::days(365));
    enq(&mut c, &history);
    let stats = queue::stats(&mut c).unwrap();
    let age = |kind: &str| {
        stats
            .iter()
            .find(|s| s.kind == kind && s.state == "queued")
            .unwrap()
            .oldest_age_secs
    };
    assert!(age("publish_post") >= 2.0 * 86_400.0 - 5.0, "{}", age("publish_post"));
    assert!(
        age("sync_profile") < 60.0,
        "backfill counts from enqueue: {}",
        age("sync_profile")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Key heads, fair dispatch (issue 11 §2, §3)
// ---------------------------------------------------------------------------------------------------------------

#[derive(QueryableByName, Debug, PartialEq)]
struct Head {
    #[diesel(sql_type = diesel::sql_types::Text)]
    ordering_key: String,
    #[diesel(sql_type = BigInt)]
    head_id: i64,
    #[diesel(sql_type = diesel::sql_types::SmallInt)]
    class: i16,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    run_at: DateTime<Utc>,
}

/// `job_heads` as stored, and as recomputed from `jobs` (the first live job of each key in key order).
fn heads_stored_and_expected(conn: &mut PgConnection) -> (Vec<Head>, Vec<Head>) {
    let stored = diesel::sql_query("SELECT ordering_key, head_id, class, run_at FROM job_heads ORDER BY ordering_key")
        .load(conn)
        .unwrap();
    let expected = diesel::sql_query(
        "SELECT DISTINCT ON (ordering_key) ordering_key, id AS head_id, job_dispatch_class(priority) AS class, run_at \
         FROM jobs WHERE state IN ('queued', 'running') ORDER BY ordering_key, priority, source_created_at, id",
    )
    .load(conn)
    .unwrap();
    (stored, expected)
}

fn assert_heads_exact(conn: &mut PgConnection, step: &str) {
    let (stored, expected) = heads_stored_and_expected(conn);
    assert_eq!(stored, expected, "job_heads drifted from jobs after {step}");
}

#[test]
fn job_heads_follow_every_kind_of_job_change() {
    let db = TestDb::migrated("queue_heads_exact");
    let mut c = db.conn();
    enq(&mut c, &job("a", 1));
    let a2 = enq(&mut c, &job("a", 2));
    let b1 = enq(&mut c, &job("b", 3));
    queue::enqueue_many(&mut c, &[job("c", 4), job("c", 5), job("d", 6)]).unwrap();
    assert_heads_exact(&mut c, "enqueue");
    // An earlier job of a key becomes its head; a lower priority value too.
    let a0 = enq(&mut c, &job("a", 0));
    let mut urgent = job("b", 99);
    urgent.priority = divine_bridge_db::states::priority::ACCOUNT;
    let b_urgent = enq(&mut c, &urgent);
    assert_heads_exact(&mut c, "enqueue of earlier jobs");
    let leased = ids(&queue::lease(&mut c, "w", 10, LEASE).unwrap());
    assert!(leased.contains(&a0) && leased.contains(&b_urgent), "{leased:?}");
    assert_heads_exact(&mut c, "lease");
    assert_eq!(
        finish(&mut c, a0, &retry_now("xrpc_server_error")),
        Finished::Applied(JobState::Queued)
    );
    assert_heads_exact(&mut c, "retry");
    complete(&mut c, &[b_urgent]);
    assert_heads_exact(&mut c, "complete");
    queue::lease(&mut c, "w", 10, LEASE).unwrap();
    let running: Vec<i64> = queue::list(
        &mut c,
        &JobFilter {
            state: Some(JobState::Running),
            ..JobFilter::default()
        },
        100,
    )
    .unwrap()
    .iter()
    .map(|r| r.id)
    .collect();
    expire_lease(&mut c, running[0]);
    queue::reclaim_expired(&mut c, &POLICY).unwrap();
    assert_heads_exact(&mut c, "reclaim");
    let l = held(&mut c, running[1]);
    queue::release(&mut c, "w", &[l]).unwrap();
    assert_heads_exact(&mut c, "release");
    assert!(queue::cancel(&mut c, a2).unwrap());
    assert_heads_exact(&mut c, "cancel");
    assert!(queue::retry(&mut c, a2).unwrap());
    assert_heads_exact(&mut c, "operator retry");
    diesel::sql_query("UPDATE jobs SET run_at = now() + interval '1 hour' WHERE id = $1")
        .bind::<BigInt, _>(b1)
        .execute(&mut c)
        .unwrap();
    assert_heads_exact(&mut c, "a manual run_at change");
    diesel::sql_query("UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE state = 'queued'")
        .execute(&mut c)
        .unwrap();
    assert_heads_exact(&mut c, "a bulk cancel");
    queue::prune_finished(&mut c, Utc::now() + ChronoDuration::seconds(1), 1000).unwrap();
    assert_heads_exact(&mut c, "prune");
    diesel::sql_query("TRUNCATE jobs").execute(&mut c).unwrap();
    assert_heads_exact(&mut c, "truncate");
}

#[test]
fn the_migration_backfills_heads_of_jobs_queued_before_it() {
    use diesel_migrations::MigrationHarness;
    let db = TestDb::migrated("queue_heads_backfill");
    let mut c = db.conn();
    // Back to the schema before job_heads, queue work the old way, then migrate forward.
    let has_heads = |c: &mut PgConnection| -> bool {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "to_regclass('job_heads') IS NOT NULL",
        ))
        .get_result(c)
        .unwrap()
    };
    while has_heads(&mut c) {
        c.revert_last_migration(divine_bridge_db::migrate::MIGRATIONS).unwrap();
    }
    for (key, n) in [("a", 2), ("a", 1), ("b", 3), ("c", 4)] {
        diesel::sql_query(
            "INSERT INTO jobs (kind, ordering_key, payload, source_created_at) VALUES ('noop', $1, '{}', $2)",
        )
        .bind::<diesel::sql_types::Text, _>(key)
        .bind::<diesel::sql_types::Timestamptz, _>(t0() + ChronoDuration::milliseconds(n))
        .execute(&mut c)
        .unwrap();
    }
    diesel::sql_query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE ordering_key = 'c'")
        .execute(&mut c)
        .unwrap();
    divine_bridge_db::migrate::run_migrations(&mut c).unwrap();
    assert_heads_exact(&mut c, "the migration's backfill");
    let (stored, _) = heads_stored_and_expected(&mut c);
    assert_eq!(
        stored.iter().map(|h| h.ordering_key.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

#[test]
fn the_sql_dispatch_class_matches_the_rust_one() {
    use divine_bridge_db::states::DispatchClass;
    let db = TestDb::migrated("queue_dispatch_class");
    let mut c = db.conn();
    #[derive(QueryableByName)]
    struct C {
        #[diesel(sql_type = diesel::sql_types::SmallInt)]
        class: i16,
    }
    for p in [i16::MIN, -11, -10, -1, 0, 1, 9, 10, 11, i16::MAX] {
        let got: C = diesel::sql_query("SELECT job_dispatch_class($1) AS class")
            .bind::<diesel::sql_types::SmallInt, _>(p)
            .get_result(&mut c)
            .unwrap();
        assert_eq!(got.class, DispatchClass::of(p) as i16, "priority {p}");
    }
}

/// Buffers one lease touches: EXPLAIN ANALYZE BUFFERS of LEASE_SQL prepared and executed as the queue runs it (under
/// LEASE_SETTINGS, so with its generic plan), rolled back.
fn lease_buffers(conn: &mut PgConnection) -> i64 {
    #[derive(QueryableByName)]
    struct Plan {
        #[diesel(sql_type = diesel::sql_types::Text)]
        #[diesel(column_name = "QUERY PLAN")]
        plan: String,
    }
    let mut plan: Vec<Plan> = Vec::new();
    let _ = conn.transaction::<(), diesel::result::Error, _>(|c| {
        diesel::sql_query(queue::lease_settings_local_sql()).execute(c)?;
        diesel::sql_query(format!(
            "PREPARE lease_explain(text, bigint, float8, int2[], int4[]) AS {}",
            queue::LEASE_SQL
        ))
        .execute(c)?;
        plan = diesel::sql_query(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE lease_explain('explain', 16, 60, '{0,1,2}', '{2,4,1}')",
        )
        .load(c)?;
        Err(diesel::result::Error::RollbackTransaction)
    });
    diesel::sql_query("DEALLOCATE lease_explain").execute(conn).unwrap();
    let json: serde_json::Value = serde_json::from_str(&plan[0].plan).unwrap();
    let top = &json[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

/// Issue 11 §3 (throughput): the lease is prepared once per connection and runs a generic plan: no planning per call
/// (planning was ~10 ms of an ~11 ms lease under load, measured with `scripts/bench.sh queue`).
#[test]
fn the_lease_is_prepared_once_per_connection_and_runs_a_generic_plan() {
    #[derive(QueryableByName)]
    struct Stmt {
        #[diesel(sql_type = BigInt)]
        generic_plans: i64,
        #[diesel(sql_type = BigInt)]
        custom_plans: i64,
    }
    let db = TestDb::migrated("queue_lease_prepared");
    let mut c = db.conn();
    let batch: Vec<NewJob> = (0..6).map(|i| job(&format!("p-{i}"), i)).collect();
    queue::enqueue_many(&mut c, &batch).unwrap();
    for _ in 0..3 {
        assert_eq!(queue::lease(&mut c, "w", 2, LEASE).unwrap().len(), 2);
    }
    let stmts: Vec<Stmt> = diesel::sql_query(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE '%FROM job_heads h JOIN jobs j%'",
    )
    .load(&mut c)
    .unwrap();
    assert_eq!(
        stmts.len(),
        1,
        "the lease statement is prepared once on this connection"
    );
    assert_eq!((stmts[0].generic_plans, stmts[0].custom_plans), (3, 0));
}

/// Issue 11 §3: the lease cost does not depend on how many jobs wait behind heads in backoff. 100 keys whose heads
/// wait an hour, with 50 and then 20,000 due jobs queued behind them, next to 16 runnable jobs: the lease touches the
/// same handful of buffers both times (the old statement walked every due job behind the heads: ~20,000 probes).
#[test]
fn the_lease_ignores_jobs_blocked_behind_heads_in_backoff() {
    let db = TestDb::migrated("queue_heads_blocked");
    let mut c = db.conn();
    let load = |c: &mut PgConnection, from: i64, to: i64| {
        diesel::sql_query(
            "INSERT INTO jobs (kind, ordering_key, payload, source_created_at, run_at) \
             SELECT 'noop', 'blocked-' || (i % 100), '{}', timestamptz '2026-01-01' + make_interval(secs => i), \
                    CASE WHEN i < 100 THEN now() + interval '1 hour' ELSE now() END \
             FROM generate_series($1, $2) AS i",
        )
        .bind::<BigInt, _>(from)
        .bind::<BigInt, _>(to)
        .execute(c)
        .unwrap();
        diesel::sql_query("ANALYZE jobs").execute(c).unwrap();
    };
    let runnable = |c: &mut PgConnection| {
        let batch: Vec<NewJob> = (0..16).map(|i| job(&format!("free-{i}"), 1_000_000 + i)).collect();
        queue::enqueue_many(c, &batch).unwrap();
    };
    load(&mut c, 0, 149);
    runnable(&mut c);
    let few = lease_buffers(&mut c);
    load(&mut c, 150, 20_149);
    let many = lease_buffers(&mut c);
    // Deeper indexes may cost a buffer more per probe; walking the blocked jobs costs thousands.
    assert!(
        many <= 2 * few,
        "lease touched {few} buffers with 50 blocked jobs and {many} with 20,050"
    );
    let got = queue::lease(&mut c, "w", 16, LEASE).unwrap();
    assert_eq!(got.len(), 16);
    assert!(got.iter().all(|j| j.ordering_key.starts_with("free-")));
}

fn prio_job(key: &str, prio: i16, n: i64) -> NewJob {
    let mut j = job(key, n);
    j.priority = prio;
    j
}

/// Leases a batch of 16 and completes it at once (a pool whose jobs are instant).
fn lease_and_complete(c: &mut PgConnection) -> Vec<queue::LeasedJob> {
    let got = queue::lease(c, "w", 16, LEASE).unwrap();
    let leases: Vec<Lease> = got.iter().map(|j| j.lease()).collect();
    queue::complete_many(c, &leases).unwrap();
    got
}

/// Issue 11 §2: a launch wave of 1,000 provisioning jobs no longer holds back live posts of other accounts: the 10
/// live jobs queued after the wave are all in the first batch (strict priority leased them after the whole wave).
#[test]
fn a_provisioning_wave_does_not_starve_live_posts() {
    use divine_bridge_db::states::priority;
    let db = TestDb::migrated("queue_fair_wave");
    let mut c = db.conn();
    let wave: Vec<NewJob> = (0..1_000)
        .map(|i| prio_job(&format!("acct-{i}"), priority::ACCOUNT, i))
        .collect();
    queue::enqueue_many(&mut c, &wave).unwrap();
    let live: Vec<NewJob> = (0..10)
        .map(|i| prio_job(&format!("event-{i}"), priority::LIVE, 2_000 + i))
        .collect();
    let live = queue::enqueue_many(&mut c, &live).unwrap();
    let first = lease_and_complete(&mut c);
    let first_ids = ids(&first);
    assert!(
        live.iter().all(|id| first_ids.contains(id)),
        "live jobs in the first batch of 16: {first_ids:?}"
    );
    assert!(
        first.iter().any(|j| j.priority == priority::ACCOUNT),
        "provisioning keeps its share"
    );
    // Weighted, not inverted: with live work exhausted the wave gets the whole batch.
    assert!(lease_and_complete(&mut c)
        .iter()
        .all(|j| j.priority == priority::ACCOUNT));
}

/// Issue 11 §2: backfill keeps progressing while live work keeps arriving (strict priority starved it), and live
/// work still gets most of the workers.
#[test]
fn backfill_progresses_while_live_work_keeps_arriving() {
    use divine_bridge_db::states::priority;
    let db = TestDb::migrated("queue_fair_backfill");
    let mut c = db.conn();
    let history: Vec<NewJob> = (0..1_000)
        .map(|i| prio_job(&format!("hist-{i}"), priority::BACKFILL, i))
        .collect();
    queue::enqueue_many(&mut c, &history).unwrap();
    let (mut live, mut backfill) = (0, 0);
    for round in 0..20 {
        let fresh: Vec<NewJob> = (0..16)
            .map(|i| prio_job(&format!("live-{round}-{i}"), priority::LIVE, 10_000 + round * 16 + i))
            .collect();
        queue::enqueue_many(&mut c, &fresh).unwrap();
        for j in lease_and_complete(&mut c) {
            if j.priority == priority::BACKFILL {
                backfill += 1;
            } else {
                live += 1;
            }
        }
    }
    assert!(backfill >= 20, "backfill leased {backfill} of {} jobs", live + backfill);
    assert!(live >= 3 * backfill, "live {live} vs backfill {backfill}");
}

/// The weights apply to what runs across the fleet, not per call: one free worker at a time (batch 1) while the
/// other jobs keep running still mixes the classes.
#[test]
fn fair_dispatch_counts_running_jobs_across_calls() {
    use divine_bridge_db::states::priority;
    let db = TestDb::migrated("queue_fair_running");
    let mut c = db.conn();
    let wave: Vec<NewJob> = (0..50)
        .map(|i| prio_job(&format!("acct-{i}"), priority::ACCOUNT, i))
        .collect();
    queue::enqueue_many(&mut c, &wave).unwrap();
    let live: Vec<NewJob> = (0..50)
        .map(|i| prio_job(&format!("ev-{i}"), priority::LIVE, 100 + i))
        .collect();
    queue::enqueue_many(&mut c, &live).unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        got.extend(queue::lease(&mut c, "w", 1, LEASE).unwrap());
    }
    let accounts = got.iter().filter(|j| j.priority == priority::ACCOUNT).count();
    assert_eq!(
        (got.len(), accounts),
        (6, 2),
        "live 4 : account 2 over six single leases"
    );
}
