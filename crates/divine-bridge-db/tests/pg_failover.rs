//! Postgres restart and failover, against a real server: every transient SQLSTATE class is produced for real and
//! classified transient with its own code; a pool survives `pg_terminate_backend` of every backend of its database
//! without a process restart; the session timeouts are applied to every pooled connection.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{Classified, Db, DbError, DbSettings, ErrorClass};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn settings(f: impl FnOnce(&mut DbSettings)) -> DbSettings {
    let mut s = DbSettings::with_pool_size(4);
    f(&mut s);
    s
}

fn pool(tdb: &TestDb, s: &DbSettings) -> Db {
    Db::connect_with(&tdb.url, s).expect("pool")
}

async fn backend_pid(db: &Db) -> Result<i32, DbError> {
    db.run(|c| Ok(diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()")).get_result(c)?))
        .await
}

fn assert_transient(e: &DbError, code: &str) {
    assert_eq!((e.code().as_str(), e.class()), (code, ErrorClass::Transient), "{e}");
}

/// 57P01 (admin_shutdown, what `pg_terminate_backend` and a fast shutdown send): transient `db_connection_lost`,
/// and the connection is discarded — the next statement runs on a new backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_is_a_transient_connection_loss_and_is_discarded() {
    let tdb = TestDb::migrated("pg_57p01");
    // One connection and no idle ping: the dead connection is certainly handed out once.
    let db = pool(
        &tdb,
        &settings(|s| {
            s.max_size = 1;
            s.idle_check_after = Duration::from_secs(3600);
        }),
    );
    let before = backend_pid(&db).await.unwrap();
    assert_eq!(tdb.terminate_backends(), 1);
    let err = backend_pid(&db).await.unwrap_err();
    assert_transient(&err, "db_connection_lost");
    let after = backend_pid(&db)
        .await
        .expect("the next statement gets a new connection");
    assert_ne!(before, after);
}

/// 55P03 (lock_not_available) from `lock_timeout`, with a row lock held by another connection: transient
/// `db_lock_timeout`, returned after about `lock_timeout` (the old pool had no lock timeout: it waited forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_held_elsewhere_fails_after_lock_timeout_as_transient() {
    let tdb = TestDb::migrated("pg_55p03");
    let mut holder = tdb.conn();
    diesel::sql_query("CREATE TABLE lockme (id int PRIMARY KEY, v int)")
        .execute(&mut holder)
        .unwrap();
    diesel::sql_query("INSERT INTO lockme VALUES (1, 0)")
        .execute(&mut holder)
        .unwrap();
    diesel::sql_query("BEGIN").execute(&mut holder).unwrap();
    diesel::sql_query("SELECT * FROM lockme WHERE id = 1 FOR UPDATE")
        .execute(&mut holder)
        .unwrap();

    let db = pool(&tdb, &settings(|s| s.lock_timeout = Duration::from_millis(300)));
    let started = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        db.run(|c| Ok(diesel::sql_query("UPDATE lockme SET v = 1 WHERE id = 1").execute(c)?)),
    )
    .await
    .expect("lock_timeout bounds the wait");
    assert_transient(&res.unwrap_err(), "db_lock_timeout");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    diesel::sql_query("ROLLBACK").execute(&mut holder).unwrap();
    // The connection is fine: only the statement failed.
    db.run(|c| {
        Ok::<_, divine_bridge_db::DbError>(diesel::sql_query("UPDATE lockme SET v = 2 WHERE id = 1").execute(c)?)
    })
    .await
    .unwrap();
}

/// 57014 (query_canceled) from `statement_timeout`: transient `db_statement_canceled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_statement_timeout_is_canceled_as_transient() {
    let tdb = TestDb::migrated("pg_57014");
    let db = pool(&tdb, &settings(|s| s.statement_timeout = Duration::from_millis(300)));
    let started = Instant::now();
    let err = db
        .run(|c| Ok(diesel::sql_query("SELECT pg_sleep(5)").execute(c)?))
        .await
        .unwrap_err();
    assert_transient(&err, "db_statement_canceled");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

/// 25006 (read_only_sql_transaction), as on a primary demoted during a failover: transient `db_read_only`, and the
/// connection is discarded so the next one can reach the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_read_only_is_transient_and_the_connection_is_replaced() {
    let tdb = TestDb::migrated("pg_25006");
    let db = pool(&tdb, &settings(|s| s.max_size = 1));
    let before = backend_pid(&db).await.unwrap();
    let err = db
        .run(|c| {
            diesel::sql_query("SET default_transaction_read_only = on").execute(c)?;
            Ok(diesel::sql_query("CREATE TABLE refused (id int)").execute(c)?)
        })
        .await
        .unwrap_err();
    assert_transient(&err, "db_read_only");
    let after = backend_pid(&db).await.unwrap();
    assert_ne!(before, after, "a read-only session is not reused");
    db.run(|c| Ok::<_, divine_bridge_db::DbError>(diesel::sql_query("CREATE TABLE accepted (id int)").execute(c)?))
        .await
        .expect("the new connection is writable");
}

/// 40P01 (deadlock_detected) and 40001 (serialization_failure): transient `db_serialization_conflict`.
#[test]
fn deadlocks_and_serialization_failures_are_transient_conflicts() {
    let tdb = TestDb::migrated("pg_40");
    diesel::sql_query("CREATE TABLE skew (v int)")
        .execute(&mut tdb.conn())
        .unwrap();
    let url = Arc::new(tdb.url.clone());

    // Deadlock: each side takes one advisory lock, then waits for the other's.
    let barrier = Arc::new(Barrier::new(2));
    let sides: Vec<_> = [(1i64, 2i64), (2, 1)]
        .into_iter()
        .map(|(first, second)| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<(), DbError> {
                let db = Db::connect(&url, 1)?;
                let mut c = db.conn()?;
                c.transaction(|c| {
                    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                        .bind::<BigInt, _>(first)
                        .execute(c)?;
                    barrier.wait();
                    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                        .bind::<BigInt, _>(second)
                        .execute(c)?;
                    Ok::<_, diesel::result::Error>(())
                })
                .map_err(DbError::from_diesel)
            })
        })
        .collect();
    let results: Vec<_> = sides.into_iter().map(|t| t.join().unwrap()).collect();
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "exactly one side is the deadlock victim: {results:?}");
    assert!(errors[0].to_string().contains("deadlock detected"), "{}", errors[0]);
    assert_transient(errors[0], "db_serialization_conflict");

    // Write skew under SERIALIZABLE: both read the table, both insert; the second commit fails with 40001.
    let db = Db::connect(&url, 2).unwrap();
    let (mut a, mut b) = (db.conn().unwrap(), db.conn().unwrap());
    for c in [&mut a, &mut b] {
        diesel::sql_query("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .execute(&mut **c)
            .unwrap();
        diesel::sql_query("SELECT count(*) FROM skew")
            .execute(&mut **c)
            .unwrap();
        diesel::sql_query("INSERT INTO skew VALUES (1)")
            .execute(&mut **c)
            .unwrap();
    }
    diesel::sql_query("COMMIT").execute(&mut *a).unwrap();
    let err = DbError::from_diesel(diesel::sql_query("COMMIT").execute(&mut *b).unwrap_err());
    assert_transient(&err, "db_serialization_conflict");
}

/// Permanent stays permanent: a syntax error and an undefined table are not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_errors_outside_the_transient_classes_stay_permanent() {
    let tdb = TestDb::migrated("pg_permanent");
    let db = tdb.pool(1);
    for sql in ["SELEC 1", "SELECT * FROM no_such_table", "SELECT 1/0"] {
        let err = db
            .run(move |c| Ok::<_, divine_bridge_db::DbError>(diesel::sql_query(sql).execute(c)?))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.class()),
            (ErrorCode::DbQueryFailed, ErrorClass::Permanent),
            "{sql}: {err}"
        );
    }
}

/// Every pooled connection gets the configured session timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pooled_connection_has_the_session_timeouts() {
    let tdb = TestDb::migrated("pg_session");
    let db = pool(
        &tdb,
        &settings(|s| {
            s.statement_timeout = Duration::from_millis(1234);
            s.lock_timeout = Duration::from_millis(567);
            s.idle_in_transaction_timeout = Duration::from_millis(8910);
        }),
    );
    let shown = db
        .run(|c| {
            Ok::<_, divine_bridge_db::DbError>(
                diesel::select(diesel::dsl::sql::<(
                    diesel::sql_types::Text,
                    diesel::sql_types::Text,
                    diesel::sql_types::Text,
                )>(
                    "current_setting('statement_timeout'), current_setting('lock_timeout'), \
                 current_setting('idle_in_transaction_session_timeout')",
                ))
                .get_result::<(String, String, String)>(c)?,
            )
        })
        .await
        .unwrap();
    assert_eq!(shown, ("1234ms".into(), "567ms".into(), "8910ms".into()));
}

/// Migrations run without the pool's lock timeout: a replica waiting on the migration advisory lock held by
/// another one for longer than `lock_timeout` still migrates, and the connection gets its timeout back.
#[test]
fn migrations_wait_for_the_advisory_lock_beyond_lock_timeout() {
    let tdb = TestDb::empty("pg_migrate_wait");
    let mut holder = tdb.conn();
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(divine_bridge_db::migrate::MIGRATION_LOCK_KEY)
        .execute(&mut holder)
        .unwrap();
    let db = Db::connect_with(&tdb.url, &settings(|s| s.lock_timeout = Duration::from_millis(200))).unwrap();
    let migrator = std::thread::spawn(move || {
        let mut c = db.conn().unwrap();
        let applied = divine_bridge_db::migrate::run_migrations(&mut c);
        let lock_timeout: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "current_setting('lock_timeout')",
        ))
        .get_result(&mut *c)
        .unwrap();
        (applied, lock_timeout)
    });
    std::thread::sleep(Duration::from_millis(800));
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(divine_bridge_db::migrate::MIGRATION_LOCK_KEY)
        .execute(&mut holder)
        .unwrap();
    let (applied, lock_timeout) = migrator.join().unwrap();
    assert!(!applied.expect("migrated after waiting").is_empty());
    assert_eq!(lock_timeout, "200ms");
}

/// The pool after `pg_terminate_backend` of every backend of its database, as in a Postgres restart:
/// - idle connections (unused for `idle_check_after`) are pinged on checkout and replaced: NO error at all;
/// - connections in use until the kill fail at most once each (transient `db_connection_lost`, which the caller's
///   retry absorbs) and are never handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_after_every_backend_is_terminated() {
    let tdb = TestDb::migrated("pg_pool_restart");
    const SIZE: u32 = 4;

    // Idle pool: no error.
    let db = pool(
        &tdb,
        &settings(|s| {
            s.max_size = SIZE;
            s.idle_check_after = Duration::from_millis(200);
        }),
    );
    let warm: Vec<_> = (0..SIZE).map(|_| db.conn().unwrap()).collect();
    drop(warm);
    assert!(tdb.terminate_backends() >= SIZE as usize);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..(3 * SIZE) {
        backend_pid(&db)
            .await
            .unwrap_or_else(|e| panic!("statement {i} after the restart failed: {e}"));
    }

    // Hot pool (no idle ping): each dead connection fails once, transiently, then is gone.
    let db = pool(
        &tdb,
        &settings(|s| {
            s.max_size = SIZE;
            s.idle_check_after = Duration::from_secs(3600);
        }),
    );
    let warm: Vec<_> = (0..SIZE).map(|_| db.conn().unwrap()).collect();
    drop(warm);
    tdb.terminate_backends();
    let mut failures = 0;
    for _ in 0..(3 * SIZE) {
        if let Err(e) = backend_pid(&db).await {
            assert_transient(&e, "db_connection_lost");
            failures += 1;
        }
    }
    assert!(failures <= SIZE, "{failures} failures for {SIZE} dead connections");
    for i in 0..(3 * SIZE) {
        backend_pid(&db)
            .await
            .unwrap_or_else(|e| panic!("statement {i} after recovery failed: {e}"));
    }
}

/// Transport settings reach libpq: keepalives and `tcp_user_timeout` are appended to both URL forms, libpq accepts
/// them, and a URL that sets one itself is refused (one source of truth).
#[test]
fn keepalive_parameters_are_added_to_the_connection_url() {
    let s = DbSettings::with_pool_size(1);
    let tail = "keepalives=1&keepalives_idle=30&keepalives_interval=10&keepalives_count=3&tcp_user_timeout=60000";
    assert_eq!(
        s.connection_url("postgres://u@h/db").unwrap(),
        format!("postgres://u@h/db?{tail}")
    );
    assert_eq!(
        s.connection_url("postgres://u@h/db?sslmode=disable").unwrap(),
        format!("postgres://u@h/db?sslmode=disable&{tail}")
    );
    assert_eq!(
        s.connection_url("host=h dbname=db").unwrap(),
        format!("host=h dbname=db {}", tail.replace('&', " "))
    );
    let err = s.connection_url("postgres://u@h/db?keepalives_idle=5").unwrap_err();
    assert_eq!(err.var, "DATABASE_URL");

    let tdb = TestDb::migrated("pg_keepalive");
    let mut c = PgConnection::establish(&s.connection_url(&tdb.url).unwrap()).expect("libpq accepts the parameters");
    diesel::sql_query("SELECT 1").execute(&mut c).unwrap();
}

/// Issue 11 §3 (throughput): `Db::lease` runs on a connection of its own whose session carries the lease settings, so
/// a lease is one statement (no transaction to set them per call); the pool's connections keep the defaults (a
/// synchronous commit, every plan shape), and the lease connection is replaced after a restart like the pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_connection_carries_the_lease_settings_and_is_replaced_after_a_restart() {
    use divine_bridge_db::queue::{self, NewJob};
    use divine_bridge_db::JobKind;
    let tdb = TestDb::migrated("pg_lease_session");
    let db = pool(&tdb, &settings(|s| s.idle_check_after = Duration::from_secs(3600)));
    db.run(|c| {
        let jobs: Vec<NewJob> = (0..4)
            .map(|i| NewJob::new(JobKind::Noop, format!("k-{i}"), serde_json::json!({})))
            .collect();
        queue::enqueue_many(c, &jobs)
    })
    .await
    .unwrap();
    let lease = Duration::from_secs(60);
    assert_eq!(db.lease("w", 2, lease).await.unwrap().len(), 2);
    for (name, value) in queue::LEASE_SETTINGS {
        assert_eq!(
            db.lease_connection_setting(name).await.unwrap(),
            value,
            "{name} on the lease connection"
        );
    }
    let pooled: String = db
        .run(|c| {
            Ok::<_, DbError>(
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                    "current_setting('synchronous_commit')",
                ))
                .get_result(c)?,
            )
        })
        .await
        .unwrap();
    assert_eq!(pooled, "on", "the pool's connections commit synchronously");

    assert!(tdb.terminate_backends() >= 2);
    // The dead lease connection fails at most one lease (transient), then a new one carries the settings again.
    if let Err(e) = db.lease("w", 1, lease).await {
        assert_transient(&e, "db_connection_lost");
    }
    let again = db.lease("w", 2, lease).await.unwrap();
    assert!(!again.is_empty(), "leases again after the restart");
    assert_eq!(db.lease_connection_setting("synchronous_commit").await.unwrap(), "off");
}
