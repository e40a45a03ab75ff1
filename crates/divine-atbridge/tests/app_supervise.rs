//! Issue 9 §5: background tasks are supervised. A task that ends (or panics) before shutdown makes `/ready` answer
//! 503 `task_exited`, is counted in `bridge_task_exits_total{task}`, and the process exits with `task_exited`; the
//! normal drain after a shutdown request is not counted.

use divine_atbridge::app::{supervise, TaskFuture};
use divine_atbridge::http::TaskHealth;
use divine_atbridge::ingest::{self, IngestConfig};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::ErrorCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

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

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn until_shutdown(mut rx: watch::Receiver<bool>) -> TaskFuture {
    Box::pin(async move {
        let _ = rx.wait_for(|s| *s).await;
        Ok(())
    })
}

#[tokio::test]
async fn a_dead_ingest_makes_the_process_unready_counted_and_exit() {
    let tdb = TestDb::migrated("app_supervise_dead_ingest");
    let db = tdb.pool(2);
    let handle = divine_atbridge::metrics::install();
    let before = sample(&handle.render(), "bridge_task_exits_total{task=\"ingest\"}");
    let (tx, rx) = watch::channel(false);
    let health = TaskHealth::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = divine_atbridge::http::serve_on(listener, db.clone(), handle.clone(), health.clone(), rx.clone());
    // The real ingest, stopping on its own: a relay URL it cannot add.
    let cfg = IngestConfig::new(
        vec!["not a relay url".into()],
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let ingest = ingest::run(db.clone(), cfg, rx.clone());
    let tasks: Vec<(&'static str, TaskFuture)> = vec![
        ("http", Box::pin(async move { http.await.map_err(|e| e.to_string()) })),
        (
            "ingest",
            Box::pin(async move { ingest.await.map_err(|e| format!("{e:#}")) }),
        ),
        ("workers", until_shutdown(rx.clone())),
    ];
    let supervisor = tokio::spawn(supervise(tasks, tx, health, Duration::from_secs(3)));

    // While it lingers, the process is unready and says why; the counter is already up.
    let mut unready = None;
    for _ in 0..40 {
        let (status, body) = get(addr, "/ready").await;
        if status == 503 {
            unready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body: serde_json::Value = serde_json::from_str(&unready.expect("/ready turned 503")).unwrap();
    assert_eq!(body["reason"], "task_exited");
    assert_eq!(body["tasks"], serde_json::json!(["ingest"]));
    let after = sample(&handle.render(), "bridge_task_exits_total{task=\"ingest\"}");
    assert_eq!(after - before, 1.0);

    // Then it drains the other tasks and exits non-zero.
    let result = tokio::time::timeout(Duration::from_secs(20), supervisor)
        .await
        .expect("the supervisor ends after its linger")
        .unwrap();
    assert_eq!(result.unwrap_err().code(), ErrorCode::TaskExited);
    assert_eq!(
        sample(&handle.render(), "bridge_task_exits_total{task=\"workers\"}"),
        0.0,
        "the drain after the shutdown request is not counted"
    );
}

#[tokio::test]
async fn a_panicking_task_is_caught_and_counted() {
    let handle = divine_atbridge::metrics::install();
    let before = sample(&handle.render(), "bridge_task_exits_total{task=\"retention\"}");
    let (tx, rx) = watch::channel(false);
    let health = TaskHealth::default();
    let tasks: Vec<(&'static str, TaskFuture)> = vec![
        ("retention", Box::pin(async { panic!("boom") })),
        ("workers", until_shutdown(rx.clone())),
    ];
    let result = supervise(tasks, tx, health.clone(), Duration::from_millis(10)).await;
    assert_eq!(result.unwrap_err().code(), ErrorCode::TaskExited);
    assert_eq!(health.exited(), vec!["retention"]);
    let after = sample(&handle.render(), "bridge_task_exits_total{task=\"retention\"}");
    assert_eq!(after - before, 1.0);
}

#[tokio::test]
async fn a_requested_shutdown_is_a_clean_exit() {
    let (tx, rx) = watch::channel(false);
    let health = TaskHealth::default();
    let tasks: Vec<(&'static str, TaskFuture)> = vec![
        ("ingest", until_shutdown(rx.clone())),
        ("workers", until_shutdown(rx.clone())),
    ];
    let trigger = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.send_replace(true);
    });
    supervise(tasks, tx, health.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(health.exited().is_empty());
}
