//! Abuse controls of the public surface (issue 12 §1) against real Postgres and the real router: the opt-in policy
//! (`service`, `allowlist`, `open` with NIP-13 proof of work), per-IP and global request-rate limits (client IP from
//! the trusted proxy header only), the hourly provisioning budget, the enable/disable limit, the well-known cache,
//! load shedding and timeout, `/ready` on its own connection, and the bounded NIP-98 replay memory.
//!
//! Every refusal is checked as a problem+json with its code (and `Retry-After` where the client should come back);
//! every state change is read back from the tables.

mod common;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request};
use common::*;
use diesel::prelude::*;
use divine_handle_gateway::config::OptInPolicy;
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const OPT_IN: &str = "/api/account-links/opt-in";

fn opt_in_body(pubkey: &str, handle: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"nostr_pubkey": pubkey, "handle": handle})).unwrap()
}

/// A NIP-98 token for `POST /api/account-links/opt-in` with `body`, mined to `pow` leading zero bits.
fn pow_token(keys: &Keys, body: &[u8], pow: u8) -> (String, u8) {
    let n = Nip98::for_request("POST", OPT_IN, body);
    let event = EventBuilder::new(Kind::HttpAuth, "")
        .tags([
            Tag::parse(["u", n.url.as_str()]).unwrap(),
            Tag::parse(["method", "POST"]).unwrap(),
            Tag::parse(["payload", n.payload.as_deref().unwrap()]).unwrap(),
        ])
        .pow(pow)
        .sign_with_keys(keys)
        .unwrap();
    let bits = nostr::nips::nip13::get_leading_zero_bits(event.id.as_bytes());
    (token_of(&event.as_json()), bits)
}

/// A NIP-98 opt-in token whose event id has fewer than `below` leading zero bits.
fn weak_token(keys: &Keys, body: &[u8], below: u8) -> String {
    for i in 0..64 {
        let mut n = Nip98::for_request("POST", OPT_IN, body);
        n.created_at -= i;
        let event = n.sign(keys);
        if nostr::nips::nip13::get_leading_zero_bits(event.id.as_bytes()) < below {
            return token_of(&event.as_json());
        }
    }
    panic!("64 events in a row had {below} leading zero bits");
}

fn link_count(gw: &Gw, pubkey: &str) -> i64 {
    use divine_bridge_db::schema::account_links;
    account_links::table
        .filter(account_links::nostr_pubkey.eq(pubkey))
        .count()
        .get_result(&mut gw.conn())
        .unwrap()
}

/// A request from socket peer `peer` with extra `headers`.
fn from_peer(mut req: Request<Body>, peer: &str, headers: &[(&str, &str)]) -> Request<Body> {
    req.extensions_mut()
        .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    for (k, v) in headers {
        req.headers_mut().append(
            header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            header::HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

fn status_req(pk: &str) -> Request<Body> {
    bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None)
}

/// A request without a valid credential (as a flood would send): answered 401 when not rate limited.
fn anonymous_req(pk: &str) -> Request<Body> {
    Request::get(format!("/api/account-links/{pk}/status"))
        .header(header::AUTHORIZATION, "Bearer not-the-token")
        .body(Body::empty())
        .unwrap()
}

#[track_caller]
fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("Retry-After on {}", r.text()))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_default_policy_service_refuses_nip98_opt_in_and_admits_the_service_token() {
    let gw = Gw::new("gw_policy_service");
    assert_eq!(gw.state.config.abuse.opt_in_policy, OptInPolicy::Service, "the default");
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let body = opt_in_body(&pk, &handle("sam"));
    let tok = Nip98::for_request("POST", OPT_IN, &body).token(&keys);
    gw.send(nostr_req(Method::POST, OPT_IN, &body, &tok))
        .await
        .problem(403, "opt_in_service_only");
    assert_eq!(link_count(&gw, &pk), 0, "nothing created");
    assert!(gw.jobs(&pk).is_empty());
    // The login service opts the same user in.
    gw.opt_in(&pk, &handle("sam")).await;
    assert_eq!(link_count(&gw, &pk), 1);
}

#[tokio::test]
async fn the_allowlist_policy_admits_only_pubkeys_the_service_pre_registered() {
    let gw = Gw::with("gw_policy_allowlist", |c| {
        c.abuse.opt_in_policy = OptInPolicy::Allowlist
    });
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let h = handle("alma");
    let body = opt_in_body(&pk, &h);
    // Each try is a new event (NIP-98 events are single use): `age` seconds old.
    let base = now();
    let nip98_opt_in = |age: i64| {
        let mut n = Nip98::for_request("POST", OPT_IN, &body);
        n.created_at = base - age;
        let tok = n.token(&keys);
        gw.send(nostr_req(Method::POST, OPT_IN, &body, &tok))
    };
    nip98_opt_in(0).await.problem(403, "opt_in_not_allowlisted");
    assert_eq!(link_count(&gw, &pk), 0);

    // The user cannot register themselves.
    let path = format!("/api/opt-in-allowlist/{pk}");
    let tok = Nip98::for_request("PUT", &path, b"").token(&keys);
    gw.send(nostr_req(Method::PUT, &path, b"", &tok))
        .await
        .problem(403, "operator_only");

    // The service does (idempotently), then the user's NIP-98 opt-in is accepted.
    let r = gw.send(bearer(Method::PUT, &path, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], true);
    assert_eq!(gw.send(bearer(Method::PUT, &path, None)).await.json()["changed"], false);
    let r = nip98_opt_in(1).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(link_count(&gw, &pk), 1);

    // Removal: the next pubkey is refused again; removing twice is not an error.
    let r = gw.send(bearer(Method::DELETE, &path, None)).await;
    assert_eq!((r.status, r.json()["changed"].clone()), (200, true.into()));
    assert_eq!(
        gw.send(bearer(Method::DELETE, &path, None)).await.json()["changed"],
        false
    );
    let other = Keys::generate();
    let body = opt_in_body(&other.public_key().to_hex(), &handle("abe"));
    let tok = Nip98::for_request("POST", OPT_IN, &body).token(&other);
    gw.send(nostr_req(Method::POST, OPT_IN, &body, &tok))
        .await
        .problem(403, "opt_in_not_allowlisted");
}

#[tokio::test]
async fn the_open_policy_requires_nip13_proof_of_work_of_the_configured_difficulty() {
    let gw = Gw::with("gw_policy_open", |c| {
        c.abuse.opt_in_policy = OptInPolicy::Open { pow_difficulty: 10 }
    });
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let body = opt_in_body(&pk, &handle("otto"));
    let p = gw
        .send(nostr_req(Method::POST, OPT_IN, &body, &weak_token(&keys, &body, 10)))
        .await
        .problem(403, "insufficient_pow");
    assert!(p["detail"].as_str().unwrap().contains("10 leading zero bits"), "{p}");
    // Not enough: 9 bits mined for a difficulty of 10 (unless the miner overshot).
    let (tok, bits) = pow_token(&keys, &body, 9);
    if bits < 10 {
        gw.send(nostr_req(Method::POST, OPT_IN, &body, &tok))
            .await
            .problem(403, "insufficient_pow");
    }
    assert_eq!(link_count(&gw, &pk), 0);
    let (tok, bits) = pow_token(&keys, &body, 10);
    assert!(bits >= 10);
    let r = gw.send(nostr_req(Method::POST, OPT_IN, &body, &tok)).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(link_count(&gw, &pk), 1);
}

#[tokio::test]
async fn the_per_ip_limit_is_429_with_retry_after_keyed_by_the_trusted_proxy_header_only() {
    // Trusted header configured: its last value is the client.
    let gw = Gw::with("gw_rate_ip", |c| {
        c.abuse.per_ip_per_minute = 3;
        c.abuse.trusted_proxy_header = Some(header::HeaderName::from_static("x-forwarded-for"));
    });
    let pk = new_pubkey();
    let xff = |v: &'static str| from_peer(anonymous_req(&pk), "10.0.0.1:4000", &[("x-forwarded-for", v)]);
    for _ in 0..3 {
        gw.send(xff("198.51.100.1")).await.problem(401, "unauthorized");
    }
    let r = gw.send(xff("198.51.100.1")).await;
    r.problem(429, "rate_limited");
    let wait = retry_after(&r);
    assert!((1..=20).contains(&wait), "about a third of a minute: {wait}");
    // A client-written first value does not change the bucket; another client IP has its own.
    gw.send(xff("203.0.113.5, 198.51.100.1"))
        .await
        .problem(429, "rate_limited");
    gw.send(xff("198.51.100.1, 198.51.100.2"))
        .await
        .problem(401, "unauthorized");
    // Handle resolution is not limited per IP (Bluesky resolves every user from a few addresses).
    for _ in 0..5 {
        let req = Request::get("/.well-known/atproto-did")
            .header(header::HOST, format!("nobody.{DOMAIN}"))
            .body(Body::empty())
            .unwrap();
        gw.send(from_peer(req, "10.0.0.1:4000", &[("x-forwarded-for", "198.51.100.1")]))
            .await
            .problem(404, "handle_not_found");
    }

    // No header configured: X-Forwarded-For is ignored, the socket peer is the client.
    let gw = Gw::with("gw_rate_peer", |c| c.abuse.per_ip_per_minute = 2);
    for spoof in ["1.1.1.1", "2.2.2.2"] {
        gw.send(from_peer(
            anonymous_req(&pk),
            "192.0.2.10:1234",
            &[("x-forwarded-for", spoof)],
        ))
        .await
        .problem(401, "unauthorized");
    }
    gw.send(from_peer(
        anonymous_req(&pk),
        "192.0.2.10:999",
        &[("x-forwarded-for", "3.3.3.3")],
    ))
    .await
    .problem(429, "rate_limited");
    gw.send(from_peer(anonymous_req(&pk), "192.0.2.11:1234", &[]))
        .await
        .problem(401, "unauthorized");
    // The login service (valid service token) is not limited per IP: it calls for every user from a few addresses.
    for _ in 0..5 {
        gw.send(from_peer(status_req(&pk), "192.0.2.10:1234", &[]))
            .await
            .problem(404, "account_not_found");
    }
    let metrics = gw
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .text();
    assert!(
        metrics.contains("gateway_rate_limited_total{scope=\"client\"}"),
        "rate limits are counted"
    );
}

#[tokio::test]
async fn the_global_limit_is_429_whatever_the_client() {
    let gw = Gw::with("gw_rate_global", |c| c.abuse.global_per_second = 2);
    let pk = new_pubkey();
    for peer in ["192.0.2.1:1", "192.0.2.2:1"] {
        gw.send(from_peer(status_req(&pk), peer, &[]))
            .await
            .problem(404, "account_not_found");
    }
    let r = gw.send(from_peer(status_req(&pk), "192.0.2.3:1", &[])).await;
    r.problem(429, "global_rate_limited");
    assert_eq!(retry_after(&r), 1);
}

#[tokio::test]
async fn new_links_beyond_the_hourly_provisioning_budget_are_refused_with_a_code() {
    let gw = Gw::with("gw_budget", |c| c.abuse.provisioning_budget_per_hour = 2);
    let first = new_pubkey();
    let h = handle("bud");
    gw.opt_in(&first, &h).await;
    gw.opt_in(&new_pubkey(), &handle("bud")).await;
    let third = new_pubkey();
    let r = gw
        .send(bearer(
            Method::POST,
            OPT_IN,
            Some(serde_json::json!({"nostr_pubkey": third, "handle": handle("bud")})),
        ))
        .await;
    r.problem(429, "provisioning_budget_exhausted");
    let wait = retry_after(&r);
    assert!(
        (3500..=3600).contains(&wait),
        "until the oldest link leaves the hour: {wait}"
    );
    assert_eq!(link_count(&gw, &third), 0);
    assert!(gw.jobs(&third).is_empty(), "no provisioning job");
    // A repeat of an existing link is not a new provisioning.
    gw.opt_in(&first, &h).await;
    // Links older than an hour no longer count.
    diesel::sql_query("UPDATE account_links SET created_at = now() - interval '61 minutes'")
        .execute(&mut gw.conn())
        .unwrap();
    gw.opt_in(&third, &handle("bud")).await;
    let metrics = gw
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .text();
    assert!(
        metrics.contains("gateway_provisioning_budget_exhausted_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn repeated_enable_and_disable_of_one_account_is_rate_limited() {
    let gw = Gw::with("gw_toggle", |c| c.abuse.toggle_limit_per_hour = 3);
    let pk = new_pubkey();
    let other = new_pubkey();
    gw.opt_in(&pk, &handle("tog")).await;
    gw.opt_in(&other, &handle("tog")).await;
    for action in ["disable", "enable", "disable"] {
        let r = gw
            .send(bearer(Method::POST, &format!("/api/account-links/{pk}/{action}"), None))
            .await;
        assert_eq!(r.status, 200, "{action}: {}", r.text());
    }
    let r = gw
        .send(bearer(Method::POST, &format!("/api/account-links/{pk}/enable"), None))
        .await;
    r.problem(429, "toggle_rate_limited");
    assert!(retry_after(&r) > 3000);
    let state: String = divine_bridge_db::schema::account_links::table
        .find(&pk)
        .select(divine_bridge_db::schema::account_links::provisioning_state)
        .get_result(&mut gw.conn())
        .unwrap();
    assert_eq!(state, "disabled", "the refused enable changed nothing");
    // Another account is not affected.
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{other}/disable"),
            None,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn well_known(host: &str) -> Request<Body> {
    Request::get("/.well-known/atproto-did")
        .header(header::HOST, host)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn well_known_caches_found_and_not_found_lookups_and_varies_on_host() {
    let gw = Gw::new("gw_wk_cache");
    let pk = new_pubkey();
    let h = handle("carl");
    gw.opt_in(&pk, &h).await;
    gw.make_ready(&pk, "did:plc:first");
    let r = gw.send(well_known(&h)).await;
    assert_eq!((r.status, r.text()), (200, "did:plc:first".to_string()));
    assert_eq!(r.header("vary"), Some("Host"));
    // A change in the table is not seen within the cache period: the answer came from memory.
    diesel::sql_query("UPDATE account_links SET did = 'did:plc:second' WHERE nostr_pubkey = $1")
        .bind::<diesel::sql_types::Text, _>(&pk)
        .execute(&mut gw.conn())
        .unwrap();
    assert_eq!(gw.send(well_known(&h)).await.text(), "did:plc:first");
    // Not found is cached too.
    let later = handle("late");
    let r = gw.send(well_known(&later)).await;
    r.problem(404, "handle_not_found");
    assert_eq!(r.header("vary"), Some("Host"));
    let pk2 = new_pubkey();
    gw.opt_in(&pk2, &later).await;
    gw.make_ready(&pk2, "did:plc:late");
    gw.send(well_known(&later)).await.problem(404, "handle_not_found");
    // A replica without the entries reads the table.
    assert_eq!(send(&gw.replica(), well_known(&later)).await.text(), "did:plc:late");
    let metrics = gw
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .text();
    assert!(metrics.contains("gateway_well_known_lookups_total{result=\"hit\"}"));

    // The cache is bounded.
    let gw = Gw::with("gw_wk_bound", |c| c.abuse.well_known_cache_entries = 3);
    for i in 0..10 {
        gw.send(well_known(&format!("n{i}.{DOMAIN}")))
            .await
            .problem(404, "handle_not_found");
    }
    assert_eq!(gw.state.well_known.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn well_known_sheds_load_beyond_its_concurrency_and_times_out() {
    let gw = Gw::with("gw_wk_shed", |c| {
        c.abuse.well_known_max_concurrency = 1;
        c.abuse.well_known_timeout = Duration::from_millis(1500);
    });
    // Make lookups hang: another session holds an exclusive lock on account_links.
    let mut locker = gw.conn();
    diesel::sql_query("BEGIN").execute(&mut locker).unwrap();
    diesel::sql_query("LOCK TABLE account_links IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .unwrap();
    let app = gw.app.clone();
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        (
            send(&app, well_known(&format!("slow.{DOMAIN}"))).await,
            started.elapsed(),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = gw.send(well_known(&format!("other.{DOMAIN}"))).await;
    r.problem(503, "overloaded");
    assert_eq!(r.header("vary"), Some("Host"));
    assert_eq!(retry_after(&r), 1);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed at once, not queued"
    );
    let (r, took) = slow.await.unwrap();
    r.problem(503, "timeout");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );
    diesel::sql_query("ROLLBACK").execute(&mut locker).unwrap();
    gw.send(well_known(&format!("slow.{DOMAIN}")))
        .await
        .problem(404, "handle_not_found");
}

#[tokio::test]
async fn ready_answers_on_its_own_connection_when_the_pool_is_exhausted() {
    let gw = Gw::new("gw_ready_own");
    // Every pooled connection is busy (size 4), as under a flood of slow requests.
    let held: Vec<_> = (0..4).map(|_| gw.db.conn().unwrap()).collect();
    let started = Instant::now();
    let r = gw.send(Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(held);
}

#[tokio::test]
async fn the_nip98_replay_memory_is_bounded_and_postgres_still_refuses_evicted_ids() {
    let gw = Gw::with("gw_replay_cap", |c| c.abuse.replay_memory_entries = 2);
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    gw.opt_in(&pk, &handle("rae")).await;
    let path = format!("/api/account-links/{pk}/status");
    let mut tokens = Vec::new();
    // Distinct events: one base time, each a second older (two events signed in the same second would be one).
    let base = now();
    for i in 0..5 {
        let mut n = Nip98::for_request("GET", &path, b"");
        n.created_at = base - i;
        let tok = n.token(&keys);
        let r = gw.send(nostr_req(Method::GET, &path, b"", &tok)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokens.push(tok);
    }
    assert_eq!(gw.state.replay.memory_len(), 2, "capped");
    // The first id was evicted from memory; the shared table still refuses it.
    let r = gw.send(nostr_req(Method::GET, &path, b"", &tokens[0])).await;
    let p = r.problem(401, "unauthorized");
    assert!(p["detail"].as_str().unwrap().contains("already used"), "{p}");
}
