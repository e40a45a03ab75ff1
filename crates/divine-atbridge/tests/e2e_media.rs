//! End-to-end media streaming against the reference PDS: a large (30 MB) generated video is fetched into the
//! bridge's spool (`MEDIA_SPOOL_DIR`), streamed to `uploadBlob` and referenced by a post whose blob CID is the
//! locally computed one; the spool is empty again afterwards, and what a killed process left in it is removed at
//! startup. The bounded-memory figure for many such videos is `scripts/bench.sh media`, not a test.

mod support;

use divine_atbridge::blob::blob_cid;
use nostr_sdk::prelude::*;
use std::time::Duration;
use support::crosspost::*;
use support::*;

/// A valid-looking mp4 (the tiny fixture's `ftyp` header first) padded with pseudo-random bytes to `len`.
fn big_mp4(len: usize, seed: u64) -> Vec<u8> {
    let mut v = tiny_mp4();
    let mut x = seed | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Media files (not instance directories or lock files) anywhere under `root`.
fn spooled_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(root) else { return out };
    for d in dirs.flatten() {
        if let Ok(files) = std::fs::read_dir(d.path()) {
            out.extend(
                files
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| p.file_name().is_some_and(|n| n != ".lock")),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_mb_video_streams_through_the_spool_with_the_right_cid() {
    let Some(stack) = Refstack::from_env() else { return };
    let db = divine_bridge_db::testutil::TestDb::migrated("e2e_media");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = big_mp4(30_000_000, 0x5eed);
    let url = media.put("big.mp4", video.clone());
    let relay = TestRelay::start().await;
    let spool_root = tempfile::tempdir().unwrap();
    // What a SIGKILLed bridge left behind: an instance directory with a half-written video.
    let stale = spool_root.path().join("4242-0");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join(".lock"), b"").unwrap();
    std::fs::write(stale.join("7.media"), vec![1u8; 4096]).unwrap();

    let env = bridge_env(&db, &stack, &[&relay.url], &random_kek());
    let spool_dir = spool_root.path().to_str().unwrap().to_string();
    let bridge = BridgeProcess::spawn(&env, &[("MEDIA_SPOOL_DIR", spool_dir.as_str())]);
    assert!(!stale.exists(), "startup removed the dead instance's spool");
    let gateway = GatewayProcess::spawn(&db);
    let keys = Keys::generate();
    let did = opt_in_ready(&gateway, &keys, &random_handle("bigvid")).await;
    let client = nostr_client(&[&relay.url]).await;
    let event = video_event(&keys, 22, None, "", "a big one", &[], &url, &video, unix_now() - 60);
    publish(&client, &event).await;

    let done = eventually(Duration::from_secs(180), || async {
        mapping(&db, &event.id).filter(|m| m.state == "published")
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not published; jobs {:?}\nlog:\n{}",
            job_rows(&db),
            tail(&bridge.log(), 40)
        )
    });
    let rkey = rkey_of(done.at_uri.as_deref().unwrap()).to_string();
    let (status, rec) = probe
        .xrpc(
            "com.atproto.repo.getRecord",
            &[
                ("repo", did.as_str()),
                ("collection", "app.bsky.feed.post"),
                ("rkey", rkey.as_str()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{rec}");
    let blob = &rec["value"]["embed"]["video"];
    assert_eq!(blob["ref"]["$link"], blob_cid(&video).to_string(), "{rec}");
    assert_eq!(blob["size"], 30_000_000, "{rec}");
    assert_eq!(blob["mimeType"], "video/mp4", "{rec}");
    assert_eq!(media.hits("big.mp4"), 1, "fetched once");
    assert!(
        spooled_files(spool_root.path()).is_empty(),
        "the spool file was removed after the upload: {:?}",
        spooled_files(spool_root.path())
    );
    drop(bridge);
}
