//! The provisioning job and the Postgres-backed session store against the reference PLC + PDS: a pending link
//! becomes ready with a DID, sealed keys and a stored session; repo writes go through `PdsRepo` with that session
//! (including after the stored access token is thrown away); a second run is a no-op; a taken handle fails the
//! account with `handle_unavailable`.

mod support;

use diesel::prelude::*;
use diesel::sql_types::Text;
use divine_atbridge::config::IdentityConfig;
use divine_atbridge::jobs::provision::{provision, ProvisionDeps};
use divine_atbridge::jobs::store::{DbSessionStore, PdsRepo};
use divine_atbridge::jobs::RepoWriter;
use divine_atbridge::keys::KeyEncryptionKey;
use divine_atbridge::pds::{PdsClient, SessionManager};
use divine_atbridge::xrpc::{XrpcClient, XrpcConfig};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::Classified;
use divine_bridge_db::ErrorCode;
use std::sync::Arc;
use support::*;

fn link(conn: &mut PgConnection, pubkey: &str, handle: &str) {
    diesel::sql_query("INSERT INTO account_links (nostr_pubkey, handle) VALUES ($1, $2)")
        .bind::<Text, _>(pubkey)
        .bind::<Text, _>(handle)
        .execute(conn)
        .unwrap();
}

fn state(conn: &mut PgConnection, pubkey: &str) -> (String, Option<String>, Option<String>) {
    use divine_bridge_db::schema::account_links as l;
    l::table
        .find(pubkey)
        .select((l::provisioning_state, l::did, l::provisioning_error))
        .first(conn)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_job_reaches_ready_and_sessions_work_from_postgres() {
    let Some(stack) = Refstack::from_env() else { return };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tdb = TestDb::migrated("jobs_provision");
    let db = tdb.pool(4);
    let kek: Arc<divine_atbridge::keys::KeyRing> =
        Arc::new(KeyEncryptionKey::from_base64(&random_kek()).unwrap().into());
    let xrpc = XrpcClient::new(&XrpcConfig::default()).unwrap();
    let identity = IdentityConfig {
        plc_url: stack.plc_url.clone(),
        pds_url: stack.pds_url.clone(),
        key_encryption_keys: Vec::new(),
        recovery_keys: vec![],
        email_domain: "bridge.test".into(),
        pds_admin_password: stack.admin_password.clone(),
    };
    let deps = ProvisionDeps {
        db: &db,
        xrpc: &xrpc,
        kek: &kek,
        identity: &identity,
    };
    let pubkey = nostr::Keys::generate().public_key().to_hex();
    let handle = random_handle("job");
    link(&mut tdb.conn(), &pubkey, &handle);

    let did = provision(&deps, &pubkey).await.expect("provisioned");
    assert_eq!(
        state(&mut tdb.conn(), &pubkey),
        ("ready".into(), Some(did.clone()), None)
    );
    let again = provision(&deps, &pubkey).await.expect("second run is a no-op");
    assert_eq!(again, did, "same DID on a re-run");
    let backfills: i64 = {
        use divine_bridge_db::schema::jobs;
        jobs::table
            .filter(jobs::kind.eq("backfill_author"))
            .count()
            .get_result(&mut tdb.conn())
            .unwrap()
    };
    assert_eq!(backfills, 1, "history import enqueued once");

    // Writes with the stored session; then with the session gone (falls back to the sealed password).
    let sessions = Arc::new(SessionManager::new(
        PdsClient::new(xrpc.clone(), &stack.pds_url),
        DbSessionStore {
            db: db.clone(),
            kek: kek.clone(),
        },
    ));
    let repo = PdsRepo { sessions };
    let record = |text: &str| serde_json::json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-23T00:00:00.000Z"});
    let (uri, _) = repo
        .put_record(&did, "app.bsky.feed.post", "3kabcdefghi22", record("one"))
        .await
        .unwrap();
    assert!(uri.ends_with("/app.bsky.feed.post/3kabcdefghi22"), "{uri}");
    diesel::sql_query("DELETE FROM account_sessions")
        .execute(&mut tdb.conn())
        .unwrap();
    let fresh_repo = PdsRepo {
        sessions: Arc::new(SessionManager::new(
            PdsClient::new(xrpc.clone(), &stack.pds_url),
            DbSessionStore {
                db: db.clone(),
                kek: kek.clone(),
            },
        )),
    };
    fresh_repo
        .put_record(&did, "app.bsky.feed.post", "3kabcdefghj22", record("two"))
        .await
        .unwrap();
    let saved: i64 = {
        use divine_bridge_db::schema::account_sessions;
        account_sessions::table.count().get_result(&mut tdb.conn()).unwrap()
    };
    assert_eq!(saved, 1, "the new session was persisted (sealed)");
    let blob = fresh_repo
        .upload_blob(
            &did,
            &divine_atbridge::blob::MediaBody::Memory(tiny_mp4().into()),
            "video/mp4",
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&blob).unwrap()["ref"]["$link"],
        blob_cid(&tiny_mp4()).as_str()
    );
    assert_eq!(
        blob,
        divine_atbridge::blob::local_blob_ref(&tiny_mp4(), "video/mp4"),
        "local blob refs match"
    );
    fresh_repo
        .delete_record(&did, "app.bsky.feed.post", "3kabcdefghi22")
        .await
        .unwrap();

    // A second account asking for the same handle fails permanently with a stable code.
    let other = nostr::Keys::generate().public_key().to_hex();
    diesel::sql_query("UPDATE account_links SET handle = handle || '.old' WHERE nostr_pubkey = $1")
        .bind::<Text, _>(&pubkey)
        .execute(&mut tdb.conn())
        .unwrap();
    link(&mut tdb.conn(), &other, &handle);
    let err = provision(&deps, &other).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::HandleUnavailable, "{err}");
    let (st, did2, code) = state(&mut tdb.conn(), &other);
    assert_eq!((st.as_str(), code.as_deref()), ("failed", Some("handle_unavailable")));
    let keys_kept: i64 = {
        use divine_bridge_db::schema::account_keys;
        account_keys::table
            .filter(account_keys::nostr_pubkey.eq(&other))
            .count()
            .get_result(&mut tdb.conn())
            .unwrap()
    };
    assert_eq!(
        (did2, keys_kept),
        (None, 1),
        "keys stay for a later re-drive; no DID on the link"
    );
}
