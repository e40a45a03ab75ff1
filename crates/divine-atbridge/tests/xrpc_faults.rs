//! Fault injection for the one HTTP path (xrpc.rs) and the session manager (pds/session.rs): a local axum server on
//! 127.0.0.1:0 answers with every failure shape the PDS/PLC can produce, and a fake PDS session service counts
//! refreshes and logins so the refresh rules (once, under a per-DID lock, password fallback) are checked exactly.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use divine_atbridge::pds::{MemorySessionStore, PdsClient, PdsError, PutRecord, SessionManager, StoredSession};
use divine_atbridge::xrpc::{XrpcClient, XrpcConfig, XrpcError, XrpcMethod, XrpcRequest, REQUESTS_METRIC};
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{Classified, ErrorClass};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const DID: &str = "did:plc:faultfaultfaultfaultfaul";
const PASSWORD: &str = "correct-horse-battery-staple";
const SOME_CID: &str = "bafyreifuroptzfhdlkk5ws2zqjm6zs2asf6jxdthxfmeuyhq52s4yu3wvu";

fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().expect("install recorder"))
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn client(timeout: Duration) -> XrpcClient {
    XrpcClient::new(&XrpcConfig {
        connect_timeout: Duration::from_secs(2),
        timeout,
        user_agent: "divine-atbridge-test".into(),
        ..XrpcConfig::default()
    })
    .unwrap()
}

fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({"error": error, "message": message}))).into_response()
}

fn fault_router() -> Router {
    Router::new()
        .route(
            "/xrpc/fault.e500",
            get(|| async { xrpc_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "boom") }),
        )
        .route(
            "/xrpc/fault.e502",
            get(|| async {
                (
                    StatusCode::BAD_GATEWAY,
                    [("content-type", "text/html")],
                    "<html>Bad Gateway</html>",
                )
                    .into_response()
            }),
        )
        .route(
            "/xrpc/fault.e429",
            get(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "17")], "slow down").into_response() }),
        )
        .route(
            "/xrpc/fault.e429date",
            get(|| async {
                let at = (chrono::Utc::now() + chrono::Duration::seconds(120))
                    .to_rfc2822()
                    .replace("+0000", "GMT");
                (StatusCode::TOO_MANY_REQUESTS, [("retry-after", at)], "").into_response()
            }),
        )
        .route(
            "/xrpc/fault.e429reset",
            get(|| async {
                let reset = (chrono::Utc::now().timestamp() + 30).to_string();
                let mut h = HeaderMap::new();
                h.insert("ratelimit-reset", reset.parse().unwrap());
                h.insert("ratelimit-remaining", "0".parse().unwrap());
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    h,
                    Json(serde_json::json!({"error": "RateLimitExceeded"})),
                )
                    .into_response()
            }),
        )
        .route(
            "/xrpc/fault.expired",
            get(|| async { xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired") }),
        )
        .route(
            "/xrpc/fault.invalid",
            get(|| async { xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "Missing createdAt") }),
        )
        .route(
            "/xrpc/fault.deactivated",
            get(|| async { xrpc_error(StatusCode::UNAUTHORIZED, "AccountDeactivated", "Account is deactivated") }),
        )
        .route(
            "/xrpc/fault.hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .route(
            "/xrpc/fault.html200",
            get(|| async { ([("content-type", "text/html")], "<html>captive portal</html>").into_response() }),
        )
        .route(
            "/xrpc/fault.text400",
            get(|| async { (StatusCode::BAD_REQUEST, "plain text refusal").into_response() }),
        )
        .route(
            "/xrpc/com.atproto.repo.putRecord",
            post(|headers: HeaderMap| async move {
                match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some("Bearer deactivated") => {
                        xrpc_error(StatusCode::UNAUTHORIZED, "AccountDeactivated", "deactivated")
                    }
                    Some("Bearer takedown") => xrpc_error(StatusCode::UNAUTHORIZED, "AccountTakedown", "taken down"),
                    Some("Bearer invalid") => xrpc_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequest",
                        "Invalid app.bsky.feed.post record",
                    ),
                    _ => xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired"),
                }
            }),
        )
        .route(
            "/xrpc/com.atproto.server.createAccount",
            post(|| async { xrpc_error(StatusCode::BAD_REQUEST, "HandleNotAvailable", "Handle already taken") }),
        )
}

/// The fault endpoints are not real NSIDs; every request is labelled as one real method, `getSession` (the method
/// label is a closed set: `XrpcMethod`).
const FAULT_METHOD: XrpcMethod = XrpcMethod::GetSession;

async fn fault(base: &str, nsid: &str, timeout: Duration) -> XrpcError {
    client(timeout)
        .send(XrpcRequest::get(format!("{base}/xrpc/{nsid}"), FAULT_METHOD))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn every_fault_is_classified() {
    let metrics = metrics_handle();
    let base = serve(fault_router()).await;
    let t = Duration::from_secs(5);

    let e = fault(&base, "fault.e500", t).await;
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::XrpcServerError, ErrorClass::Transient, Some(500))
    );
    assert_eq!(e.error_name(), Some("InternalServerError"));
    assert_eq!(e.retry_after(), None);

    let e = fault(&base, "fault.e502", t).await;
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::XrpcServerError, ErrorClass::Transient, Some(502))
    );
    assert_eq!(e.error_name(), None);
    assert_eq!(
        e.message(),
        Some("<html>Bad Gateway</html>"),
        "non-JSON body kept as the message"
    );

    let e = fault(&base, "fault.e429", t).await;
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::XrpcRateLimited, ErrorClass::Transient, Some(429))
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(17)));

    let e = fault(&base, "fault.e429date", t).await;
    assert_eq!(e.code(), ErrorCode::XrpcRateLimited);
    let ra = e.retry_after().expect("HTTP-date Retry-After parsed");
    assert!(
        ra > Duration::from_secs(100) && ra <= Duration::from_secs(120),
        "{ra:?}"
    );

    let e = fault(&base, "fault.e429reset", t).await;
    assert_eq!(e.code(), ErrorCode::XrpcRateLimited);
    let ra = e.retry_after().expect("RateLimit-Reset parsed");
    assert!(ra > Duration::from_secs(25) && ra <= Duration::from_secs(30), "{ra:?}");
    assert_eq!(e.error_name(), Some("RateLimitExceeded"));

    let e = fault(&base, "fault.expired", t).await;
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::SessionExpired, ErrorClass::Transient, Some(400))
    );

    let e = fault(&base, "fault.invalid", t).await;
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::XrpcRejected, ErrorClass::Permanent, Some(400))
    );
    assert_eq!(e.error_name(), Some("InvalidRequest"));
    assert_eq!(e.message(), Some("Missing createdAt"));

    let e = fault(&base, "fault.deactivated", t).await;
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::XrpcRejected, ErrorClass::Permanent, Some(401))
    );
    assert_eq!(e.error_name(), Some("AccountDeactivated"));

    let e = fault(&base, "fault.text400", t).await;
    assert_eq!((e.code(), e.class()), (ErrorCode::XrpcRejected, ErrorClass::Permanent));
    assert_eq!(e.message(), Some("plain text refusal"));

    let started = std::time::Instant::now();
    let e = fault(&base, "fault.hang", Duration::from_millis(400)).await;
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::XrpcTimeout, ErrorClass::Transient, None)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the total timeout bounds a hang"
    );

    // 200 with a non-JSON body where JSON is expected.
    let resp = client(t)
        .send(XrpcRequest::get(format!("{base}/xrpc/fault.html200"), FAULT_METHOD))
        .await
        .unwrap();
    let e = resp.json::<serde_json::Value>().unwrap_err();
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::XrpcBadResponse, ErrorClass::Transient, Some(200))
    );

    // Nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = client(t)
        .send(XrpcRequest::get(format!("http://{dead}/xrpc/x.y"), FAULT_METHOD))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.class(), e.status()),
        (ErrorCode::XrpcTransport, ErrorClass::Transient, None)
    );

    // A URL that cannot be parsed never leaves the process.
    let e = client(t)
        .send(XrpcRequest::get("not a url", FAULT_METHOD))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::XrpcRequestInvalid, ErrorClass::Permanent)
    );

    // Every request was counted with its method and status (or "error").
    let rendered = metrics.render();
    // e500, e502, e429, expired (400), deactivated (401), text400 (400), hang and the dead port (error), html200.
    for status in ["500", "502", "429", "400", "401", "error", "200"] {
        let needle = format!("{REQUESTS_METRIC}{{method=\"{FAULT_METHOD}\",status=\"{status}\"}}");
        assert!(rendered.contains(&needle), "missing {needle} in:\n{rendered}");
    }
}

#[tokio::test]
async fn pds_errors_refine_by_xrpc_name() {
    let base = serve(fault_router()).await;
    let pds = PdsClient::new(client(Duration::from_secs(5)), &base);
    let put = PutRecord {
        repo: DID.into(),
        collection: "app.bsky.feed.post".into(),
        rkey: "3n2wc4kbc2s2b".into(),
        record: serde_json::json!({"$type": "app.bsky.feed.post", "text": "x"}),
        validate: None,
        swap_record: None,
    };
    for (token, code, class) in [
        ("deactivated", "account_deactivated", ErrorClass::Permanent),
        ("takedown", "account_takedown", ErrorClass::Permanent),
        ("invalid", "pds_validation", ErrorClass::Permanent),
        ("stale", "session_expired", ErrorClass::Transient),
    ] {
        let e = pds.put_record(token, &put).await.unwrap_err();
        assert_eq!((e.code().as_str(), e.class()), (code, class), "{token}: {e}");
    }
    let input = PdsClient::create_account_input(DID, "alice.test", "a@b.test", "pw", "invite-1").unwrap();
    let e = pds.create_account("jwt", &input).await.unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::HandleUnavailable, ErrorClass::Permanent)
    );
    // Bad local input is refused before any request.
    let bad = PutRecord {
        rkey: "no/slashes".into(),
        ..put
    };
    assert_eq!(
        pds.put_record("x", &bad).await.unwrap_err().code(),
        ErrorCode::PdsRequestInvalid
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Fake PDS session service
// ---------------------------------------------------------------------------------------------------------------

#[derive(Default)]
struct FakePds {
    refreshes: AtomicUsize,
    logins: AtomicUsize,
    writes: AtomicUsize,
    refresh_behaviour: Mutex<RefreshBehaviour>,
    valid_access: Mutex<HashSet<String>>,
    valid_refresh: Mutex<HashSet<String>>,
    serial: AtomicUsize,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum RefreshBehaviour {
    #[default]
    Works,
    Expired,
    ServerError,
}

/// A JWT-shaped token with `exp` (signature is not checked by the client, only `exp` is read).
fn token(kind: &str, exp_in: i64, serial: usize) -> String {
    let b = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = chrono::Utc::now().timestamp() + exp_in;
    format!(
        "{}.{}.sig{serial}",
        b(r#"{"typ":"at+jwt","alg":"HS256"}"#.into()),
        b(format!(
            r#"{{"scope":"{kind}","sub":"{DID}","exp":{exp},"n":{serial}}}"#
        ))
    )
}

impl FakePds {
    fn issue(&self) -> serde_json::Value {
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        let access = token("com.atproto.access", 3600, n);
        let refresh = token("com.atproto.refresh", 86400, n);
        self.valid_access.lock().unwrap().insert(access.clone());
        self.valid_refresh.lock().unwrap().insert(refresh.clone());
        serde_json::json!({"accessJwt": access, "refreshJwt": refresh, "did": DID, "handle": "alice.test", "active": true})
    }
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

fn session_router(fake: Arc<FakePds>) -> Router {
    Router::new()
        .route(
            "/xrpc/com.atproto.server.refreshSession",
            post(|State(fake): State<Arc<FakePds>>, headers: HeaderMap| async move {
                // Widen the race window: concurrent callers must still cause exactly one refresh.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let behaviour = *fake.refresh_behaviour.lock().unwrap();
                match behaviour {
                    RefreshBehaviour::ServerError => {
                        return xrpc_error(StatusCode::SERVICE_UNAVAILABLE, "InternalServerError", "down")
                    }
                    RefreshBehaviour::Expired => {
                        return xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired")
                    }
                    RefreshBehaviour::Works => {}
                }
                // Refresh tokens rotate: each one works once.
                if !fake.valid_refresh.lock().unwrap().remove(&bearer(&headers)) {
                    return xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has been revoked");
                }
                fake.refreshes.fetch_add(1, Ordering::SeqCst);
                Json(fake.issue()).into_response()
            }),
        )
        .route(
            "/xrpc/com.atproto.server.createSession",
            post(
                |State(fake): State<Arc<FakePds>>, Json(body): Json<serde_json::Value>| async move {
                    if body["identifier"] != DID || body["password"] != PASSWORD {
                        return xrpc_error(
                            StatusCode::UNAUTHORIZED,
                            "AuthenticationRequired",
                            "Invalid identifier or password",
                        );
                    }
                    fake.logins.fetch_add(1, Ordering::SeqCst);
                    Json(fake.issue()).into_response()
                },
            ),
        )
        .route(
            "/xrpc/com.atproto.repo.putRecord",
            post(|State(fake): State<Arc<FakePds>>, headers: HeaderMap| async move {
                fake.writes.fetch_add(1, Ordering::SeqCst);
                if !fake.valid_access.lock().unwrap().contains(&bearer(&headers)) {
                    return xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired");
                }
                Json(serde_json::json!({
                    "uri": format!("at://{DID}/app.bsky.feed.post/3n2wc4kbc2s2b"),
                    "cid": SOME_CID,
                    "validationStatus": "valid"
                }))
                .into_response()
            }),
        )
        .with_state(fake)
}

struct Harness {
    fake: Arc<FakePds>,
    store: Arc<MemorySessionStore>,
    sessions: Arc<SessionManager<Arc<MemorySessionStore>>>,
}

async fn harness() -> Harness {
    let fake = Arc::new(FakePds::default());
    let base = serve(session_router(fake.clone())).await;
    let store = Arc::new(MemorySessionStore::new());
    store.set_password(DID, PASSWORD);
    let sessions = Arc::new(SessionManager::new(
        PdsClient::new(client(Duration::from_secs(5)), &base),
        store.clone(),
    ));
    Harness { fake, store, sessions }
}

impl Harness {
    /// Stores a session whose access token expires in `access_exp_in` seconds; `accepted` says whether the server
    /// still honours it and its refresh token.
    fn store_session(&self, access_exp_in: i64, accepted: bool) -> StoredSession {
        let n = self.fake.serial.fetch_add(1, Ordering::SeqCst);
        let s = StoredSession {
            access_jwt: token("com.atproto.access", access_exp_in, n),
            refresh_jwt: token("com.atproto.refresh", 86400, n),
        };
        if accepted {
            self.fake.valid_access.lock().unwrap().insert(s.access_jwt.clone());
        }
        self.fake.valid_refresh.lock().unwrap().insert(s.refresh_jwt.clone());
        self.store.set_session(DID, s.clone());
        s
    }

    async fn write(&self) -> Result<String, PdsError> {
        let put = PutRecord {
            repo: DID.into(),
            collection: "app.bsky.feed.post".into(),
            rkey: "3n2wc4kbc2s2b".into(),
            record: serde_json::json!({"$type": "app.bsky.feed.post", "text": "x", "createdAt": "2026-01-01T00:00:00Z"}),
            validate: None,
            swap_record: None,
        };
        let pds = self.sessions.pds();
        let put = &put;
        self.sessions
            .with_session(DID, |t| async move {
                pds.put_record(&t, put).await.map(|o| o.cid.as_ref().to_string())
            })
            .await
    }

    fn counts(&self) -> (usize, usize, usize) {
        (
            self.fake.refreshes.load(Ordering::SeqCst),
            self.fake.logins.load(Ordering::SeqCst),
            self.fake.writes.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test]
async fn expired_access_token_is_refreshed_once_before_use() {
    let h = harness().await;
    let old = h.store_session(-10, false);
    assert_eq!(h.write().await.unwrap(), SOME_CID);
    assert_eq!(
        h.counts(),
        (1, 0, 1),
        "(refreshes, logins, writes): refreshed ahead, one write"
    );
    let stored = h.store.get(DID).unwrap();
    assert_ne!(stored, old, "the refreshed session was persisted");
    // Next use: cached, no more refreshes.
    h.write().await.unwrap();
    assert_eq!(h.counts(), (1, 0, 2));
}

#[tokio::test]
async fn access_token_expiring_within_margin_is_refreshed() {
    let h = harness().await;
    h.store_session(30, true); // valid for 30 s < 60 s margin
    h.write().await.unwrap();
    assert_eq!(h.counts(), (1, 0, 1));
}

#[tokio::test]
async fn server_side_expiry_refreshes_and_retries_once() {
    let h = harness().await;
    h.store_session(3600, false); // looks valid, but the PDS says ExpiredToken
    assert_eq!(h.write().await.unwrap(), SOME_CID);
    assert_eq!(h.counts(), (1, 0, 2), "first write refused, one refresh, one retry");
}

#[tokio::test]
async fn refresh_refused_falls_back_to_create_session() {
    let h = harness().await;
    *h.fake.refresh_behaviour.lock().unwrap() = RefreshBehaviour::Expired;
    h.store_session(-10, false);
    h.write().await.unwrap();
    assert_eq!(
        h.counts(),
        (0, 1, 1),
        "refresh refused → createSession with the stored password"
    );
    assert_eq!(h.store.save_count(), 1);
}

#[tokio::test]
async fn no_stored_session_logs_in() {
    let h = harness().await;
    h.write().await.unwrap();
    assert_eq!(h.counts(), (0, 1, 1));
}

#[tokio::test]
async fn transient_refresh_failure_is_returned_not_papered_over() {
    let h = harness().await;
    *h.fake.refresh_behaviour.lock().unwrap() = RefreshBehaviour::ServerError;
    h.store_session(-10, false);
    let e = h.write().await.unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::XrpcServerError, ErrorClass::Transient)
    );
    assert_eq!(
        h.counts(),
        (0, 0, 0),
        "no login on a PDS outage, no write with a dead token"
    );
}

#[tokio::test]
async fn wrong_password_after_refused_refresh_is_permanent() {
    let h = harness().await;
    *h.fake.refresh_behaviour.lock().unwrap() = RefreshBehaviour::Expired;
    h.store.set_password(DID, "changed-out-of-band");
    h.store_session(-10, false);
    let e = h.write().await.unwrap_err();
    assert_eq!((e.code(), e.class()), (ErrorCode::PdsRejected, ErrorClass::Permanent));
}

#[tokio::test]
async fn concurrent_users_of_one_did_cause_exactly_one_refresh() {
    let h = harness().await;
    h.store_session(-10, false);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let sessions = h.sessions.clone();
            tokio::spawn(async move {
                let pds = sessions.pds().clone();
                sessions
                    .with_session(DID, |t| {
                        let pds = pds.clone();
                        async move {
                            let put = PutRecord {
                                repo: DID.into(),
                                collection: "app.bsky.feed.post".into(),
                                rkey: "3n2wc4kbc2s2b".into(),
                                record: serde_json::json!({"$type": "app.bsky.feed.post"}),
                                validate: None,
                                swap_record: None,
                            };
                            pds.put_record(&t, &put).await
                        }
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(h.counts(), (1, 0, 16), "16 concurrent writers, one refresh");
}

#[tokio::test]
async fn concurrent_server_side_expiry_causes_exactly_one_refresh() {
    let h = harness().await;
    h.store_session(3600, false); // looks valid for an hour, but the PDS refuses it
    let stale = h.sessions.access_token(DID).await.unwrap();
    // N callers report the same rejected token at once: one refresh, everyone gets its result.
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let sessions = h.sessions.clone();
            let stale = stale.clone();
            tokio::spawn(async move { sessions.renew_after_expiry(DID, &stale).await.unwrap() })
        })
        .collect();
    let mut fresh = HashSet::new();
    for t in tasks {
        fresh.insert(t.await.unwrap());
    }
    assert_eq!(fresh.len(), 1, "everyone got the same renewed token");
    assert!(!fresh.contains(&stale));
    assert_eq!(h.counts(), (1, 0, 0));

    // The same through with_session: 16 writers on a token the PDS refuses; however they interleave, one refresh.
    let h = harness().await;
    h.store_session(3600, false);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let sessions = h.sessions.clone();
            tokio::spawn(async move {
                let pds = sessions.pds().clone();
                sessions
                    .with_session(DID, |t| {
                        let pds = pds.clone();
                        async move {
                            let put = PutRecord {
                                repo: DID.into(),
                                collection: "app.bsky.feed.post".into(),
                                rkey: "3n2wc4kbc2s2b".into(),
                                record: serde_json::json!({"$type": "app.bsky.feed.post"}),
                                validate: None,
                                swap_record: None,
                            };
                            pds.put_record(&t, &put).await
                        }
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (refreshes, logins, writes) = h.counts();
    assert_eq!((refreshes, logins), (1, 0));
    assert!(
        (16..=32).contains(&writes),
        "each writer retried at most once: {writes}"
    );
}

/// Issue 12 §3: a 307 answer to `createSession` must not replay the body (with the password) to `Location`. The
/// old client followed it; now the 3xx is `xrpc_redirect_refused` and the redirect target never sees a request.
#[tokio::test]
async fn redirect_of_a_create_session_is_refused_and_never_followed() {
    let stolen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = {
        let stolen = stolen.clone();
        serve(Router::new().fallback(move |body: String| {
            let stolen = stolen.clone();
            async move {
                stolen.lock().unwrap().push(body);
                Json(serde_json::json!({"accessJwt": "a", "refreshJwt": "r", "did": DID, "handle": "x.test"}))
            }
        }))
        .await
    };
    let target = format!("{sink}/xrpc/com.atproto.server.createSession");
    let base = serve(Router::new().route(
        "/xrpc/com.atproto.server.createSession",
        post(move || {
            let target = target.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", target)], "").into_response() }
        }),
    ))
    .await;
    let pds = PdsClient::new(client(Duration::from_secs(5)), &base);
    let e = pds.create_session(DID, PASSWORD).await.unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::XrpcRedirectRefused, ErrorClass::Permanent),
        "{e}"
    );
    assert!(!e.to_string().contains(PASSWORD), "{e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        stolen.lock().unwrap().is_empty(),
        "the redirect target received {:?}",
        stolen.lock().unwrap()
    );
}

/// Issue 12 §3: response bodies are capped while streaming (declared or chunked), not buffered whole.
#[tokio::test]
async fn oversized_response_bodies_are_refused() {
    let big = || "x".repeat(64 * 1024);
    let base = serve(
        Router::new()
            .route("/xrpc/fault.bigDeclared", get(move || async move { big() }))
            .route(
                "/xrpc/fault.bigChunked",
                get(|| async {
                    let chunks = futures::stream::iter(
                        (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'{'; 4096]))),
                    );
                    axum::body::Body::from_stream(chunks)
                }),
            )
            .route(
                "/xrpc/fault.small",
                get(|| async { Json(serde_json::json!({"ok": true})) }),
            ),
    )
    .await;
    let capped = XrpcClient::new(&XrpcConfig {
        max_response_bytes: 16 * 1024,
        ..XrpcConfig::default()
    })
    .unwrap();
    for nsid in ["fault.bigDeclared", "fault.bigChunked"] {
        let e = capped
            .send(XrpcRequest::get(format!("{base}/xrpc/{nsid}"), FAULT_METHOD))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.class()),
            (ErrorCode::XrpcResponseTooLarge, ErrorClass::Permanent),
            "{nsid}: {e}"
        );
    }
    let ok = capped
        .send(XrpcRequest::get(format!("{base}/xrpc/fault.small"), FAULT_METHOD))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

/// Issue 12 §3: plain http leaves the machine only with `ALLOW_INSECURE_HTTP`; refused before any connection.
#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused() {
    let e = client(Duration::from_secs(2))
        .send(XrpcRequest::get("http://pds.invalid/xrpc/x.y", FAULT_METHOD))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::XrpcInsecureUrl, ErrorClass::Permanent),
        "{e}"
    );
}
