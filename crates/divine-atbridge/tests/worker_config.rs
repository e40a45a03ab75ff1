//! `WorkerConfig::from_env`: defaults, overrides and clear `config_invalid` errors. Alone in its test binary
//! because it changes process environment variables.

mod process_env;

use divine_atbridge::worker::WorkerConfig;
use divine_bridge_db::Classified;
use divine_bridge_db::ErrorCode;
use std::time::Duration;

#[test]
fn worker_config_reads_the_environment_with_defaults_and_clear_errors() {
    let env = process_env::lock();
    let vars = [
        "WORKERS",
        "LEASE_SECS",
        "WATCHDOG_ENABLED",
        "WATCHDOG_INTERVAL_SECS",
        "SHUTDOWN_GRACE_SECS",
        "RETRY_BASE_SECS",
        "RETRY_CAP_SECS",
        "RETRY_MAX_AGE_SECS",
        "POLL_INTERVAL_MS",
        "TRY_TIMEOUT_SECS",
        "RECLAIM_LIMIT",
        "PANIC_LIMIT",
    ];
    for v in vars {
        env.remove(v);
    }
    let d = WorkerConfig::from_env().unwrap();
    assert_eq!(d.workers, 8);
    assert_eq!(d.lease, Duration::from_secs(300));
    assert!(d.watchdog_enabled);
    assert_eq!(d.watchdog_interval, Duration::from_secs(30));
    assert_eq!(d.shutdown_grace, Duration::from_secs(30));
    assert_eq!(d.retry_base, Duration::from_secs(5));
    assert_eq!(d.retry_cap, Duration::from_secs(3600));
    assert_eq!(d.retry_max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(d.try_timeout, Duration::from_secs(600));
    assert_eq!((d.reclaim_limit, d.panic_limit), (5, 3));

    env.set("WORKERS", "3");
    env.set("LEASE_SECS", "2");
    env.set("WATCHDOG_ENABLED", "false");
    env.set("RETRY_MAX_AGE_SECS", "60");
    let c = WorkerConfig::from_env().unwrap();
    assert_eq!(
        (c.workers, c.lease, c.watchdog_enabled),
        (3, Duration::from_secs(2), false)
    );
    assert_eq!(c.retry_max_age, Duration::from_secs(60));
    env.set("TRY_TIMEOUT_SECS", "30");
    env.set("RECLAIM_LIMIT", "2");
    env.set("PANIC_LIMIT", "1");
    let c = WorkerConfig::from_env().unwrap();
    assert_eq!(
        (c.try_timeout, c.reclaim_limit, c.panic_limit),
        (Duration::from_secs(30), 2, 1)
    );

    for (var, value) in [
        ("WORKERS", "0"),
        ("WORKERS", "many"),
        ("LEASE_SECS", "1"),
        ("WATCHDOG_ENABLED", "perhaps"),
        ("RETRY_CAP_SECS", "1"),
        ("TRY_TIMEOUT_SECS", "0"),
        ("TRY_TIMEOUT_SECS", "-5"),
        ("RECLAIM_LIMIT", "0"),
        ("RECLAIM_LIMIT", "-1"),
        ("PANIC_LIMIT", "0"),
        ("PANIC_LIMIT", "lots"),
    ] {
        let saved = std::env::var(var).ok();
        env.set(var, value);
        let err = WorkerConfig::from_env().expect_err(value);
        assert_eq!(err.code(), ErrorCode::ConfigInvalid);
        assert!(err.to_string().contains(var), "{err}");
        match saved {
            Some(s) => env.set(var, &s),
            None => env.remove(var),
        }
    }
    for v in vars {
        env.remove(v);
    }
}

#[test]
fn job_retention_defaults_to_14_days_and_refuses_less_than_an_hour() {
    let env = process_env::lock();
    use divine_atbridge::config::job_retention;
    env.remove("JOB_RETENTION_SECS");
    assert_eq!(job_retention().unwrap(), Duration::from_secs(14 * 24 * 3600));
    env.set("JOB_RETENTION_SECS", "7200");
    assert_eq!(job_retention().unwrap(), Duration::from_secs(7200));
    for bad in ["60", "0", "-1", "two weeks"] {
        env.set("JOB_RETENTION_SECS", bad);
        assert_eq!(job_retention().unwrap_err().code(), ErrorCode::ConfigInvalid, "{bad}");
    }
    env.remove("JOB_RETENTION_SECS");
}

#[test]
fn ingest_shards_and_lease_default_and_refuse_out_of_range_values() {
    let env = process_env::lock();
    use divine_atbridge::config::CrosspostConfig;
    env.remove("NOSTR_INGEST_SHARDS");
    env.remove("INGEST_LEASE_SECS");
    let d = CrosspostConfig::from_env().unwrap();
    assert_eq!(d.ingest_shards, 1);
    assert_eq!(d.ingest_lease, Duration::from_secs(30));
    env.set("NOSTR_INGEST_SHARDS", "16");
    env.set("INGEST_LEASE_SECS", "10");
    let c = CrosspostConfig::from_env().unwrap();
    assert_eq!((c.ingest_shards, c.ingest_lease), (16, Duration::from_secs(10)));
    for bad in ["0", "1025", "-1", "many"] {
        env.set("NOSTR_INGEST_SHARDS", bad);
        assert_eq!(
            CrosspostConfig::from_env().unwrap_err().code(),
            ErrorCode::ConfigInvalid,
            "{bad}"
        );
    }
    env.set("NOSTR_INGEST_SHARDS", "16");
    for bad in ["2", "0", "x"] {
        env.set("INGEST_LEASE_SECS", bad);
        assert_eq!(
            CrosspostConfig::from_env().unwrap_err().code(),
            ErrorCode::ConfigInvalid,
            "{bad}"
        );
    }
    env.remove("NOSTR_INGEST_SHARDS");
    env.remove("INGEST_LEASE_SECS");
}
