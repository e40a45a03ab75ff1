//! `divine-atbridge` startup as an operator meets it (issue 14 §1–2), on the real binary: `--help`/`--version` without
//! a database, every configuration problem in one message, a busy `HTTP_ADDR` and a rejected `DATABASE_URL` failing
//! at once with their codes, and `/health` answering while an unreachable Postgres is awaited for
//! `DB_CONNECT_WAIT_SECS`. Needs only the test Postgres server (no PLC/PDS: nothing gets past startup).

use divine_bridge_db::testutil::process::{clean_command, closed_port, finish_within, get, reported_once, text};
use divine_bridge_db::testutil::TestDb;
use std::process::Command;
use std::time::{Duration, Instant};

const KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn bridge(args: &[&str], vars: &[(&str, &str)]) -> Command {
    clean_command(env!("CARGO_BIN_EXE_divine-atbridge"), args, vars)
}

fn valid_env(database_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_string()),
        ("PLC_DIRECTORY_URL", "https://plc.test".into()),
        ("PDS_URL", "https://pds.test".into()),
        ("KEY_ENCRYPTION_KEY", KEK.into()),
        ("ACCOUNT_EMAIL_DOMAIN", "bridge.test".into()),
        ("PDS_ADMIN_PASSWORD", "admin-password".into()),
        ("ALLOW_NO_RECOVERY_KEYS", "true".into()),
    ]
}

fn with<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn run_help_lists_every_variable_with_its_default_without_a_database() {
    // Before: `run --help` listed no variable at all. A database URL nothing listens on proves nothing connects.
    let url = format!("postgres://u:hunter2@127.0.0.1:{}/db", closed_port());
    let child = bridge(
        &["run", "--help"],
        &[("DATABASE_URL", &url), ("KEY_ENCRYPTION_KEY", KEK)],
    )
    .spawn()
    .unwrap();
    let out = finish_within(child, Duration::from_secs(10), "run --help");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for needle in [
        "[env: CURSOR_OVERLAP_SECS=",
        "[default: 900]",
        "POLL_INTERVAL_MS",
        "DB_POOL_SIZE",
        "DB_CONNECT_WAIT_SECS",
        "[env: DATABASE_URL]",
        "[env: KEY_ENCRYPTION_KEY]",
        "RUST_LOG",
        "LOG_FORMAT",
        "NO_COLOR",
    ] {
        assert!(help.contains(needle), "run --help lacks {needle:?}:\n{help}");
    }
    assert!(
        !help.contains("hunter2") && !help.contains(KEK),
        "secrets are never shown"
    );

    let out = finish_within(
        bridge(&["--version"], &[("DATABASE_URL", &url)]).spawn().unwrap(),
        Duration::from_secs(10),
        "--version",
    );
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("divine-atbridge {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_configuration_problem_is_reported_in_one_message_with_hints() {
    // Before: `error[config_missing]: required environment variable DATABASE_URL is not set`, one per restart.
    let hex_key = "00".repeat(32);
    let child = bridge(
        &[],
        &[
            ("PDS_URL", "pds.example.com"),
            ("KEY_ENCRYPTION_KEY", &hex_key),
            ("CURSOR_OVERLAP_SECS", "300"),
            ("WORKERS", "lots"),
        ],
    )
    .spawn()
    .unwrap();
    let out = finish_within(child, Duration::from_secs(10), "invalid configuration");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[config_invalid]: 9 configuration problems:"),
        "{err}"
    );
    for var in [
        "DATABASE_URL",
        "PLC_DIRECTORY_URL",
        "PDS_URL",
        "KEY_ENCRYPTION_KEY",
        "ACCOUNT_EMAIL_DOMAIN",
        "PLC_RECOVERY_KEYS",
        "PDS_ADMIN_PASSWORD",
        "CURSOR_OVERLAP_SECS",
        "WORKERS",
    ] {
        assert!(err.contains(&format!("  - {var}: ")), "{var} missing from:\n{err}");
    }
    assert!(
        err.contains("openssl rand -base64 32") && err.contains("looks like hex"),
        "{err}"
    );
    assert!(err.contains("e.g. https://pds.example.com"), "{err}");
    assert!(!err.contains(&hex_key), "the key is never echoed");
    reported_once(&out, "configuration problems:");
}

#[test]
fn a_busy_http_addr_is_a_startup_error() {
    // Before: the bind error was a task result the process lingered on for 30 s while leasing jobs.
    let tdb = TestDb::migrated("startup_bind");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut vars = valid_env(&tdb.url);
    vars.push(("HTTP_ADDR", addr.clone()));
    let child = bridge(&["run"], &with(&vars)).spawn().unwrap();
    let out = finish_within(child, Duration::from_secs(10), "busy HTTP_ADDR");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("error[http_bind_failed]: cannot listen on HTTP_ADDR {addr}")),
        "{err}"
    );
    reported_once(&out, &format!("cannot listen on HTTP_ADDR {addr}"));
}

#[test]
fn a_rejected_database_url_fails_fast_naming_it() {
    let server = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut vars = valid_env(&format!("{server}/no_such_database_{}", std::process::id()));
    vars.push(("HTTP_ADDR", format!("127.0.0.1:{}", closed_port())));
    let started = Instant::now();
    let child = bridge(&["run"], &with(&vars)).spawn().unwrap();
    let out = finish_within(child, Duration::from_secs(15), "unknown database");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no retrying a permanent error"
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[db_connect_rejected]: DATABASE_URL was rejected"),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("postgres://USER:PASSWORD@HOST:5432/DATABASE"), "{err}");
    reported_once(&out, "DATABASE_URL was rejected");
}

#[test]
fn health_is_served_while_an_unreachable_database_is_awaited() {
    let port = closed_port();
    let mut vars = valid_env(&format!("postgres://u:hunter2@127.0.0.1:{}/db", closed_port()));
    vars.push(("HTTP_ADDR", format!("127.0.0.1:{port}")));
    vars.push(("DB_CONNECT_WAIT_SECS", "4".into()));
    let child = bridge(&["run"], &with(&vars)).spawn().unwrap();
    let started = Instant::now();
    let health = loop {
        if let Some(r) = get(port, "/health") {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "/health never answered");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(health.0, 200);
    let ready = get(port, "/ready").expect("/ready answers");
    assert_eq!(ready.0, 503);
    assert!(ready.1.contains("\"starting\""), "{}", ready.1);
    let out = finish_within(child, Duration::from_secs(15), "unreachable database");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "waited for DB_CONNECT_WAIT_SECS"
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error[db_unavailable]"), "{err}");
    assert!(err.contains("DB_CONNECT_WAIT_SECS (4 s)"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    reported_once(&out, "DB_CONNECT_WAIT_SECS (4 s)");
}
