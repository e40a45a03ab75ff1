//! The gateway's HTTP contract against real Postgres: opt-in (202, record shape, provisioning job in the same
//! transaction, idempotent repeat, handle normalisation/validation, clashes), enable/disable, status,
//! crosspost-status, `/.well-known/atproto-did`, `/health` `/ready` `/metrics`, and every problem code the routes
//! can answer (including `internal` and `unavailable` from real database failures) with its problem+json shape.
//! Bodies that are not acceptable JSON are 4xx problems, never 500.
//!
//! Authentication (bearer + NIP-98) is covered in `auth.rs`; this file uses the service token throughout. It must
//! not stub the store: every state change is read back from the tables.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request};
use common::*;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::JobKind;
use std::time::Duration;

fn rfc3339(v: &serde_json::Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))).unwrap()
}

#[tokio::test]
async fn opt_in_is_202_with_the_record_and_a_provisioning_job_in_the_same_transaction() {
    let gw = Gw::new("gw_opt_in");
    let pk = new_pubkey();
    let h = handle("alice");
    let before = chrono::Utc::now();
    let r = gw
        .send(bearer(
            Method::POST,
            "/api/account-links/opt-in",
            Some(serde_json::json!({"nostr_pubkey": pk, "handle": h})),
        ))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let rec = r.json();
    let mut keys: Vec<&str> = rec.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "crosspost_enabled",
            "did",
            "disabled_at",
            "handle",
            "nostr_pubkey",
            "provisioning_error",
            "provisioning_state",
            "updated_at"
        ]
    );
    assert_eq!(rec["nostr_pubkey"], pk.as_str());
    assert_eq!(rec["handle"], h.as_str());
    assert_eq!(rec["did"], serde_json::Value::Null);
    assert_eq!(rec["crosspost_enabled"], true, "default true");
    assert_eq!(rec["provisioning_state"], "pending");
    assert_eq!(rec["provisioning_error"], serde_json::Value::Null);
    assert_eq!(rec["disabled_at"], serde_json::Value::Null);
    let created = rfc3339(&rec["created_at"]);
    assert!(created >= before - chrono::Duration::seconds(1) && created <= chrono::Utc::now());
    assert!(rfc3339(&rec["updated_at"]) >= created);
    assert!(rec["created_at"].as_str().unwrap().ends_with('Z'), "UTC");

    // One provision_account job, and it was written by the same transaction as the link (same xmin).
    assert_eq!(
        gw.jobs(&pk),
        vec![(
            "provision_account".to_string(),
            Some(format!("provision:{pk}")),
            "queued".to_string()
        )]
    );
    #[derive(QueryableByName)]
    struct Xmin {
        #[diesel(sql_type = Text)]
        x: String,
    }
    let link_x: Xmin = diesel::sql_query("SELECT xmin::text AS x FROM account_links WHERE nostr_pubkey = $1")
        .bind::<Text, _>(&pk)
        .get_result(&mut gw.conn())
        .unwrap();
    let job_x: Xmin = diesel::sql_query("SELECT xmin::text AS x FROM jobs WHERE ordering_key = $1")
        .bind::<Text, _>(&pk)
        .get_result(&mut gw.conn())
        .unwrap();
    assert_eq!(link_x.x, job_x.x, "link and job committed by one transaction");

    // crosspost_enabled false is kept.
    let pk2 = new_pubkey();
    let r = gw
        .send(bearer(
            Method::POST,
            "/api/account-links/opt-in",
            Some(serde_json::json!({"nostr_pubkey": pk2, "handle": handle("bob"), "crosspost_enabled": false})),
        ))
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["crosspost_enabled"], false);
}

#[tokio::test]
async fn a_failing_job_insert_rolls_the_link_back_and_answers_internal() {
    let gw = Gw::new("gw_internal");
    // Make the job insert fail inside the opt-in transaction.
    diesel::sql_query(
        "CREATE FUNCTION fail_jobs() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'jobs are closed'; END $$",
    )
    .execute(&mut gw.conn())
    .unwrap();
    diesel::sql_query("CREATE TRIGGER fail_jobs BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION fail_jobs()")
        .execute(&mut gw.conn())
        .unwrap();
    let pk = new_pubkey();
    let r = gw
        .send(bearer(
            Method::POST,
            "/api/account-links/opt-in",
            Some(serde_json::json!({"nostr_pubkey": pk, "handle": handle("carol")})),
        ))
        .await;
    let body = r.problem(500, "internal");
    assert!(
        !body["detail"].as_str().unwrap().contains("jobs are closed"),
        "database details stay in the log: {body}"
    );
    assert!(r.header("retry-after").is_none());
    let links: i64 = {
        use divine_bridge_db::schema::account_links;
        account_links::table.count().get_result(&mut gw.conn()).unwrap()
    };
    assert_eq!(links, 0, "no link without its job");
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None))
        .await;
    r.problem(404, "account_not_found");
}

#[tokio::test]
async fn a_lost_database_is_unavailable_and_not_ready() {
    let gw = Gw::new("gw_unavailable");
    let r = gw.send(Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!((r.status, r.json()), (200, serde_json::json!({"ready": true})));
    // Postgres goes away under the pool: every session killed, no new ones allowed.
    let name = gw.tdb.url.rsplit('/').next().unwrap().to_string();
    let mut admin = PgConnection::establish(gw.tdb.admin_url()).unwrap();
    diesel::sql_query(format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .unwrap();
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(&mut admin)
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pk = new_pubkey();
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None))
        .await;
    r.problem(503, "unavailable");
    assert_eq!(r.header("retry-after"), Some("5"));
    let r = gw.send(Request::get("/ready").body(Body::empty()).unwrap()).await;
    r.problem(503, "not_ready");
    assert_eq!(r.header("retry-after"), Some("5"));
    let body = r.json();
    assert_eq!(
        (&body["ready"], &body["reason"]),
        (&serde_json::json!(false), &serde_json::json!("database_unavailable")),
        "the readiness shape of divine-atbridge's /ready: {body}"
    );
    let r = gw.send(Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, 200, "liveness does not depend on the database");
}

#[tokio::test]
async fn opt_in_repeats_are_idempotent_and_clashes_are_409() {
    let gw = Gw::new("gw_idem");
    let pk = new_pubkey();
    let h = handle("dave");
    let first = gw.opt_in(&pk, &h).await;
    // Same request again, and the same handle in another spelling: same record, still one job.
    let again = gw.opt_in(&pk, &h).await;
    assert_eq!(again, first);
    let spelled = gw
        .opt_in(&pk.to_uppercase(), &format!("  {}  ", h.to_uppercase()))
        .await;
    assert_eq!(spelled, first);
    assert_eq!(gw.provision_jobs(&pk).len(), 1);
    assert_eq!(gw.jobs(&pk).len(), 1);

    // Another pubkey, same handle → 409 handle_taken; nothing written for it.
    let other = new_pubkey();
    let r = gw
        .send(bearer(
            Method::POST,
            "/api/account-links/opt-in",
            Some(serde_json::json!({"nostr_pubkey": other, "handle": h.to_uppercase()})),
        ))
        .await;
    let body = r.problem(409, "handle_taken");
    assert!(body["detail"].as_str().unwrap().contains(&h), "{body}");
    assert!(gw.jobs(&other).is_empty());
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{other}/status"), None))
        .await;
    r.problem(404, "account_not_found");

    // Same pubkey, another handle → 409 handle_mismatch.
    let r = gw
        .send(bearer(
            Method::POST,
            "/api/account-links/opt-in",
            Some(serde_json::json!({"nostr_pubkey": pk, "handle": handle("eve")})),
        ))
        .await;
    r.problem(409, "handle_mismatch");
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None))
        .await;
    assert_eq!(r.json()["handle"], h.as_str(), "unchanged");

    // npub form of the same key is the same account.
    let keys = nostr::Keys::generate();
    let hex = keys.public_key().to_hex();
    let npub = nostr::ToBech32::to_bech32(&keys.public_key()).unwrap();
    let h2 = handle("npub");
    let a = gw.opt_in(&npub, &h2).await;
    assert_eq!(a["nostr_pubkey"], hex.as_str());
    assert_eq!(gw.opt_in(&hex, &h2).await, a);
    assert_eq!(gw.provision_jobs(&hex).len(), 1);
}

#[tokio::test]
async fn concurrent_identical_opt_ins_write_one_link_and_one_job() {
    let gw = Gw::new("gw_race");
    let pk = new_pubkey();
    let h = handle("race");
    let reqs = (0..8).map(|_| {
        let app = gw.app.clone();
        let (pk, h) = (pk.clone(), h.clone());
        tokio::spawn(async move {
            send(
                &app,
                bearer(
                    Method::POST,
                    "/api/account-links/opt-in",
                    Some(serde_json::json!({"nostr_pubkey": pk, "handle": h})),
                ),
            )
            .await
        })
    });
    let mut records = Vec::new();
    for r in futures_join(reqs).await {
        assert_eq!(r.status, 202, "{}", r.text());
        records.push(r.json());
    }
    assert!(records.windows(2).all(|w| w[0] == w[1]), "one record: {records:?}");
    assert_eq!(gw.provision_jobs(&pk).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clashing_opt_ins_give_one_winner_and_409s_never_500() {
    let gw = Gw::new("gw_race_clash");
    // Eight pubkeys race for one handle.
    let h = handle("prize");
    let pubkeys: Vec<String> = (0..8).map(|_| new_pubkey()).collect();
    let reqs = pubkeys.iter().map(|pk| {
        let app = gw.app.clone();
        let body = serde_json::json!({"nostr_pubkey": pk, "handle": h});
        tokio::spawn(async move { send(&app, bearer(Method::POST, "/api/account-links/opt-in", Some(body))).await })
    });
    let results = futures_join(reqs).await;
    let winners: Vec<&Resp> = results.iter().filter(|r| r.status == 202).collect();
    assert_eq!(
        winners.len(),
        1,
        "statuses: {:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in results.iter().filter(|r| r.status != 202) {
        r.problem(409, "handle_taken");
    }
    let winner = winners[0].json()["nostr_pubkey"].as_str().unwrap().to_string();
    for pk in &pubkeys {
        assert_eq!(gw.provision_jobs(pk).len(), usize::from(*pk == winner), "{pk}");
    }
    // One pubkey races with eight different handles.
    let pk = new_pubkey();
    let handles: Vec<String> = (0..8).map(|_| handle("multi")).collect();
    let reqs = handles.iter().map(|h| {
        let app = gw.app.clone();
        let body = serde_json::json!({"nostr_pubkey": pk, "handle": h});
        tokio::spawn(async move { send(&app, bearer(Method::POST, "/api/account-links/opt-in", Some(body))).await })
    });
    let results = futures_join(reqs).await;
    assert_eq!(results.iter().filter(|r| r.status == 202).count(), 1);
    for r in results.iter().filter(|r| r.status != 202) {
        r.problem(409, "handle_mismatch");
    }
    assert_eq!(gw.provision_jobs(&pk).len(), 1);
}

async fn futures_join<T: Send + 'static>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn handles_are_normalised_and_validated() {
    let gw = Gw::new("gw_handles");
    // Normalised: trimmed, lower-cased.
    let pk = new_pubkey();
    let rec = gw.opt_in(&pk, "  MiXeD-Case.Divine.TEST\t").await;
    assert_eq!(rec["handle"], "mixed-case.divine.test");
    // Exactly 30 characters is accepted.
    let name30 = "a".repeat(30 - DOMAIN.len() - 1);
    let rec = gw.opt_in(&new_pubkey(), &format!("{name30}.{DOMAIN}")).await;
    assert_eq!(rec["handle"].as_str().unwrap().len(), 30);

    let cases: Vec<(String, &str)> = vec![
        (format!("a{name30}.{DOMAIN}"), "longer than 30"),
        ("al_ice.divine.test".into(), "may only contain"),
        ("-alice.divine.test".into(), "starts or ends"),
        ("alice..divine.test".into(), "empty label"),
        ("alice.other.test".into(), "must be <name>.divine.test"),
        ("alicedivine.test".into(), "must be <name>.divine.test"),
        ("a.b.divine.test".into(), "exactly one label"),
        ("divine.test".into(), "must be <name>"),
        ("alice".into(), "two labels"),
        ("   ".into(), "empty"),
    ];
    for (h, why) in cases {
        let pk = new_pubkey();
        let r = gw
            .send(bearer(
                Method::POST,
                "/api/account-links/opt-in",
                Some(serde_json::json!({"nostr_pubkey": pk, "handle": h})),
            ))
            .await;
        let body = r.problem(400, "invalid_handle");
        assert!(body["detail"].as_str().unwrap().contains(why), "{h:?}: {body}");
        assert!(gw.jobs(&pk).is_empty(), "{h:?}: nothing written");
    }
}

#[tokio::test]
async fn reserved_names_are_409_handle_reserved_and_write_nothing() {
    let gw = Gw::new("gw_reserved");
    // The test config reserves `pds` and `relay` (RESERVED_HANDLE_NAMES).
    for h in ["pds.divine.test", " RELAY.Divine.Test "] {
        let pk = new_pubkey();
        let r = gw
            .send(bearer(
                Method::POST,
                "/api/account-links/opt-in",
                Some(serde_json::json!({"nostr_pubkey": pk, "handle": h})),
            ))
            .await;
        let body = r.problem(409, "handle_reserved");
        assert!(body["detail"].as_str().unwrap().contains("is reserved"), "{body}");
        assert!(gw.jobs(&pk).is_empty(), "{h:?}: nothing written");
    }
    // A name merely starting with a reserved one is fine.
    let rec = gw.opt_in(&new_pubkey(), "pdsfan.divine.test").await;
    assert_eq!(rec["provisioning_state"], "pending");
}

#[tokio::test]
async fn invalid_pubkeys_are_400_in_body_and_path() {
    let gw = Gw::new("gw_pubkeys");
    for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65), "npub1qqqqqq"] {
        let r = gw
            .send(bearer(
                Method::POST,
                "/api/account-links/opt-in",
                Some(serde_json::json!({"nostr_pubkey": bad, "handle": handle("x")})),
            ))
            .await;
        r.problem(400, "invalid_pubkey");
    }
    for path in [
        "/api/account-links/nothex/status",
        "/api/account-links/nothex/enable",
        "/api/account-links/nothex/disable",
        "/api/account-links/nothex/crosspost-status",
    ] {
        let method = if path.ends_with("status") && !path.ends_with("crosspost-status") {
            Method::GET
        } else {
            Method::POST
        };
        let body = path
            .ends_with("crosspost-status")
            .then(|| serde_json::json!({"nostr_event_ids": []}));
        let r = gw.send(bearer(method, path, body)).await;
        r.problem(400, "invalid_pubkey");
    }
}

#[tokio::test]
async fn status_is_200_with_the_record_or_404() {
    let gw = Gw::new("gw_status");
    let pk = new_pubkey();
    let rec = gw.opt_in(&pk, &handle("frank")).await;
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), rec);
    // Upper-case hex path is the same account.
    let r = gw
        .send(bearer(
            Method::GET,
            &format!("/api/account-links/{}/status", pk.to_uppercase()),
            None,
        ))
        .await;
    assert_eq!(r.json(), rec);
    // A failed account shows its stable code, never the operator detail.
    diesel::sql_query(
        "UPDATE account_links SET provisioning_state = 'failed', provisioning_error = 'plc_rejected', \
         provisioning_error_detail = 'secret operator detail' WHERE nostr_pubkey = $1",
    )
    .bind::<Text, _>(&pk)
    .execute(&mut gw.conn())
    .unwrap();
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None))
        .await;
    let body = r.json();
    assert_eq!(body["provisioning_state"], "failed");
    assert_eq!(body["provisioning_error"], "plc_rejected");
    assert!(!r.text().contains("secret operator detail"));

    let r = gw
        .send(bearer(
            Method::GET,
            &format!("/api/account-links/{}/status", new_pubkey()),
            None,
        ))
        .await;
    r.problem(404, "account_not_found");
}

fn publish_job(pubkey: &str, event_id: &str) -> NewJob {
    NewJob::for_account(
        JobKind::PublishPost,
        pubkey,
        divine_bridge_db::queue::keys::event(event_id),
        serde_json::json!({"nostr_event_id": event_id}),
    )
    .unique(format!("publish:{event_id}"))
}

fn event_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[tokio::test]
async fn disable_cancels_queued_publishing_and_enable_redrives_provisioning() {
    let gw = Gw::new("gw_enable");
    let pk = new_pubkey();
    gw.opt_in(&pk, &handle("grace")).await;
    let ev = event_id();
    queue::enqueue(&mut gw.conn(), &publish_job(&pk, &ev)).unwrap().unwrap();
    // Another account's queued job is not touched.
    let other = new_pubkey();
    gw.opt_in(&other, &handle("heidi")).await;
    let other_ev = event_id();
    queue::enqueue(&mut gw.conn(), &publish_job(&other, &other_ev))
        .unwrap()
        .unwrap();

    let r = gw
        .send(bearer(Method::POST, &format!("/api/account-links/{pk}/disable"), None))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = r.json();
    assert_eq!(rec["provisioning_state"], "disabled");
    assert_eq!(rec["crosspost_enabled"], false);
    let disabled_at = rfc3339(&rec["disabled_at"]);
    let states: Vec<(String, String)> = gw.jobs(&pk).into_iter().map(|(k, _, s)| (k, s)).collect();
    assert_eq!(
        states,
        vec![
            ("provision_account".to_string(), "queued".to_string()),
            ("publish_post".to_string(), "cancelled".to_string())
        ],
        "publish cancelled, provisioning left alone"
    );
    assert_eq!(gw.jobs(&other)[1].2, "queued");
    // The app sees the cancellation per event.
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/crosspost-status"),
            Some(serde_json::json!({"nostr_event_ids": [ev]})),
        ))
        .await;
    assert_eq!(r.json()["statuses"][0]["status"], "cancelled");

    // Disable again: still disabled, first disabled_at kept.
    let r = gw
        .send(bearer(Method::POST, &format!("/api/account-links/{pk}/disable"), None))
        .await;
    assert_eq!(rfc3339(&r.json()["disabled_at"]), disabled_at);
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None))
        .await;
    assert_eq!(r.json()["provisioning_state"], "disabled");

    // Enable without a DID: back to pending, the provisioning job still queued (one of it).
    let r = gw
        .send(bearer(Method::POST, &format!("/api/account-links/{pk}/enable"), None))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = r.json();
    assert_eq!(rec["provisioning_state"], "pending");
    assert_eq!(rec["crosspost_enabled"], true);
    assert_eq!(rec["disabled_at"], serde_json::Value::Null);
    let prov = gw.provision_jobs(&pk);
    assert_eq!(prov.len(), 1);
    assert_eq!(prov[0].2, "queued");

    // A failed provisioning is re-driven by enable: the same job queued again.
    diesel::sql_query(
        "UPDATE jobs SET state = 'failed', finished_at = now(), last_error_code = 'plc_rejected' \
         WHERE ordering_key = $1 AND kind = 'provision_account'",
    )
    .bind::<Text, _>(&pk)
    .execute(&mut gw.conn())
    .unwrap();
    diesel::sql_query(
        "UPDATE account_links SET provisioning_state = 'failed', provisioning_error = 'plc_rejected' \
         WHERE nostr_pubkey = $1",
    )
    .bind::<Text, _>(&pk)
    .execute(&mut gw.conn())
    .unwrap();
    let r = gw
        .send(bearer(Method::POST, &format!("/api/account-links/{pk}/enable"), None))
        .await;
    let rec = r.json();
    assert_eq!(rec["provisioning_state"], "pending");
    assert_eq!(rec["provisioning_error"], serde_json::Value::Null);
    let prov = gw.provision_jobs(&pk);
    assert_eq!(prov.len(), 1, "{prov:?}");
    assert_eq!(prov[0].2, "queued", "re-driven");

    // With an active account (DID, ready): disable → enable goes straight back to ready, no provisioning.
    gw.make_ready(&pk, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa");
    gw.send(bearer(Method::POST, &format!("/api/account-links/{pk}/disable"), None))
        .await;
    let r = gw
        .send(bearer(Method::POST, &format!("/api/account-links/{pk}/enable"), None))
        .await;
    let rec = r.json();
    assert_eq!(rec["provisioning_state"], "ready");
    assert_eq!(rec["did"], "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa");
    let prov = gw.provision_jobs(&pk);
    assert_eq!(
        prov.iter().map(|j| j.2.as_str()).collect::<Vec<_>>(),
        ["succeeded"],
        "no provisioning for an account that has a DID"
    );
    // Enabling an enabled account is a no-op answer.
    let r = gw
        .send(bearer(Method::POST, &format!("/api/account-links/{pk}/enable"), None))
        .await;
    assert_eq!(r.json(), rec);

    // Opt-in of a disabled link with the same handle re-enables it.
    gw.send(bearer(Method::POST, &format!("/api/account-links/{pk}/disable"), None))
        .await;
    let again = gw.opt_in(&pk, rec["handle"].as_str().unwrap()).await;
    assert_eq!(again["provisioning_state"], "ready");
    assert_eq!(again["crosspost_enabled"], true);

    // Unknown accounts.
    for action in ["enable", "disable"] {
        let r = gw
            .send(bearer(
                Method::POST,
                &format!("/api/account-links/{}/{action}", new_pubkey()),
                None,
            ))
            .await;
        r.problem(404, "account_not_found");
    }
}

#[tokio::test]
async fn crosspost_status_answers_per_event_for_up_to_100_ids() {
    let gw = Gw::new("gw_xpost");
    let pk = new_pubkey();
    gw.opt_in(&pk, &handle("ivan")).await;
    let did = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
    gw.make_ready(&pk, did);
    let mut c = gw.conn();
    let ids: Vec<String> = (0..7).map(|_| event_id()).collect();
    // 0 queued, 1 retrying, 2 publishing, 3 failed, 4 cancelled, 5 published (mapping), 6 not found.
    for (i, id) in ids.iter().enumerate().take(5) {
        queue::enqueue(&mut c, &publish_job(&pk, id)).unwrap().unwrap();
        let (state, attempt, code) = match i {
            0 => ("queued", 0, None),
            1 => ("queued", 2, Some("pds_unavailable")),
            2 => ("running", 1, None),
            3 => ("failed", 1, Some("media_too_large")),
            _ => ("cancelled", 0, Some("cancelled")),
        };
        diesel::sql_query(
            "UPDATE jobs SET state = $2, attempt = $3, last_error_code = $4, \
             lease_owner = CASE WHEN $2 = 'running' THEN 'test-owner' END, \
             lease_expires_at = CASE WHEN $2 = 'running' THEN now() + interval '1 minute' END, \
             lease_token = CASE WHEN $2 = 'running' THEN nextval('jobs_lease_token_seq') END, \
             finished_at = CASE WHEN $2 IN ('failed', 'cancelled') THEN now() END \
             WHERE unique_key = $1",
        )
        .bind::<Text, _>(format!("publish:{id}"))
        .bind::<Text, _>(state)
        .bind::<Integer, _>(attempt)
        .bind::<diesel::sql_types::Nullable<Text>, _>(code)
        .execute(&mut c)
        .unwrap();
    }
    let at_uri = format!("at://{did}/app.bsky.feed.post/3kabcdefghi22");
    diesel::sql_query(
        "INSERT INTO record_mappings (nostr_event_id, nostr_pubkey, did, collection, rkey, event_kind, \
         event_created_at, state, at_uri, cid, published_at, created_at, updated_at) \
         VALUES ($1, $2, $3, 'app.bsky.feed.post', '3kabcdefghi22', 34235, now(), 'published', $4, 'bafyfake', now(), now(), now())",
    )
    .bind::<Text, _>(&ids[5])
    .bind::<Text, _>(&pk)
    .bind::<Text, _>(did)
    .bind::<Text, _>(&at_uri)
    .execute(&mut c)
    .unwrap();
    // Another account's job for an id we ask about is invisible.
    let other = new_pubkey();
    gw.opt_in(&other, &handle("judy")).await;
    queue::enqueue(&mut c, &publish_job(&other, &ids[6])).unwrap().unwrap();

    // Upper-case ids are accepted and normalised; the answer keeps the request order.
    let asked: Vec<String> = ids.iter().map(|i| i.to_uppercase()).collect();
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/crosspost-status"),
            Some(serde_json::json!({"nostr_event_ids": asked})),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let statuses = r.json()["statuses"].as_array().unwrap().clone();
    let got: Vec<(&str, &str)> = statuses
        .iter()
        .map(|s| (s["nostr_event_id"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    let want: Vec<(&str, &str)> = ids
        .iter()
        .map(String::as_str)
        .zip([
            "queued",
            "retrying",
            "publishing",
            "failed",
            "cancelled",
            "published",
            "not_found",
        ])
        .collect();
    assert_eq!(got, want);
    assert_eq!(statuses[1]["error_code"], "pds_unavailable");
    assert_eq!(statuses[3]["error_code"], "media_too_large");
    assert_eq!(statuses[5]["at_uri"], at_uri.as_str());
    assert_eq!(statuses[5]["cid"], "bafyfake");
    assert!(statuses[0].get("at_uri").is_none() && statuses[6].get("error_code").is_none());

    // Exactly 100 ids are fine; 101 is too_many_ids; an invalid id is invalid_event_id; empty is fine.
    let hundred: Vec<String> = (0..100).map(|_| event_id()).collect();
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/crosspost-status"),
            Some(serde_json::json!({"nostr_event_ids": hundred})),
        ))
        .await;
    assert_eq!(r.status, 200);
    let statuses = r.json()["statuses"].as_array().unwrap().clone();
    assert_eq!(statuses.len(), 100);
    assert!(statuses.iter().all(|s| s["status"] == "not_found"));
    let mut many = hundred.clone();
    many.push(event_id());
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/crosspost-status"),
            Some(serde_json::json!({"nostr_event_ids": many})),
        ))
        .await;
    let body = r.problem(400, "too_many_ids");
    assert!(body["detail"].as_str().unwrap().contains("101"), "{body}");
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/crosspost-status"),
            Some(serde_json::json!({"nostr_event_ids": [ids[0].clone(), "xyz"]})),
        ))
        .await;
    r.problem(400, "invalid_event_id");
    let r = gw
        .send(bearer(
            Method::POST,
            &format!("/api/account-links/{pk}/crosspost-status"),
            Some(serde_json::json!({"nostr_event_ids": []})),
        ))
        .await;
    assert_eq!(r.json(), serde_json::json!({"statuses": []}));
}

fn well_known(host: &str) -> Request<Body> {
    Request::get("/.well-known/atproto-did")
        .header(header::HOST, host)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn atproto_did_answers_ready_handles_only() {
    // Uncached, to see each state change at once (the cache is tested in abuse.rs).
    let gw = Gw::with("gw_wellknown", |c| c.abuse.well_known_cache_ttl = Duration::ZERO);
    let pk = new_pubkey();
    let h = handle("kate");
    gw.opt_in(&pk, &h).await;
    // Pending: not resolvable yet.
    gw.send(well_known(&h)).await.problem(404, "handle_not_found");
    let did = "did:plc:cccccccccccccccccccccccc";
    gw.make_ready(&pk, did);
    for host in [h.clone(), h.to_uppercase(), format!("{h}:3000"), format!("{h}.")] {
        let r = gw.send(well_known(&host)).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.text(), did, "{host}");
    }
    // Disabled: no longer resolves (only ready accounts do).
    gw.send(bearer(Method::POST, &format!("/api/account-links/{pk}/disable"), None))
        .await;
    gw.send(well_known(&h)).await.problem(404, "handle_not_found");
    // Unknown handle under the domain, a host outside it, an IP literal, no Host at all.
    gw.send(well_known(&handle("nobody")))
        .await
        .problem(404, "handle_not_found");
    gw.send(well_known("kate.example.com"))
        .await
        .problem(404, "handle_not_found");
    gw.send(well_known("[::1]:80")).await.problem(404, "handle_not_found");
    let r = gw
        .send(Request::get("/.well-known/atproto-did").body(Body::empty()).unwrap())
        .await;
    r.problem(404, "handle_not_found");
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let gw = Gw::new("gw_ops");
    let r = gw.send(Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!((r.status, r.json()), (200, serde_json::json!({"status": "ok"})));
    let r = gw.send(Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!((r.status, r.json()), (200, serde_json::json!({"ready": true})));

    let metrics = |gw: &Gw| {
        let app = gw.app.clone();
        async move {
            let r = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
            assert_eq!(r.status, 200);
            assert!(r.header("content-type").unwrap().starts_with("text/plain"));
            r.text()
        }
    };
    let before = metrics(&gw).await;
    let pk = new_pubkey();
    gw.opt_in(&new_pubkey(), &handle("ops")).await;
    gw.send(bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None))
        .await
        .problem(404, "account_not_found");
    gw.send(Request::get("/no/such/route").body(Body::empty()).unwrap())
        .await
        .problem(404, "not_found");
    gw.send(Request::get("/health").body(Body::empty()).unwrap()).await;
    let after = metrics(&gw).await;
    // Counters are process-wide (tests run in parallel), so compare increments.
    for (route, status) in [
        ("/api/account-links/{pubkey}/status", 404),
        ("unmatched", 404),
        ("/health", 200),
    ] {
        assert!(
            request_count(&after, route, status) > request_count(&before, route, status),
            "{route} {status} counted:\n{after}"
        );
    }
    assert!(!after.contains(&pk), "the raw path (with the pubkey) is never a label");
    assert!(
        after.contains("gateway_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.001\"}"),
        "latency is a real histogram (aggregatable across replicas):\n{after}"
    );
    assert!(after.contains("gateway_opt_ins_total{outcome=\"created\"}"), "{after}");
    assert!(
        request_count(&after, "/api/account-links/opt-in", 202)
            > request_count(&before, "/api/account-links/opt-in", 202)
    );
}

#[tokio::test]
async fn request_ids_are_echoed_when_valid_and_generated_otherwise() {
    let gw = Gw::new("gw_reqid");
    let r = gw
        .send(
            Request::get("/health")
                .header("x-request-id", "abc-123_x.y:z")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123_x.y:z"));
    let r = gw
        .send(
            Request::get("/nope")
                .header("x-request-id", "trace-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.problem(404, "not_found")["request_id"], "trace-42");
    for bad in ["has space", &"a".repeat(129), "semi;colon"] {
        let r = gw
            .send(
                Request::get("/health")
                    .header("x-request-id", bad)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        let rid = r.header("x-request-id").unwrap();
        assert_ne!(rid, bad);
        assert_eq!(rid.len(), 32, "generated: {rid}");
    }
}

#[tokio::test]
async fn bodies_that_are_not_acceptable_json_are_4xx_problems() {
    let gw = Gw::new("gw_bodies");
    let pk = new_pubkey();
    gw.opt_in(&pk, &handle("leo")).await;
    let opt_in = "/api/account-links/opt-in";
    let xpost = format!("/api/account-links/{pk}/crosspost-status");
    let valid = serde_json::json!({"nostr_pubkey": new_pubkey(), "handle": handle("mia")}).to_string();
    for path in [opt_in, xpost.as_str()] {
        // Malformed JSON, empty body, wrong shape, not UTF-8, JSON of the wrong type.
        for body in [
            b"{\"nostr_pubkey\": ".to_vec(),
            Vec::new(),
            b"{}".to_vec(),
            b"[1,2,3]".to_vec(),
            b"null".to_vec(),
            vec![0xff, 0xfe, 0x00],
            br#"{"nostr_pubkey": 5, "handle": true, "nostr_event_ids": "x"}"#.to_vec(),
        ] {
            let r = gw
                .send(bearer_raw(Method::POST, path, Some("application/json"), body.clone()))
                .await;
            r.problem(400, "invalid_json");
        }
        // Wrong or missing content type, even with a valid body.
        for ct in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
            let r = gw.send(bearer_raw(Method::POST, path, ct, valid.clone())).await;
            r.problem(415, "unsupported_media_type");
        }
        // Over 64 KiB (valid JSON, padded).
        let big = format!(
            "{{\"nostr_pubkey\": \"{pk}\", \"handle\": \"x.divine.test\", \"pad\": \"{}\"}}",
            "a".repeat(64 * 1024)
        );
        let r = gw
            .send(bearer_raw(Method::POST, path, Some("application/json"), big))
            .await;
        r.problem(413, "payload_too_large");
    }
    // Content type with parameters and different case is fine.
    let r = gw
        .send(bearer_raw(
            Method::POST,
            opt_in,
            Some("Application/JSON; charset=utf-8"),
            valid.clone(),
        ))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    // Routes without a JSON body still cap the body.
    let r = gw
        .send(bearer_raw(
            Method::POST,
            &format!("/api/account-links/{pk}/disable"),
            Some("application/octet-stream"),
            vec![b'x'; 64 * 1024 + 1],
        ))
        .await;
    r.problem(413, "payload_too_large");
    // A body of exactly 64 KiB passes the limit (and is then judged as JSON).
    let r = gw
        .send(bearer_raw(
            Method::POST,
            opt_in,
            Some("application/json"),
            vec![b' '; 64 * 1024],
        ))
        .await;
    r.problem(400, "invalid_json");
    // Wrong method on a known route, unknown route.
    gw.send(bearer(Method::GET, opt_in, None))
        .await
        .problem(405, "method_not_allowed");
    gw.send(bearer(Method::DELETE, &format!("/api/account-links/{pk}/status"), None))
        .await
        .problem(405, "method_not_allowed");
    gw.send(bearer(Method::GET, "/api/account-links", None))
        .await
        .problem(404, "not_found");
    // Nothing of the above changed the account.
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/status"), None))
        .await;
    assert_eq!(r.json()["provisioning_state"], "pending");
}

#[tokio::test]
async fn a_panicking_handler_is_an_internal_problem_through_the_same_layers() {
    // The gateway's routes cannot be made to panic from outside, so this mounts one panicking route behind the same
    // outer layers `router()` uses (catch-panic inside the edge middleware) and checks the answer clients get.
    async fn boom() -> &'static str {
        panic!("handler bug")
    }
    let app = axum::Router::new()
        .route("/boom", axum::routing::get(boom))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(divine_handle_gateway::edge::edge));
    let r = send(&app, Request::get("/boom").body(Body::empty()).unwrap()).await;
    let body = r.problem(500, "internal");
    assert!(!r.text().contains("handler bug"), "panic message not leaked: {body}");
    // And the mapping of bare statuses the edge applies.
    use divine_bridge_db::Classified;
    use divine_handle_gateway::problem::ApiError;
    // (status seen, code answered, status answered)
    for (seen, code, answered) in [
        (500, "internal", 500),
        (502, "internal", 500),
        (401, "unauthorized", 401),
        (404, "not_found", 404),
        (405, "method_not_allowed", 405),
        (413, "payload_too_large", 413),
        (415, "unsupported_media_type", 415),
        (422, "invalid_json", 400),
        (503, "unavailable", 503),
    ] {
        let e = ApiError::from_status(axum::http::StatusCode::from_u16(seen).unwrap());
        assert_eq!((e.code().as_str(), e.status().as_u16()), (code, answered), "{seen}");
    }
}

/// `GET /api/account-links/{pubkey}/posts`: newest first, keyset pages with an opaque cursor, per-post status and
/// error code as `crosspost-status` gives them, other accounts invisible, a foreign cursor 400 `invalid_cursor`.
#[tokio::test]
async fn post_history_is_paginated_newest_first_with_status_and_error_code() {
    let gw = Gw::new("gw_history");
    let pk = new_pubkey();
    gw.opt_in(&pk, &handle("ivy")).await;
    let other = new_pubkey();
    gw.opt_in(&other, &handle("jack")).await;
    let evs: Vec<String> = (0..3).map(|_| event_id()).collect();
    for ev in &evs {
        queue::enqueue(&mut gw.conn(), &publish_job(&pk, ev)).unwrap().unwrap();
    }
    queue::enqueue(&mut gw.conn(), &publish_job(&other, &event_id()))
        .unwrap()
        .unwrap();
    // Disabling cancels the queued ones with account_disabled; a later one stays queued.
    gw.send(bearer(Method::POST, &format!("/api/account-links/{pk}/disable"), None))
        .await;
    let late = event_id();
    queue::enqueue(&mut gw.conn(), &publish_job(&pk, &late))
        .unwrap()
        .unwrap();

    let r = gw
        .send(bearer(
            Method::GET,
            &format!("/api/account-links/{pk}/posts?limit=2"),
            None,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    let posts = page["posts"].as_array().unwrap();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0]["nostr_event_id"], late.as_str());
    assert_eq!(posts[0]["status"], "queued");
    assert_eq!(posts[1]["nostr_event_id"], evs[2].as_str());
    assert_eq!(posts[1]["status"], "cancelled");
    assert_eq!(posts[1]["error_code"], "account_disabled");
    let cursor = page["cursor"].as_str().expect("more pages").to_string();

    let r = gw
        .send(bearer(
            Method::GET,
            &format!("/api/account-links/{pk}/posts?limit=2&cursor={cursor}"),
            None,
        ))
        .await;
    let page = r.json();
    let ids: Vec<&str> = page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["nostr_event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![evs[1].as_str(), evs[0].as_str()]);
    assert!(page.get("cursor").is_none(), "last page: {page}");

    let r = gw
        .send(bearer(
            Method::GET,
            &format!("/api/account-links/{pk}/posts?cursor=abc"),
            None,
        ))
        .await;
    r.problem(400, "invalid_cursor");
}

/// `/export`: DID, handle, PDS and the public getRepo CAR URL; no key material in the answer.
#[tokio::test]
async fn export_answers_what_a_user_needs_to_leave_and_no_key() {
    let gw = Gw::new("gw_export");
    let pk = new_pubkey();
    let h = handle("kim");
    gw.opt_in(&pk, &h).await;
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/export"), None))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["repo_car_url"], serde_json::Value::Null, "no DID yet");
    gw.make_ready(&pk, "did:plc:kimkimkim");
    let r = gw
        .send(bearer(Method::GET, &format!("/api/account-links/{pk}/export"), None))
        .await;
    let e = r.json();
    assert_eq!(e["did"], "did:plc:kimkimkim");
    assert_eq!(e["handle"], h.as_str());
    assert_eq!(e["pds"], common::PDS_PUBLIC_URL);
    assert_eq!(
        e["repo_car_url"],
        format!(
            "{}/xrpc/com.atproto.sync.getRepo?did=did:plc:kimkimkim",
            common::PDS_PUBLIC_URL
        )
    );
    assert_eq!(e["key_handover"], "none");
    let text = r.text().to_lowercase();
    for secret in ["sealed", "password", "jwt", "private"] {
        assert!(!text.contains(secret), "export mentions {secret}: {text}");
    }
    let r = gw
        .send(bearer(
            Method::GET,
            &format!("/api/account-links/{}/export", new_pubkey()),
            None,
        ))
        .await;
    r.problem(404, "account_not_found");
}
