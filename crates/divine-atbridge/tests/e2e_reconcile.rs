//! End-to-end zero-loss check (issue 10 §2 "Done when") against the reference PLC + PDS, an in-process relay, the
//! real gateway and the real `divine-atbridge` binary with the reconciliation sweep on (5 s interval): a video
//! signed two hours before it reached the relay — outside the live path's 900 s overlap, so the live subscription
//! never delivers it — is found by the sweep within one interval, bridged to the PDS, and counted once as
//! `missing_publish`; a video the live path delivered is bridged and not counted.

mod support;

use nostr_sdk::prelude::*;
use std::time::{Duration, Instant};
use support::crosspost::*;
use support::*;

const INTERVAL_SECS: u64 = 5;

fn found_total(text: &str, reason: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("bridge_reconcile_found_total{") && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(bridge: &BridgeProcess) -> String {
    reqwest::get(format!("http://{}/metrics", bridge.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn has_job(db: &divine_bridge_db::testutil::TestDb, key: &str) -> bool {
    job_rows(db).iter().any(|(_, k, _, _)| k.as_deref() == Some(key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_dated_video_beyond_the_overlap_is_found_by_the_sweep_and_bridged() {
    let Some(stack) = Refstack::from_env() else { return };
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_reconcile");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = tiny_mp4();
    let url = media.put("v.mp4", video.clone());
    let relay = TestRelay::start().await;
    let env = bridge_env(&db, &stack, &[&relay.url], &random_kek());
    let interval = INTERVAL_SECS.to_string();
    let bridge = BridgeProcess::spawn(
        &env,
        &[("RECONCILE_INTERVAL_SECS", &interval), ("RECONCILE_GRACE_SECS", "1")],
    );
    let gateway = GatewayProcess::spawn(&db);
    let keys = Keys::generate();
    let did = opt_in_ready(&gateway, &keys, &random_handle("sweep")).await;
    // The opt-in's history import must be done first, or it (not the sweep) would pick the back-dated video up.
    let imported = eventually(Duration::from_secs(60), || async {
        job_rows(&db)
            .iter()
            .any(|(kind, _, state, _)| kind == "backfill_author" && state == "succeeded")
            .then_some(())
    })
    .await;
    assert!(imported.is_some(), "backfill did not finish: {:?}", job_rows(&db));
    let client = nostr_client(&[&relay.url]).await;

    let live = video_event(&keys, 22, None, "", "live clip", &[], &url, &video, unix_now());
    publish(&client, &live).await;
    let (outcome, _) = job_outcome(&db, &format!("publish:{}", live.id.to_hex()), Duration::from_secs(45)).await;
    assert_eq!(outcome, "succeeded", "live path; log:\n{}", tail(&bridge.log(), 40));
    let before = found_total(&metrics(&bridge).await, "missing_publish");

    let back_dated = video_event(
        &keys,
        22,
        None,
        "",
        "signed two hours ago",
        &[],
        &url,
        &video,
        unix_now() - 7200,
    );
    publish(&client, &back_dated).await;
    let sent = Instant::now();
    let key = format!("publish:{}", back_dated.id.to_hex());
    let found = eventually(Duration::from_secs(INTERVAL_SECS * 4 + 20), || async {
        has_job(&db, &key).then_some(())
    })
    .await;
    let took = sent.elapsed();
    assert!(
        found.is_some(),
        "the sweep never enqueued the back-dated video; log:\n{}",
        tail(&bridge.log(), 60)
    );
    // One interval, plus the time one sweep takes against a local relay.
    assert!(took <= Duration::from_secs(INTERVAL_SECS + 10), "found after {took:?}");
    let (outcome, code) = job_outcome(&db, &key, Duration::from_secs(45)).await;
    assert_eq!(outcome, "succeeded", "{code:?}; log:\n{}", tail(&bridge.log(), 40));
    let m = mapping(&db, &back_dated.id).expect("mapping");
    assert_eq!(m.state, "published");
    let uri = m.at_uri.unwrap();
    let rkeys: Vec<String> = probe
        .list_records(&did, "app.bsky.feed.post")
        .await
        .iter()
        .map(|r| r["uri"].as_str().unwrap().to_string())
        .collect();
    assert!(rkeys.contains(&uri), "{uri} is on the PDS: {rkeys:?}");
    let after = found_total(&metrics(&bridge).await, "missing_publish");
    assert_eq!(after - before, 1.0, "exactly the back-dated video was missing");
    assert_eq!(found_total(&metrics(&bridge).await, "missing_delete"), 0.0);
}
