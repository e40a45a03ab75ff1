//! Issue 12 §2, least privilege: the gateway's Postgres role (`divine_bridge_db::roles`) is enough for every route
//! (api.rs and auth.rs run under it through `common::Gw`) and refused everything else: sealed keys and sessions, the
//! worker's columns and tables, DDL. A gateway on a database the worker has not migrated yet is unready and creates
//! nothing.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use diesel::prelude::*;
use divine_bridge_db::roles::{self, Applied, GATEWAY_DENIED};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::Db;

/// Runs `sql` as the gateway role and returns the server's error message (panics if it succeeded).
fn refused(conn: &mut PgConnection, sql: &str) -> String {
    match diesel::sql_query(sql).execute(conn) {
        Ok(_) => panic!("the gateway role was allowed: {sql}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn the_gateway_role_cannot_read_keys_or_sessions_nor_rewrite_what_it_does_not_own() {
    let gw = Gw::new("gw_privilege");
    let pk = new_pubkey();
    gw.opt_in(&pk, &format!("alice.{DOMAIN}")).await;
    let mut c = PgConnection::establish(&gw.gateway_url).unwrap();
    // What it needs works (the routes above ran on this role too).
    let links: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM account_links)",
    ))
    .get_result(&mut c)
    .unwrap();
    assert_eq!(links, 1);
    for table in GATEWAY_DENIED {
        for sql in [
            format!("SELECT * FROM {table}"),
            format!("SELECT nostr_pubkey FROM {table}"),
            format!("DELETE FROM {table}"),
        ] {
            let e = refused(&mut c, &sql);
            assert!(e.contains("permission denied"), "{sql}: {e}");
        }
    }
    for sql in [
        // The worker's columns: a link's DID and handle, a job's payload, kind and lease.
        format!("UPDATE account_links SET did = 'did:plc:attacker' WHERE nostr_pubkey = '{pk}'"),
        format!("UPDATE account_links SET handle = 'mallory' WHERE nostr_pubkey = '{pk}'"),
        "UPDATE jobs SET payload = '{}'::jsonb".to_string(),
        "UPDATE jobs SET lease_owner = 'x', lease_token = 1".to_string(),
        "DELETE FROM jobs".to_string(),
        "DELETE FROM account_links".to_string(),
        // The audit trail is append-only for it.
        "SELECT * FROM account_audit".to_string(),
        "UPDATE account_audit SET actor = 'nobody'".to_string(),
        // The worker's tables.
        "SELECT * FROM relay_cursors".to_string(),
        "SELECT * FROM ingest_shards".to_string(),
        "SELECT * FROM profile_sync".to_string(),
        // The dispatch heads: kept by the jobs triggers (running as the schema owner), never by the gateway itself.
        "SELECT * FROM job_heads".to_string(),
        "DELETE FROM job_heads".to_string(),
        "SELECT nextval('jobs_lease_token_seq')".to_string(),
        // No DDL, no migrations.
        "CREATE TABLE gw_owned (x int)".to_string(),
        "DROP TABLE jobs".to_string(),
        "DELETE FROM __diesel_schema_migrations".to_string(),
    ] {
        let e = refused(&mut c, &sql);
        assert!(
            e.contains("permission denied") || e.contains("must be owner"),
            "{sql}: {e}"
        );
    }
}

#[tokio::test]
async fn a_gateway_on_an_unmigrated_database_is_not_ready_and_creates_nothing() {
    let tdb = TestDb::empty("gw_unmigrated");
    let tag = format!("r{}_{}", std::process::id(), rand::random::<u32>());
    // Roles before the first migration: the gateway's grants wait for the schema.
    let roles = {
        let roles = tdb.with_roles_deferred(&tag);
        assert_eq!(roles.1, Applied::GatewayGrantsDeferred);
        roles.0
    };
    let url = tdb.url_as(&roles.gateway);
    let app = divine_handle_gateway::router(divine_handle_gateway::AppState::new(
        Db::connect(&url, 2).unwrap(),
        config(&url),
    ));
    let r = send(&app, Request::get("/ready").body(Body::empty()).unwrap()).await;
    let body = r.problem(503, "not_ready");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("migrations pending"),
        "{body}"
    );
    let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "to_regclass('__diesel_schema_migrations') IS NOT NULL",
    ))
    .get_result(&mut tdb.conn())
    .unwrap();
    assert!(!exists, "the gateway created the migrations table");
    // The worker migrates and grants; the same gateway becomes ready.
    let mut worker = PgConnection::establish(&tdb.url_as(&roles.worker)).unwrap();
    divine_bridge_db::migrate::run_migrations(&mut worker).unwrap();
    roles::apply_gateway_grants(&mut worker, &roles.gateway).unwrap();
    let r = send(&app, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
