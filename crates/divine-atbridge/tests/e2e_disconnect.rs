//! End-to-end disconnect (issue 10 §1, "when I leave, the bridge lets go") against the reference PLC + PDS, an
//! in-process relay, the real gateway and the real `divine-atbridge` binary:
//!
//! - `POST /api/account-links/{pubkey}/disconnect` answers 202 `disconnecting`, the status ends `disconnected`;
//! - every bridged record (posts and the profile) is gone from the repo;
//! - `com.atproto.sync.getRepoStatus` says the account is not active;
//! - no key material is left: no `account_keys` / `account_sessions` row, while the tombstone keeps pubkey → DID;
//! - the worker is killed after the first record delete (failpoint) and a restarted worker resumes and finishes;
//! - enable afterwards is refused with 409 `account_disconnected`, a repeated disconnect is still 202, and the
//!   handle stays taken for another pubkey.
//!
//! Observes only through the PDS's public XRPC, the gateway and the bridge's tables (read-only).

mod support;

use diesel::prelude::*;
use nostr_sdk::prelude::*;
use std::time::Duration;
use support::crosspost::*;
use support::*;

const POST: &str = "app.bsky.feed.post";
const PROFILE: &str = "app.bsky.actor.profile";
const WAIT: Duration = Duration::from_secs(60);

fn key_rows(db: &divine_bridge_db::testutil::TestDb, pubkey: &str) -> (i64, i64) {
    use divine_bridge_db::schema::{account_keys, account_sessions};
    let mut conn = db.conn();
    (
        account_keys::table
            .filter(account_keys::nostr_pubkey.eq(pubkey))
            .count()
            .get_result(&mut conn)
            .unwrap(),
        account_sessions::table
            .filter(account_sessions::nostr_pubkey.eq(pubkey))
            .count()
            .get_result(&mut conn)
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_deletes_every_record_deactivates_and_shreds_keys_resuming_after_a_crash() {
    let Some(stack) = Refstack::from_env() else { return };
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_disconnect");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = tiny_mp4();
    let url = media.put("clip.mp4", video.clone());
    let relay = TestRelay::start().await;
    let kek = random_kek();
    let env = bridge_env(&db, &stack, &[&relay.url], &kek);
    let fast: [(&str, &str); 2] = [("LEASE_SECS", "2"), ("RECLAIM_LIMIT", "1000")];
    let mut bridge = BridgeProcess::spawn(&env, &fast);
    let gateway = GatewayProcess::spawn(&db);
    let keys = Keys::generate();
    let pubkey = keys.public_key().to_hex();
    let handle = random_handle("bye");
    let did = opt_in_ready(&gateway, &keys, &handle).await;
    let client = nostr_client(&[&relay.url]).await;
    let t0 = unix_now() - 120;

    // 1. Three bridged videos and a bridged profile.
    let mut uris = Vec::new();
    for i in 0..3u64 {
        let ev = video_event(&keys, 22, None, &format!("v{i}"), "bye soon", &[], &url, &video, t0 + i);
        publish(&client, &ev).await;
        let uri = eventually(WAIT, || async {
            mapping(&db, &ev.id)
                .filter(|m| m.state == "published")
                .and_then(|m| m.at_uri)
        })
        .await
        .unwrap_or_else(|| panic!("not published; jobs {:?}", job_rows(&db)));
        uris.push(uri);
    }
    publish(&client, &profile_event(&keys, "Leaving Lee", "bye", t0 + 5)).await;
    eventually(WAIT, || async { get_record(&probe, &did, PROFILE, "self").await })
        .await
        .unwrap_or_else(|| panic!("profile not synced; jobs {:?}", job_rows(&db)));
    assert_eq!(probe.list_records(&did, POST).await.len(), 3);
    assert_eq!(key_rows(&db, &pubkey), (1, 1), "keys and a session exist before");

    // 2. A worker that dies right after the first record delete.
    bridge.kill();
    let mut extra = fast.to_vec();
    extra.push(("BRIDGE_FAILPOINTS", "disconnect_after_record_delete"));
    let mut bridge = BridgeProcess::spawn(&env, &extra);
    let (status, rec) = gateway
        .post(
            &format!("/api/account-links/{pubkey}/disconnect"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (status, rec["provisioning_state"].as_str()),
        (202, Some("disconnecting")),
        "{rec}"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !bridge.exited() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        bridge.exited(),
        "the failpoint never fired: {}",
        tail(&bridge.log(), 40)
    );
    let left = probe.list_records(&did, POST).await.len();
    assert_eq!(left, 2, "exactly one record was deleted before the crash");
    let (_, st) = gateway.status(&pubkey).await;
    assert_eq!(st["provisioning_state"], "disconnecting");
    assert_eq!(key_rows(&db, &pubkey), (1, 1), "keys survive a crash before the end");

    // 3. A restarted worker resumes, deletes the rest and the profile, and dies before deactivating: the repo is
    //    still active and readable, and empty (a deactivated repo is no longer listed by the PDS, so this is where
    //    "every record gone" is observable).
    let mut extra = fast.to_vec();
    extra.push(("BRIDGE_FAILPOINTS", "disconnect_before_deactivate"));
    let mut bridge = BridgeProcess::spawn(&env, &extra);
    let deadline = std::time::Instant::now() + WAIT;
    while !bridge.exited() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        bridge.exited(),
        "the failpoint never fired: {}",
        tail(&bridge.log(), 40)
    );
    assert!(probe.list_records(&did, POST).await.is_empty());
    for uri in &uris {
        assert!(get_record(&probe, &did, POST, rkey_of(uri)).await.is_none());
    }
    assert!(get_record(&probe, &did, PROFILE, "self").await.is_none());
    assert_eq!(
        key_rows(&db, &pubkey),
        (1, 1),
        "keys survive until the account is deactivated"
    );

    // 4. A restarted worker finishes.
    let _bridge = BridgeProcess::spawn(&env, &fast);
    let done = eventually(WAIT, || async {
        let (_, st) = gateway.status(&pubkey).await;
        (st["provisioning_state"] == "disconnected").then_some(st)
    })
    .await
    .unwrap_or_else(|| panic!("never disconnected; jobs {:?}", job_rows(&db)));
    assert_eq!(done["did"], did.as_str(), "the DID stays on the link for audit");

    // Deactivated.
    let (code, repo) = probe
        .xrpc("com.atproto.sync.getRepoStatus", &[("did", did.as_str())])
        .await;
    assert_eq!(code, 200, "{repo}");
    assert_eq!(repo["active"], false, "{repo}");
    // No key material; the tombstone keeps the link.
    assert_eq!(key_rows(&db, &pubkey), (0, 0));
    let stones = divine_bridge_db::accounts::tombstones(&mut db.conn(), &pubkey).unwrap();
    assert_eq!(stones.len(), 1);
    assert_eq!(stones[0].did.as_deref(), Some(did.as_str()));
    assert!(stones[0].completed_at.is_some());
    let mappings: Vec<_> = mappings(&db).into_iter().filter(|m| m.state != "deleted").collect();
    assert!(mappings.is_empty(), "live mappings left: {mappings:?}");

    // 5. Afterwards: enable refused, repeat still accepted, handle still taken.
    let (status, body) = gateway
        .post(&format!("/api/account-links/{pubkey}/enable"), serde_json::json!({}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("account_disconnected")),
        "{body}"
    );
    let (status, rec) = gateway
        .post(
            &format!("/api/account-links/{pubkey}/disconnect"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (status, rec["provisioning_state"].as_str()),
        (202, Some("disconnected")),
        "{rec}"
    );
    let other = Keys::generate().public_key().to_hex();
    let (status, body) = gateway.opt_in(&other, &handle).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("handle_taken")), "{body}");

    let bad: Vec<_> = job_rows(&db).into_iter().filter(|(_, _, s, _)| s == "failed").collect();
    assert!(bad.is_empty(), "failed jobs: {bad:?}");
}
