//! The operational surface: `/ready` follows the database (503 unmigrated or unreachable, 200 migrated), `/health`
//! is always 200, `/metrics` renders the fixed metric names, enqueue metrics count only new jobs, and the server
//! stops with the shutdown signal.

use divine_atbridge::worker::{JobHandler, LeasedJob, Outcome, Registry, WorkerConfig, WorkerPool};
use divine_bridge_db::migrate::run_migrations;
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::JobKind;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET; returns (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` in exposition text (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

struct Ok_;

impl JobHandler for Ok_ {
    fn handle<'a>(&'a self, _job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async { Outcome::Succeeded })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_migrations_and_metrics_expose_the_contract() {
    let handle = divine_atbridge::metrics::install();
    let db = TestDb::empty("worker_http");
    let pool = db.pool(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(divine_atbridge::http::serve_on(
        listener,
        pool.clone(),
        handle.clone(),
        Default::default(),
        stop_rx,
    ));

    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"status":"ok"}"#, "the gateway's /health shape");
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["reason"], "migrations_pending");

    run_migrations(&mut db.conn()).unwrap();
    let (status, body) = get(addr, "/ready").await;
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));

    // Enqueue is counted once per new job, not per call.
    let key = "bridge_jobs_enqueued_total{kind=\"provision_account\"}";
    let before = sample(&divine_atbridge::metrics::render(), key);
    let job = NewJob::new(JobKind::ProvisionAccount, "acct", serde_json::json!({})).unique("provision:acct");
    let mut conn = db.conn();
    assert!(queue::enqueue(&mut conn, &job).unwrap().is_some());
    assert!(queue::enqueue(&mut conn, &job).unwrap().is_none());
    let after = sample(&divine_atbridge::metrics::render(), key);
    assert_eq!(after - before, 1.0);

    // Run one job through a pool so the finish/duration/gauge series carry data.
    let mut registry = Registry::new();
    registry.register(JobKind::ProvisionAccount, Arc::new(Ok_));
    let config = WorkerConfig {
        workers: 1,
        stats_interval: Duration::from_millis(100),
        watchdog_interval: Duration::from_millis(100),
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let (pool_stop, pool_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(WorkerPool::new(pool.clone(), config, registry).run(pool_rx));
    let finished = "bridge_jobs_finished_total{kind=\"provision_account\",outcome=\"succeeded\"}";
    // The job gauge reports live states only (issue 9 §6): finished jobs are the counter's business.
    let queued_gauge = "bridge_jobs{kind=\"provision_account\",state=\"queued\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if sample(&text, finished) >= 1.0 && text.contains(queued_gauge) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed the job:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pool_stop.send(true).unwrap();
    worker.await.unwrap();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("bridge_jobs{") && l.contains("state=\"succeeded\"")),
        "no gauge for terminal states:\n{text}"
    );

    for name in [
        "bridge_jobs_enqueued_total",
        "bridge_jobs_finished_total",
        "bridge_job_duration_seconds",
        "bridge_jobs",
        "bridge_oldest_queued_job_age_seconds",
        "bridge_expired_leases",
        "bridge_watchdog_reclaimed_total",
        "bridge_publish_lag_seconds",
        "bridge_task_exits_total",
        "bridge_jobs_pruned_total",
    ] {
        assert!(divine_atbridge::metrics::METRIC_NAMES.contains(&name));
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
    }
    assert!(text.contains("# TYPE bridge_job_duration_seconds histogram"));
    assert!(text.contains("bridge_job_duration_seconds_bucket{kind=\"provision_account\",le=\"0.005\"}"));
    assert!(sample(&text, "bridge_job_duration_seconds_count{kind=\"provision_account\"}") >= 1.0);
    // Closed label sets exist from the start, at zero.
    assert!(text.contains("bridge_jobs_finished_total{kind=\"delete_post\",outcome=\"cancelled\"} 0"));
    // Installing again returns the same recorder.
    assert!(divine_atbridge::metrics::install().render().contains(finished));

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_when_the_database_is_unreachable() {
    let handle = divine_atbridge::metrics::install();
    // A pool on a database that does not exist: every checkout fails.
    let db = {
        let t = TestDb::empty("worker_http_gone");
        let pool = divine_bridge_db::Db::connect(&t.url, 1).unwrap();
        drop(t);
        pool
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(divine_atbridge::http::serve_on(
        listener,
        db,
        handle,
        Default::default(),
        stop_rx,
    ));
    let (status, _) = get(addr, "/health").await;
    assert_eq!(status, 200, "health does not depend on the database");
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 503);
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["reason"], "database_unavailable", "{body}");
    // A code, never the raw database error (it names the host, database and role).
    let code = reason["code"].as_str().unwrap_or_default();
    assert!(code.starts_with("db_"), "{body}");
    assert!(reason.get("detail").is_none(), "{body}");
    assert!(!body.contains("worker_http_gone"), "{body}");
    stop_tx.send(true).unwrap();
    server.await.unwrap().unwrap();
}
