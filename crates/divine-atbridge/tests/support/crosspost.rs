//! Cross-posting helpers for the `e2e_crosspost` / `e2e_crash` tests: signed NIP-71 / kind 5 / kind 0 events, an
//! opted-in and provisioned account (through the real gateway and bridge), the bridge's bookkeeping as read from
//! Postgres (`record_mappings`, `jobs`), and a session as the account itself (its sealed password opened with the
//! test's KEK) for write-path checks such as `validationStatus`. Observes and publishes only; it must not write to the
//! bridge's tables.

use super::{GatewayProcess, Probe};
use diesel::prelude::*;
use divine_bridge_db::records::RecordMapping;
use divine_bridge_db::schema::{account_keys, jobs, record_mappings};
use divine_bridge_db::testutil::TestDb;
use nostr_sdk::prelude::*;
use std::time::Duration;

/// A NIP-71 video event with one `imeta` (url, m, x, dim), a title, `t` hashtags and, for addressable kinds, a `d`.
#[allow(clippy::too_many_arguments)]
pub fn video_event(
    keys: &Keys,
    kind: u16,
    d: Option<&str>,
    title: &str,
    content: &str,
    hashtags: &[&str],
    url: &str,
    bytes: &[u8],
    at: u64,
) -> Event {
    video_event_with(keys, kind, d, title, content, hashtags, url, bytes, at, Vec::new())
}

/// [`video_event`] with extra tags (e.g. `content-warning`).
#[allow(clippy::too_many_arguments)]
pub fn video_event_with(
    keys: &Keys,
    kind: u16,
    d: Option<&str>,
    title: &str,
    content: &str,
    hashtags: &[&str],
    url: &str,
    bytes: &[u8],
    at: u64,
    extra: Vec<Tag>,
) -> Event {
    use sha2::Digest;
    let x = hex::encode(sha2::Sha256::digest(bytes));
    let mut tags = vec![
        Tag::parse([
            "imeta".to_string(),
            format!("url {url}"),
            "m video/mp4".to_string(),
            format!("x {x}"),
            "dim 1080x1920".to_string(),
        ])
        .unwrap(),
        Tag::parse(["title", title]).unwrap(),
    ];
    if let Some(d) = d {
        tags.push(Tag::identifier(d));
    }
    tags.extend(hashtags.iter().map(|h| Tag::hashtag(*h)));
    tags.extend(extra);
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags)
        .custom_created_at(Timestamp::from(at))
        .sign_with_keys(keys)
        .unwrap()
}

/// A kind 5 deletion with the given `e` ids and `a` coordinates.
pub fn delete_event(keys: &Keys, ids: &[EventId], coords: &[String], at: u64) -> Event {
    let mut tags: Vec<Tag> = ids.iter().map(|id| Tag::event(*id)).collect();
    tags.extend(coords.iter().map(|c| Tag::parse(["a", c.as_str()]).unwrap()));
    EventBuilder::new(Kind::from(5u16), "")
        .tags(tags)
        .custom_created_at(Timestamp::from(at))
        .sign_with_keys(keys)
        .unwrap()
}

/// A kind 0 metadata event.
pub fn profile_event(keys: &Keys, display_name: &str, about: &str, at: u64) -> Event {
    let content = serde_json::json!({"name": "ignored-name", "display_name": display_name, "about": about});
    EventBuilder::new(Kind::Metadata, content.to_string())
        .custom_created_at(Timestamp::from(at))
        .sign_with_keys(keys)
        .unwrap()
}

/// Publishes to every relay the client knows and asserts at least one accepted it.
pub async fn publish(client: &Client, event: &Event) {
    let out = client.send_event(event).await.expect("send_event");
    assert!(
        !out.success.is_empty(),
        "no relay accepted {}: {:?}",
        event.id,
        out.failed
    );
}

/// Now, as UNIX seconds.
pub fn unix_now() -> u64 {
    Timestamp::now().as_secs()
}

/// Opts `keys` in through the gateway and waits until the bridge has provisioned the account; returns its DID.
pub async fn opt_in_ready(gateway: &GatewayProcess, keys: &Keys, handle: &str) -> String {
    let pubkey = keys.public_key().to_hex();
    let (status, body) = gateway.opt_in(&pubkey, handle).await;
    assert_eq!(status, 202, "opt-in: {body}");
    let ready = gateway.wait_ready(&pubkey, Duration::from_secs(60)).await;
    ready["did"]
        .as_str()
        .unwrap_or_else(|| panic!("ready account without a did: {ready}"))
        .to_string()
}

/// Every `record_mappings` row.
pub fn mappings(db: &TestDb) -> Vec<RecordMapping> {
    record_mappings::table
        .select(RecordMapping::as_select())
        .load(&mut db.conn())
        .unwrap()
}

/// `record_mappings` row of one event.
pub fn mapping(db: &TestDb, event_id: &EventId) -> Option<RecordMapping> {
    record_mappings::table
        .find(event_id.to_hex())
        .select(RecordMapping::as_select())
        .first(&mut db.conn())
        .optional()
        .unwrap()
}

/// `(kind, unique_key, state, last_error_code)` of every job.
pub fn job_rows(db: &TestDb) -> Vec<(String, Option<String>, String, Option<String>)> {
    jobs::table
        .select((jobs::kind, jobs::unique_key, jobs::state, jobs::last_error_code))
        .order(jobs::id)
        .load(&mut db.conn())
        .unwrap()
}

/// The final state of the job with this unique key, once it has one.
pub async fn job_outcome(db: &TestDb, unique_key: &str, timeout: Duration) -> (String, Option<String>) {
    super::eventually(timeout, || async {
        job_rows(db)
            .into_iter()
            .find(|(_, u, state, _)| {
                u.as_deref() == Some(unique_key) && matches!(state.as_str(), "succeeded" | "failed" | "ineligible")
            })
            .map(|(_, _, s, c)| (s, c))
    })
    .await
    .unwrap_or_else(|| panic!("job {unique_key} did not finish; jobs: {:?}", job_rows(db)))
}

/// The rkey of an `at://did/collection/rkey` URI.
pub fn rkey_of(uri: &str) -> &str {
    uri.rsplit('/').next().unwrap()
}

/// The account's PDS password, opened from `account_keys` with the KEK the bridge was given.
pub fn account_password(db: &TestDb, kek_b64: &str, pubkey: &str) -> String {
    use divine_atbridge::keys::{secret_aad, KeyEncryptionKey, SecretPurpose};
    let sealed: Vec<u8> = account_keys::table
        .find(pubkey)
        .select(account_keys::password_sealed)
        .first(&mut db.conn())
        .unwrap();
    let kek = KeyEncryptionKey::from_base64(kek_b64).unwrap();
    let plain = kek.open(&secret_aad(pubkey, SecretPurpose::Password), &sealed).unwrap();
    String::from_utf8(plain.to_vec()).unwrap()
}

/// A fresh access token for the account (`createSession` with its DID and password).
pub async fn account_session(probe: &Probe, did: &str, password: &str) -> String {
    let resp = probe
        .http
        .post(format!("{}/xrpc/com.atproto.server.createSession", probe.stack.pds_url))
        .json(&serde_json::json!({"identifier": did, "password": password}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "createSession: {body}");
    body["accessJwt"].as_str().unwrap().to_string()
}

/// `putRecord` with `validate: true` as the account; returns (status, body). Re-putting the record the bridge wrote
/// is a no-op (same CID) whose `validationStatus` is the PDS's lexicon verdict on exactly that content.
pub async fn put_record_validated(
    probe: &Probe,
    access_jwt: &str,
    did: &str,
    collection: &str,
    rkey: &str,
    record: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = probe
        .http
        .post(format!("{}/xrpc/com.atproto.repo.putRecord", probe.stack.pds_url))
        .bearer_auth(access_jwt)
        .json(&serde_json::json!({
            "repo": did, "collection": collection, "rkey": rkey, "record": record, "validate": true
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// `com.atproto.repo.getRecord`; `None` when the PDS has no such record.
pub async fn get_record(probe: &Probe, did: &str, collection: &str, rkey: &str) -> Option<serde_json::Value> {
    let (status, body) = probe
        .xrpc(
            "com.atproto.repo.getRecord",
            &[("repo", did), ("collection", collection), ("rkey", rkey)],
        )
        .await;
    match status {
        200 => Some(body),
        400 | 404 if body["error"] == "RecordNotFound" => None,
        _ => panic!("getRecord {did}/{collection}/{rkey}: {status} {body}"),
    }
}

/// The bridge's log, trimmed to its last `n` lines (for assertion messages).
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// All records of a collection, fetched `page` at a time by following `cursor` (so pagination itself is exercised);
/// panics if a page repeats a URI.
pub async fn list_records_paged(probe: &Probe, did: &str, collection: &str, page: usize) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let limit = page.to_string();
    loop {
        let mut q = vec![("repo", did), ("collection", collection), ("limit", limit.as_str())];
        if let Some(c) = cursor.as_deref() {
            q.push(("cursor", c));
        }
        let (status, body) = probe.xrpc("com.atproto.repo.listRecords", &q).await;
        assert_eq!(status, 200, "listRecords: {body}");
        let records = body["records"].as_array().cloned().unwrap_or_default();
        assert!(records.len() <= page, "page larger than limit {page}");
        for r in &records {
            assert!(
                !out.iter().any(|o| o["uri"] == r["uri"]),
                "{} listed twice across pages",
                r["uri"]
            );
        }
        let n = records.len();
        out.extend(records);
        cursor = body["cursor"].as_str().map(str::to_string);
        if n == 0 || cursor.is_none() {
            return out;
        }
    }
}
