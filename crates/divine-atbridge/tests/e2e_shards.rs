//! Ingest divided across a fleet, end to end (issue 11 §4): three real `divine-atbridge` processes on one Postgres
//! and one relay with `NOSTR_INGEST_SHARDS=6`; 300 NIP-71 events over 30 opted-in accounts are published while one
//! replica is SIGKILLed in the middle and another started. At the end each repo on the reference PDS holds exactly
//! its posts (one per event) and each of the relay's shards is held by exactly one live replica, the killed one's
//! share taken over within its lease.
//!
//! Observes only (PDS XRPC, the bridge's tables); it must not write to the bridge's tables.

mod support;

use divine_bridge_db::shards;
use nostr_sdk::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::crosspost::*;
use support::*;

const POST: &str = "app.bsky.feed.post";
const ACCOUNTS: usize = 30;
const EVENTS: usize = 300;
const SHARDS: usize = 6;

/// The replica id a process logged at startup (`ingest replica starting owner=…`).
fn owner_of(bridge: &BridgeProcess) -> Option<String> {
    let log = bridge.log();
    let line = log.lines().find(|l| l.contains("ingest replica starting"))?;
    let rest = &line[line.find("owner")? + "owner".len()..];
    let rest = rest.trim_start_matches(['=', ':', '"', ' ']);
    Some(
        rest.chars()
            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_one_started_post_each_event_once_and_hold_each_shard_once() {
    let Some(stack) = Refstack::from_env() else { return };
    let started = Instant::now();
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_shards");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = tiny_mp4();
    let url = media.put("shard.mp4", video.clone());
    let relay = TestRelay::start_unlimited().await;
    let relay_key = RelayUrl::parse(&relay.url).unwrap().to_string();
    let env = bridge_env(&db, &stack, &[&relay.url], &random_kek());
    let fleet: [(&str, &str); 3] = [
        ("NOSTR_INGEST_SHARDS", "6"),
        ("INGEST_LEASE_SECS", "3"),
        ("LEASE_SECS", "2"),
    ];
    let mut bridges: Vec<BridgeProcess> = (0..3).map(|_| BridgeProcess::spawn(&env, &fleet)).collect();
    let gateway = GatewayProcess::spawn(&db);
    let mut accounts: Vec<(Keys, String)> = Vec::new();
    for batch in 0..ACCOUNTS / 6 {
        let keys: Vec<Keys> = (0..6).map(|_| Keys::generate()).collect();
        let handles: Vec<String> = (0..6).map(|i| random_handle(&format!("sh{batch}{i}"))).collect();
        let dids =
            futures::future::join_all(keys.iter().zip(&handles).map(|(k, h)| opt_in_ready(&gateway, k, h))).await;
        accounts.extend(keys.into_iter().zip(dids));
    }
    eprintln!(
        "opted in {ACCOUNTS} accounts after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let client = nostr_client(&[&relay.url]).await;
    let t0 = unix_now() - 200;
    let events: Vec<(usize, Event)> = (0..EVENTS)
        .map(|i| {
            let a = i % ACCOUNTS;
            let text = format!("fleet clip {i:03}");
            (
                a,
                video_event(&accounts[a].0, 22, None, "", &text, &[], &url, &video, t0 + i as u64),
            )
        })
        .collect();
    for (_, e) in &events[..EVENTS / 2] {
        publish(&client, e).await;
    }
    // SIGKILL one replica in the middle (nothing released), start another.
    let killed = owner_of(&bridges[0]).expect("the replica logs its id");
    bridges[0].kill();
    bridges.push(BridgeProcess::spawn(&env, &fleet));
    for (_, e) in &events[EVENTS / 2..] {
        publish(&client, e).await;
    }
    let published_count = || mappings(&db).iter().filter(|m| m.state == "published").count();
    let done = eventually(Duration::from_secs(150), || async {
        (published_count() == EVENTS).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "only {} of {EVENTS} published; log tail:\n{}",
        published_count(),
        tail(&bridges[1].log(), 40)
    );

    // Each shard held by exactly one live replica; the killed one holds nothing and is no longer live.
    let divided = eventually(Duration::from_secs(20), || async {
        let mut c = db.conn();
        let live = shards::live_replicas(&mut c).unwrap();
        let holders = shards::holders(&mut c, &relay_key).unwrap();
        let owners: BTreeSet<&String> = holders.iter().map(|(_, o)| o).collect();
        let ok = live.len() == 3
            && holders.len() == SHARDS
            && owners.len() == 3
            && owners.iter().all(|o| live.contains(o) && **o != killed);
        ok.then_some((live.clone(), holders.clone()))
    })
    .await;
    let (live, holders) = divided.unwrap_or_else(|| {
        let mut c = db.conn();
        panic!(
            "shards not divided among the live replicas: live {:?} holders {:?}",
            shards::live_replicas(&mut c).unwrap(),
            shards::holders(&mut c, &relay_key).unwrap()
        )
    });
    assert!(!live.contains(&killed));
    eprintln!("holders {holders:?}; total {:.1}s", started.elapsed().as_secs_f64());

    // Exactly one post per event in each repo.
    let rows = mappings(&db);
    assert_eq!(rows.len(), EVENTS, "one record_mappings row per event");
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (a, e) in &events {
        want.entry(accounts[*a].1.clone()).or_default().push(format!(
            "{}\n{}",
            e.content,
            divine_atbridge::translate::links::LINK_BACK_TEXT
        ));
    }
    for (did, mut texts) in want {
        let records = list_records_paged(&probe, &did, POST, 50).await;
        let mut got: Vec<String> = records
            .iter()
            .map(|r| r["value"]["text"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        texts.sort();
        assert_eq!(got, texts, "repo {did} must hold exactly its posts, once each");
    }
    for b in &mut bridges {
        b.terminate();
    }
}
