//! `Db::connect_within`, the startup connection policy of both binaries (issue 14 §1): configuration errors fail at
//! once with `db_connect_rejected` and never print the password; an unreachable server is retried for the bounded
//! wait and then reported as `db_unavailable`; a reachable one connects.

use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{Classified, Db, DbSettings, ErrorClass};
use std::time::{Duration, Instant};

fn server() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn unknown_database_fails_fast_naming_database_url() {
    let url = format!("{}/no_such_db_{}", server(), std::process::id());
    let started = Instant::now();
    let err = rt()
        .block_on(Db::connect_within(
            &url,
            &DbSettings::with_pool_size(1),
            Duration::from_secs(30),
        ))
        .err()
        .expect("refused");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no waiting on a permanent error"
    );
    assert_eq!(err.code(), ErrorCode::DbConnectRejected);
    assert_eq!(err.class(), ErrorClass::Permanent);
    let text = err.to_string();
    assert!(
        text.contains("DATABASE_URL") && text.contains("does not exist"),
        "{text}"
    );
    assert!(text.contains("postgres://USER:PASSWORD@HOST:5432/DATABASE"), "{text}");
}

#[test]
fn unknown_role_fails_fast_and_the_password_is_never_printed() {
    let host = server()
        .trim_start_matches("postgres://")
        .split('@')
        .next_back()
        .unwrap()
        .to_string();
    let url = format!("postgres://no_such_role_x:hunter2secret@{host}/postgres");
    let err = rt()
        .block_on(Db::connect_within(
            &url,
            &DbSettings::with_pool_size(1),
            Duration::from_secs(30),
        ))
        .err()
        .expect("refused");
    assert_eq!(err.code(), ErrorCode::DbConnectRejected, "{err}");
    assert!(!err.to_string().contains("hunter2secret"), "{err}");
}

#[test]
fn unreachable_server_is_retried_for_the_bounded_wait_then_unavailable() {
    // A port nothing listens on: connection refused, which is transient.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://u:hunter2secret@127.0.0.1:{port}/db");
    let started = Instant::now();
    let err = rt()
        .block_on(Db::connect_within(
            &url,
            &DbSettings::with_pool_size(1),
            Duration::from_secs(3),
        ))
        .err()
        .expect("unreachable");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    assert_eq!(err.code(), ErrorCode::DbUnavailable);
    assert_eq!(err.class(), ErrorClass::Transient);
    let text = err.to_string();
    assert!(
        text.contains("DB_CONNECT_WAIT_SECS") && !text.contains("hunter2secret"),
        "{text}"
    );
}

#[test]
fn a_reachable_database_connects() {
    let tdb = TestDb::migrated("connect_policy");
    let db = rt()
        .block_on(Db::connect_within(
            &tdb.url,
            &DbSettings::with_pool_size(2),
            Duration::from_secs(5),
        ))
        .expect("connects");
    assert!(db.conn().is_ok());
}
