//! Identity end to end: the real `divine-handle-gateway` and `divine-atbridge` binaries as child processes, against
//! Postgres and the REAL reference PLC + PDS (`PLC_URL`/`PDS_URL`; `REQUIRE_E2E=1` turns a missing stack into a
//! failure). Proves issue 3's "Proof required" list from the outside:
//!
//! - opt-in through the gateway → `ready` within 10 s → the PLC DID document names the handle, our PDS and the PDS's
//!   signing key (genesis key replaced, our rotation key first, the PDS's rotation key present, exactly two ops) →
//!   the account is active → a repo write with the session the bridge stored (sealed under its KEK) succeeds → the
//!   initial profile exists → `/.well-known/atproto-did` answers; the same opt-in again → one DID and one
//!   provisioning job; another pubkey asking for the handle → 409 `handle_taken`;
//! - the worker killed (failpoint = abort) right after the genesis op is on PLC, before createAccount → a restarted
//!   bridge resumes to `ready` with the SAME DID and PLC holds exactly genesis + one update;
//! - disable / enable through the gateway keep the identity (and an account disabled before provisioning ran is
//!   provisioned by enable).
//!
//! The lower-level provisioning steps are covered by `identity_refstack.rs` and `jobs_provision.rs`; this file
//! must not call the provisioning code directly — only the gateway's HTTP API and the bridge process drive it.
//! Each test has its own database, gateway and bridge (free ports), so they run in parallel.

mod support;

use diesel::prelude::*;
use diesel::sql_types::Text;
use divine_atbridge::jobs::store::DbSessionStore;
use divine_atbridge::keys::KeyEncryptionKey;
use divine_atbridge::pds::{PdsClient, PdsError, PutRecord, SessionManager};
use divine_atbridge::xrpc::{XrpcClient, XrpcConfig};
use divine_bridge_db::testutil::TestDb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// One test's world: its database, KEK, bridge environment, gateway and observers.
struct World {
    stack: Refstack,
    tdb: TestDb,
    kek: String,
    env: Vec<(String, String)>,
    gateway: GatewayProcess,
    probe: Probe,
}

fn world(prefix: &str) -> Option<World> {
    let stack = Refstack::from_env()?;
    let tdb = TestDb::migrated(prefix);
    let kek = random_kek();
    let env = bridge_env(&tdb, &stack, &[], &kek);
    let gateway = GatewayProcess::spawn(&tdb);
    let probe = Probe::new(&stack);
    Some(World {
        stack,
        tdb,
        kek,
        env,
        gateway,
        probe,
    })
}

/// Short leases so a crashed worker's job is reclaimed within a few seconds.
const FAST_LEASE: (&str, &str) = ("LEASE_SECS", "2");

#[derive(QueryableByName, Debug)]
struct JobRow {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempt: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    reclaim_count: i32,
}

impl World {
    fn provision_jobs(&self, pubkey: &str) -> Vec<JobRow> {
        diesel::sql_query(
            "SELECT state, attempt, reclaim_count FROM jobs WHERE ordering_key = $1 AND kind = 'provision_account' \
             ORDER BY id",
        )
        .bind::<Text, _>(pubkey)
        .load(&mut self.tdb.conn())
        .unwrap()
    }

    /// `account_keys.provision_state` (the worker's checkpoint).
    fn checkpoint(&self, pubkey: &str) -> serde_json::Value {
        use divine_bridge_db::schema::account_keys;
        account_keys::table
            .find(pubkey)
            .select(account_keys::provision_state)
            .first::<Option<serde_json::Value>>(&mut self.tdb.conn())
            .unwrap()
            .expect("checkpoint stored")
    }

    fn did_keys(&self, pubkey: &str) -> (String, String) {
        use divine_bridge_db::schema::account_keys;
        account_keys::table
            .find(pubkey)
            .select((account_keys::signing_did_key, account_keys::rotation_did_key))
            .first(&mut self.tdb.conn())
            .unwrap()
    }

    fn count(&self, sql: &str, bind: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(sql)
            .bind::<Text, _>(bind)
            .get_result::<N>(&mut self.tdb.conn())
            .unwrap()
            .n
    }

    /// The sealed session row of `did` (access token ciphertext, updated_at).
    fn session_row(&self, did: &str) -> (Vec<u8>, chrono::DateTime<chrono::Utc>) {
        use divine_bridge_db::schema::account_sessions;
        account_sessions::table
            .find(did)
            .select((account_sessions::access_jwt_sealed, account_sessions::updated_at))
            .first(&mut self.tdb.conn())
            .expect("the bridge stored a session")
    }

    async fn plc_get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .probe
            .http
            .get(format!("{}{path}", self.stack.plc_url))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn audit(&self, did: &str) -> Vec<serde_json::Value> {
        let (status, body) = self.plc_get(&format!("/{did}/log/audit")).await;
        assert_eq!(status, 200, "audit log of {did}: {body}");
        body.as_array().unwrap().clone()
    }

    /// Session manager over the sessions the bridge stored in Postgres, opened with the bridge's KEK.
    fn sessions(&self) -> SessionManager<DbSessionStore> {
        let xrpc = XrpcClient::new(&XrpcConfig::default()).unwrap();
        SessionManager::new(
            PdsClient::new(xrpc, &self.stack.pds_url),
            DbSessionStore {
                db: self.tdb.pool(2),
                kek: Arc::new(KeyEncryptionKey::from_base64(&self.kek).unwrap().into()),
            },
        )
    }

    async fn action(&self, pubkey: &str, action: &str) -> (u16, serde_json::Value) {
        self.gateway
            .post(&format!("/api/account-links/{pubkey}/{action}"), serde_json::json!({}))
            .await
    }
}

/// A fresh record key from the wall clock.
fn tid() -> String {
    divine_atbridge::tid::TidGenerator::with_random_clock_id()
        .next_tid()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_through_the_gateway_yields_a_working_identity() {
    let Some(w) = world("e2e_id_full") else { return };
    let _bridge = BridgeProcess::spawn(&w.env, &[]);
    let pubkey = nostr::Keys::generate().public_key().to_hex();
    let handle = random_handle("full");

    let started = Instant::now();
    let (status, first) = w.gateway.opt_in(&pubkey, &handle).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["provisioning_state"], "pending");
    assert_eq!(first["did"], serde_json::Value::Null);
    // The same opt-in again while it is being provisioned: accepted, same link.
    let (status, again) = w.gateway.opt_in(&pubkey, &handle).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["created_at"], first["created_at"]);
    let ready = w.gateway.wait_ready(&pubkey, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "ready after {elapsed:?}");
    eprintln!("opt-in → ready in {elapsed:?}");
    let did = ready["did"].as_str().expect("ready has a DID").to_string();
    assert!(did.starts_with("did:plc:") && did.len() == 32, "{did}");
    assert_eq!(ready["handle"], handle.as_str());
    assert_eq!(ready["crosspost_enabled"], true);
    assert_eq!(ready["provisioning_error"], serde_json::Value::Null);

    // Once more after ready: the same record (same DID), still one provisioning job, one key set.
    let (status, after) = w.gateway.opt_in(&pubkey, &handle).await;
    assert_eq!(status, 202);
    assert_eq!(after["did"], did.as_str());
    assert_eq!(after["provisioning_state"], "ready");
    let jobs = w.provision_jobs(&pubkey);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!((jobs[0].state.as_str(), jobs[0].attempt), ("succeeded", 1));
    assert_eq!(
        w.count(
            "SELECT count(*) AS n FROM account_keys WHERE nostr_pubkey = $1",
            &pubkey
        ),
        1
    );
    // Another pubkey asking for the same handle (any case): 409 handle_taken, nothing written for it.
    let intruder = nostr::Keys::generate().public_key().to_hex();
    let (status, problem) = w.gateway.opt_in(&intruder, &handle.to_uppercase()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("handle_taken")),
        "{problem}"
    );
    assert_eq!(
        w.count("SELECT count(*) AS n FROM jobs WHERE ordering_key = $1", &intruder),
        0
    );

    // PLC: the DID document names the handle and our PDS.
    let (status, doc) = w.plc_get(&format!("/{did}")).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["id"], did.as_str());
    assert_eq!(doc["alsoKnownAs"], serde_json::json!([format!("at://{handle}")]));
    let services = doc["service"].as_array().unwrap();
    let pds_service = services
        .iter()
        .find(|s| s["id"] == "#atproto_pds")
        .unwrap_or_else(|| panic!("no #atproto_pds in {doc}"));
    assert_eq!(pds_service["type"], "AtprotoPersonalDataServer");
    assert_eq!(pds_service["serviceEndpoint"], w.stack.pds_url.as_str());
    let vm = doc["verificationMethod"].as_array().unwrap();
    assert!(
        // The reference PLC serves the legacy document form (`#atproto`, uncompressed key); the key itself is
        // compared through `/data` below.
        vm.iter()
            .any(|m| m["id"] == "#atproto" || m["id"] == format!("{did}#atproto")),
        "atproto verification method in {doc}"
    );
    let (_, data) = w.plc_get(&format!("/{did}/data")).await;
    assert_eq!(data["services"]["atproto_pds"]["endpoint"], w.stack.pds_url.as_str());
    let plc_key = data["verificationMethods"]["atproto"].as_str().unwrap().to_string();
    let rotation_keys: Vec<String> = serde_json::from_value(data["rotationKeys"].clone()).unwrap();

    // The stored session (sealed by the bridge under its KEK) works: the PDS's recommended credentials are what PLC
    // shows, the account is active, and a repo write succeeds.
    let stored_before = w.session_row(&did);
    let sessions = w.sessions();
    let pds = sessions.pds().clone();
    let token = sessions.access_token(&did).await.expect("stored session usable");
    let recommended = pds.get_recommended_did_credentials(&token).await.unwrap();
    let pds_key = serde_json::to_value(recommended.verification_methods.clone().unwrap()).unwrap()["atproto"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(plc_key, pds_key, "PLC names the PDS's signing key");
    let (our_signing, our_rotation) = w.did_keys(&pubkey);
    assert_ne!(plc_key, our_signing, "the genesis signing key was replaced");
    assert_eq!(
        rotation_keys[0], our_rotation,
        "our rotation key first (no recovery keys configured)"
    );
    for k in recommended.rotation_keys.clone().unwrap() {
        assert!(rotation_keys.contains(&k), "PDS rotation key {k} in {rotation_keys:?}");
    }
    // Exactly genesis + one update; the genesis installed our key, the update the PDS's.
    let audit = w.audit(&did).await;
    assert_eq!(audit.len(), 2, "{audit:#?}");
    assert_eq!(audit[0]["operation"]["prev"], serde_json::Value::Null);
    assert_eq!(
        audit[0]["operation"]["verificationMethods"]["atproto"],
        our_signing.as_str()
    );
    assert_eq!(audit[1]["operation"]["prev"], audit[0]["cid"]);
    assert_eq!(
        audit[1]["operation"]["verificationMethods"]["atproto"],
        pds_key.as_str()
    );
    assert!(audit.iter().all(|e| e["nullified"] == false));

    let account = pds.check_account_status(&token).await.unwrap();
    assert!(account.activated && account.valid_did, "{account:?}");
    let repo_status = pds.get_repo_status(&did).await.unwrap();
    assert!(repo_status.active, "{repo_status:?}");
    assert_eq!(
        pds.resolve_handle(&handle).await.unwrap().as_deref(),
        Some(did.as_str()),
        "the PDS resolves the handle"
    );

    let rkey = tid();
    let post = PutRecord {
        repo: did.clone(),
        collection: "app.bsky.feed.post".into(),
        rkey: rkey.clone(),
        record: serde_json::json!({
            "$type": "app.bsky.feed.post",
            "text": "written with the bridge's stored session",
            "createdAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }),
        validate: None,
        swap_record: None,
    };
    let (pds_ref, post_ref) = (&pds, &post);
    let out = sessions
        .with_session(&did, |t| async move { pds_ref.put_record(&t, post_ref).await })
        .await
        .map_err(|e: PdsError| e)
        .expect("repo write with the stored session");
    assert_eq!(out.uri, format!("at://{did}/app.bsky.feed.post/{rkey}"));
    assert_eq!(out.validation_status.as_deref(), Some("valid"));
    let (status, fetched) = w
        .probe
        .xrpc(
            "com.atproto.repo.getRecord",
            &[("repo", &did), ("collection", "app.bsky.feed.post"), ("rkey", &rkey)],
        )
        .await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["value"]["text"], "written with the bridge's stored session");
    assert_eq!(
        w.session_row(&did),
        stored_before,
        "the session the bridge stored was used as is (no refresh, no new session)"
    );

    // The initial profile.
    let (status, profile) = w
        .probe
        .xrpc(
            "com.atproto.repo.getRecord",
            &[
                ("repo", &did),
                ("collection", "app.bsky.actor.profile"),
                ("rkey", "self"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["value"]["$type"], "app.bsky.actor.profile");
    assert_eq!(profile["value"]["displayName"], handle.split('.').next().unwrap());

    // Handle resolution through the gateway.
    assert_eq!(w.gateway.well_known(&handle).await, (200, did.clone()));
    assert_eq!(w.gateway.well_known(&handle.to_uppercase()).await, (200, did.clone()));
    let (status, _) = w.gateway.well_known(&random_handle("nobody")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_plc_and_create_account_resumes_with_the_same_did() {
    let Some(w) = world("e2e_id_crash") else { return };
    let mut doomed = BridgeProcess::spawn(
        &w.env,
        &[("BRIDGE_FAILPOINTS", "provision_after_plc_registered"), FAST_LEASE],
    );
    let pubkey = nostr::Keys::generate().public_key().to_hex();
    let handle = random_handle("crash");
    let (status, body) = w.gateway.opt_in(&pubkey, &handle).await;
    assert_eq!(status, 202, "{body}");

    // The worker dies right after the genesis op is registered on PLC.
    let died = eventually(Duration::from_secs(15), || {
        let exited = doomed.exited();
        async move { exited.then_some(()) }
    })
    .await;
    assert!(
        died.is_some(),
        "bridge did not hit the failpoint; log:\n{}",
        doomed.log()
    );
    assert!(
        doomed.log().contains("failpoint provision_after_plc_registered hit"),
        "{}",
        doomed.log()
    );

    // State at the crash: checkpoint at plc_registered with the DID; PLC has the genesis op only; no PDS account.
    let checkpoint = w.checkpoint(&pubkey);
    assert_eq!(checkpoint["step"], "plc_registered", "{checkpoint}");
    let did = checkpoint["did"].as_str().expect("DID checkpointed").to_string();
    let (_, link) = w.gateway.status(&pubkey).await;
    assert_eq!(link["provisioning_state"], "provisioning");
    assert_eq!(
        link["did"],
        serde_json::Value::Null,
        "not ready, no DID on the link yet"
    );
    let audit = w.audit(&did).await;
    assert_eq!(audit.len(), 1, "genesis only: {audit:#?}");
    let genesis_cid = audit[0]["cid"].clone();
    let (status, _) = w.probe.xrpc("com.atproto.sync.getRepoStatus", &[("did", &did)]).await;
    assert_ne!(status, 200, "no PDS account before the crash was resumed");
    let jobs = w.provision_jobs(&pubkey);
    assert_eq!((jobs.len(), jobs[0].state.as_str()), (1, "running"), "{jobs:?}");

    // A fresh bridge (no failpoint) reclaims the expired lease and finishes with the same identity.
    let restarted_at = Instant::now();
    let _bridge = BridgeProcess::spawn(&w.env, &[FAST_LEASE]);
    let ready = w.gateway.wait_ready(&pubkey, Duration::from_secs(30)).await;
    eprintln!("resumed to ready {:?} after the restart", restarted_at.elapsed());
    assert_eq!(ready["did"], did.as_str(), "the SAME DID");

    let audit = w.audit(&did).await;
    assert_eq!(audit.len(), 2, "genesis + one update, no second identity: {audit:#?}");
    assert_eq!(audit[0]["cid"], genesis_cid, "the genesis op was not re-created");
    assert_eq!(audit[1]["operation"]["prev"], genesis_cid);
    let (_, data) = w.plc_get(&format!("/{did}/data")).await;
    assert_eq!(data["alsoKnownAs"], serde_json::json!([format!("at://{handle}")]));
    assert_eq!(data["services"]["atproto_pds"]["endpoint"], w.stack.pds_url.as_str());
    let (status, repo) = w.probe.xrpc("com.atproto.sync.getRepoStatus", &[("did", &did)]).await;
    assert_eq!((status, &repo["active"]), (200, &serde_json::json!(true)), "{repo}");
    let jobs = w.provision_jobs(&pubkey);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        (jobs[0].state.as_str(), jobs[0].attempt, jobs[0].reclaim_count),
        ("succeeded", 2, 1),
        "one crashed try, reclaimed once, one successful try"
    );
    assert_eq!(
        w.count(
            "SELECT count(*) AS n FROM account_keys WHERE nostr_pubkey = $1",
            &pubkey
        ),
        1,
        "the first try's keys were reused"
    );
    // The stored session works.
    let token = w.sessions().access_token(&did).await.unwrap();
    let account = w.sessions().pds().check_account_status(&token).await.unwrap();
    assert!(account.activated && account.valid_did, "{account:?}");
    assert_eq!(w.gateway.well_known(&handle).await, (200, did));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_and_enable_through_the_gateway_keep_one_identity() {
    let Some(w) = world("e2e_id_toggle") else { return };
    // An account disabled before any worker ran: its provisioning job is refused by the worker (ineligible).
    let early = nostr::Keys::generate().public_key().to_hex();
    let early_handle = random_handle("early");
    let (status, _) = w.gateway.opt_in(&early, &early_handle).await;
    assert_eq!(status, 202);
    let (status, rec) = w.action(&early, "disable").await;
    assert_eq!(
        (status, rec["provisioning_state"].as_str()),
        (200, Some("disabled")),
        "{rec}"
    );

    let bridge = BridgeProcess::spawn(&w.env, &[]);
    let pubkey = nostr::Keys::generate().public_key().to_hex();
    let handle = random_handle("toggle");
    let (status, _) = w.gateway.opt_in(&pubkey, &handle).await;
    assert_eq!(status, 202);
    let ready = w.gateway.wait_ready(&pubkey, Duration::from_secs(10)).await;
    let did = ready["did"].as_str().unwrap().to_string();

    // Disable: disabled, crosspost off, no longer resolvable; the identity stays.
    let (status, rec) = w.action(&pubkey, "disable").await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["provisioning_state"], "disabled");
    assert_eq!(rec["crosspost_enabled"], false);
    assert!(rec["disabled_at"].is_string());
    assert_eq!(rec["did"], did.as_str());
    let (_, st) = w.gateway.status(&pubkey).await;
    assert_eq!(
        (st["provisioning_state"].as_str(), &st["crosspost_enabled"]),
        (Some("disabled"), &serde_json::json!(false))
    );
    assert_eq!(w.gateway.well_known(&handle).await.0, 404);

    // Enable: straight back to ready with the same DID; nothing re-provisioned.
    let (status, rec) = w.action(&pubkey, "enable").await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["provisioning_state"], "ready");
    assert_eq!(rec["crosspost_enabled"], true);
    assert_eq!(rec["disabled_at"], serde_json::Value::Null);
    assert_eq!(rec["did"], did.as_str());
    assert_eq!(w.gateway.well_known(&handle).await, (200, did.clone()));

    // The early account: the worker saw it disabled and left it alone; enable re-drives provisioning to ready.
    let refused = eventually(Duration::from_secs(10), || {
        let jobs = w.provision_jobs(&early);
        async move { (jobs.len() == 1 && jobs[0].state == "ineligible").then_some(()) }
    })
    .await;
    assert!(refused.is_some(), "jobs: {:?}", w.provision_jobs(&early));
    let (_, st) = w.gateway.status(&early).await;
    assert_eq!(
        (st["provisioning_state"].as_str(), &st["did"]),
        (Some("disabled"), &serde_json::Value::Null)
    );
    let (status, rec) = w.action(&early, "enable").await;
    assert_eq!(
        (status, rec["provisioning_state"].as_str()),
        (200, Some("pending")),
        "{rec}"
    );
    let early_ready = w.gateway.wait_ready(&early, Duration::from_secs(10)).await;
    let early_did = early_ready["did"].as_str().unwrap().to_string();
    assert_ne!(early_did, did);
    assert_eq!(w.provision_jobs(&early).len(), 1, "the same job re-driven");

    // Give the worker a moment (backfill jobs from enable run now), then: still one identity each.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, st) = w.gateway.status(&pubkey).await;
    assert_eq!(
        (st["provisioning_state"].as_str(), st["did"].as_str()),
        (Some("ready"), Some(did.as_str()))
    );
    let jobs = w.provision_jobs(&pubkey);
    assert_eq!(
        (jobs.len(), jobs[0].state.as_str(), jobs[0].attempt),
        (1, "succeeded", 1),
        "{jobs:?}"
    );
    assert_eq!(w.audit(&did).await.len(), 2, "no further PLC ops for a re-enable");
    assert_eq!(w.audit(&early_did).await.len(), 2);
    assert_eq!(
        w.count(
            "SELECT count(*) AS n FROM account_links WHERE did IS NOT NULL AND nostr_pubkey = $1",
            &pubkey
        ),
        1
    );
    let (status, repo) = w.probe.xrpc("com.atproto.sync.getRepoStatus", &[("did", &did)]).await;
    assert_eq!((status, &repo["active"]), (200, &serde_json::json!(true)), "{repo}");
    drop(bridge);
}
