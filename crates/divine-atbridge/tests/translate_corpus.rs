//! NIP-71 fixture corpus: every `tests/fixtures/nip71/<name>.json` (a full signed Nostr event) is checked, parsed and
//! translated, and the outcome compared with `<name>.expected.json` (hand-written: the full record JSON as sent, with
//! fixed placeholder blob refs, or the rejection / ineligibility code). `generate_fixtures` (ignored) re-signs the
//! events; expected files are never generated.

use ::nostr::{Event, EventBuilder, JsonUtil, Keys, Kind, Tag, Timestamp};
use divine_atbridge::ingest;
use divine_atbridge::nostr::{self as bridge_nostr, BridgeEvent};
use divine_atbridge::translate::{self, FacetFeature};
use divine_bridge_db::Classified;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use unicode_segmentation::UnicodeSegmentation;

const VIDEO_CID: &str = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy";
const CAPTION_CID: &str = "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba";
const AVATAR_CID: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nip71")
}

fn blob(cid: &str, mime: &str, size: usize) -> atrium_api::types::BlobRef {
    serde_json::from_value(json!({"$type": "blob", "ref": {"$link": cid}, "mimeType": mime, "size": size})).unwrap()
}

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

/// Pubkey of the one "bridged" user the corpus knows (a mention of it becomes a mention facet).
const BRIDGED_PUBKEY: &str = "385c3a6ec0b9d57a4330dbd6284989be5bd00e41c535f9ca39b6ae7c521b81cd";
const BRIDGED_NPUB: &str = "npub18pwr5mkqh82h5sesm0tzsjvfhedaqrjpc56lnj3ek6h8c5sms8xsn5yj00";
const BRIDGED_DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
/// nprofile of a user who is not bridged (pubkey 6e46…, no relays).
const OTHER_NPROFILE: &str = "nprofile1qqsxu35yyt0mwjjh8pcz4zprhxegz69t4wr9t74vk6zne58wzh0waycs558km";

/// The translation context of every fixture: profile links on (the default template), the link back off unless the
/// expected file's `options.post_url_template` sets one (so one fixture shows it without touching every record),
/// and one bridged user.
fn context() -> translate::PostContext {
    translate::PostContext {
        post_url: None,
        profile_url: Some(
            translate::UrlTemplate::parse(
                translate::links::DEFAULT_PROFILE_URL_TEMPLATE,
                translate::links::PROFILE_PLACEHOLDERS,
            )
            .unwrap(),
        ),
        bridged: std::collections::HashMap::from([(
            BRIDGED_PUBKEY.to_string(),
            translate::BridgedUser {
                did: BRIDGED_DID.into(),
                handle: "bridged.divine.video".into(),
            },
        )]),
    }
}

/// Outcome of one fixture in the same shape as its expected file (`options` come from the expected file). Admission
/// is ingest's own ([`ingest::admit`], the shared `nostr::check_event` plus the opt-in set, here the fixture's
/// author), so the corpus tests what production runs.
fn run(event: &Event, options: &Value) -> Value {
    let opted_in = std::collections::BTreeSet::from([event.pubkey.to_hex()]);
    if let Err(r) = ingest::admit(event, &opted_in, now()) {
        return json!({"outcome": "rejected", "reason": r.reason()});
    }
    let parsed = match bridge_nostr::parse_event(event) {
        Ok(p) => p,
        Err(e) => return json!({"outcome": "ineligible", "reason": e.code().as_str()}),
    };
    match parsed {
        BridgeEvent::Video(v) => {
            let mut ctx = context();
            if let Some(t) = options["post_url_template"].as_str() {
                ctx.post_url = Some(translate::UrlTemplate::parse(t, translate::links::POST_PLACEHOLDERS).unwrap());
            }
            let plan = match translate::plan_post(&v, &ctx) {
                Ok(p) => p,
                Err(e) => return json!({"outcome": "ineligible", "reason": e.code().as_str()}),
            };
            check_post_invariants(&plan);
            let captions = plan
                .captions
                .iter()
                .map(|c| (c.lang.clone(), blob(CAPTION_CID, "text/vtt", 100)))
                .collect();
            let record = translate::build_post(&plan, blob(VIDEO_CID, "video/mp4", 1000), captions);
            json!({
                "outcome": "post",
                "coordinate": v.coordinate.as_ref().map(|c| c.to_string()),
                "video": {
                    "url": plan.video.url,
                    "fallbacks": plan.video.fallbacks,
                    "mime": plan.video.mime,
                    "sha256": plan.video.sha256,
                    "size": plan.video.size,
                    "duration": plan.video.duration,
                },
                "captions": plan.captions.iter().map(|c| json!({"lang": c.lang, "url": c.url})).collect::<Vec<_>>(),
                "record": translate::record_json(&record.into()).unwrap(),
            })
        }
        BridgeEvent::Delete(d) => {
            let (event_ids, coordinates) = d.target_keys();
            json!({"outcome": "delete", "event_ids": event_ids, "coordinates": coordinates})
        }
        BridgeEvent::Profile(p) => {
            let plan = match translate::plan_profile(&p) {
                Ok(p) => p,
                Err(e) => return json!({"outcome": "ineligible", "reason": e.code().as_str()}),
            };
            let avatar = plan.avatar_url.as_ref().map(|_| blob(AVATAR_CID, "image/png", 500));
            let banner = plan.banner_url.as_ref().map(|_| blob(AVATAR_CID, "image/jpeg", 700));
            json!({
                "outcome": "profile",
                "avatar_url": plan.avatar_url,
                "banner_url": plan.banner_url,
                "record": translate::record_json(&translate::build_profile(&plan, avatar, banner).into()).unwrap(),
            })
        }
    }
}

/// Lexicon limits and facet/text agreement, independent of any expected file.
fn check_post_invariants(plan: &translate::PostPlan) {
    assert!(plan.text.graphemes(true).count() <= 300, "{:?}", plan.text);
    assert!(plan.text.len() <= 3000);
    assert!(plan.langs.len() <= 3);
    assert!(plan.captions.len() <= 20);
    assert!(plan.tags.len() <= 8);
    if let Some(alt) = &plan.alt {
        assert!(alt.graphemes(true).count() <= 1000 && alt.len() <= 10_000);
    }
    let mut prev_end = 0;
    for f in &plan.facets {
        assert!(f.byte_start >= prev_end && f.byte_start < f.byte_end && f.byte_end <= plan.text.len());
        prev_end = f.byte_end;
        let slice = plan
            .text
            .get(f.byte_start..f.byte_end)
            .expect("facet on char boundaries");
        match &f.feature {
            FacetFeature::Tag(t) => {
                assert_eq!(slice, format!("#{t}"));
                assert!(t.graphemes(true).count() <= 64);
            }
            // A link's text is its URL, except the link back and profile links, which have anchor text.
            FacetFeature::Link(u) => assert!(
                slice == u || slice == translate::links::LINK_BACK_TEXT || slice.starts_with('@'),
                "{slice:?} -> {u}"
            ),
            FacetFeature::Mention(did) => {
                assert!(slice.starts_with('@') && did.starts_with("did:"), "{slice:?} -> {did}")
            }
        }
    }
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            (name.ends_with(".json") && !name.ends_with(".expected.json"))
                .then(|| name.trim_end_matches(".json").to_string())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn corpus_matches_expected() {
    let names = fixture_names();
    assert!(names.len() >= 15, "corpus has {} fixtures", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let raw = std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap();
        let event = Event::from_json(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join(format!("{name}.expected.json")))
                .unwrap_or_else(|e| panic!("{name}.expected.json: {e}")),
        )
        .unwrap();
        let got = run(&event, &expected["options"]);
        // The expected file may carry a "comment"; every other key must match exactly.
        let mut want = expected.clone();
        want.as_object_mut().unwrap().remove("comment");
        want.as_object_mut().unwrap().remove("options");
        let mut got_cmp = got.clone();
        if let (Some(g), Some(w)) = (got_cmp.as_object_mut(), want.as_object()) {
            g.retain(|k, _| w.contains_key(k));
        }
        if got_cmp != want {
            failures.push(format!(
                "{name}:\n  expected {}\n  got      {}",
                serde_json::to_string_pretty(&want).unwrap(),
                serde_json::to_string_pretty(&got).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn corpus_covers_every_outcome() {
    let mut outcomes = std::collections::BTreeSet::new();
    for name in fixture_names() {
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir().join(format!("{name}.expected.json"))).unwrap())
                .unwrap();
        let o = expected["outcome"].as_str().unwrap().to_string();
        let r = expected["reason"].as_str().map(|r| format!("{o}:{r}")).unwrap_or(o);
        outcomes.insert(r);
    }
    for must in [
        "post",
        "delete",
        "profile",
        "rejected:bad_signature",
        "rejected:bad_id",
        "rejected:future_dated",
        "ineligible:no_video",
        "ineligible:unsupported_media_type",
        "ineligible:invalid_event",
    ] {
        assert!(outcomes.contains(must), "no fixture with outcome {must}: {outcomes:?}");
    }
}

/// Exact byte offsets on multibyte text, asserted directly (not only through the expected files).
#[test]
fn multibyte_facet_offsets() {
    let raw = std::fs::read_to_string(dir().join("long_emoji_cjk.json")).unwrap();
    let ev = Event::from_json(&raw).unwrap();
    let BridgeEvent::Video(v) = bridge_nostr::parse_event(&ev).unwrap() else {
        panic!("not a video")
    };
    let plan = translate::plan_post(&v, &context()).unwrap();
    // "タイトル\n" is 4×3+1 = 13 bytes; "#猫" is 1+3 bytes.
    assert_eq!(plan.facets[0].byte_start, 13);
    assert_eq!(plan.facets[0].byte_end, 17);
    assert_eq!(plan.facets[0].feature, FacetFeature::Tag("猫".into()));
    assert_eq!(plan.text.graphemes(true).count(), 300);
    assert!(plan.text.ends_with('…'));
    // The trailing "#末尾タグ" and the appended "#video" were cut: no facet for them, "video" moves to tags.
    assert!(plan
        .facets
        .iter()
        .all(|f| f.feature != FacetFeature::Tag("末尾タグ".into())));
    assert_eq!(plan.tags, vec!["video".to_string()]);

    let raw = std::fs::read_to_string(dir().join("bytes_over_3000.json")).unwrap();
    let ev = Event::from_json(&raw).unwrap();
    let BridgeEvent::Video(v) = bridge_nostr::parse_event(&ev).unwrap() else {
        panic!("not a video")
    };
    let plan = translate::plan_post(&v, &context()).unwrap();
    assert!(plan.text.graphemes(true).count() < 300, "cut by bytes, not graphemes");
    assert_eq!(plan.text.len(), 8 + 119 * 25 + 3);
    assert_eq!((plan.facets[0].byte_start, plan.facets[0].byte_end), (0, 7));
}

// ---------------------------------------------------------------------------------------------------------------
// Fixture generator: `cargo test -p divine-atbridge --test translate_corpus -- --ignored generate_fixtures`
// (writes only missing fixtures; REGENERATE_ALL=1 re-signs every one)
// ---------------------------------------------------------------------------------------------------------------

const SECRET: &str = "6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e";
const BASE: u64 = 1_735_689_600; // 2025-01-01T00:00:00Z
const SHA_A: &str = "3093509d1e0bc604ff60cb9286f4cd7c781553bc8991937befaacfdc28ec5cdc";
const SHA_B: &str = "E1D4F808DAE475ED32FB23CE52EF8AC82E3CC760702FCA10D62D382D2DA3697D";

/// name, kind, content, tags, created_at, mutation applied after signing.
type Case<'a> = (&'a str, u16, String, Vec<Vec<String>>, u64, Mutation);

enum Mutation {
    None,
    FlipSig,
    EditContent,
}

fn sign(kind: u16, content: &str, tags: &[Vec<String>], created_at: u64) -> Event {
    let keys = Keys::parse(SECRET).unwrap();
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags.iter().map(|t| Tag::parse(t.clone()).unwrap()))
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(&keys)
        .unwrap()
}

fn t(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
#[ignore = "writes tests/fixtures/nip71/*.json; run by hand when the corpus changes"]
fn generate_fixtures() {
    let pk = Keys::parse(SECRET).unwrap().public_key().to_hex();
    let fam = "👨‍👩‍👧‍👦";
    let own_a = format!("34236:{pk}:clip-42");
    let foreign_a = format!("34236:{}:someone-else", "f".repeat(64));
    let cjk = format!("#猫 の動画です {fam} {} #末尾タグ", "日本語テキスト🎉".repeat(40));
    let bytes_heavy = format!("#family {}", fam.repeat(150));
    let long_name = format!("🌈✨ {}", "Divine Creator Extraordinaire ".repeat(3));
    let profile = serde_json::to_string(&json!({
        "name": "creator",
        "display_name": long_name.trim_end(),
        "about": "Makes loops 🎬",
        "picture": "https://media.divine.video/a/avatar.png",
    }))
    .unwrap();

    let cases: Vec<Case> = vec![
        (
            "imeta_variants",
            22,
            "A quick loop from the beach".into(),
            vec![
                t(&["title", "Beach loop"]),
                t(&["alt", "ignored: the chosen variant has its own alt"]),
                t(&["imeta", "url https://media.divine.video/v/abc.m3u8", "m application/x-mpegURL", "dim 1080x1920"]),
                t(&[
                    "imeta",
                    "url https://media.divine.video/v/abc-1080.mp4",
                    "m video/mp4",
                    "dim 1080x1920",
                    "size 150000000",
                    "x 704e720af2697f5d6a198ad377789d462054b6e8d790f8a3903afbc1e044014f",
                ]),
                t(&[
                    "imeta",
                    "url https://media.divine.video/v/abc-720.mp4",
                    "m video/mp4",
                    "dim 720x1280",
                    "size 5000000",
                    &format!("x {SHA_A}"),
                    "duration 6",
                    "alt A vertical clip of waves",
                    "fallback https://cdn2.divine.video/v/abc-720.mp4",
                    "fallback ipfs://bafy/abc-720.mp4",
                ]),
            ],
            BASE,
            Mutation::None,
        ),
        (
            "legacy_tags",
            21,
            "old style".into(),
            vec![
                t(&["title", "Legacy"]),
                t(&["url", "https://media.divine.video/v/legacy.mp4"]),
                t(&["m", "video/mp4"]),
                t(&["x", SHA_A]),
                t(&["size", "2500000"]),
                t(&["dim", "1280x720"]),
                t(&["duration", "30"]),
                t(&["summary", "Summary used as alt"]),
            ],
            BASE + 60,
            Mutation::None,
        ),
        ("no_video", 22, "words only".into(), vec![t(&["title", "Nothing to see"])], BASE + 120, Mutation::None),
        (
            "non_mp4_only",
            22,
            "webm and hls".into(),
            vec![
                t(&["imeta", "url https://media.divine.video/v/x.webm", "m video/webm"]),
                t(&["imeta", "url https://media.divine.video/v/x.m3u8", "m application/x-mpegURL"]),
            ],
            BASE + 180,
            Mutation::None,
        ),
        (
            "float_duration",
            22,
            "square clip".into(),
            vec![
                t(&["imeta", "url https://media.divine.video/v/sq.mp4", "m video/mp4", "dim 480x480", "duration 6.5"]),
                t(&["alt", "A square loop"]),
            ],
            BASE + 240,
            Mutation::None,
        ),
        (
            "long_emoji_cjk",
            22,
            cjk,
            vec![
                t(&["title", "タイトル"]),
                t(&["t", "猫"]),
                t(&["t", "video"]),
                t(&["imeta", "url https://media.divine.video/v/cjk.mp4", "m video/mp4", "dim 1080x1920"]),
            ],
            BASE + 300,
            Mutation::None,
        ),
        (
            "bytes_over_3000",
            22,
            bytes_heavy,
            vec![t(&["imeta", "url https://media.divine.video/v/fam.mp4", "m video/mp4"])],
            BASE + 360,
            Mutation::None,
        ),
        (
            "many_hashtags",
            22,
            "Sunset at the pier #sunset #Beach 🌅 #2024 #beach!".into(),
            vec![
                t(&["title", "Loop of the day"]),
                t(&["t", "sunset"]),
                t(&["t", "beach"]),
                t(&["t", "Divine"]),
                t(&["t", "vine-clips"]),
                t(&["t", "loop"]),
                t(&["t", "#art"]),
                t(&["t", "LOOP"]),
                t(&["imeta", "url https://media.divine.video/v/sunset.mp4", "m video/mp4", "dim 1080x1920"]),
            ],
            BASE + 420,
            Mutation::None,
        ),
        (
            "links",
            21,
            "Watch the full cut at https://divine.video/v/abc123. Also (see https://en.wikipedia.org/wiki/Vine_(service)) and http://example.com/path?q=1#frag, not https:// or www.example.com".into(),
            vec![t(&["imeta", "url https://media.divine.video/v/links.mp4", "m video/mp4", "dim 1920x1080"])],
            BASE + 480,
            Mutation::None,
        ),
        (
            "languages",
            22,
            "Hello / こんにちは / Hallo / Bonjour".into(),
            vec![
                t(&["L", "ISO-639-1"]),
                t(&["l", "en", "ISO-639-1"]),
                t(&["l", "ja", "ISO-639-1"]),
                t(&["l", "xx", "ISO-639-1"]),
                t(&["l", "de"]),
                t(&["l", "EN"]),
                t(&["l", "fr", "ISO-639-1"]),
                t(&["l", "es", "ISO-639-3"]),
                t(&["imeta", "url https://media.divine.video/v/lang.mp4", "m video/mp4"]),
            ],
            BASE + 540,
            Mutation::None,
        ),
        (
            "captions",
            22,
            "With captions".into(),
            vec![
                t(&["l", "en", "ISO-639-1"]),
                t(&["imeta", "url https://media.divine.video/v/cap.mp4", "m video/mp4"]),
                t(&["text-track", "https://media.divine.video/c/en.vtt", "captions", "en"]),
                t(&["text-track", "https://media.divine.video/c/es.vtt", "subtitles", "es"]),
                t(&["text-track", "https://media.divine.video/c/chapters.vtt", "chapters", "en"]),
                t(&["text-track", "nevent1qqsexampleexampleexample", "wss://relay.divine.video"]),
                t(&["text-track", "https://media.divine.video/c/en-dup.vtt", "captions", "en"]),
                t(&["text-track", "https://media.divine.video/c/default.vtt"]),
            ],
            BASE + 600,
            Mutation::None,
        ),
        (
            "addressable_34235",
            34235,
            "".into(),
            vec![
                t(&["d", "my-video-2025-01"]),
                t(&["title", "Introduction to Nostr Video"]),
                t(&["summary", "A walkthrough of NIP-71 video events"]),
                t(&["imeta", "url https://media.divine.video/v/intro.mp4", "m video/mp4", "dim 1920x1080"]),
            ],
            BASE + 660,
            Mutation::None,
        ),
        (
            "addressable_34236",
            34236,
            "Morning run by the river".into(),
            vec![
                t(&["d", "clip-42"]),
                t(&["title", "Morning"]),
                t(&["imeta", "url https://media.divine.video/v/run.mp4", "m video/mp4", "dim 1080x1920", &format!("x {SHA_B}")]),
            ],
            BASE + 720,
            Mutation::None,
        ),
        (
            "delete",
            5,
            "posted by mistake".into(),
            vec![
                t(&["e", SHA_A]),
                t(&["e", "not-an-id"]),
                t(&["a", &own_a]),
                t(&["a", &foreign_a]),
                t(&["a", "garbage"]),
                t(&["k", "34236"]),
            ],
            BASE + 780,
            Mutation::None,
        ),
        ("profile_long_name", 0, profile, vec![], BASE + 840, Mutation::None),
        (
            "bad_signature",
            22,
            "tampered signature".into(),
            vec![t(&["imeta", "url https://media.divine.video/v/sig.mp4", "m video/mp4"])],
            BASE + 900,
            Mutation::FlipSig,
        ),
        (
            "bad_id",
            22,
            "tampered content".into(),
            vec![t(&["imeta", "url https://media.divine.video/v/id.mp4", "m video/mp4"])],
            BASE + 960,
            Mutation::EditContent,
        ),
        (
            "future_dated",
            22,
            "from the future".into(),
            vec![t(&["imeta", "url https://media.divine.video/v/future.mp4", "m video/mp4"])],
            4_102_444_800, // 2100-01-01
            Mutation::None,
        ),
        (
            "malformed_imeta",
            22,
            "bad dim".into(),
            vec![t(&["imeta", "url https://media.divine.video/v/bad.mp4", "m video/mp4", "dim wide"])],
            BASE + 1020,
            Mutation::None,
        ),
        (
            "malformed_x",
            22,
            "bad hash".into(),
            vec![t(&["imeta", "url https://media.divine.video/v/badx.mp4", "m video/mp4", "x nothex"])],
            BASE + 1080,
            Mutation::None,
        ),
        (
            "content_warning",
            34236,
            "after the party".into(),
            vec![
                t(&["d", "cw-1"]),
                t(&["imeta", "url https://media.divine.video/v/cw.mp4", "m video/mp4", "dim 1080x1920"]),
                t(&["content-warning", "nudity"]),
                t(&["L", "content-warning"]),
                t(&["l", "sexual", "content-warning"]),
            ],
            BASE + 1140,
            Mutation::None,
        ),
        (
            "content_warning_bare",
            22,
            "no reason given".into(),
            vec![
                t(&["imeta", "url https://media.divine.video/v/cw2.mp4", "m video/mp4"]),
                t(&["content-warning"]),
            ],
            BASE + 1200,
            Mutation::None,
        ),
        (
            "mentions",
            22,
            format!("duet with nostr:{BRIDGED_NPUB} and nostr:{OTHER_NPROFILE} #duet"),
            vec![t(&["imeta", "url https://media.divine.video/v/duet.mp4", "m video/mp4"])],
            BASE + 1260,
            Mutation::None,
        ),
        (
            "link_back",
            34236,
            "loop with a way home".into(),
            vec![
                t(&["d", "home-1"]),
                t(&["imeta", "url https://media.divine.video/v/home.mp4", "m video/mp4"]),
            ],
            BASE + 1320,
            Mutation::None,
        ),
        (
            "profile_banner_website",
            0,
            serde_json::to_string(&json!({
                "name": "bannered",
                "about": "Loops and more",
                "picture": "https://media.divine.video/a/avatar.png",
                "banner": "https://media.divine.video/a/banner.jpg",
                "website": "https://bannered.example/",
            }))
            .unwrap(),
            vec![],
            BASE + 1380,
            Mutation::None,
        ),
    ];

    std::fs::create_dir_all(dir()).unwrap();
    for (name, kind, content, tags, created_at, mutation) in cases {
        if dir().join(format!("{name}.json")).exists() && std::env::var_os("REGENERATE_ALL").is_none() {
            // Signatures are randomised: re-signing an existing fixture would churn it for nothing.
            continue;
        }
        let event = sign(kind, &content, &tags, created_at);
        let mut v: Value = serde_json::from_str(&event.as_json()).unwrap();
        match mutation {
            Mutation::None => {}
            Mutation::FlipSig => {
                let sig = v["sig"].as_str().unwrap().to_string();
                let first = if sig.starts_with('0') { "1" } else { "0" };
                v["sig"] = format!("{first}{}", &sig[1..]).into();
            }
            Mutation::EditContent => v["content"] = format!("{content}!").into(),
        }
        let out = serde_json::to_string_pretty(&v).unwrap() + "\n";
        std::fs::write(dir().join(format!("{name}.json")), out).unwrap();
    }
}
