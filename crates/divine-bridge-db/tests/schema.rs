//! Migrations and schema contract: fresh apply, idempotent re-run, concurrent migrators, and the Rust state enums
//! naming exactly the values allowed by the SQL CHECK constraints.

use diesel::prelude::*;
use diesel::sql_types::Text;
use divine_bridge_db::migrate::{migrations_applied, run_migrations};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::{JobKind, JobState, ProvisioningState, RecordState};

#[derive(QueryableByName)]
struct Def {
    #[diesel(sql_type = Text)]
    def: String,
}

/// Values listed in the CHECK constraint on `table.column`, parsed from `pg_get_constraintdef`.
fn check_values(conn: &mut PgConnection, table: &str, column: &str) -> Vec<String> {
    let defs: Vec<Def> = diesel::sql_query(
        "SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c \
         JOIN pg_class t ON t.oid = c.conrelid WHERE t.relname = $1 AND c.contype = 'c'",
    )
    .bind::<Text, _>(table)
    .load(conn)
    .unwrap();
    let def = defs
        .into_iter()
        .map(|d| d.def)
        .find(|d| d.contains(&format!("({column} = ANY")) || d.contains(&format!("(({column} = ANY")))
        .unwrap_or_else(|| panic!("no CHECK on {table}.{column}"));
    let mut values: Vec<String> = def.split('\'').skip(1).step_by(2).map(str::to_string).collect();
    values.sort();
    values
}

fn sorted(v: impl IntoIterator<Item = &'static str>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn fresh_database_migrates_and_rerun_is_a_noop() {
    let db = TestDb::empty("schema_fresh");
    let mut conn = db.conn();
    assert!(!migrations_applied(&mut conn).unwrap());
    let first = run_migrations(&mut conn).unwrap();
    assert!(!first.is_empty(), "fresh database applies every migration");
    assert!(migrations_applied(&mut conn).unwrap());
    let second = run_migrations(&mut conn).unwrap();
    assert!(second.is_empty(), "re-run applies nothing, got {second:?}");
}

#[test]
fn concurrent_migrators_do_not_race() {
    let db = TestDb::empty("schema_concurrent");
    let url = db.url.clone();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                run_migrations(&mut conn).map(|v| v.len())
            })
        })
        .collect();
    let applied: Vec<usize> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("no migrator fails"))
        .collect();
    let total = divine_bridge_db::migrate::migration_count();
    assert_eq!(
        applied.iter().sum::<usize>(),
        total,
        "each migration applied exactly once: {applied:?}"
    );
    assert_eq!(
        applied.iter().filter(|n| **n > 0).count(),
        1,
        "one migrator did all the work: {applied:?}"
    );
    assert!(migrations_applied(&mut db.conn()).unwrap());
}

#[test]
fn rust_enums_match_sql_check_constraints() {
    let db = TestDb::migrated("schema_enums");
    let mut conn = db.conn();
    assert_eq!(
        check_values(&mut conn, "jobs", "state"),
        sorted(JobState::ALL.iter().map(|s| s.as_str()))
    );
    assert_eq!(
        check_values(&mut conn, "jobs", "kind"),
        sorted(JobKind::ALL.iter().map(|s| s.as_str()))
    );
    assert_eq!(
        check_values(&mut conn, "account_links", "provisioning_state"),
        sorted(ProvisioningState::ALL.iter().map(|s| s.as_str()))
    );
    assert_eq!(
        check_values(&mut conn, "account_audit", "action"),
        sorted(divine_bridge_db::states::AuditAction::ALL.iter().map(|s| s.as_str()))
    );
    assert_eq!(
        check_values(&mut conn, "record_mappings", "state"),
        sorted(RecordState::ALL.iter().map(|s| s.as_str()))
    );
}

#[test]
fn state_constraints_reject_free_text_and_inconsistent_leases() {
    let db = TestDb::migrated("schema_checks");
    let mut conn = db.conn();
    let bad_state = diesel::sql_query("INSERT INTO jobs (kind, ordering_key, state) VALUES ('noop', 'k', 'exploded')")
        .execute(&mut conn);
    assert!(bad_state.is_err(), "free-text state is refused");
    let running_without_lease =
        diesel::sql_query("INSERT INTO jobs (kind, ordering_key, state) VALUES ('noop', 'k', 'running')")
            .execute(&mut conn);
    assert!(running_without_lease.is_err(), "running requires a lease");
    let running_without_token = diesel::sql_query(
        "INSERT INTO jobs (kind, ordering_key, state, lease_owner, lease_expires_at) \
         VALUES ('noop', 'k', 'running', 'w', now() + interval '1 minute')",
    )
    .execute(&mut conn);
    let err = running_without_token.expect_err("running requires a lease token");
    assert!(err.to_string().contains("jobs_token_matches_state"), "{err}");
    let upper_handle = diesel::sql_query(
        "INSERT INTO account_links (nostr_pubkey, handle) VALUES (repeat('a', 64), 'Alice.divine.test')",
    )
    .execute(&mut conn);
    assert!(upper_handle.is_err(), "handles are stored lower-cased");
}

#[test]
fn two_running_jobs_for_one_key_are_refused_by_the_database() {
    let db = TestDb::migrated("schema_one_running");
    let mut conn = db.conn();
    let insert = "INSERT INTO jobs (kind, ordering_key, state, lease_owner, lease_token, lease_expires_at) \
                  VALUES ('noop', 'acct', 'running', 'w1', nextval('jobs_lease_token_seq'), now() + interval '1 minute')";
    diesel::sql_query(insert).execute(&mut conn).unwrap();
    let second = diesel::sql_query(insert).execute(&mut conn);
    let err = second.expect_err("second running job for the same key");
    assert!(err.to_string().contains("jobs_one_running_per_key"), "{err}");
}

/// Issue 13 §3: `JobKind` and `JobState` are Diesel `Text` values (written by `as_str`, read back through `FromStr`):
/// every value round-trips through Postgres, filters take the enum itself, and a stored value outside the enum is a
/// decode error, never a default.
#[test]
fn job_enums_round_trip_through_text_columns() {
    use diesel::dsl::sql;
    use divine_bridge_db::queue::{self, NewJob};
    use divine_bridge_db::schema::jobs;
    let db = TestDb::migrated("schema_enum_text");
    let mut c = db.conn();
    for kind in JobKind::ALL {
        let back: JobKind = diesel::select(kind.into_sql::<Text>()).get_result(&mut c).unwrap();
        assert_eq!(back, *kind);
    }
    for state in JobState::ALL {
        let back: JobState = diesel::select(state.into_sql::<Text>()).get_result(&mut c).unwrap();
        assert_eq!(back, *state);
    }
    let id = queue::enqueue(&mut c, &NewJob::new(JobKind::Noop, "k", serde_json::json!({})))
        .unwrap()
        .unwrap();
    let (kind, state): (JobKind, JobState) = jobs::table
        .find(id)
        .filter(jobs::kind.eq(JobKind::Noop))
        .filter(jobs::state.eq(JobState::Queued))
        .select((jobs::kind, jobs::state))
        .first(&mut c)
        .unwrap();
    assert_eq!((kind, state), (JobKind::Noop, JobState::Queued));
    let bogus = diesel::select(sql::<Text>("'bogus'")).get_result::<JobState>(&mut c);
    assert!(bogus.is_err(), "an unknown stored state must not decode");
}
