//! Translation of parsed Nostr events into Bluesky records.
//!
//! Owns the mapping NIP-71 video event → [`PostPlan`] (text, facets, langs, createdAt, the video/caption sources to
//! fetch, alt text, all within the `app.bsky.feed.post` / `app.bsky.embed.video` lexicon limits) and kind 0 →
//! [`ProfilePlan`], plus the builders that turn a plan and uploaded blob refs into atrium record values
//! ([`build_post`], [`build_profile`]) and the one serialisation of a record, the JSON actually sent ([`record_json`]).
//! It must not fetch media, talk to a PDS or touch the database; its errors ([`TranslateError`]) are all permanent
//! and become a job's `ineligible` reason.

pub mod links;
mod record;
pub mod text;

pub use links::{BridgedUser, UrlTemplate};
pub use record::{build_post, build_profile, record_blobs_mut, record_json, KnownRecord, POST_NSID, PROFILE_NSID};
pub use text::{FacetFeature, FacetSpan};

use crate::nostr::{ProfileMeta, TextTrack, VideoEvent, VideoVariant};
use atrium_api::types::string::Datetime;
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use std::collections::HashMap;

/// `app.bsky.feed.post#text` maxGraphemes.
pub const MAX_TEXT_GRAPHEMES: usize = 300;
/// `app.bsky.feed.post#text` maxLength (UTF-8 bytes).
pub const MAX_TEXT_BYTES: usize = 3000;
/// `app.bsky.feed.post#langs` maxLength.
pub const MAX_LANGS: usize = 3;
/// `app.bsky.feed.post#tags` maxLength.
pub const MAX_POST_TAGS: usize = 8;
/// `app.bsky.embed.video#alt` maxGraphemes.
pub const MAX_ALT_GRAPHEMES: usize = 1000;
/// `app.bsky.embed.video#alt` maxLength (bytes).
pub const MAX_ALT_BYTES: usize = 10_000;
/// `app.bsky.embed.video#captions` maxLength.
pub const MAX_CAPTIONS: usize = 20;
/// `app.bsky.embed.video#caption.file` maxSize (bytes, `text/vtt`).
pub const MAX_CAPTION_BYTES: u64 = 20_000;
/// Largest video the bridge uploads (bytes).
pub const MAX_VIDEO_BYTES: u64 = 100_000_000;
/// `app.bsky.actor.profile#displayName` maxGraphemes / maxLength.
pub const MAX_DISPLAY_NAME_GRAPHEMES: usize = 64;
pub const MAX_DISPLAY_NAME_BYTES: usize = 640;
/// `app.bsky.actor.profile#description` maxGraphemes / maxLength.
pub const MAX_DESCRIPTION_GRAPHEMES: usize = 256;
pub const MAX_DESCRIPTION_BYTES: usize = 2560;
/// `app.bsky.actor.profile#avatar` maxSize (png/jpeg).
pub const MAX_AVATAR_BYTES: u64 = 1_000_000;
/// `app.bsky.actor.profile#banner` maxSize (png/jpeg).
pub const MAX_BANNER_BYTES: u64 = 1_000_000;
/// `com.atproto.label.defs#selfLabels` values maxLength.
pub const MAX_SELF_LABELS: usize = 10;
/// The only video MIME type `app.bsky.embed.video` accepts.
pub const VIDEO_MIME: &str = "video/mp4";

/// Why an event cannot be bridged. Every variant is permanent: the same event can never translate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// No `imeta` variant and no legacy `url` tag.
    #[error("event carries no video")]
    NoVideo,
    /// Video tags exist but none is `video/mp4`.
    #[error("no video/mp4 variant (found {mime})")]
    UnsupportedMediaType { mime: String },
    /// Malformed tags or content.
    #[error("invalid event: {reason}")]
    InvalidEvent { reason: String },
    /// A kind the translation does not handle.
    #[error("kind {0} is not translated")]
    UnsupportedKind(u16),
    /// The built record cannot be written as JSON ([`record_json`]); the same plan never can.
    #[error("record cannot be serialised: {reason}")]
    Unserializable { reason: String },
}

impl TranslateError {
    pub(crate) fn invalid(reason: impl Into<String>) -> TranslateError {
        TranslateError::InvalidEvent { reason: reason.into() }
    }
}

impl Classified for TranslateError {
    fn code(&self) -> ErrorCode {
        match self {
            TranslateError::NoVideo => ErrorCode::NoVideo,
            TranslateError::UnsupportedMediaType { .. } => ErrorCode::UnsupportedMediaType,
            TranslateError::InvalidEvent { .. } => ErrorCode::InvalidEvent,
            TranslateError::UnsupportedKind(_) => ErrorCode::UnsupportedKind,
            TranslateError::Unserializable { .. } => ErrorCode::RecordUnserializable,
        }
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// The video file to fetch and upload.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VideoSource {
    /// Primary http(s) URL.
    pub url: String,
    /// Other http(s) URLs serving the same file (NIP-71 `fallback`).
    pub fallbacks: Vec<String>,
    /// Always [`VIDEO_MIME`].
    pub mime: String,
    /// Lower-case hex SHA-256 to verify, when the event declares `x`.
    pub sha256: Option<String>,
    /// Declared size in bytes.
    pub size: Option<u64>,
    /// `(width, height)` reduced by their gcd (1080x1920 → 9:16).
    pub aspect_ratio: Option<(u64, u64)>,
    /// Seconds, when declared.
    pub duration: Option<f64>,
}

/// A WebVTT caption to fetch (as `text/vtt`, ≤ [`MAX_CAPTION_BYTES`]) and attach.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaptionSource {
    /// BCP-47 language tag.
    pub lang: String,
    pub url: String,
}

/// Everything needed to publish one video post, before any fetch or upload.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PostPlan {
    /// Final text (≤ 300 graphemes and ≤ 3000 bytes).
    pub text: String,
    /// Facets on `text` with UTF-8 byte offsets, sorted by start.
    pub facets: Vec<FacetSpan>,
    /// ≤ 3 ISO-639-1 codes.
    pub langs: Vec<String>,
    /// Event hashtags that are not tag facets in `text` (≤ 8), for the record's `tags`.
    pub tags: Vec<String>,
    /// The event's time as the record's `createdAt` ([`record_datetime`]: RFC 3339 UTC with milliseconds, e.g.
    /// `2025-01-01T00:00:00.000Z`).
    pub created_at: Datetime,
    pub video: VideoSource,
    /// Alt text (≤ 1000 graphemes, ≤ 10000 bytes).
    pub alt: Option<String>,
    /// ≤ 20 captions, one per language.
    pub captions: Vec<CaptionSource>,
    /// Bluesky self-label values (`com.atproto.label.defs#selfLabels`), from [`self_labels`]; empty only when the
    /// author marked nothing.
    #[serde(default)]
    pub self_labels: Vec<String>,
}

/// What the translation of a post needs besides the event: the link templates (from the config; `None` = off) and
/// the mentioned pubkeys that have a ready bridged account (resolved by the job from the database, keyed by
/// lower-case hex pubkey). `PostContext::default()` adds no links and knows no bridged users.
#[derive(Debug, Clone, Default)]
pub struct PostContext {
    /// `DIVINE_POST_URL_TEMPLATE`: the link back to the original on Divine.
    pub post_url: Option<UrlTemplate>,
    /// `DIVINE_PROFILE_URL_TEMPLATE`: where a mention of a non-bridged user links to.
    pub profile_url: Option<UrlTemplate>,
    pub bridged: HashMap<String, BridgedUser>,
}

/// Bluesky's four self-labels for sensitive media, in the order they are emitted.
pub const SELF_LABELS: [&str; 4] = ["porn", "sexual", "nudity", "graphic-media"];

/// Self-label for a content warning whose reason is empty or matches nothing in [`SELF_LABEL_KEYWORDS`].
///
/// Decision: `sexual`. A warned video must never go out unlabelled, and the author told us only that it is
/// sensitive. `sexual` is an adult-only label that Bluesky clients blur behind a warning by default (and hide from
/// users who have not enabled adult content), so the video is never shown openly; `porn` would hide it outright and
/// assert explicit content the author did not claim, `nudity` is shown unblurred by default, and `graphic-media`
/// describes violence, which Divine's warnings are rarely about (its reasons are mostly nudity/sexual content).
pub const DEFAULT_SELF_LABEL: &str = "sexual";

/// The documented mapping from a NIP-36 reason or a NIP-32 `content-warning` label value to a self-label: the
/// reason, lower-cased, is matched against these keywords (substring, first hit wins); a reason that matches none
/// gets [`DEFAULT_SELF_LABEL`].
pub const SELF_LABEL_KEYWORDS: &[(&str, &str)] = &[
    ("porn", "porn"),
    ("explicit", "porn"),
    ("xxx", "porn"),
    ("sexual", "sexual"),
    ("sex", "sexual"),
    ("suggestive", "sexual"),
    ("nsfw", "sexual"),
    ("nud", "nudity"),
    ("naked", "nudity"),
    ("gore", "graphic-media"),
    ("violen", "graphic-media"),
    ("graphic", "graphic-media"),
    ("blood", "graphic-media"),
    ("self-harm", "graphic-media"),
    ("injur", "graphic-media"),
    ("death", "graphic-media"),
];

/// Self-labels for an event's content warnings (see [`VideoEvent::content_warnings`]): one per distinct mapped
/// value, in [`SELF_LABELS`] order. Any warning at all yields at least one label.
pub fn self_labels(warnings: &[String]) -> Vec<String> {
    let mapped: Vec<&str> = warnings
        .iter()
        .map(|w| {
            let w = w.to_lowercase();
            SELF_LABEL_KEYWORDS
                .iter()
                .find(|(k, _)| w.contains(k))
                .map(|(_, l)| *l)
                .unwrap_or(DEFAULT_SELF_LABEL)
        })
        .collect();
    SELF_LABELS
        .iter()
        .filter(|l| mapped.contains(l))
        .take(MAX_SELF_LABELS)
        .map(|l| l.to_string())
        .collect()
}

/// An event time as a record's `createdAt`: atrium's [`Datetime`] spelled RFC 3339 UTC with milliseconds and 'Z'
/// (`2025-01-01T00:00:00.000Z`, the form records have always carried; `Datetime::new` would write microseconds).
/// The spelling is built from the typed time and read back by atrium's own parser; a time it refuses is
/// `invalid_event`, never the epoch.
pub fn record_datetime(at: chrono::DateTime<chrono::Utc>) -> Result<Datetime, TranslateError> {
    let spelled = at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    spelled
        .parse()
        .map_err(|_| TranslateError::invalid(format!("created_at {spelled} is not a valid record datetime")))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `(w, h)` reduced by gcd.
pub fn aspect_ratio(w: u64, h: u64) -> Option<(u64, u64)> {
    if w == 0 || h == 0 {
        return None;
    }
    let g = gcd(w, h);
    Some((w / g, h / g))
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
        .unwrap_or(false)
}

/// Declared MIME type, or one inferred from a `.mp4`/`.m4v` path when undeclared.
fn effective_mime(v: &VideoVariant) -> Option<String> {
    if let Some(m) = &v.mime {
        return Some(m.clone());
    }
    let path = url::Url::parse(&v.url)
        .map(|u| u.path().to_ascii_lowercase())
        .unwrap_or_default();
    (path.ends_with(".mp4") || path.ends_with(".m4v")).then(|| VIDEO_MIME.to_string())
}

/// Picks the variant to upload: the first `video/mp4` variant whose declared size fits [`MAX_VIDEO_BYTES`], else
/// the first `video/mp4` variant (the fetch will then refuse it as too large).
pub fn choose_variant(variants: &[VideoVariant]) -> Result<&VideoVariant, TranslateError> {
    if variants.is_empty() {
        return Err(TranslateError::NoVideo);
    }
    let mp4: Vec<&VideoVariant> = variants
        .iter()
        .filter(|v| effective_mime(v).as_deref() == Some(VIDEO_MIME))
        .collect();
    if let Some(v) = mp4.iter().find(|v| v.size.is_none_or(|s| s <= MAX_VIDEO_BYTES)) {
        return Ok(v);
    }
    if let Some(v) = mp4.first() {
        return Ok(v);
    }
    let found: Vec<String> = variants
        .iter()
        .map(|v| effective_mime(v).unwrap_or_else(|| "unknown".into()))
        .collect();
    Err(TranslateError::UnsupportedMediaType { mime: found.join(",") })
}

fn captions_from(tracks: &[TextTrack], langs: &[String]) -> Vec<CaptionSource> {
    let mut out: Vec<CaptionSource> = Vec::new();
    for t in tracks {
        if out.len() >= MAX_CAPTIONS {
            break;
        }
        if !matches!(t.kind.as_deref(), None | Some("captions") | Some("subtitles")) || !is_http_url(&t.url) {
            continue;
        }
        let Some(lang) = t.lang.clone().or_else(|| langs.first().cloned()) else {
            continue;
        };
        if atrium_api::types::string::Language::new(lang.clone()).is_err() {
            continue;
        }
        if out.iter().any(|c| c.lang.eq_ignore_ascii_case(&lang)) {
            continue;
        }
        out.push(CaptionSource {
            lang,
            url: t.url.clone(),
        });
    }
    out
}

/// Translates a parsed video event into a [`PostPlan`].
///
/// Text pipeline: compose title/content/hashtags → rewrite `nostr:` mentions ([`links::rewrite_mentions`]) →
/// detect tag/link facets outside the mentions → truncate to the limits minus the room reserved for the link-back
/// line → append the link-back line with its link facet (when `ctx.post_url` is set).
pub fn plan_post(ev: &VideoEvent, ctx: &PostContext) -> Result<PostPlan, TranslateError> {
    let variant = choose_variant(&ev.variants)?;
    let mut urls = std::iter::once(&variant.url)
        .chain(variant.fallbacks.iter())
        .filter(|u| is_http_url(u))
        .cloned();
    let url = urls
        .next()
        .ok_or_else(|| TranslateError::invalid("the video/mp4 variant has no http(s) URL"))?;
    let video = VideoSource {
        url,
        fallbacks: urls.collect(),
        mime: VIDEO_MIME.to_string(),
        sha256: variant.sha256.clone(),
        size: variant.size,
        aspect_ratio: variant.dim.and_then(|(w, h)| aspect_ratio(w, h)),
        duration: variant.duration,
    };

    let composed = text::compose(ev.title.as_deref(), &ev.content, &ev.hashtags);
    let (composed, mut facets) = links::rewrite_mentions(&composed, &ctx.bridged, ctx.profile_url.as_ref());
    let detected = text::detect_facets(&composed);
    let outside: Vec<FacetSpan> = detected
        .into_iter()
        .filter(|d| {
            !facets
                .iter()
                .any(|m| d.byte_start < m.byte_end && m.byte_start < d.byte_end)
        })
        .collect();
    facets.extend(outside);
    facets.sort_by_key(|f| f.byte_start);
    let link_back = ctx
        .post_url
        .as_ref()
        .map(|t| links::post_url(t, &ev.id, ev.d_tag(), &ev.pubkey));
    // Room for "\n" + the anchor, so the link back is never truncated away.
    let reserve = link_back
        .as_ref()
        .map(|_| {
            (
                1 + text::grapheme_len(links::LINK_BACK_TEXT),
                1 + links::LINK_BACK_TEXT.len(),
            )
        })
        .unwrap_or((0, 0));
    let (mut text, cut) = text::truncate(&composed, MAX_TEXT_GRAPHEMES - reserve.0, MAX_TEXT_BYTES - reserve.1);
    if let Some(cut) = cut {
        facets.retain(|f| f.byte_end <= cut);
    }
    if let Some(uri) = link_back {
        if !text.is_empty() {
            text.push('\n');
        }
        let byte_start = text.len();
        text.push_str(links::LINK_BACK_TEXT);
        facets.push(FacetSpan {
            byte_start,
            byte_end: text.len(),
            feature: FacetFeature::Link(uri),
        });
    }
    let faceted: Vec<String> = facets
        .iter()
        .filter_map(|f| match &f.feature {
            FacetFeature::Tag(t) => Some(t.to_lowercase()),
            _ => None,
        })
        .collect();
    let tags: Vec<String> = ev
        .hashtags
        .iter()
        .filter(|h| !faceted.contains(&h.to_lowercase()))
        .filter(|h| text::grapheme_len(h) <= text::MAX_TAG_GRAPHEMES && h.len() <= text::MAX_TAG_BYTES)
        .take(MAX_POST_TAGS)
        .cloned()
        .collect();

    let langs: Vec<String> = ev.langs.iter().take(MAX_LANGS).cloned().collect();
    let alt = variant
        .alt
        .as_deref()
        .or(ev.alt.as_deref())
        .or(ev.summary.as_deref())
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| text::truncate(a, MAX_ALT_GRAPHEMES, MAX_ALT_BYTES).0);

    Ok(PostPlan {
        text,
        facets,
        captions: captions_from(&ev.text_tracks, &langs),
        langs,
        tags,
        created_at: record_datetime(ev.created_at)?,
        video,
        alt,
        self_labels: self_labels(&ev.content_warnings),
    })
}

/// A profile update from kind 0.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfilePlan {
    /// `display_name`, else `name`; ≤ 64 graphemes / 640 bytes.
    pub display_name: Option<String>,
    /// `about`; ≤ 256 graphemes / 2560 bytes.
    pub description: Option<String>,
    /// `picture` when it is an http(s) URL; fetch as png/jpeg ≤ [`MAX_AVATAR_BYTES`].
    pub avatar_url: Option<String>,
    /// `banner` when it is an http(s) URL; fetch as png/jpeg ≤ [`MAX_BANNER_BYTES`].
    #[serde(default)]
    pub banner_url: Option<String>,
    /// `website` when it is an http(s) URL, for the profile's `website` field.
    ///
    /// Decision: the record's own `website` field (`app.bsky.actor.profile#website`, format `uri`, in the lexicon
    /// since 2025 and in atrium's `profile::RecordData`), not a line appended to the description: the description
    /// keeps all of its 256 graphemes for `about`, and Bluesky shows the field as a link. A value that is not an
    /// http(s) URL is skipped (the lexicon requires a URI, and a bare word would make the record invalid).
    #[serde(default)]
    pub website: Option<String>,
    /// Event time ([`record_datetime`]).
    pub created_at: Datetime,
}

/// Translates kind 0 metadata into a [`ProfilePlan`].
pub fn plan_profile(meta: &ProfileMeta) -> Result<ProfilePlan, TranslateError> {
    if let Some(e) = &meta.content_error {
        return Err(e.clone());
    }
    let display_name = meta
        .display_name
        .as_deref()
        .or(meta.name.as_deref())
        .map(|n| text::truncate(n, MAX_DISPLAY_NAME_GRAPHEMES, MAX_DISPLAY_NAME_BYTES).0);
    let description = meta
        .about
        .as_deref()
        .map(|a| text::truncate(a, MAX_DESCRIPTION_GRAPHEMES, MAX_DESCRIPTION_BYTES).0);
    Ok(ProfilePlan {
        display_name,
        description,
        avatar_url: meta.picture.clone().filter(|p| is_http_url(p)),
        banner_url: meta.banner.clone().filter(|b| is_http_url(b)),
        website: meta.website.clone().filter(|w| is_http_url(w)),
        created_at: record_datetime(meta.created_at)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(url: &str, mime: Option<&str>, size: Option<u64>) -> VideoVariant {
        VideoVariant {
            url: url.into(),
            mime: mime.map(Into::into),
            sha256: None,
            size,
            dim: None,
            duration: None,
            alt: None,
            fallbacks: vec![],
        }
    }

    #[test]
    fn aspect_and_time() {
        assert_eq!(aspect_ratio(1080, 1920), Some((9, 16)));
        assert_eq!(aspect_ratio(1920, 1080), Some((16, 9)));
        assert_eq!(aspect_ratio(480, 480), Some((1, 1)));
        assert_eq!(aspect_ratio(1001, 1000), Some((1001, 1000)));
        assert_eq!(aspect_ratio(0, 5), None);
        let at = chrono::DateTime::from_timestamp(1_735_689_600, 0).unwrap();
        assert_eq!(record_datetime(at).unwrap().as_str(), "2025-01-01T00:00:00.000Z");
        // The record carries exactly that spelling (milliseconds), not atrium's default microseconds.
        assert_eq!(
            serde_json::to_value(record_datetime(at).unwrap()).unwrap(),
            "2025-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn variant_choice() {
        assert_eq!(choose_variant(&[]).unwrap_err(), TranslateError::NoVideo);
        let hls = variant("https://a/v.m3u8", Some("application/x-mpegurl"), None);
        let webm = variant("https://a/v.webm", Some("video/webm"), None);
        let big = variant("https://a/big.mp4", Some("video/mp4"), Some(MAX_VIDEO_BYTES + 1));
        let small = variant("https://a/small.mp4", Some("video/mp4"), Some(10));
        let inferred = variant("https://a/x.MP4?sig=1", None, None);
        assert_eq!(
            choose_variant(&[hls.clone(), big.clone(), small.clone()]).unwrap().url,
            small.url
        );
        assert_eq!(choose_variant(std::slice::from_ref(&big)).unwrap().url, big.url);
        assert_eq!(
            choose_variant(&[hls.clone(), inferred.clone()]).unwrap().url,
            inferred.url
        );
        let e = choose_variant(&[hls, webm]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnsupportedMediaType);
        assert_eq!(e.class(), ErrorClass::Permanent);
    }

    #[test]
    fn captions_filtered_and_capped() {
        let mut tracks: Vec<TextTrack> = vec![
            TextTrack {
                url: "https://a/c.vtt".into(),
                kind: Some("chapters".into()),
                lang: Some("en".into()),
            },
            TextTrack {
                url: "nevent1xyz".into(),
                kind: Some("captions".into()),
                lang: Some("en".into()),
            },
            TextTrack {
                url: "https://a/en.vtt".into(),
                kind: Some("captions".into()),
                lang: Some("en".into()),
            },
            TextTrack {
                url: "https://a/en2.vtt".into(),
                kind: Some("subtitles".into()),
                lang: Some("EN".into()),
            },
            TextTrack {
                url: "https://a/nolang.vtt".into(),
                kind: None,
                lang: None,
            },
        ];
        let c = captions_from(&tracks, &["de".into()]);
        assert_eq!(
            c,
            vec![
                CaptionSource {
                    lang: "en".into(),
                    url: "https://a/en.vtt".into()
                },
                CaptionSource {
                    lang: "de".into(),
                    url: "https://a/nolang.vtt".into()
                },
            ]
        );
        assert_eq!(
            captions_from(&tracks[4..], &[]).len(),
            0,
            "no language at all → skipped"
        );
        tracks.clear();
        for i in 0..30 {
            tracks.push(TextTrack {
                url: format!("https://a/{i}.vtt"),
                kind: Some("captions".into()),
                lang: Some(format!("x-l{i}")),
            });
        }
        assert_eq!(captions_from(&tracks, &[]).len(), MAX_CAPTIONS);
    }

    #[test]
    fn profile_limits() {
        let meta = ProfileMeta {
            id: "0".repeat(64),
            pubkey: "1".repeat(64),
            created_at: chrono::DateTime::UNIX_EPOCH,
            content_error: None,
            name: Some("n".into()),
            display_name: None,
            about: Some("b".repeat(300)),
            picture: Some("data:image/png;base64,xx".into()),
            banner: Some("https://img.example/b.jpg".into()),
            website: Some("not a url".into()),
        };
        let p = plan_profile(&meta).unwrap();
        assert_eq!(p.display_name.as_deref(), Some("n"));
        assert_eq!(
            text::grapheme_len(p.description.as_deref().unwrap()),
            MAX_DESCRIPTION_GRAPHEMES
        );
        assert_eq!(p.avatar_url, None);
        assert_eq!(p.banner_url.as_deref(), Some("https://img.example/b.jpg"));
        assert_eq!(p.website, None, "a website that is not an http(s) URL is skipped");
        assert_eq!(p.created_at.as_str(), "1970-01-01T00:00:00.000Z");
        let p = plan_profile(&ProfileMeta {
            website: Some("https://bob.example".into()),
            ..meta
        })
        .unwrap();
        assert_eq!(p.website.as_deref(), Some("https://bob.example"));
    }

    #[test]
    fn content_warnings_map_to_self_labels() {
        let w = |v: &[&str]| self_labels(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(w(&[]).is_empty(), "no warning, no label");
        assert_eq!(w(&[""]), vec![DEFAULT_SELF_LABEL], "a bare content-warning is labelled");
        assert_eq!(
            w(&["spoilers"]),
            vec![DEFAULT_SELF_LABEL],
            "an unknown reason is labelled"
        );
        assert_eq!(w(&["Nudity"]), vec!["nudity"]);
        assert_eq!(w(&["explicit sex"]), vec!["porn"]);
        assert_eq!(
            w(&["violence", "porn", "sexual", "porn"]),
            vec!["porn", "sexual", "graphic-media"]
        );
        for (_, label) in SELF_LABEL_KEYWORDS {
            assert!(SELF_LABELS.contains(label), "{label} is a Bluesky self-label");
        }
    }

    fn video_event(content: &str, warnings: &[&str]) -> VideoEvent {
        VideoEvent {
            id: "ab".repeat(32),
            pubkey: "385c3a6ec0b9d57a4330dbd6284989be5bd00e41c535f9ca39b6ae7c521b81cd".into(),
            kind: 34236,
            created_at: chrono::DateTime::from_timestamp(1_735_689_600, 0).unwrap(),
            coordinate: Some(
                nostr::nips::nip01::Coordinate::new(
                    nostr::Kind::from(34236u16),
                    nostr::PublicKey::from_hex("385c3a6ec0b9d57a4330dbd6284989be5bd00e41c535f9ca39b6ae7c521b81cd")
                        .unwrap(),
                )
                .identifier("clip"),
            ),
            title: None,
            content: content.into(),
            hashtags: vec![],
            langs: vec![],
            variants: vec![variant("https://a/v.mp4", Some("video/mp4"), None)],
            text_tracks: vec![],
            alt: None,
            summary: None,
            content_warnings: warnings.iter().map(|s| s.to_string()).collect(),
            dropped_fields: vec![],
        }
    }

    #[test]
    fn plan_carries_self_labels() {
        let plan = plan_post(&video_event("hi", &[""]), &PostContext::default()).unwrap();
        assert_eq!(plan.self_labels, vec![DEFAULT_SELF_LABEL]);
        let plan = plan_post(&video_event("hi", &[]), &PostContext::default()).unwrap();
        assert!(plan.self_labels.is_empty());
    }

    #[test]
    fn link_back_is_appended_and_never_truncated() {
        let ctx = PostContext {
            post_url: Some(UrlTemplate::parse(links::DEFAULT_POST_URL_TEMPLATE, links::POST_PLACEHOLDERS).unwrap()),
            ..PostContext::default()
        };
        let uri = format!("https://divine.video/video/{}", "ab".repeat(32));
        let plan = plan_post(&video_event("hello", &[]), &ctx).unwrap();
        assert_eq!(plan.text, format!("hello\n{}", links::LINK_BACK_TEXT));
        let last = plan.facets.last().unwrap();
        assert_eq!(&plan.text[last.byte_start..last.byte_end], links::LINK_BACK_TEXT);
        assert_eq!(last.feature, FacetFeature::Link(uri.clone()));
        // A body at the limit is cut to make room; the link line survives within both limits.
        let plan = plan_post(&video_event(&"é".repeat(400), &[]), &ctx).unwrap();
        assert!(text::grapheme_len(&plan.text) <= MAX_TEXT_GRAPHEMES && plan.text.len() <= MAX_TEXT_BYTES);
        assert!(plan.text.ends_with(&format!("…\n{}", links::LINK_BACK_TEXT)));
        assert_eq!(plan.facets.last().unwrap().feature, FacetFeature::Link(uri));
        // Off: no line, no facet.
        let plan = plan_post(&video_event("hello", &[]), &PostContext::default()).unwrap();
        assert_eq!(plan.text, "hello");
        assert!(plan.facets.is_empty());
    }

    #[test]
    fn mentions_in_plan_do_not_collide_with_other_facets() {
        use nostr::nips::nip19::ToBech32;
        let pk = "385c3a6ec0b9d57a4330dbd6284989be5bd00e41c535f9ca39b6ae7c521b81cd";
        let npub = nostr::PublicKey::from_hex(pk).unwrap().to_bech32().unwrap();
        let ctx = PostContext {
            bridged: HashMap::from([(
                pk.to_string(),
                BridgedUser {
                    did: "did:plc:ewvi7nxzyoun6zhxrhs64oiz".into(),
                    handle: "alice.divine.video".into(),
                },
            )]),
            ..PostContext::default()
        };
        let plan = plan_post(&video_event(&format!("with nostr:{npub} #fun"), &[]), &ctx).unwrap();
        assert_eq!(plan.text, "with @alice.divine.video #fun");
        assert_eq!(plan.facets.len(), 2);
        assert_eq!(
            plan.facets[0].feature,
            FacetFeature::Mention("did:plc:ewvi7nxzyoun6zhxrhs64oiz".into())
        );
        assert_eq!((plan.facets[0].byte_start, plan.facets[0].byte_end), (5, 24));
        assert_eq!(plan.facets[1].feature, FacetFeature::Tag("fun".into()));
    }
}
