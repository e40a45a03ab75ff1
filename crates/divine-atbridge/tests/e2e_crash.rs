//! Exactly-once publishing under crashes, end to end: 50 NIP-71 events from two opted-in accounts are published to a
//! real relay while the test SIGKILLs the real `divine-atbridge` process at random moments (every 0.3–1.5 s) and
//! restarts it, some restarts armed with a publish failpoint (`publish_after_reserve` / `_upload` / `_put`, which
//! abort the process at that step of the first publish it runs). At the end each repo on the reference PDS holds
//! exactly its posts — one per event, none lost, none duplicated — and `record_mappings` has 50 published rows whose
//! at_uris exist.
//!
//! Observes only (PDS XRPC, the bridge's tables); it must not write to the bridge's tables. The same property with an
//! in-memory repo and every crash point is in `jobs_publish.rs`.

mod support;

use nostr_sdk::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::crosspost::*;
use support::*;

const POST: &str = "app.bsky.feed.post";
const EVENTS: usize = 50;
const FAILPOINTS: [&str; 3] = ["publish_after_reserve", "publish_after_upload", "publish_after_put"];

/// Lease owners present in `jobs` now (taken when a process is spawned: every owner so far is a dead process).
fn lease_owners(db: &divine_bridge_db::testutil::TestDb) -> BTreeSet<String> {
    use diesel::prelude::*;
    use divine_bridge_db::schema::jobs;
    jobs::table
        .filter(jobs::lease_owner.is_not_null())
        .select(jobs::lease_owner.assume_not_null())
        .distinct()
        .load::<String>(&mut db.conn())
        .unwrap()
        .into_iter()
        .collect()
}

/// Publish jobs running under the CURRENT process's lease (not leftovers of killed ones awaiting the watchdog).
fn in_flight(db: &divine_bridge_db::testutil::TestDb, dead_owners: &BTreeSet<String>) -> usize {
    use diesel::prelude::*;
    use divine_bridge_db::schema::jobs;
    jobs::table
        .filter(jobs::kind.eq("publish_post"))
        .filter(jobs::state.eq("running"))
        .select(jobs::lease_owner)
        .load::<Option<String>>(&mut db.conn())
        .unwrap()
        .into_iter()
        .filter(|o| o.as_ref().is_some_and(|o| !dead_owners.contains(o)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_publishes_under_random_sigkills_leave_exactly_fifty_posts() {
    let Some(stack) = Refstack::from_env() else { return };
    let started = Instant::now();
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_crash");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = tiny_mp4();
    let url = media.put("crash.mp4", video.clone());
    let relay = TestRelay::start().await;
    let env = bridge_env(&db, &stack, &[&relay.url], &random_kek());
    // Short leases so a killed worker's jobs come back within ~2 s (watchdog every second). The random SIGKILLs can hit
    // one job's try many times: that is the test's doing, not a poison job, so the reclaim limit is out of reach
    // (parking after `RECLAIM_LIMIT` is tested in the queue semantics tests).
    let fast: [(&str, &str); 2] = [("LEASE_SECS", "2"), ("RECLAIM_LIMIT", "1000")];
    let mut bridge = BridgeProcess::spawn(&env, &fast);
    let gateway = GatewayProcess::spawn(&db);
    let accounts: Vec<(Keys, String)> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let keys = Keys::generate();
            let did = opt_in_ready(&gateway, &keys, &random_handle("crash")).await;
            v.push((keys, did));
        }
        v
    };
    let client = nostr_client(&[&relay.url]).await;
    let t0 = unix_now() - 200;
    let events: Vec<(usize, Event)> = (0..EVENTS)
        .map(|i| {
            let (keys, _) = &accounts[i % accounts.len()];
            let text = format!("crash clip {i:02}");
            (
                i % accounts.len(),
                video_event(keys, 22, None, "", &text, &[], &url, &video, t0 + i as u64),
            )
        })
        .collect();

    // Publish in the background, ~one event every 200 ms, while the bridge is being killed.
    let publisher = {
        let events: Vec<Event> = events.iter().map(|(_, e)| e.clone()).collect();
        tokio::spawn(async move {
            for e in &events {
                publish(&client, e).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let published_count = || mappings(&db).iter().filter(|m| m.state == "published").count();

    let (mut kills, mut kills_in_flight, mut failpoint_aborts, mut restarts) = (0usize, 0usize, 0usize, 0usize);
    let mut dead_owners = lease_owners(&db);
    let chaos_until = Instant::now() + Duration::from_secs(35);
    while Instant::now() < chaos_until && published_count() < EVENTS {
        let wait = Duration::from_millis(200 + rand::random::<u64>() % 600);
        tokio::time::sleep(wait).await;
        if bridge.exited() {
            // A failpoint aborted it.
            failpoint_aborts += 1;
        } else {
            // Aim at a publish in progress when there is one soon, and shoot as soon as one is seen: a try takes ~100 ms
            // since the publish pipeline lost its per-job fsync and budget waits, so any added delay mostly misses it.
            let aim = Instant::now() + Duration::from_millis(3000);
            let mut in_flight_now = in_flight(&db, &dead_owners);
            while in_flight_now == 0 && Instant::now() < aim && !bridge.exited() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                in_flight_now = in_flight(&db, &dead_owners);
            }
            let in_flight = in_flight_now;
            if bridge.exited() {
                // It reached its armed failpoint while we were aiming.
                failpoint_aborts += 1;
            } else {
                bridge.kill();
                kills += 1;
                if in_flight > 0 {
                    kills_in_flight += 1;
                }
            }
        }
        restarts += 1;
        // Every third restart is armed with one of the publish failpoints, in turn.
        let armed = (restarts % 3 == 0).then(|| FAILPOINTS[(restarts / 3) % FAILPOINTS.len()]);
        let mut extra = fast.to_vec();
        if let Some(fp) = armed {
            extra.push(("BRIDGE_FAILPOINTS", fp));
        }
        dead_owners = lease_owners(&db);
        bridge = BridgeProcess::spawn_unready(&env, &extra);
    }
    publisher.await.unwrap();
    // A clean bridge finishes the rest.
    if bridge.exited() {
        failpoint_aborts += 1;
    }
    bridge.kill();
    bridge = BridgeProcess::spawn(&env, &fast);
    let chaos_secs = started.elapsed().as_secs_f64();
    let done = eventually(Duration::from_secs(60), || async {
        (published_count() == EVENTS).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "only {} of {EVENTS} published; jobs {:?}\nlog tail:\n{}",
        published_count(),
        job_rows(&db),
        tail(&bridge.log(), 40)
    );
    eprintln!(
        "kills={kills} kills_in_flight={kills_in_flight} failpoint_aborts={failpoint_aborts} restarts={restarts} \
         chaos_secs={chaos_secs:.1} total_secs={:.1}",
        started.elapsed().as_secs_f64()
    );

    // Each repo holds exactly its events' posts: one per event, no extras.
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
        // Small pages: the cursor is followed several times per repo.
        let records = list_records_paged(&probe, &did, POST, 7).await;
        let mut got: Vec<String> = records
            .iter()
            .map(|r| r["value"]["text"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        texts.sort();
        assert_eq!(got, texts, "repo {did} must hold exactly its posts");
        for m in rows.iter().filter(|m| m.did == did) {
            assert_eq!(m.state, "published");
            let uri = m.at_uri.as_deref().unwrap();
            let found = records.iter().find(|r| r["uri"] == uri);
            let found = found.unwrap_or_else(|| panic!("mapping {uri} not in the repo"));
            assert_eq!(
                found["cid"].as_str(),
                m.cid.as_deref(),
                "{uri}: the mapped CID is the live one"
            );
        }
    }
    let publish_jobs: Vec<_> = job_rows(&db)
        .into_iter()
        .filter(|(k, _, _, _)| k == "publish_post")
        .collect();
    assert_eq!(publish_jobs.len(), EVENTS);
    assert!(
        publish_jobs.iter().all(|(_, _, s, _)| s == "succeeded"),
        "{publish_jobs:?}"
    );

    assert!(
        kills_in_flight >= 3,
        "only {kills_in_flight} of {kills} kills landed while publish jobs were running"
    );
    assert!(
        failpoint_aborts >= 1,
        "no failpoint-armed restart aborted at a publish step"
    );
}
