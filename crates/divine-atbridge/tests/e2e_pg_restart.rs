//! Postgres restart / failover, end to end: the real `divine-atbridge` worker and the real `divine-handle-gateway`
//! run against their database while the test terminates EVERY backend of that database (`pg_terminate_backend`, what
//! a restart or a failover does to each session) twice, in the middle of provisioning accounts on the reference PDS.
//! Neither process is restarted. Afterwards: both answer `/ready` 200 within a bounded time, the gateway accepts new
//! opt-ins (a request that hit a dead connection may answer 503 once; the client's retry absorbs it; after the
//! gateway sat idle, not even that), and every account's single provisioning job finishes — succeeded, once, with one
//! DID.
//!
//! Observes only (HTTP, the bridge's tables); it must not write to the bridge's tables.

mod support;

use nostr_sdk::prelude::*;
use std::time::{Duration, Instant};
use support::*;

const ACCOUNTS_BEFORE: usize = 3;
const ACCOUNTS_AFTER: usize = 3;

async fn http_status(url: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    client.get(url).send().await.ok().map(|r| r.status().as_u16())
}

/// Time until `url` answers 200, polling every 100 ms; panics after `limit`.
async fn ready_within(url: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if http_status(url).await == Some(200) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{url} not 200 within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway's default `DB_POOL_SIZE`: at most this many pooled connections can each fail one request.
const GATEWAY_POOL: usize = 8;

/// Opt-in, retried on 503; returns how many answers were 503 (a dead pooled connection's one transient error).
async fn opt_in_retrying(gateway: &GatewayProcess, keys: &Keys, handle: &str) -> usize {
    let mut unavailable = 0;
    for _ in 0..=GATEWAY_POOL {
        let (status, body) = gateway.opt_in(&keys.public_key().to_hex(), handle).await;
        match status {
            202 => return unavailable,
            503 => unavailable += 1,
            other => panic!("opt-in answered {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("opt-in still 503 after {} tries", GATEWAY_POOL + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_gateway_survive_every_backend_being_terminated_mid_run() {
    let Some(stack) = Refstack::from_env() else { return };
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_pg_restart");
    let relay = TestRelay::start().await;
    let env = bridge_env(&db, &stack, &[&relay.url], &random_kek());
    let mut bridge = BridgeProcess::spawn(&env, &[]);
    let gateway = GatewayProcess::spawn(&db);
    let bridge_ready = format!("http://{}/ready", bridge.http_addr);
    let gateway_ready = format!("{}/ready", gateway.base_url);

    let accounts: Vec<(Keys, String)> = (0..ACCOUNTS_BEFORE + ACCOUNTS_AFTER)
        .map(|_| (Keys::generate(), random_handle("pgrst")))
        .collect();
    let mut unavailable = 0;
    for (keys, handle) in &accounts[..ACCOUNTS_BEFORE] {
        unavailable += opt_in_retrying(&gateway, keys, handle).await;
    }
    assert_eq!(unavailable, 0, "no restart yet");

    // Restart #1 while the worker is provisioning the first accounts (jobs leased, PDS calls in flight).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = db.terminate_backends();
    assert!(killed >= 2, "both processes had connections: {killed}");
    let killed_at = Instant::now();
    for (keys, handle) in &accounts[ACCOUNTS_BEFORE..] {
        unavailable += opt_in_retrying(&gateway, keys, handle).await;
    }
    let gateway_back = ready_within(&gateway_ready, Duration::from_secs(15)).await;
    let bridge_back = ready_within(&bridge_ready, Duration::from_secs(15)).await;
    eprintln!(
        "after restart #1: opt-ins answered 503 {unavailable} times; /ready 200 again {:?} after the kill \
         (gateway ready check took {gateway_back:?}, bridge {bridge_back:?})",
        killed_at.elapsed()
    );

    // Restart #2 while the rest is in flight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.terminate_backends();
    ready_within(&gateway_ready, Duration::from_secs(15)).await;
    ready_within(&bridge_ready, Duration::from_secs(15)).await;

    // Restart #3 after the gateway sat idle longer than `DB_IDLE_CHECK_MS` (default 5 s): its pooled connections
    // are pinged before use and replaced, so the first request after the restart succeeds — no 503 at all.
    tokio::time::sleep(Duration::from_secs(7)).await;
    db.terminate_backends();
    let late = (Keys::generate(), random_handle("pgrst"));
    let (status, body) = gateway.opt_in(&late.0.public_key().to_hex(), &late.1).await;
    assert_eq!(
        status, 202,
        "first request after restarting an idle gateway's database: {body}"
    );
    assert_eq!(
        http_status(&gateway_ready).await,
        Some(200),
        "first /ready after the restart"
    );
    let accounts: Vec<(Keys, String)> = accounts.into_iter().chain(std::iter::once(late)).collect();

    // Every account is provisioned, by the same processes.
    for (keys, _) in &accounts {
        let body = gateway
            .wait_ready(&keys.public_key().to_hex(), Duration::from_secs(120))
            .await;
        assert!(
            body["did"].as_str().is_some_and(|d| d.starts_with("did:plc:")),
            "{body}"
        );
    }
    assert!(!bridge.exited(), "the bridge was not restarted; log:\n{}", bridge.log());

    // Each account has exactly one provisioning job, and it finished once: succeeded.
    use diesel::prelude::*;
    use divine_bridge_db::schema::jobs;
    for (keys, _) in &accounts {
        let rows: Vec<(String, i32)> = jobs::table
            .filter(jobs::kind.eq("provision_account"))
            .filter(jobs::ordering_key.eq(keys.public_key().to_hex()))
            .select((jobs::state, jobs::attempt))
            .load(&mut db.conn())
            .unwrap();
        assert_eq!(rows.len(), 1, "one provisioning job per account: {rows:?}");
        assert_eq!(rows[0].0, "succeeded", "{rows:?}");
    }
    assert!(
        unavailable <= GATEWAY_POOL,
        "each dead gateway connection fails at most one request: {unavailable} 503s"
    );
}
