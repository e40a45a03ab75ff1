//! Issue 11 §2 end to end with the real `divine-atbridge` binary, the reference PLC + PDS, an in-process relay and a
//! loopback media server: one video of an account whose media host answers 503 (its job backs off and retries) does
//! not delay the account's next video, which is published while the first is still stuck and retrying.
//! Queue-level ordering rules are in `job_ordering.rs`.

mod support;

use nostr_sdk::prelude::*;
use std::time::{Duration, Instant};
use support::crosspost::*;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// `(state, attempt, last_error_code)` of the job with this unique key.
fn job_state(db: &divine_bridge_db::testutil::TestDb, unique_key: &str) -> Option<(String, i32, Option<String>)> {
    use diesel::prelude::*;
    use divine_bridge_db::schema::jobs;
    jobs::table
        .filter(jobs::unique_key.eq(unique_key))
        .select((jobs::state, jobs::attempt, jobs::last_error_code))
        .first(&mut db.conn())
        .optional()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_video_does_not_delay_another_video_of_the_same_account() {
    let Some(stack) = Refstack::from_env() else { return };
    let started = Instant::now();
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_ordering");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = tiny_mp4();
    let stuck_url = media.unavailable("stuck.mp4");
    let good_url = media.put("good.mp4", video.clone());
    let relay = TestRelay::start().await;
    let env = bridge_env(&db, &stack, &[&relay.url], &random_kek());
    let bridge = BridgeProcess::spawn(&env, &[]);
    let gateway = GatewayProcess::spawn(&db);
    let keys = Keys::generate();
    let did = opt_in_ready(&gateway, &keys, &random_handle("order")).await;
    let client = nostr_client(&[&relay.url]).await;

    // The stuck video is older: under per-account ordering it is the head every later job waits behind.
    let t0 = unix_now() - 60;
    let stuck = video_event(&keys, 22, None, "", "stuck clip", &[], &stuck_url, &video, t0);
    let good = video_event(&keys, 22, None, "", "good clip", &[], &good_url, &video, t0 + 1);
    let stuck_key = format!("publish:{}", stuck.id.to_hex());
    publish(&client, &stuck).await;
    // The stuck job has failed at least once (503) and is waiting out its backoff before the next video arrives.
    let backing_off = eventually(WAIT, || async {
        job_state(&db, &stuck_key).filter(|(state, attempt, code)| state == "queued" && *attempt >= 1 && code.is_some())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "stuck job never backed off: {:?}\n{}",
            job_rows(&db),
            tail(&bridge.log(), 40)
        )
    });
    eprintln!("stuck job backing off after {:?}: {backing_off:?}", started.elapsed());
    assert!(media.hits("stuck.mp4") >= 1, "the worker fetched the stuck media");

    publish(&client, &good).await;
    let good_published = eventually(WAIT, || async {
        mapping(&db, &good.id)
            .filter(|m| m.state == "published")
            .and_then(|m| m.at_uri)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the second video waited behind the stuck one: jobs {:?}\n{}",
            job_rows(&db),
            tail(&bridge.log(), 40)
        )
    });
    assert!(
        good_published.starts_with(&format!("at://{did}/app.bsky.feed.post/")),
        "{good_published}"
    );
    let (state, _, code) = job_state(&db, &stuck_key).unwrap();
    assert!(
        state == "queued" || state == "running",
        "the stuck video is still retrying ({state}, {code:?}), not published, not failed"
    );
    assert!(mapping(&db, &stuck.id).is_none_or(|m| m.state != "published"));
    let posts = probe.list_records(&did, "app.bsky.feed.post").await;
    assert_eq!(posts.len(), 1, "only the good video is in the repo: {posts:?}");
    eprintln!(
        "second video published after {:?} while the first backs off",
        started.elapsed()
    );
}
