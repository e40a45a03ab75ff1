//! `divine-handle-gateway` startup on the real binary (issue 14 §1–2): `--help`/`--version` answer without a
//! database (before: `--help` was ignored, the gateway migrated and served), every configuration problem in one
//! message with hints (exit 2), a rejected `DATABASE_URL` fails at once (before: retried for a minute without
//! listening), and `/health` answers while an unreachable Postgres is awaited for `DB_CONNECT_WAIT_SECS`.

use divine_bridge_db::testutil::process::{clean_command, closed_port, finish_within, get, reported_once, text};
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "0123456789abcdef0123456789abcdef-gateway-test";

fn gateway(args: &[&str], vars: &[(&str, &str)]) -> Command {
    clean_command(env!("CARGO_BIN_EXE_divine-handle-gateway"), args, vars)
}

fn server() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

#[test]
fn help_and_version_never_touch_the_database() {
    // A reachable database: the old binary would have migrated it and served; nothing may happen now.
    let url = format!("{}/postgres", server());
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("HANDLE_DOMAIN", "divine.test"),
        ("GATEWAY_SERVICE_TOKEN", TOKEN),
        ("PUBLIC_URL", "https://gw.divine.test"),
        ("BIND_ADDR", "127.0.0.1:0"),
    ];
    let out = finish_within(
        gateway(&["--help"], &vars).spawn().unwrap(),
        Duration::from_secs(10),
        "--help",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for needle in [
        "[env: BIND_ADDR=",
        "[default: 0.0.0.0:3000]",
        "[env: GATEWAY_SERVICE_TOKEN]",
        "[env: DATABASE_URL]",
        "DB_POOL_SIZE",
        "[default: 8]",
        "DB_CONNECT_WAIT_SECS",
        "RESERVED_HANDLE_NAMES",
        "PDS_PUBLIC_URL",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(!help.contains(TOKEN), "the token is never shown");
    assert!(!text(&out.stderr).contains("migrations"), "{}", text(&out.stderr));

    let out = finish_within(
        gateway(&["--version"], &vars).spawn().unwrap(),
        Duration::from_secs(10),
        "--version",
    );
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("divine-handle-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_configuration_problem_is_reported_in_one_message_with_hints() {
    // Before: `configuration DATABASE_URL: is required` in a log line, one variable per restart.
    let out = finish_within(
        gateway(
            &[],
            &[
                ("PUBLIC_URL", "bridge.divine.test"),
                ("GATEWAY_SERVICE_TOKEN", "too-short"),
                ("BIND_ADDR", "3000"),
            ],
        )
        .spawn()
        .unwrap(),
        Duration::from_secs(10),
        "invalid configuration",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[gateway_config_invalid]: 5 configuration problems:"),
        "{err}"
    );
    for var in [
        "BIND_ADDR",
        "DATABASE_URL",
        "HANDLE_DOMAIN",
        "GATEWAY_SERVICE_TOKEN",
        "PUBLIC_URL",
    ] {
        assert!(err.contains(&format!("  - {var}: ")), "{var} missing from:\n{err}");
    }
    assert!(err.contains("e.g. https://bridge.divine.test"), "{err}");
    assert!(
        err.contains("token 1 is shorter than 32 characters; use at least 32"),
        "{err}"
    );
    assert!(!err.contains("too-short"), "the token is never echoed");
    reported_once(&out, "configuration problems:");
}

#[test]
fn a_rejected_database_url_fails_fast_and_an_unreachable_one_is_awaited_with_health_served() {
    let port = closed_port();
    let base = |url: String, wait: &str| {
        vec![
            ("DATABASE_URL", url),
            ("HANDLE_DOMAIN", "divine.test".to_string()),
            ("GATEWAY_SERVICE_TOKEN", TOKEN.to_string()),
            ("PUBLIC_URL", "https://gw.divine.test".to_string()),
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            ("DB_CONNECT_WAIT_SECS", wait.to_string()),
        ]
    };

    // Unknown database: permanent, at once (before: retried for 60 s without listening).
    let vars = base(format!("{}/no_such_db_{}", server(), std::process::id()), "60");
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let out = finish_within(
        gateway(&[], &refs).spawn().unwrap(),
        Duration::from_secs(15),
        "unknown database",
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error[db_connect_rejected]: DATABASE_URL was rejected"),
        "{err}"
    );
    assert!(err.contains("postgres://USER:PASSWORD@HOST:5432/DATABASE"), "{err}");
    reported_once(&out, "DATABASE_URL was rejected");

    // Unreachable server: transient, retried for DB_CONNECT_WAIT_SECS with /health answering.
    let vars = base(format!("postgres://u:hunter2@127.0.0.1:{}/db", closed_port()), "4");
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let child = gateway(&[], &refs).spawn().unwrap();
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
    assert!(ready.1.contains("not_ready"), "{}", ready.1);
    let api = get(port, "/api/account-links/x/status").expect("API answers");
    assert_eq!(api.0, 503, "{}", api.1);
    let out = finish_within(child, Duration::from_secs(15), "unreachable database");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error[db_unavailable]"), "{err}");
    assert!(
        err.contains("DB_CONNECT_WAIT_SECS (4 s)") && !err.contains("hunter2"),
        "{err}"
    );
    reported_once(&out, "DB_CONNECT_WAIT_SECS (4 s)");
}

#[test]
fn a_busy_bind_addr_is_a_startup_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let url = format!("{}/postgres", server());
    let out = finish_within(
        gateway(
            &[],
            &[
                ("DATABASE_URL", url.as_str()),
                ("HANDLE_DOMAIN", "divine.test"),
                ("GATEWAY_SERVICE_TOKEN", TOKEN),
                ("PUBLIC_URL", "https://gw.divine.test"),
                ("BIND_ADDR", addr.as_str()),
            ],
        )
        .spawn()
        .unwrap(),
        Duration::from_secs(10),
        "busy BIND_ADDR",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "error[gateway_bind_failed]: cannot listen on BIND_ADDR {addr}"
        )),
        "{err}"
    );
    reported_once(&out, &format!("cannot listen on BIND_ADDR {addr}"));
}
