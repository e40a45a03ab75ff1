//! End-to-end cross-posting against the real peers: the reference PLC + PDS (`PLC_URL`/`PDS_URL`), in-process Nostr
//! relays, a loopback media server on the allow-list, Postgres, the real gateway (opt-in) and the real
//! `divine-atbridge` binary. A user opts in, then signed Nostr events become records in their repo: a NIP-71 video
//! → a lexicon-valid `app.bsky.feed.post` with an `app.bsky.embed.video` whose blob is the uploaded video; the same
//! event on two relays → one post; kind 5 (`e` and `a`) → deleted; kind 0 → profile; a newer addressable revision
//! supersedes, an older one is ignored; a bridge restart mid-stream loses and duplicates nothing.
//!
//! Observes only through the PDS's public XRPC, the account's own session (for the `validate: true` no-op
//! re-put) and the bridge's tables; it must not write to those tables. Lower-level policy (crash points with an
//! in-memory repo, relay → job dedupe) is covered by `jobs_publish.rs` and `ingest_relay.rs`.

mod support;

use nostr_sdk::prelude::*;
use std::time::{Duration, Instant};
use support::crosspost::*;
use support::*;

const POST: &str = "app.bsky.feed.post";
const PROFILE: &str = "app.bsky.actor.profile";
const WAIT: Duration = Duration::from_secs(45);

/// `created_at` as the bridge must write it.
fn iso(at: u64) -> String {
    chrono::DateTime::from_timestamp(at as i64, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Waits for the event's mapping to be published and returns `(at_uri, cid)`.
async fn published(db: &divine_bridge_db::testutil::TestDb, id: &EventId, bridge: &BridgeProcess) -> (String, String) {
    eventually(WAIT, || async {
        mapping(db, id)
            .filter(|m| m.state == "published")
            .map(|m| (m.at_uri.unwrap(), m.cid.unwrap()))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "event {id} not published; mapping {:?}; jobs {:?}\nbridge log tail:\n{}",
            mapping(db, id),
            job_rows(db),
            tail(&bridge.log(), 40)
        )
    })
}

async fn post_rkeys(probe: &Probe, did: &str) -> Vec<String> {
    let mut v: Vec<String> = probe
        .list_records(did, POST)
        .await
        .iter()
        .map(|r| rkey_of(r["uri"].as_str().unwrap()).to_string())
        .collect();
    v.sort();
    v
}

/// Video → post (content, blob, facets, createdAt, validationStatus), two relays → one post, addressable edits
/// (newer supersedes, older ignored), kind 5 by `e` and by `a`, kind 0 → profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_events_become_valid_posts_and_follow_deletes_edits_and_profiles() {
    let Some(stack) = Refstack::from_env() else { return };
    let started = Instant::now();
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_crosspost");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = tiny_mp4();
    let url = media.put("clip.mp4", video.clone());
    let (relay_a, relay_b) = (TestRelay::start().await, TestRelay::start().await);
    let kek = random_kek();
    let env = bridge_env(&db, &stack, &[&relay_a.url, &relay_b.url], &kek);
    let bridge = BridgeProcess::spawn(&env, &[]);
    let gateway = GatewayProcess::spawn(&db);
    let keys = Keys::generate();
    let pubkey = keys.public_key().to_hex();
    let did = opt_in_ready(&gateway, &keys, &random_handle("xpost")).await;
    eprintln!("provisioned {did} in {:?}", started.elapsed());

    let client_a = nostr_client(&[&relay_a.url]).await;
    let client_b = nostr_client(&[&relay_b.url]).await;
    let t0 = unix_now() - 120;

    // 1. A kind 22 video, published to BOTH relays, with a content warning and a mention of a bridged user (the
    //    author themself): the record carries a self-label, a mention facet of the DID and the default link back.
    let npub = keys.public_key().to_bech32().unwrap();
    let handle = divine_bridge_db::accounts::get(&mut db.conn(), &pubkey)
        .unwrap()
        .unwrap()
        .handle;
    let short = video_event_with(
        &keys,
        22,
        None,
        "Café run ☕",
        &format!("Morning loop, see https://divine.video/v/1 with nostr:{npub}"),
        &["coffee", "dogs"],
        &url,
        &video,
        t0,
        vec![Tag::parse(["content-warning", "nudity"]).unwrap()],
    );
    publish(&client_a, &short).await;
    publish(&client_b, &short).await;
    let (uri, cid) = published(&db, &short.id, &bridge).await;
    assert!(uri.starts_with(&format!("at://{did}/{POST}/")), "{uri}");
    let rkey = rkey_of(&uri).to_string();
    assert!(
        atrium_api::types::string::Tid::new(rkey.clone()).is_ok(),
        "rkey {rkey} is not a TID"
    );

    let got = get_record(&probe, &did, POST, &rkey)
        .await
        .expect("getRecord finds the post");
    assert_eq!(got["uri"], uri);
    assert_eq!(got["cid"], cid);
    let value = &got["value"];
    let text = format!(
        "Café run ☕\nMorning loop, see https://divine.video/v/1 with @{handle}\n#coffee #dogs\nOriginal on Divine"
    );
    let text = text.as_str();
    assert_eq!(value["$type"], POST);
    assert_eq!(value["text"], text);
    assert_eq!(
        value["labels"],
        serde_json::json!({"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": "nudity"}]}),
        "a content-warning video is never posted unlabelled"
    );
    assert_eq!(value["createdAt"], iso(t0));
    let span = |needle: &str| {
        let start = text.find(needle).unwrap();
        serde_json::json!({"byteStart": start, "byteEnd": start + needle.len()})
    };
    let facets = value["facets"].as_array().expect("facets");
    assert_eq!(facets.len(), 5, "{value}");
    assert_eq!(facets[0]["index"], span("https://divine.video/v/1"));
    assert_eq!(facets[0]["features"][0]["$type"], "app.bsky.richtext.facet#link");
    assert_eq!(facets[0]["features"][0]["uri"], "https://divine.video/v/1");
    assert_eq!(facets[1]["index"], span(&format!("@{handle}")));
    assert_eq!(facets[1]["features"][0]["$type"], "app.bsky.richtext.facet#mention");
    assert_eq!(facets[1]["features"][0]["did"], did);
    assert_eq!(facets[2]["index"], span("#coffee"));
    assert_eq!(facets[2]["features"][0]["tag"], "coffee");
    assert_eq!(facets[3]["index"], span("#dogs"));
    assert_eq!(facets[3]["features"][0]["$type"], "app.bsky.richtext.facet#tag");
    assert_eq!(facets[4]["index"], span("Original on Divine"));
    assert_eq!(
        facets[4]["features"][0]["uri"],
        format!("https://divine.video/video/{}", short.id.to_hex())
    );
    let embed = &value["embed"];
    assert_eq!(embed["$type"], "app.bsky.embed.video");
    assert_eq!(embed["aspectRatio"], serde_json::json!({"width": 9, "height": 16}));
    assert_eq!(embed["video"]["$type"], "blob");
    assert_eq!(embed["video"]["ref"]["$link"], blob_cid(&video));
    assert_eq!(embed["video"]["mimeType"], "video/mp4");
    assert_eq!(embed["video"]["size"], video.len());
    // The blob in the repo is byte-for-byte the video.
    let blob = probe
        .http
        .get(format!("{}/xrpc/com.atproto.sync.getBlob", stack.pds_url))
        .query(&[("did", did.as_str()), ("cid", blob_cid(&video).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.unwrap().as_ref(), video.as_slice());

    // Lexicon validity as the PDS judges it: re-putting exactly the stored record with validate:true, as the
    // account, is a no-op (same CID) whose validationStatus is "valid".
    let password = account_password(&db, &kek, &pubkey);
    let jwt = account_session(&probe, &did, &password).await;
    let (status, body) = put_record_validated(&probe, &jwt, &did, POST, &rkey, value).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["validationStatus"], "valid", "{body}");
    assert_eq!(body["cid"], cid, "identical content must be a no-op: {body}");

    // Two relays delivered it, yet there is one job and one post.
    let publish_jobs = job_rows(&db)
        .into_iter()
        .filter(|(k, u, _, _)| k == "publish_post" && u.as_deref() == Some(&format!("publish:{}", short.id)))
        .count();
    assert_eq!(publish_jobs, 1);
    assert_eq!(post_rkeys(&probe, &did).await, vec![rkey.clone()]);
    assert_eq!(media.hits("clip.mp4"), 1, "the video was fetched once");

    // 2. An addressable video (34235), then a newer revision of the same `d`, then an older one (than v2) arriving late.
    let v1 = video_event(
        &keys,
        34235,
        Some("clip-1"),
        "Long take",
        "first cut",
        &[],
        &url,
        &video,
        t0 + 10,
    );
    publish(&client_a, &v1).await;
    let (uri_v1, _) = published(&db, &v1.id, &bridge).await;
    let v2 = video_event(
        &keys,
        34235,
        Some("clip-1"),
        "Long take",
        "director's cut",
        &[],
        &url,
        &video,
        t0 + 20,
    );
    publish(&client_b, &v2).await;
    let (uri_v2, _) = published(&db, &v2.id, &bridge).await;
    assert_ne!(uri_v1, uri_v2);
    let superseded = eventually(WAIT, || async {
        get_record(&probe, &did, POST, rkey_of(&uri_v1))
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(superseded.is_some(), "the old revision's record is still in the repo");
    assert_eq!(mapping(&db, &v1.id).unwrap().state, "superseded");
    let v2_rec = get_record(&probe, &did, POST, rkey_of(&uri_v2)).await.unwrap();
    assert_eq!(v2_rec["value"]["text"], "Long take\ndirector's cut\nOriginal on Divine");
    // Relay A still holds v1, so it accepts a revision dated between v1 and v2; to the bridge it is older than v2.
    let v0 = video_event(
        &keys,
        34235,
        Some("clip-1"),
        "Long take",
        "rough cut",
        &[],
        &url,
        &video,
        t0 + 15,
    );
    publish(&client_a, &v0).await;
    let (state, code) = job_outcome(&db, &format!("publish:{}", v0.id), WAIT).await;
    assert_eq!((state.as_str(), code.as_deref()), ("ineligible", Some("superseded")));
    let mut expected = vec![rkey.clone(), rkey_of(&uri_v2).to_string()];
    expected.sort();
    assert_eq!(post_rkeys(&probe, &did).await, expected);

    // 3. kind 5 by `e` (the kind 22) and by `a` (the coordinate of the addressable one).
    let del_e = delete_event(&keys, &[short.id], &[], t0 + 30);
    publish(&client_a, &del_e).await;
    let (state, _) = job_outcome(&db, &format!("delete:{}", del_e.id), WAIT).await;
    assert_eq!(state, "succeeded");
    assert!(get_record(&probe, &did, POST, &rkey).await.is_none());
    assert_eq!(mapping(&db, &short.id).unwrap().state, "deleted");
    let coord = format!("34235:{pubkey}:clip-1");
    let del_a = delete_event(&keys, &[], &[coord], t0 + 40);
    publish(&client_b, &del_a).await;
    let (state, _) = job_outcome(&db, &format!("delete:{}", del_a.id), WAIT).await;
    assert_eq!(state, "succeeded");
    assert!(
        post_rkeys(&probe, &did).await.is_empty(),
        "listRecords still holds posts"
    );
    assert_eq!(mapping(&db, &v2.id).unwrap().state, "deleted");

    // 4. kind 0 → app.bsky.actor.profile/self (with the website field); an older kind 0 arriving later does not win.
    let p1 = EventBuilder::new(
        Kind::Metadata,
        serde_json::json!({"display_name": "Dana 🎬", "about": "Short videos about coffee.",
            "website": "https://dana.example/"})
        .to_string(),
    )
    .custom_created_at(Timestamp::from(t0 + 50))
    .sign_with_keys(&keys)
    .unwrap();
    publish(&client_a, &p1).await;
    let profile = eventually(WAIT, || async {
        get_record(&probe, &did, PROFILE, "self")
            .await
            .filter(|r| r["value"]["displayName"] == "Dana 🎬")
    })
    .await
    .unwrap_or_else(|| panic!("profile not synced; jobs {:?}", job_rows(&db)));
    assert_eq!(profile["value"]["$type"], PROFILE);
    assert_eq!(profile["value"]["description"], "Short videos about coffee.");
    assert_eq!(profile["value"]["website"], "https://dana.example/");
    let (status, body) = put_record_validated(&probe, &jwt, &did, PROFILE, "self", &profile["value"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["validationStatus"], "valid", "{body}");
    let stale = profile_event(&keys, "Old Name", "old", t0 + 45);
    publish(&client_b, &stale).await;
    let (state, code) = job_outcome(&db, &format!("profile:{}", stale.id), WAIT).await;
    assert_eq!((state.as_str(), code.as_deref()), ("ineligible", Some("superseded")));
    let profile = get_record(&probe, &did, PROFILE, "self").await.unwrap();
    assert_eq!(profile["value"]["displayName"], "Dana 🎬");

    // Nothing failed along the way.
    let bad: Vec<_> = job_rows(&db).into_iter().filter(|(_, _, s, _)| s == "failed").collect();
    assert!(bad.is_empty(), "failed jobs: {bad:?}");
    eprintln!("e2e crosspost scenario passed in {:?}", started.elapsed());
}

/// 20 events published while the bridge is stopped (SIGTERM) and started again mid-stream, then killed (SIGKILL)
/// and restarted: every event ends up as exactly one post, none lost, none duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_loses_and_duplicates_nothing() {
    let Some(stack) = Refstack::from_env() else { return };
    let started = Instant::now();
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_restart");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = tiny_mp4();
    let url = media.put("v.mp4", video.clone());
    let relay = TestRelay::start().await;
    let env = bridge_env(&db, &stack, &[&relay.url], &random_kek());
    let mut bridge = BridgeProcess::spawn(&env, &[]);
    let gateway = GatewayProcess::spawn(&db);
    let keys = Keys::generate();
    let did = opt_in_ready(&gateway, &keys, &random_handle("restart")).await;
    let client = nostr_client(&[&relay.url]).await;

    const N: usize = 20;
    let t0 = unix_now() - 100;
    let events: Vec<Event> = (0..N)
        .map(|i| {
            let content = format!("restart clip {i}");
            video_event(&keys, 22, None, "", &content, &[], &url, &video, t0 + i as u64)
        })
        .collect();
    let published_count = || {
        events
            .iter()
            .filter(|e| mapping(&db, &e.id).is_some_and(|m| m.state == "published"))
            .count()
    };
    let mut restarts = 0;
    for (i, e) in events.iter().enumerate() {
        publish(&client, e).await;
        if i == 7 {
            // Graceful stop (SIGTERM) mid-stream; events 8..12 arrive while it is down.
            let status = bridge.terminate();
            eprintln!("SIGTERM after event {i}: {status:?}, {} published", published_count());
        }
        if i == 12 {
            bridge = BridgeProcess::spawn(&env, &[]);
            restarts += 1;
        }
        if i == 16 {
            // And an abrupt one (SIGKILL) with an immediate restart.
            bridge.kill();
            eprintln!("SIGKILL after event {i}: {} published", published_count());
            bridge = BridgeProcess::spawn(&env, &[]);
            restarts += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(restarts, 2);

    let all = eventually(Duration::from_secs(90), || async {
        (published_count() == N).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "not every event was published; jobs {:?}\nlog:\n{}",
        job_rows(&db),
        tail(&bridge.log(), 40)
    );
    let records = probe.list_records(&did, POST).await;
    assert_eq!(records.len(), N, "exactly one post per event");
    let mut texts: Vec<String> = records
        .iter()
        .map(|r| r["value"]["text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    // Every post ends with the default link back to Divine.
    let mut want: Vec<String> = (0..N)
        .map(|i| format!("restart clip {i}\nOriginal on Divine"))
        .collect();
    want.sort();
    assert_eq!(texts, want);
    for e in &events {
        let m = mapping(&db, &e.id).unwrap();
        let uri = m.at_uri.unwrap();
        assert!(
            records.iter().any(|r| r["uri"] == uri.as_str()),
            "{uri} missing from listRecords"
        );
    }
    let jobs = job_rows(&db);
    let publishes = jobs.iter().filter(|(k, _, _, _)| k == "publish_post").count();
    assert_eq!(publishes, N, "one publish job per event: {jobs:?}");
    assert!(jobs
        .iter()
        .filter(|(k, _, _, _)| k == "publish_post")
        .all(|(_, _, s, _)| s == "succeeded"));
    eprintln!("restart scenario passed in {:?}", started.elapsed());
}
