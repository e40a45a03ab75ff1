//! End-to-end test harness: the real peers (reference PLC + PDS from `PLC_URL`/`PDS_URL`, an in-process Nostr relay,
//! a loopback media server, Postgres) and the real `divine-atbridge` binary as a child process, so crash tests can
//! SIGKILL it. Shared by the `e2e_*` test binaries; each uses a subset, hence the dead-code allowance.
#![allow(dead_code)]

pub mod crosspost;
pub mod faultproxy;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use divine_bridge_db::testutil::TestDb;
use nostr_relay_builder::prelude::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The reference PLC + PDS, from the environment `scripts/test.sh` exports.
#[derive(Clone, Debug)]
pub struct Refstack {
    pub plc_url: String,
    pub pds_url: String,
    pub admin_password: String,
}

impl Refstack {
    /// `None` (with a loud message) when the reference stack is not configured; `scripts/test.sh` always sets it, and
    /// with `REQUIRE_E2E=1` (set by the script) a missing stack is a failure, not a skip.
    pub fn from_env() -> Option<Refstack> {
        match (std::env::var("PLC_URL"), std::env::var("PDS_URL")) {
            (Ok(plc_url), Ok(pds_url)) => Some(Refstack {
                plc_url,
                pds_url,
                admin_password: std::env::var("PDS_ADMIN_PASSWORD").unwrap_or_else(|_| "admin-pass".into()),
            }),
            _ => {
                if std::env::var("REQUIRE_E2E").is_ok_and(|v| v == "1") {
                    panic!("REQUIRE_E2E=1 but PLC_URL/PDS_URL are not set");
                }
                eprintln!("SKIPPED: PLC_URL/PDS_URL not set; run through scripts/test.sh for the end-to-end tests");
                None
            }
        }
    }
}

/// The 2,918-byte H.264 MP4 fixture (64x64, 1 s).
pub fn tiny_mp4() -> Vec<u8> {
    include_bytes!("../fixtures/tiny.mp4").to_vec()
}

/// A fresh handle acceptable to the reference PDS (`<3-18 chars>.test`).
pub fn random_handle(prefix: &str) -> String {
    let suffix: String = (0..8).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect();
    format!("{}{}.test", &prefix[..prefix.len().min(8)], suffix)
}

/// A static file server on 127.0.0.1 with per-name bodies, optional per-name response delays (to hold a job
/// `running` for a while) and request counts.
pub struct MediaServer {
    pub base_url: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    delays: Arc<Mutex<HashMap<String, Duration>>>,
}

type Files = (
    Arc<Mutex<HashMap<String, Vec<u8>>>>,
    Arc<Mutex<HashMap<String, usize>>>,
    Arc<Mutex<HashMap<String, Duration>>>,
);

/// The body a name serves; [`MediaServer::unavailable`] names answer 503 instead.
const UNAVAILABLE: &[u8] = b"(answer 503 Service Unavailable)";

async fn serve_file(State((files, hits, delays)): State<Files>, Path(name): Path<String>) -> impl IntoResponse {
    *hits.lock().unwrap().entry(name.clone()).or_default() += 1;
    let delay = delays.lock().unwrap().get(&name).copied();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    match files.lock().unwrap().get(&name) {
        Some(bytes) if bytes == UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Some(bytes) => (StatusCode::OK, [(header::CONTENT_TYPE, "video/mp4")], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl MediaServer {
    pub async fn start() -> MediaServer {
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let delays: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
        let app = axum::Router::new()
            .route("/media/{name}", axum::routing::get(serve_file))
            .with_state((files.clone(), hits.clone(), delays.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        MediaServer {
            base_url: format!("http://127.0.0.1:{}", addr.port()),
            files,
            hits,
            delays,
        }
    }

    /// Serves `bytes` at the returned URL, each response held back by `delay`.
    pub fn put_slow(&self, name: &str, bytes: Vec<u8>, delay: Duration) -> String {
        self.delays.lock().unwrap().insert(name.to_string(), delay);
        self.put(name, bytes)
    }

    /// Serves `bytes` at the returned URL.
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.files.lock().unwrap().insert(name.to_string(), bytes);
        format!("{}/media/{name}", self.base_url)
    }

    /// Answers 503 Service Unavailable at the returned URL (a CDN outage for one file).
    pub fn unavailable(&self, name: &str) -> String {
        self.put(name, UNAVAILABLE.to_vec())
    }

    pub fn hits(&self, name: &str) -> usize {
        self.hits.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

/// An in-process Nostr relay.
pub struct TestRelay {
    pub relay: LocalRelay,
    pub url: String,
}

impl TestRelay {
    pub async fn start() -> TestRelay {
        TestRelay::start_with(RelayBuilder::default()).await
    }

    /// A relay without the builder's default limit of 60 events a minute per client, for tests that publish in bulk.
    pub async fn start_unlimited() -> TestRelay {
        let limit = RateLimit {
            notes_per_minute: 1_000_000,
            ..RateLimit::default()
        };
        TestRelay::start_with(RelayBuilder::default().rate_limit(limit)).await
    }

    pub async fn start_with(builder: RelayBuilder) -> TestRelay {
        let relay = LocalRelay::new(builder);
        relay.run().await.unwrap();
        let url = relay.url().await.to_string();
        TestRelay { relay, url }
    }
}

/// A Nostr client connected to the given relays, for publishing test events.
pub async fn nostr_client(urls: &[&str]) -> nostr_sdk::Client {
    let client = nostr_sdk::Client::default();
    for u in urls {
        client.add_relay(*u).await.unwrap();
    }
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(5)).await;
    client
}

/// A free loopback port (bound then released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Environment for a bridge process wired to the given peers.
pub fn bridge_env(db: &TestDb, stack: &Refstack, relays: &[&str], kek: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.url.as_str()),
        ("PLC_DIRECTORY_URL", stack.plc_url.as_str()),
        ("PDS_URL", stack.pds_url.as_str()),
        ("KEY_ENCRYPTION_KEY", kek),
        ("ACCOUNT_EMAIL_DOMAIN", "bridge.test"),
        ("ALLOW_NO_RECOVERY_KEYS", "true"),
        ("PDS_ADMIN_PASSWORD", stack.admin_password.as_str()),
        ("MEDIA_ALLOWED_HOSTS", "127.0.0.1,localhost"),
        ("MEDIA_ALLOW_LOOPBACK", "true"),
        ("WORKERS", "4"),
        ("LEASE_SECS", "6"),
        ("WATCHDOG_INTERVAL_SECS", "1"),
        ("RETRY_BASE_SECS", "1"),
        ("RETRY_CAP_SECS", "4"),
        ("SHUTDOWN_GRACE_SECS", "5"),
        ("ACCOUNT_REFRESH_SECS", "1"),
        ("CURSOR_OVERLAP_SECS", "900"),
        ("RUST_LOG", "info,divine_atbridge=debug"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(std::iter::once(("NOSTR_RELAYS".to_string(), relays.join(","))))
    .collect()
}

/// A random base64 key-encryption key.
pub fn random_kek() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// The bridge binary running as a child process.
pub struct BridgeProcess {
    child: Option<Child>,
    pub http_addr: SocketAddr,
    pub log_path: std::path::PathBuf,
}

impl BridgeProcess {
    /// Starts `divine-atbridge run` with `env` (+ extra vars such as `BRIDGE_FAILPOINTS`) and waits for `/ready`.
    pub fn spawn(env: &[(String, String)], extra: &[(&str, &str)]) -> BridgeProcess {
        let p = BridgeProcess::spawn_unready(env, extra);
        p.wait_ready(Duration::from_secs(30));
        p
    }

    /// Like [`BridgeProcess::spawn`] but returns at once, without waiting for `/ready`: for processes armed with a
    /// failpoint that may abort before the first readiness probe.
    pub fn spawn_unready(env: &[(String, String)], extra: &[(&str, &str)]) -> BridgeProcess {
        let http_addr = free_addr();
        let log_path = std::env::temp_dir().join(format!(
            "atbridge-e2e-{}-{}.log",
            std::process::id(),
            rand::random::<u32>()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_divine-atbridge"))
            .arg("run")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .env("HTTP_ADDR", http_addr.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn divine-atbridge");
        BridgeProcess {
            child: Some(child),
            http_addr,
            log_path,
        }
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/ready", self.http_addr);
        while Instant::now() < deadline {
            if let Ok(resp) = ureq_get(&url) {
                if resp == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("bridge not ready within {timeout:?}; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process has exited (e.g. at a failpoint).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .map(|c| c.try_wait().unwrap().is_some())
            .unwrap_or(true)
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe_sigterm(c.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

/// Minimal blocking GET returning the status code (keeps the harness free of a blocking HTTP client dependency).
fn ureq_get(url: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad response"))
}

/// Read-only probes of the PLC and PDS, as an outside observer would do them.
pub struct Probe {
    pub http: reqwest::Client,
    pub stack: Refstack,
}

impl Probe {
    pub fn new(stack: &Refstack) -> Probe {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Probe {
            http: reqwest::Client::new(),
            stack: stack.clone(),
        }
    }

    pub async fn plc_data(&self, did: &str) -> serde_json::Value {
        self.http
            .get(format!("{}/{did}/data", self.stack.plc_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn xrpc(&self, nsid: &str, query: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .get(format!("{}/xrpc/{nsid}", self.stack.pds_url))
            .query(query)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// All records of a collection in a repo (follows the cursor).
    pub async fn list_records(&self, did: &str, collection: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![("repo", did), ("collection", collection), ("limit", "100")];
            if let Some(c) = cursor.as_deref() {
                q.push(("cursor", c));
            }
            let (status, body) = self.xrpc("com.atproto.repo.listRecords", &q).await;
            assert_eq!(status, 200, "listRecords: {body}");
            let records = body["records"].as_array().cloned().unwrap_or_default();
            let n = records.len();
            out.extend(records);
            cursor = body["cursor"].as_str().map(str::to_string);
            if n == 0 || cursor.is_none() {
                return out;
            }
        }
    }
}

/// Polls `f` until it returns `Some` or the timeout passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway binary (built by the same `cargo test --workspace` run) as a child process, connected as the
/// gateway's least-privilege role (`TestDb::with_roles`; at most one gateway per test database).
pub struct GatewayProcess {
    child: Option<Child>,
    pub base_url: String,
    pub token: String,
    pub http: reqwest::Client,
    pub log_path: std::path::PathBuf,
}

impl GatewayProcess {
    pub fn spawn(db: &TestDb) -> GatewayProcess {
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_divine-atbridge")).with_file_name("divine-handle-gateway");
        assert!(
            bin.exists(),
            "{} not built; run the tests with `cargo test --workspace`",
            bin.display()
        );
        let addr = free_addr();
        let token = format!("tok-{:032x}", rand::random::<u128>()); // at least 32 characters (MIN_SERVICE_TOKEN_CHARS)
        let log_path = std::env::temp_dir().join(format!(
            "gateway-e2e-{}-{}.log",
            std::process::id(),
            rand::random::<u32>()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        // The gateway runs as its least-privilege Postgres role (issue 12 §2), as in production.
        let gateway_url = db.url_as(&db.with_roles().gateway);
        let child = Command::new(bin)
            .env("DATABASE_URL", &gateway_url)
            .env("BIND_ADDR", addr.to_string())
            .env("HANDLE_DOMAIN", "test")
            .env("GATEWAY_SERVICE_TOKEN", &token)
            .env("PUBLIC_URL", format!("http://{addr}"))
            // Every test client is 127.0.0.1, and the tests check handle resolution right after each state change:
            // no per-IP limit and no well-known cache here (both are tested in the gateway's tests/abuse.rs).
            .env("RATE_LIMIT_PER_IP_PER_MINUTE", "0")
            .env("WELL_KNOWN_CACHE_SECS", "0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn divine-handle-gateway");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let g = GatewayProcess {
            child: Some(child),
            base_url: format!("http://{addr}"),
            token,
            http: reqwest::Client::new(),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if ureq_get(&format!("{}/ready", g.base_url)).is_ok_and(|s| s == 200) {
                return g;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "gateway not ready; log:\n{}",
            std::fs::read_to_string(&g.log_path).unwrap_or_default()
        );
    }

    /// `POST path` with the service token and a JSON body; returns (status, JSON body).
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn status(&self, pubkey: &str) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .get(format!("{}/api/account-links/{pubkey}/status", self.base_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn opt_in(&self, pubkey: &str, handle: &str) -> (u16, serde_json::Value) {
        self.post(
            "/api/account-links/opt-in",
            serde_json::json!({"nostr_pubkey": pubkey, "handle": handle}),
        )
        .await
    }

    /// Waits until the account is `ready` and returns its record.
    pub async fn wait_ready(&self, pubkey: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body) = self.status(pubkey).await;
            if body["provisioning_state"] == "ready" {
                return body;
            }
            if Instant::now() > deadline {
                panic!("account {pubkey} not ready within {timeout:?}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /.well-known/atproto-did` with `Host: <handle>`.
    pub async fn well_known(&self, handle: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}/.well-known/atproto-did", self.base_url))
            .header("host", handle)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CIDv1 (raw codec, sha2-256) of `bytes`, as the PDS names blobs (`bafkrei…`).
pub fn blob_cid(bytes: &[u8]) -> String {
    use sha2::Digest;
    let mut raw = vec![0x01, 0x55, 0x12, 0x20];
    raw.extend_from_slice(&sha2::Sha256::digest(bytes));
    format!("b{}", data_encoding::BASE32_NOPAD.encode(&raw).to_lowercase())
}
