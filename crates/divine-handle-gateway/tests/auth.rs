//! Authentication of `/api/*` against the real router and Postgres: the service bearer token (right, wrong,
//! missing, other schemes) and NIP-98 — a valid kind-27235 event signed by the acted-on pubkey is accepted on every
//! route; a bad signature, wrong `u`, wrong method, wrong kind, stale or future `created_at`, missing or mismatched
//! `payload`, a replay (same replica and another replica sharing the database) and a signer other than the
//! acted-on pubkey are all 401 `unauthorized` problems, and a rejected request changes nothing.
//!
//! Owns credential checks only; route semantics are in `api.rs`.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request};
use common::*;
use nostr::{JsonUtil, Keys};

fn opt_in_body(pubkey: &str, handle: &str) -> Vec<u8> {
    serde_json::json!({"nostr_pubkey": pubkey, "handle": handle})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn valid_nip98_is_accepted_on_every_route_for_the_signers_own_pubkey() {
    let gw = Gw::with("gw_nip98_ok", nip98_opt_in);
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let h = handle("nina");

    let path = "/api/account-links/opt-in";
    let body = opt_in_body(&pk, &h);
    let tok = Nip98::for_request("POST", path, &body).token(&keys);
    let r = gw.send(nostr_req(Method::POST, path, &body, &tok)).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["handle"], h.as_str());
    assert_eq!(gw.provision_jobs(&pk).len(), 1);

    // GET without a body: no payload tag needed.
    let path = format!("/api/account-links/{pk}/status");
    let tok = Nip98::for_request("GET", &path, b"").token(&keys);
    let r = gw.send(nostr_req(Method::GET, &path, b"", &tok)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["nostr_pubkey"], pk.as_str());

    // A payload tag on an empty body must be the hash of the empty body.
    let mut n = Nip98::for_request("GET", &path, b"");
    n.payload = Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"")));
    let r = gw.send(nostr_req(Method::GET, &path, b"", &n.token(&keys))).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let path = format!("/api/account-links/{pk}/disable");
    let tok = Nip98::for_request("POST", &path, b"").token(&keys);
    let r = gw.send(nostr_req(Method::POST, &path, b"", &tok)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["provisioning_state"], "disabled");

    let path = format!("/api/account-links/{pk}/enable");
    let tok = Nip98::for_request("POST", &path, b"").token(&keys);
    let r = gw.send(nostr_req(Method::POST, &path, b"", &tok)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["provisioning_state"], "pending");

    let path = format!("/api/account-links/{pk}/crosspost-status");
    let body = serde_json::json!({"nostr_event_ids": ["ab".repeat(32)]})
        .to_string()
        .into_bytes();
    let tok = Nip98::for_request("POST", &path, &body).token(&keys);
    let r = gw.send(nostr_req(Method::POST, &path, &body, &tok)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["statuses"][0]["status"], "not_found");

    // The path may name the key as npub or upper-case hex; the u tag names the path as sent.
    let npub = nostr::ToBech32::to_bech32(&keys.public_key()).unwrap();
    let path = format!("/api/account-links/{npub}/status");
    let tok = Nip98::for_request("GET", &path, b"").token(&keys);
    let r = gw.send(nostr_req(Method::GET, &path, b"", &tok)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A created_at within the ±60 s window either way is fine.
    for skew in [-50, 50] {
        let path = format!("/api/account-links/{pk}/status");
        let mut n = Nip98::for_request("GET", &path, b"");
        n.created_at += skew;
        let r = gw.send(nostr_req(Method::GET, &path, b"", &n.token(&keys))).await;
        assert_eq!(r.status, 200, "skew {skew}: {}", r.text());
    }
}

#[track_caller]
fn assert_unauthorized(r: &Resp, detail_contains: &str) {
    let body = r.problem(401, "unauthorized");
    assert!(
        body["detail"].as_str().unwrap().contains(detail_contains),
        "expected {detail_contains:?} in {body}"
    );
    assert_eq!(r.header("www-authenticate"), Some("Bearer, Nostr"));
}

#[tokio::test]
async fn bad_nip98_events_are_401_and_change_nothing() {
    let gw = Gw::with("gw_nip98_bad", nip98_opt_in);
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let path = "/api/account-links/opt-in";
    let body = opt_in_body(&pk, &handle("olga"));
    let good = Nip98::for_request("POST", path, &body);

    let try_with = |n: Nip98| {
        let tok = n.token(&keys);
        gw.send(nostr_req(Method::POST, path, &body, &tok))
    };

    // Wrong u: other host, other path, missing PUBLIC_URL prefix, trailing slash.
    for url in [
        format!("https://evil.example{path}"),
        format!("{PUBLIC_URL}/api/account-links/other"),
        path.to_string(),
        format!("{PUBLIC_URL}{path}/"),
    ] {
        let mut n = good.clone();
        n.url = url;
        assert_unauthorized(&try_with(n).await, "u tag");
    }
    // Wrong method (and lower-case method is not the same).
    for m in ["GET", "post", "PUT"] {
        let mut n = good.clone();
        n.method = m.into();
        assert_unauthorized(&try_with(n).await, "method tag");
    }
    // Stale (> 60 s old) and from the future (> 60 s ahead).
    let mut n = good.clone();
    n.created_at = now() - 61 - 5;
    assert_unauthorized(&try_with(n).await, "ago");
    let mut n = good.clone();
    n.created_at = now() + 61 + 5;
    assert_unauthorized(&try_with(n).await, "future");
    // Wrong kind.
    let mut n = good.clone();
    n.kind = 1;
    assert_unauthorized(&try_with(n).await, "27235");
    // Payload: hash of another body, or absent although there is a body.
    let mut n = good.clone();
    n.payload = Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"other body")));
    assert_unauthorized(&try_with(n).await, "payload tag does not match");
    let mut n = good.clone();
    n.payload = None;
    assert_unauthorized(&try_with(n).await, "payload tag required");

    // Bad signature: a valid event whose sig is another event's sig; and a tampered tag (id no longer matches).
    let event: serde_json::Value = serde_json::from_str(&good.sign(&keys).as_json()).unwrap();
    let other_sig: serde_json::Value = serde_json::from_str(&good.sign(&Keys::generate()).as_json()).unwrap();
    let mut forged = event.clone();
    forged["sig"] = other_sig["sig"].clone();
    let r = gw
        .send(nostr_req(Method::POST, path, &body, &token_of(&forged.to_string())))
        .await;
    assert_unauthorized(&r, "signature invalid");
    let mut tampered = event.clone();
    tampered["created_at"] = serde_json::json!(now() - 1);
    tampered["content"] = serde_json::json!("changed");
    let r = gw
        .send(nostr_req(Method::POST, path, &body, &token_of(&tampered.to_string())))
        .await;
    assert_unauthorized(&r, "signature invalid");
    // Not base64, not an event.
    let r = gw.send(nostr_req(Method::POST, path, &body, "!!!not-base64!!!")).await;
    assert_unauthorized(&r, "not base64");
    let r = gw
        .send(nostr_req(Method::POST, path, &body, &token_of("{\"kind\": 27235}")))
        .await;
    assert_unauthorized(&r, "NIP-98 event");
    // Oversized token.
    let r = gw
        .send(nostr_req(Method::POST, path, &body, &"A".repeat(16 * 1024 + 4)))
        .await;
    assert_unauthorized(&r, "too large");

    // Signed by a different key than the body's pubkey.
    let mallory = Keys::generate();
    let r = gw
        .send(nostr_req(Method::POST, path, &body, &good.token(&mallory)))
        .await;
    assert_unauthorized(&r, "not signed by the pubkey");

    assert!(gw.jobs(&pk).is_empty(), "no rejected request wrote anything");

    // The event that was correct all along still works (none of the rejections consumed it).
    let r = gw.send(nostr_req(Method::POST, path, &body, &good.token(&keys))).await;
    assert_eq!(r.status, 202, "{}", r.text());
}

#[tokio::test]
async fn a_nip98_event_for_another_pubkey_cannot_act_on_an_account() {
    let gw = Gw::new("gw_nip98_pubkey");
    let victim = new_pubkey();
    gw.opt_in(&victim, &handle("pat")).await;
    let mallory = Keys::generate();
    for (method, action) in [
        (Method::GET, "status"),
        (Method::POST, "disable"),
        (Method::POST, "enable"),
    ] {
        let path = format!("/api/account-links/{victim}/{action}");
        let tok = Nip98::for_request(method.as_str(), &path, b"").token(&mallory);
        let r = gw.send(nostr_req(method, &path, b"", &tok)).await;
        assert_unauthorized(&r, "not signed by the pubkey");
    }
    let path = format!("/api/account-links/{victim}/crosspost-status");
    let body = serde_json::json!({"nostr_event_ids": []}).to_string().into_bytes();
    let tok = Nip98::for_request("POST", &path, &body).token(&mallory);
    assert_unauthorized(
        &gw.send(nostr_req(Method::POST, &path, &body, &tok)).await,
        "not signed by the pubkey",
    );
    let r = gw
        .send(bearer(
            Method::GET,
            &format!("/api/account-links/{victim}/status"),
            None,
        ))
        .await;
    assert_eq!(r.json()["provisioning_state"], "pending", "not disabled by mallory");
}

#[tokio::test]
async fn a_replayed_nip98_event_is_rejected_on_this_and_other_replicas() {
    let gw = Gw::new("gw_nip98_replay");
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    gw.opt_in(&pk, &handle("quinn")).await;
    let path = format!("/api/account-links/{pk}/status");
    let tok = Nip98::for_request("GET", &path, b"").token(&keys);
    let r = gw.send(nostr_req(Method::GET, &path, b"", &tok)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_unauthorized(&gw.send(nostr_req(Method::GET, &path, b"", &tok)).await, "already used");
    // Another replica (own memory) still refuses it through nip98_seen.
    let replica = gw.replica();
    assert_unauthorized(
        &send(&replica, nostr_req(Method::GET, &path, b"", &tok)).await,
        "already used",
    );
    // A fresh event for the same request is fine on the replica; then replayed on the first one.
    // (created_at differs from the first, so the event id does too.)
    let mut n = Nip98::for_request("GET", &path, b"");
    n.created_at -= 10;
    let tok2 = n.token(&keys);
    let r = send(&replica, nostr_req(Method::GET, &path, b"", &tok2)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_unauthorized(
        &gw.send(nostr_req(Method::GET, &path, b"", &tok2)).await,
        "already used",
    );
    let seen: i64 = {
        use diesel::prelude::*;
        divine_bridge_db::schema::nip98_seen::table
            .count()
            .get_result(&mut gw.conn())
            .unwrap()
    };
    assert_eq!(seen, 2, "each accepted event id recorded once");
}

#[tokio::test]
async fn bearer_tokens_and_schemes() {
    let gw = Gw::new("gw_bearer");
    let pk = new_pubkey();
    gw.opt_in(&pk, &handle("rita")).await;
    let path = format!("/api/account-links/{pk}/status");
    let with_auth = |value: Option<String>| {
        let mut b = Request::get(path.as_str());
        if let Some(v) = value {
            b = b.header(header::AUTHORIZATION, v);
        }
        b.body(Body::empty()).unwrap()
    };
    // The right token, any scheme case.
    for v in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER   {TOKEN} "),
    ] {
        let r = gw.send(with_auth(Some(v.clone()))).await;
        assert_eq!(r.status, 200, "{v}: {}", r.text());
    }
    // Wrong, prefix of, longer than the token.
    for v in [
        "Bearer wrong-token".to_string(),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Bearer {TOKEN}x"),
    ] {
        assert_unauthorized(&gw.send(with_auth(Some(v))).await, "invalid bearer token");
    }
    assert_unauthorized(&gw.send(with_auth(None)).await, "Authorization header required");
    assert_unauthorized(
        &gw.send(with_auth(Some(format!("Basic {TOKEN}")))).await,
        "unsupported Authorization scheme",
    );
    assert_unauthorized(&gw.send(with_auth(Some("Bearer".into()))).await, "<scheme>");
    // The wrong token on a write: nothing happens.
    let r = gw
        .send(
            Request::post(format!("/api/account-links/{pk}/disable"))
                .header(header::AUTHORIZATION, "Bearer nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_unauthorized(&r, "invalid bearer token");
    let r = gw.send(with_auth(Some(format!("Bearer {TOKEN}")))).await;
    assert_eq!(r.json()["provisioning_state"], "pending");
    // Authentication comes before body parsing: a bad token with a broken body is 401, not 400.
    let r = gw
        .send(
            Request::post("/api/account-links/opt-in")
                .header(header::AUTHORIZATION, "Bearer nope")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{broken"))
                .unwrap(),
        )
        .await;
    assert_unauthorized(&r, "invalid bearer token");
    // Public routes need no credentials.
    for p in ["/health", "/ready", "/metrics"] {
        let r = gw.send(Request::get(p).body(Body::empty()).unwrap()).await;
        assert_eq!(r.status, 200, "{p}");
    }
}

/// Issue 10: suspend is operator-only (service token), a suspended account cannot be enabled (or re-opted-in) by its
/// user, disable does not lift it, unsuspend (operator) leaves it disabled for the user to enable; every action is in
/// the audit trail with its actor, reason and before/after state.
#[tokio::test]
async fn suspend_is_operator_only_the_user_cannot_lift_it_and_every_action_is_audited() {
    let gw = Gw::with("gw_suspend", nip98_opt_in);
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let h = handle("susan");
    gw.opt_in(&pk, &h).await;
    gw.make_ready(&pk, "did:plc:susan");
    let user = |method: Method, path: String, body: Vec<u8>| {
        let tok = Nip98::for_request(method.as_str(), &path, &body).token(&keys);
        nostr_req(method, &path, &body, &tok)
    };

    // The user cannot suspend (even themselves).
    let body = serde_json::to_vec(&serde_json::json!({"reason": "self"})).unwrap();
    let r = gw
        .send(user(Method::POST, format!("/api/account-links/{pk}/suspend"), body))
        .await;
    r.problem(403, "operator_only");
    // A reason is required.
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/suspend"),
            Some(serde_json::json!({"reason": "  "})),
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // The operator suspends.
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/suspend"),
            Some(serde_json::json!({"reason": "spam reports #42"})),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["provisioning_state"], "suspended");
    assert_eq!(r.json()["crosspost_enabled"], false);

    // The user cannot lift it: enable and re-opt-in are 403 account_suspended; disable leaves it suspended.
    let r = gw
        .send(user(Method::POST, format!("/api/account-links/{pk}/enable"), vec![]))
        .await;
    let p = r.problem(403, "account_suspended");
    assert!(p["detail"].as_str().unwrap().contains("spam reports #42"), "{p}");
    let body = opt_in_body(&pk, &h);
    let r = gw
        .send(user(Method::POST, "/api/account-links/opt-in".to_string(), body))
        .await;
    r.problem(403, "account_suspended");
    let r = gw
        .send(user(Method::POST, format!("/api/account-links/{pk}/disable"), vec![]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["provisioning_state"], "suspended");
    let r = gw
        .send(user(Method::POST, format!("/api/account-links/{pk}/unsuspend"), vec![]))
        .await;
    r.problem(403, "operator_only");

    // The operator lifts it: disabled; then the user may enable.
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/unsuspend"),
            None,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["provisioning_state"], "disabled");
    let path = format!("/api/account-links/{pk}/enable");
    let mut n = Nip98::for_request("POST", &path, b"");
    n.created_at -= 1; // not a replay of the refused enable above (same second, same content → same event id)
    let r = gw.send(nostr_req(Method::POST, &path, b"", &n.token(&keys))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["provisioning_state"], "ready");

    // The trail, oldest first: refused actions left no row.
    let mut trail = divine_bridge_db::audit::list(&mut gw.conn(), &pk, 100).unwrap();
    trail.reverse();
    let got: Vec<(String, String, Option<String>, String, String)> = trail
        .iter()
        .map(|e| {
            let st = |v: &Option<serde_json::Value>| {
                v.as_ref()
                    .map(|v| v["provisioning_state"].as_str().unwrap().to_string())
                    .unwrap_or_else(|| "-".into())
            };
            (
                e.actor.clone(),
                e.action.clone(),
                e.reason.clone(),
                st(&e.before_state),
                st(&e.after_state),
            )
        })
        .collect();
    let user_actor = format!("nip98:{pk}");
    let row = |a: &str, act: &str, reason: Option<&str>, b: &str, af: &str| {
        (
            a.to_string(),
            act.to_string(),
            reason.map(str::to_string),
            b.to_string(),
            af.to_string(),
        )
    };
    assert_eq!(
        got,
        vec![
            row("service", "opt_in", None, "-", "pending"),
            row("service", "suspend", Some("spam reports #42"), "ready", "suspended"),
            row(&user_actor, "disable", None, "suspended", "suspended"),
            row("service", "unsuspend", None, "suspended", "disabled"),
            row(&user_actor, "enable", None, "disabled", "ready"),
        ]
    );
}

#[tokio::test]
async fn the_user_disconnects_with_nip98_another_key_cannot_and_enable_is_then_refused() {
    let gw = Gw::new("gw_disconnect");
    let keys = Keys::generate();
    let pk = keys.public_key().to_hex();
    let h = handle("leaver");
    gw.opt_in(&pk, &h).await;
    let path = format!("/api/account-links/{pk}/disconnect");

    // Someone else's NIP-98 cannot disconnect this account.
    let tok = Nip98::for_request("POST", &path, b"").token(&Keys::generate());
    let r = gw.send(nostr_req(Method::POST, &path, b"", &tok)).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(gw.jobs(&pk).iter().all(|(k, _, _)| k != "disconnect_account"));

    let tok = Nip98::for_request("POST", &path, b"").token(&keys);
    let r = gw.send(nostr_req(Method::POST, &path, b"", &tok)).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["provisioning_state"], "disconnecting");
    let trail = divine_bridge_db::audit::list(&mut gw.conn(), &pk, 5).unwrap();
    assert_eq!(
        (trail[0].action.as_str(), trail[0].actor.clone()),
        ("disconnect", format!("nip98:{pk}"))
    );
    let kinds: Vec<(String, String)> = gw.jobs(&pk).into_iter().map(|(k, _, s)| (k, s)).collect();
    assert!(
        kinds.contains(&("disconnect_account".to_string(), "queued".to_string())),
        "{kinds:?}"
    );

    let path = format!("/api/account-links/{pk}/enable");
    let tok = Nip98::for_request("POST", &path, b"").token(&keys);
    let r = gw.send(nostr_req(Method::POST, &path, b"", &tok)).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "account_disconnected");
    // The handle stays taken by the leaving account.
    let other = new_pubkey();
    let r = gw
        .send(bearer(
            Method::POST,
            "/api/account-links/opt-in",
            Some(serde_json::json!({"nostr_pubkey": other, "handle": h})),
        ))
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "handle_taken");
}

/// Captured log output (`tracing` fmt layer writing here).
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 12 §4: two service tokens are accepted at once (rotation without downtime), and the log line of each
/// action names the credential by fingerprint, never by value.
#[tokio::test]
async fn two_service_tokens_at_once_and_actions_log_which_one() {
    let old = TOKEN;
    let new = "the-next-service-token-abcdefghijklmnopqrstuvwxyz";
    let gw = Gw::new("gw_two_tokens");
    let mut config = config(&gw.tdb.url);
    config.service_tokens = divine_handle_gateway::auth::ServiceTokens::parse(&format!("{new},{old}")).unwrap();
    let ids: Vec<String> = config.service_tokens.ids().iter().map(|s| s.to_string()).collect();
    let app = divine_handle_gateway::router(divine_handle_gateway::AppState::new(gw.db.clone(), config));

    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    for (token, id) in [(new, &ids[0]), (old, &ids[1])] {
        let pk = new_pubkey();
        let body = opt_in_body(&pk, &handle("tok"));
        let r = send(
            &app,
            Request::builder()
                .method(Method::POST)
                .uri("/api/account-links/opt-in")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.text());
        let logged = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let line = logged
            .lines()
            .find(|l| l.contains("opt-in") && l.contains(&pk))
            .unwrap_or_else(|| panic!("no opt-in line for {pk} in {logged}"));
        assert!(line.contains(&format!("credential=service:{id}")), "{line}");
    }
    let logged = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        !logged.contains(old) && !logged.contains(new),
        "a token leaked into the log: {logged}"
    );
    // A token that is not configured (the length is fine) is refused.
    let r = send(
        &app,
        Request::builder()
            .method(Method::GET)
            .uri(format!("/api/account-links/{}/status", new_pubkey()))
            .header(
                header::AUTHORIZATION,
                "Bearer an-unknown-token-abcdefghijklmnopqrstuvwxyz",
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    r.problem(401, "unauthorized");
}
