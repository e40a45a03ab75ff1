//! The production translation sources (`jobs::sources`) against a loopback media server and Postgres.
//! Profiles: banner, description and website reach the record; a webp or oversized avatar is refused with its
//! stable code, counted in `bridge_profile_images_skipped_total{field,code}`, and the rest of the profile still
//! syncs (never silently dropped, never a failed job). Posts: a malformed optional imeta field is dropped and counted
//! in `bridge_nostr_fields_dropped_total{field}` while the video is still prepared.

mod support;

use divine_atbridge::jobs::profile::ProfileSource;
use divine_atbridge::jobs::publish::PostSource;
use divine_atbridge::jobs::sources::{MediaSettings, TranslatedPosts, TranslatedProfiles};
use divine_atbridge::nostr::{ProfileMeta, VideoEvent};
use divine_atbridge::translate::{record_json, KnownRecord};
use nostr::prelude::*;
use std::time::Duration;
use support::MediaServer;

/// The job's one parse of its event (what `jobs::handlers` does before calling the source).
fn vid(event: &Event) -> VideoEvent {
    VideoEvent::from_event(event).unwrap()
}

fn profile(event: &Event) -> ProfileMeta {
    ProfileMeta::from_event(event).unwrap()
}

/// The record as it is sent (the production serialisation).
fn sent(record: &KnownRecord) -> serde_json::Value {
    record_json(record).unwrap()
}

fn jpeg(len: usize) -> Vec<u8> {
    let mut b = vec![0xff, 0xd8, 0xff, 0xe0];
    b.resize(len, 0);
    b
}

fn webp() -> Vec<u8> {
    let mut b = b"RIFF\x10\0\0\0WEBPVP8 ".to_vec();
    b.resize(64, 0);
    b
}

fn kind0(keys: &Keys, content: serde_json::Value) -> Event {
    EventBuilder::new(Kind::Metadata, content.to_string())
        .custom_created_at(Timestamp::from(1_735_689_600))
        .sign_with_keys(keys)
        .unwrap()
}

/// Sum of a counter's series whose labels contain every `k="v"` given.
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let text = divine_atbridge::metrics::render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn skipped(code: &str, field: &str) -> u64 {
    counter(
        "bridge_profile_images_skipped_total",
        &[("code", code), ("field", field)],
    )
}

#[tokio::test]
async fn banner_website_and_refused_avatars() {
    let media = MediaServer::start().await;
    let source = TranslatedProfiles::new(MediaSettings {
        allowed_hosts: vec!["127.0.0.1".into()],
        allow_loopback: true,
        require_video_hash: true,
        timeout: Duration::from_secs(10),
    });
    let keys = Keys::generate();
    let banner = media.put("banner.jpg", jpeg(2_000));

    // A webp avatar: refused as avatar_unsupported_format; banner, description and website still sync.
    let before = skipped("avatar_unsupported_format", "avatar");
    let ev = kind0(
        &keys,
        serde_json::json!({"name": "n", "about": "loops", "picture": media.put("a.webp", webp()),
            "banner": banner, "website": "https://n.example/"}),
    );
    let p = source.prepare(&profile(&ev)).await.expect("the profile still syncs");
    let record = sent(&p.record);
    assert!(record.get("avatar").is_none(), "{record}");
    assert_eq!(record["banner"]["mimeType"], "image/jpeg");
    assert_eq!(record["banner"]["size"], 2_000);
    assert_eq!(record["description"], "loops");
    assert_eq!(record["website"], "https://n.example/");
    assert_eq!(p.media.len(), 1, "only the banner is uploaded");
    assert_eq!(skipped("avatar_unsupported_format", "avatar"), before + 1);

    // An avatar over 1,000,000 bytes: avatar_too_large; a banner as large: banner_too_large.
    let (a0, b0) = (
        skipped("avatar_too_large", "avatar"),
        skipped("banner_too_large", "banner"),
    );
    let big = media.put("big.jpg", jpeg(1_000_001));
    let ev = kind0(&keys, serde_json::json!({"name": "n", "picture": big, "banner": big}));
    let p = source.prepare(&profile(&ev)).await.expect("the profile still syncs");
    let record = sent(&p.record);
    assert!(record.get("avatar").is_none() && record.get("banner").is_none());
    assert_eq!(record["displayName"], "n");
    assert_eq!(skipped("avatar_too_large", "avatar"), a0 + 1);
    assert_eq!(skipped("banner_too_large", "banner"), b0 + 1);
}

#[tokio::test]
async fn malformed_optional_imeta_fields_are_dropped_counted_and_the_video_kept() {
    let tdb = divine_bridge_db::testutil::TestDb::migrated("translate_sources_posts");
    let media = MediaServer::start().await;
    let url = media.put("clip.mp4", support::tiny_mp4());
    let config = divine_atbridge::config::CrosspostConfig {
        relays: vec![],
        cursor_overlap: Duration::from_secs(300),
        account_refresh: Duration::from_secs(5),
        authors_per_subscription: 250,
        ingest_shards: 1,
        ingest_lease: Duration::from_secs(30),
        media_allowed_hosts: vec!["127.0.0.1".into()],
        media_allow_loopback: true,
        media_require_video_hash: false,
        media_timeout: Duration::from_secs(10),
        media_spool_dir: divine_atbridge::spool::default_spool_root(),
        media_budget_bytes: divine_atbridge::spool::DEFAULT_MEDIA_BUDGET_BYTES,
        backfill_max_events: 10,
        post_url_template: None,
        profile_url_template: None,
    };
    let spool = divine_atbridge::spool::Spool::open(
        &config.media_spool_dir,
        divine_atbridge::spool::MediaBudget::new(config.media_budget_bytes),
    )
    .unwrap();
    let source = TranslatedPosts::new(tdb.pool(2), &config, spool);
    let keys = Keys::generate();
    let ev = EventBuilder::new(Kind::from(22u16), "loop")
        .tags([Tag::parse([
            "imeta".to_string(),
            format!("url {url}"),
            "m video/mp4".into(),
            "dim 1080×1920".into(),
            "duration 6s".into(),
        ])
        .unwrap()])
        .sign_with_keys(&keys)
        .unwrap();
    let (d0, t0) = (
        counter("bridge_nostr_fields_dropped_total", &[("field", "dim")]),
        counter("bridge_nostr_fields_dropped_total", &[("field", "duration")]),
    );
    let p = source.prepare(&vid(&ev)).await.expect("the video is still bridged");
    let record = sent(&p.record);
    assert_eq!(record["text"], "loop");
    assert!(record["embed"].get("aspectRatio").is_none(), "{record}");
    assert_eq!(p.media.len(), 1);
    assert_eq!(
        counter("bridge_nostr_fields_dropped_total", &[("field", "dim")]),
        d0 + 1
    );
    assert_eq!(
        counter("bridge_nostr_fields_dropped_total", &[("field", "duration")]),
        t0 + 1
    );
}

fn video_with_size(keys: &Keys, url: &str, size: Option<usize>) -> Event {
    let mut imeta = vec!["imeta".to_string(), format!("url {url}"), "m video/mp4".into()];
    if let Some(n) = size {
        imeta.push(format!("size {n}"));
    }
    EventBuilder::new(Kind::from(22u16), "clip")
        .tags([Tag::parse(imeta).unwrap()])
        .sign_with_keys(keys)
        .unwrap()
}

/// Videos are prepared into the spool under the byte budget: a fetch waits while the budget is taken; a video that
/// declares no size is weighted at the cap while it is fetched, and once spooled it holds only its observed size
/// (issue 11 §5: small videos must not queue behind budget no body uses, up to their uploads). The prepared body is
/// on disk, not in memory, and its file and budget go with the prepared post.
#[tokio::test]
async fn the_media_budget_limits_videos_in_flight() {
    use divine_atbridge::blob::MediaBody;
    use divine_atbridge::spool::{MediaBudget, Spool};
    let tdb = divine_bridge_db::testutil::TestDb::migrated("translate_sources_budget");
    let media = MediaServer::start().await;
    let bytes = support::tiny_mp4();
    let url = media.put("clip.mp4", bytes.clone());
    let config = divine_atbridge::config::CrosspostConfig {
        relays: vec![],
        cursor_overlap: Duration::from_secs(300),
        account_refresh: Duration::from_secs(5),
        authors_per_subscription: 250,
        media_allowed_hosts: vec!["127.0.0.1".into()],
        media_allow_loopback: true,
        media_require_video_hash: false,
        media_timeout: Duration::from_secs(10),
        media_spool_dir: divine_atbridge::spool::default_spool_root(),
        media_budget_bytes: divine_atbridge::spool::DEFAULT_MEDIA_BUDGET_BYTES,
        backfill_max_events: 10,
        post_url_template: None,
        profile_url_template: None,
        ingest_shards: 1,
        ingest_lease: Duration::from_secs(30),
    };
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path(), MediaBudget::new(100 * 1024)).unwrap();
    let source = TranslatedPosts::new(tdb.pool(2), &config, spool.clone());
    let keys = Keys::generate();
    let total = spool.budget().total_bytes();
    let observed = (bytes.len() as u64).div_ceil(1024) * 1024;

    let first = source.prepare(&vid(&video_with_size(&keys, &url, None))).await.unwrap();
    match &first.media[0].body {
        MediaBody::Spooled { file, budget } => {
            assert!(file.path().starts_with(spool.dir()));
            assert_eq!(std::fs::read(file.path()).unwrap(), bytes);
            assert_eq!(budget.as_ref().unwrap().bytes(), observed);
        }
        other => panic!("the video must be spooled, got {other:?}"),
    }
    assert_eq!(
        spool.budget().available_bytes(),
        total - observed,
        "once spooled, an undeclared size holds its observed size, not the whole budget"
    );
    // While it is fetched, an undeclared video is weighted at the cap (here the whole budget): it waits.
    let second_event = vid(&video_with_size(&keys, &url, None));
    let second = source.prepare(&second_event);
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "the second video waits for budget"
    );
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("released budget lets it run")
        .unwrap();
    assert_eq!(spool.file_count(), 1, "the first video's file went with it");
    drop(second);
    assert_eq!(spool.file_count(), 0);
    assert_eq!(spool.budget().available_bytes(), total);

    // Two videos declaring 80 KiB each do not fit a 100 KiB budget together while fetched, but a spooled one holds
    // only its observed size, so the second does not wait for the first one's upload.
    let a = source
        .prepare(&vid(&video_with_size(&keys, &url, Some(80 * 1024))))
        .await
        .unwrap();
    let b = tokio::time::timeout(
        Duration::from_secs(10),
        source.prepare(&vid(&video_with_size(&keys, &url, Some(80 * 1024)))),
    )
    .await
    .expect("the first video's spare budget was given back")
    .unwrap();
    assert_eq!(spool.budget().available_bytes(), total - 2 * observed);
    drop((a, b));
    assert_eq!(spool.budget().available_bytes(), total);
}
