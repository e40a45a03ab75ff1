//! Logs that follow one event (issue 14 §3), read as an operator's log pipeline reads them: the process logs JSON
//! (`LOG_FORMAT=json`) captured here through tracing-subscriber's own JSON formatter. Checks that every finished job
//! try writes one info line whose span carries the job id, kind, attempt, pubkey, event id, DID, rkey and AT-URI,
//! with the outcome as plain fields (never Rust `Debug` text); that an XRPC line written inside a try carries the
//! same ids; and that a 404 provisioning expects from PLC ("not registered yet") is not logged as a failure.

use axum::routing::get;
use divine_atbridge::plc::PlcClient;
use divine_atbridge::worker::{self, JobHandler, LeasedJob, Outcome, Registry, WorkerConfig, WorkerPool};
use divine_atbridge::xrpc::{XrpcClient, XrpcConfig, XrpcMethod, XrpcRequest};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::testutil::logs::{self, Capture};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::JobKind;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Every line this test binary logged (one global subscriber: info, debug for the bridge and the ATProto client).
fn capture() -> &'static Capture {
    logs::capture("info,divine_atbridge=debug,divine_atproto=debug")
}

/// The captured lines, parsed.
fn lines() -> Vec<serde_json::Value> {
    capture().lines()
}

fn raw_lines() -> String {
    capture().text()
}

/// A local HTTP server answering 200 `{}` on `/ok` and 404 everywhere else; returns its base URL.
async fn server() -> String {
    let app = axum::Router::new().route("/ok", get(|| async { axum::Json(serde_json::json!({})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

const DID: &str = "did:plc:logtestlogtestlogtestlo";
const RKEY: &str = "3kabcdefghijk";

/// Writes like a publish handler: learns the DID and rkey, calls the PDS, then succeeds or retries per payload.
struct Publisher {
    xrpc: XrpcClient,
    base: String,
}

impl JobHandler for Publisher {
    fn handle<'a>(&'a self, job: &'a LeasedJob) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            worker::note_record(DID, "app.bsky.feed.post", RKEY);
            let sent = self
                .xrpc
                .send(XrpcRequest::get(format!("{}/ok", self.base), XrpcMethod::PutRecord))
                .await;
            assert!(sent.is_ok(), "{sent:?}");
            match job.payload["do"].as_str() {
                Some("retry") => Outcome::Retry {
                    code: divine_bridge_db::ErrorCode::XrpcServerError,
                    message: "PDS answered 503".into(),
                    retry_after: Some(Duration::from_secs(60)),
                },
                _ => Outcome::Succeeded,
            }
        })
    }
}

fn field<'a>(line: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &line["fields"][name]
}

/// Lines written inside the try span of job `id`.
fn of_job(lines: &[serde_json::Value], id: i64) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["span"]["name"] == "job_try" && l["span"]["job.id"] == id)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_finished_try_logs_one_line_with_the_ids_of_its_event() {
    capture();
    let db = TestDb::migrated("job_logs");
    let base = server().await;
    let pubkey = "ab".repeat(32);
    let event_id = "cd".repeat(32);
    let enqueue = |key: &str, script: &str| {
        let payload = serde_json::json!({"do": script, "event": {"id": event_id}});
        queue::enqueue(
            &mut db.conn(),
            &NewJob::for_account(JobKind::Noop, &pubkey, key, payload),
        )
        .unwrap()
        .unwrap()
    };
    let ok = enqueue("key-ok", "succeed");
    let retried = enqueue("key-retry", "retry");

    let mut registry = Registry::new();
    let xrpc = XrpcClient::new(&XrpcConfig::default()).unwrap();
    registry.register(JobKind::Noop, Arc::new(Publisher { xrpc, base }));
    let cfg = WorkerConfig {
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_secs(60),
        ..WorkerConfig::default()
    };
    let (stop, rx) = watch::channel(false);
    let pool = tokio::spawn(WorkerPool::new(db.pool(4), cfg, registry).run(rx));

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let finished = lines()
            .iter()
            .filter(|l| field(l, "message") == "job try finished")
            .filter(|l| l["span"]["job.id"] == ok || l["span"]["job.id"] == retried)
            .count();
        if finished == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no finished lines:\n{}", raw_lines());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    pool.await.unwrap();

    let all = lines();
    for (id, outcome) in [(ok, "succeeded"), (retried, "retried")] {
        let job_lines = of_job(&all, id);
        let finished: Vec<_> = job_lines
            .iter()
            .filter(|l| field(l, "message") == "job try finished")
            .collect();
        assert_eq!(finished.len(), 1, "one finished line per try: {job_lines:#?}");
        let line = finished[0];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(field(line, "outcome"), outcome, "{line}");
        assert!(field(line, "duration_ms").is_u64(), "{line}");
        let span = &line["span"];
        assert_eq!(span["kind"], "noop", "{line}");
        assert_eq!(span["attempt"], 1, "{line}");
        assert_eq!(span["pubkey"], pubkey.as_str(), "{line}");
        assert_eq!(span["event_id"], event_id.as_str(), "{line}");
        assert_eq!(span["did"], DID, "{line}");
        assert_eq!(span["rkey"], RKEY, "{line}");
        assert_eq!(
            span["at_uri"],
            format!("at://{DID}/app.bsky.feed.post/{RKEY}"),
            "{line}"
        );

        // The XRPC call made inside the try is logged under the same ids.
        let xrpc: Vec<_> = job_lines
            .iter()
            .filter(|l| field(l, "method") == "com.atproto.repo.putRecord")
            .collect();
        assert_eq!(xrpc.len(), 1, "{job_lines:#?}");
        assert_eq!(xrpc[0]["span"]["event_id"], event_id.as_str());
        assert_eq!(xrpc[0]["span"]["did"], DID);
    }
    let retry_line = of_job(&all, retried)
        .into_iter()
        .find(|l| field(l, "message") == "job try finished")
        .unwrap();
    assert_eq!(field(&retry_line, "code"), "xrpc_server_error");
    assert_eq!(field(&retry_line, "error"), "PDS answered 503");
    assert_eq!(field(&retry_line, "state"), "queued");
    let text = raw_lines();
    for debug_text in ["Returned(", "Retry {", "Succeeded", "retry_after:"] {
        assert!(
            !text.contains(debug_text),
            "Rust Debug text `{debug_text}` in the logs:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_plc_404_is_not_logged_as_a_failure() {
    capture();
    let base = server().await;
    let plc = PlcClient::new(XrpcClient::new(&XrpcConfig::default()).unwrap(), &base);
    let did = "did:plc:notregisteredyetxxxxxxxx";
    let expected = plc
        .last_op_if_registered(did)
        .instrument(tracing::info_span!("probe", case = "expected"))
        .await;
    assert!(matches!(expected, Ok(None)), "{expected:?}");
    let unexpected = plc
        .last_op(did)
        .instrument(tracing::info_span!("probe", case = "unexpected"))
        .await;
    assert!(unexpected.is_err());

    let all = lines();
    let failed = |case: &str| {
        all.iter()
            .filter(|l| l["span"]["name"] == "probe" && l["span"]["case"] == case)
            .filter(|l| field(l, "message") == "xrpc failed")
            .count()
    };
    assert_eq!(failed("expected"), 0, "{}", raw_lines());
    assert_eq!(
        failed("unexpected"),
        1,
        "a 404 nobody expected is still logged:\n{}",
        raw_lines()
    );
}
