//! Shared harness of the gateway's integration tests: a migrated throwaway Postgres database per test, the real
//! axum router over it (driven in-process with `tower::ServiceExt::oneshot`), request builders for bearer and
//! NIP-98 credentials, and the one problem+json assertion every error test uses.
//!
//! The gateway connects as the least-privilege gateway role (`divine_bridge_db::roles`, issue 12 §2): the database
//! is migrated by the superuser, the roles SQL is applied, and every route runs with only the gateway's grants —
//! the proof that they are enough. Fixtures (`conn`) stay on the superuser.
//!
//! Owns test plumbing only: it must not decide what a route should answer (the tests do) and must not stub the
//! database or the router.
#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request};
use axum::Router;
use base64::Engine;
use diesel::prelude::*;
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::Db;
use divine_handle_gateway::config::{AbuseConfig, Config, OptInPolicy};
use divine_handle_gateway::{router, AppState};
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag, Timestamp};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

pub const DOMAIN: &str = "divine.test";
pub const TOKEN: &str = "service-token-for-tests-0123456789abcdef";
pub const PUBLIC_URL: &str = "https://gw.divine.test";
pub const PDS_PUBLIC_URL: &str = "https://pds.example.test";

/// A gateway over its own database.
pub struct Gw {
    pub tdb: TestDb,
    /// The gateway role's URL of the test database.
    pub gateway_url: String,
    pub db: Db,
    pub state: AppState,
    pub app: Router,
}

pub fn config(db_url: &str) -> Config {
    Config {
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: db_url.to_string(),
        handle_domain: DOMAIN.to_string(),
        service_tokens: divine_handle_gateway::auth::ServiceTokens::parse(TOKEN).unwrap(),
        public_url: PUBLIC_URL.to_string(),
        db: divine_bridge_db::DbSettings::with_pool_size(4),
        db_connect_wait: std::time::Duration::from_secs(5),
        reserved_names: vec!["pds".into(), "relay".into()],
        pds_public_url: Some(PDS_PUBLIC_URL.to_string()),
        abuse: test_abuse(),
    }
}

/// The abuse controls of test gateways: the production defaults (so `OPT_IN_POLICY=service`: a test that opts in
/// with NIP-98 sets the policy it needs, e.g. [`nip98_opt_in`]) except the request-rate limits, which are off because
/// every in-process request comes from the same (absent) client address. Tests of a limit turn it on.
pub fn test_abuse() -> AbuseConfig {
    AbuseConfig {
        per_ip_per_minute: 0,
        global_per_second: 0,
        ..AbuseConfig::default()
    }
}

/// `OPT_IN_POLICY=open` without proof of work: NIP-98 opt-in for tests of authentication, not of the policy.
pub fn nip98_opt_in(c: &mut Config) {
    c.abuse.opt_in_policy = OptInPolicy::Open { pow_difficulty: 0 };
}

impl Gw {
    pub fn new(prefix: &str) -> Gw {
        Gw::with(prefix, |_| {})
    }

    /// A gateway whose [`config`] was changed by `tweak`.
    pub fn with(prefix: &str, tweak: impl FnOnce(&mut Config)) -> Gw {
        let tdb = TestDb::migrated(prefix);
        let roles = tdb.with_roles();
        let gateway_url = tdb.url_as(&roles.gateway);
        let db = Db::connect(&gateway_url, 4).expect("gateway pool");
        let mut cfg = config(&gateway_url);
        tweak(&mut cfg);
        let state = AppState::new(db.clone(), cfg);
        let app = router(state.clone());
        Gw {
            tdb,
            gateway_url,
            db,
            state,
            app,
        }
    }

    /// A second replica on the same database and configuration (own in-memory caches and limiters).
    pub fn replica(&self) -> Router {
        let db = Db::connect(&self.gateway_url, 2).expect("gateway pool");
        router(AppState::new(db, (*self.state.config).clone()))
    }

    /// A superuser connection (fixtures).
    pub fn conn(&self) -> PgConnection {
        self.tdb.conn()
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        send(&self.app, req).await
    }

    /// Opt-in with the service token; asserts 202 and returns the record.
    pub async fn opt_in(&self, pubkey: &str, handle: &str) -> serde_json::Value {
        let r = self
            .send(bearer(
                Method::POST,
                "/api/account-links/opt-in",
                Some(serde_json::json!({"nostr_pubkey": pubkey, "handle": handle})),
            ))
            .await;
        assert_eq!(r.status, 202, "opt-in: {}", r.text());
        r.json()
    }

    /// Jobs of `pubkey` (`payload.account`, whatever their ordering key) as (kind, unique_key, state).
    pub fn jobs(&self, pubkey: &str) -> Vec<(String, Option<String>, String)> {
        use divine_bridge_db::schema::jobs;
        jobs::table
            .filter(jobs::payload.retrieve_as_text("account").eq(pubkey))
            .order(jobs::id)
            .select((jobs::kind, jobs::unique_key, jobs::state))
            .load(&mut self.conn())
            .unwrap()
    }

    pub fn provision_jobs(&self, pubkey: &str) -> Vec<(String, Option<String>, String)> {
        self.jobs(pubkey)
            .into_iter()
            .filter(|j| j.0 == "provision_account")
            .collect()
    }

    /// Simulates the worker finishing provisioning: DID recorded, state ready, provisioning job succeeded.
    pub fn make_ready(&self, pubkey: &str, did: &str) {
        let mut c = self.conn();
        diesel::sql_query(
            "UPDATE account_links SET did = $2, provisioning_state = 'ready', updated_at = now() WHERE nostr_pubkey = $1",
        )
        .bind::<diesel::sql_types::Text, _>(pubkey)
        .bind::<diesel::sql_types::Text, _>(did)
        .execute(&mut c)
        .unwrap();
        diesel::sql_query(
            "UPDATE jobs SET state = 'succeeded', finished_at = now(), updated_at = now() \
             WHERE ordering_key = $1 AND kind = 'provision_account'",
        )
        .bind::<diesel::sql_types::Text, _>(pubkey)
        .execute(&mut c)
        .unwrap();
    }
}

/// A response, fully read.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with `status` and `code` (every field, the request id header) and returns the
    /// body.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "content type; body: {}",
            self.text()
        );
        let body = self.json();
        let obj = body.as_object().expect("problem is an object");
        // `/ready` failures add the readiness members both services answer with (`ready`, `reason`).
        let mut keys: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| code != "not_ready" || !matches!(*k, "ready" | "reason"))
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["code", "detail", "request_id", "status", "title", "type"],
            "{body}"
        );
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(body["type"], format!("urn:divine-bridge:problem:{code}"), "{body}");
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        let rid = self.header("x-request-id").expect("X-Request-ID on errors");
        assert!(!rid.is_empty());
        assert_eq!(body["request_id"], rid, "body request_id == header");
        body
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
    let r = Resp { status, headers, body };
    assert!(
        r.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "X-Request-ID on every response"
    );
    r
}

/// A request with the service token and an optional JSON body.
pub fn bearer(method: Method, path: &str, body: Option<serde_json::Value>) -> Request<Body> {
    let b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

/// A request with the service token and raw body bytes / content type.
pub fn bearer_raw(method: Method, path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(body.into()).unwrap()
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The parts of a NIP-98 event, each overridable by a test.
#[derive(Clone, Debug)]
pub struct Nip98 {
    pub kind: u16,
    pub url: String,
    pub method: String,
    /// `Some(hex)` adds a payload tag.
    pub payload: Option<String>,
    pub created_at: i64,
}

impl Nip98 {
    /// A correct event for `method path` with `body` (payload tag when the body is non-empty).
    pub fn for_request(method: &str, path: &str, body: &[u8]) -> Nip98 {
        Nip98 {
            kind: 27235,
            url: format!("{PUBLIC_URL}{path}"),
            method: method.to_string(),
            payload: (!body.is_empty()).then(|| hex::encode(Sha256::digest(body))),
            created_at: now(),
        }
    }

    pub fn sign(&self, keys: &Keys) -> nostr::Event {
        let mut tags = vec![
            Tag::parse(["u", self.url.as_str()]).unwrap(),
            Tag::parse(["method", self.method.as_str()]).unwrap(),
        ];
        if let Some(p) = &self.payload {
            tags.push(Tag::parse(["payload", p.as_str()]).unwrap());
        }
        EventBuilder::new(Kind::from(self.kind), "")
            .tags(tags)
            .custom_created_at(Timestamp::from(self.created_at as u64))
            .sign_with_keys(keys)
            .unwrap()
    }

    pub fn token(&self, keys: &Keys) -> String {
        token_of(&self.sign(keys).as_json())
    }
}

pub fn token_of(event_json: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(event_json)
}

/// A request authorised with `Authorization: Nostr <token>`; JSON content type when there is a body.
pub fn nostr_req(method: Method, path: &str, body: &[u8], token: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Nostr {token}"));
    if !body.is_empty() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(Body::from(body.to_vec())).unwrap()
}

pub fn new_pubkey() -> String {
    Keys::generate().public_key().to_hex()
}

/// A fresh handle under [`DOMAIN`].
pub fn handle(prefix: &str) -> String {
    let suffix: String = (0..6).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect();
    format!("{prefix}{suffix}.{DOMAIN}")
}

/// The counter value of `gateway_http_requests_total{route,status}` in a /metrics text (0 when absent).
pub fn request_count(metrics: &str, route: &str, status: u16) -> u64 {
    let needle = format!("gateway_http_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}
