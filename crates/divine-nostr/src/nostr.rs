//! Nostr event checks and NIP-71 / NIP-09 / kind 0 parsing into typed values.
//!
//! Owns: the admission check every event passes before it is bridged ([`check_event`]: id, signature, not dated
//! more than [`MAX_FUTURE_SKEW_SECS`] ahead, supported kind) with a stable [`Rejection::reason`] for
//! `bridge_nostr_events_rejected_total{reason}`, and parsing into [`VideoEvent`], [`DeleteRequest`] and
//! [`ProfileMeta`]. It reads tags exactly as published and keeps every value the translation needs; it must not decide
//! how a post looks (that is `translate`), fetch media (`media`), emit metrics or touch the database.
//!
//! One typed event pipeline: a job parses its verified event once into one of these values and everything after
//! (gates, coordinates, tombstone keys, the record's `createdAt`) derives from it. Times are typed
//! ([`event_time`]: a `created_at` chrono cannot hold is `invalid_event`, never the epoch or "now"); coordinates are
//! rust-nostr's [`Coordinate`] built once ([`event_coordinate`]); deletion targets are rust-nostr's NIP-09
//! [`EventDeletionRequest`] ([`deletion_targets`]).

use crate::translate::TranslateError;
use chrono::{DateTime, Utc};
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use nostr::nips::nip09::EventDeletionRequest;
use nostr::Event;

/// Kind 0: user metadata (profile).
pub const KIND_PROFILE: u16 = 0;
/// Kind 5: deletion request (NIP-09).
pub const KIND_DELETE: u16 = 5;
/// Kind 21: NIP-71 normal video.
pub const KIND_VIDEO: u16 = 21;
/// Kind 22: NIP-71 short video.
pub const KIND_SHORT_VIDEO: u16 = 22;
/// Kind 34235: addressable normal video (`d` tag).
pub const KIND_ADDRESSABLE_VIDEO: u16 = 34235;
/// Kind 34236: addressable short video (`d` tag).
pub const KIND_ADDRESSABLE_SHORT_VIDEO: u16 = 34236;
/// Every kind the bridge handles.
pub const SUPPORTED_KINDS: [u16; 6] = [
    KIND_PROFILE,
    KIND_DELETE,
    KIND_VIDEO,
    KIND_SHORT_VIDEO,
    KIND_ADDRESSABLE_VIDEO,
    KIND_ADDRESSABLE_SHORT_VIDEO,
];
/// Events dated more than this many seconds after "now" are refused.
pub const MAX_FUTURE_SKEW_SECS: u64 = 600;

/// True for the four NIP-71 video kinds.
pub fn is_video_kind(kind: u16) -> bool {
    matches!(
        kind,
        KIND_VIDEO | KIND_SHORT_VIDEO | KIND_ADDRESSABLE_VIDEO | KIND_ADDRESSABLE_SHORT_VIDEO
    )
}

/// True for the addressable video kinds (identified by `<kind>:<pubkey>:<d>`).
pub fn is_addressable_video_kind(kind: u16) -> bool {
    matches!(kind, KIND_ADDRESSABLE_VIDEO | KIND_ADDRESSABLE_SHORT_VIDEO)
}

/// Why an event was refused at admission. `reason()` is the metric label and equals `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The id is not the hash of the serialized event.
    #[error("event id does not match its content")]
    BadId,
    /// The Schnorr signature does not verify against the pubkey.
    #[error("event signature does not verify")]
    BadSignature,
    /// `created_at` is more than 10 minutes ahead of the bridge clock.
    #[error("event dated {created_at}, more than {MAX_FUTURE_SKEW_SECS}s after now ({now})")]
    FutureDated { created_at: u64, now: u64 },
    /// The bridge does not handle this kind.
    #[error("event kind {0} is not bridged")]
    UnsupportedKind(u16),
}

impl Rejection {
    /// Every value of [`Rejection::reason`] (a unit test checks each variant's reason is listed).
    pub const REASONS: [&'static str; 4] = [
        ErrorCode::BadId.as_str(),
        ErrorCode::BadSignature.as_str(),
        ErrorCode::FutureDated.as_str(),
        ErrorCode::UnsupportedKind.as_str(),
    ];

    /// Stable label for `bridge_nostr_events_rejected_total{reason}`: the code's wire spelling.
    pub fn reason(&self) -> &'static str {
        self.code().as_str()
    }
}

impl Classified for Rejection {
    fn code(&self) -> ErrorCode {
        match self {
            Rejection::BadId => ErrorCode::BadId,
            Rejection::BadSignature => ErrorCode::BadSignature,
            Rejection::FutureDated { .. } => ErrorCode::FutureDated,
            Rejection::UnsupportedKind(_) => ErrorCode::UnsupportedKind,
        }
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// Admission check: id, then signature, then clock skew, then kind. `now` is UNIX seconds.
pub fn check_event(event: &Event, now: u64) -> Result<(), Rejection> {
    if !event.verify_id() {
        return Err(Rejection::BadId);
    }
    if !event.verify_signature() {
        return Err(Rejection::BadSignature);
    }
    let created_at = event.created_at.as_secs();
    if created_at > now.saturating_add(MAX_FUTURE_SKEW_SECS) {
        return Err(Rejection::FutureDated { created_at, now });
    }
    let kind = event.kind.as_u16();
    if !SUPPORTED_KINDS.contains(&kind) {
        return Err(Rejection::UnsupportedKind(kind));
    }
    Ok(())
}

/// [`check_event`] against the system clock.
pub fn check_event_now(event: &Event) -> Result<(), Rejection> {
    check_event(event, chrono::Utc::now().timestamp().max(0) as u64)
}

/// A parsed, bridgeable event.
#[derive(Debug, Clone, PartialEq)]
pub enum BridgeEvent {
    Video(VideoEvent),
    Delete(DeleteRequest),
    Profile(ProfileMeta),
}

/// Parses a (checked) event by kind. Does not verify; call [`check_event`] first.
pub fn parse_event(event: &Event) -> Result<BridgeEvent, TranslateError> {
    match event.kind.as_u16() {
        k if is_video_kind(k) => VideoEvent::from_event(event).map(BridgeEvent::Video),
        KIND_DELETE => DeleteRequest::from_event(event)
            .and_then(DeleteRequest::require_target)
            .map(BridgeEvent::Delete),
        KIND_PROFILE => ProfileMeta::from_event(event).map(BridgeEvent::Profile),
        k => Err(TranslateError::UnsupportedKind(k)),
    }
}

/// One video file (an `imeta` tag, or the legacy top-level tags).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VideoVariant {
    pub url: String,
    /// Lower-cased MIME type without parameters, when declared.
    pub mime: Option<String>,
    /// Lower-cased hex SHA-256 (`x`).
    pub sha256: Option<String>,
    pub size: Option<u64>,
    /// `(width, height)` in pixels.
    pub dim: Option<(u64, u64)>,
    /// Seconds; may be fractional.
    pub duration: Option<f64>,
    pub alt: Option<String>,
    /// Other URLs serving the same file.
    pub fallbacks: Vec<String>,
}

/// A NIP-71 `text-track`: `["text-track", "<url>", "<captions|subtitles|chapters|metadata>", "<lang>"]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TextTrack {
    /// The tag's first value: a WebVTT URL, or (older layout) an encoded event the bridge cannot use.
    pub url: String,
    pub kind: Option<String>,
    pub lang: Option<String>,
}

/// A NIP-71 video event (kinds 21, 22, 34235, 34236).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VideoEvent {
    /// Hex event id.
    pub id: String,
    /// Hex author pubkey.
    pub pubkey: String,
    pub kind: u16,
    /// The event's `created_at`, typed ([`event_time`]).
    pub created_at: DateTime<Utc>,
    /// `<kind>:<pubkey>:<d>` of the addressable kinds ([`event_coordinate`]; `d` exactly as published), `None` for
    /// the others. The stored coordinate key is its `to_string()`.
    pub coordinate: Option<Coordinate>,
    pub title: Option<String>,
    pub content: String,
    /// `t` tags without '#', deduplicated case-insensitively, order kept.
    pub hashtags: Vec<String>,
    /// Valid ISO-639-1 codes from `l` tags (lower-case, deduplicated, order kept; not yet capped).
    pub langs: Vec<String>,
    /// `imeta` variants in tag order, or the single legacy variant; empty when the event carries no video.
    pub variants: Vec<VideoVariant>,
    pub text_tracks: Vec<TextTrack>,
    /// Top-level `alt` tag.
    pub alt: Option<String>,
    /// `summary` tag.
    pub summary: Option<String>,
    /// Sensitive-content marks exactly as published: the NIP-36 `content-warning` reason (`""` when the tag has
    /// none) and the values of NIP-32 labels in the `content-warning` namespace (`["l", "nudity",
    /// "content-warning"]`, as Divine's apps write them). Empty when the author marked nothing. `translate` maps them
    /// to Bluesky self-labels.
    pub content_warnings: Vec<String>,
    /// Optional `imeta`/legacy fields that were present but malformed and therefore dropped, one entry per dropped
    /// value, for `bridge_nostr_fields_dropped_total{field}`.
    pub dropped_fields: Vec<OptionalField>,
}

/// An optional video field whose malformed value is dropped rather than refusing the event (see
/// [`VideoEvent::from_event`]); the `field` label of `bridge_nostr_fields_dropped_total`, a closed set created at
/// zero on startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptionalField {
    Dim,
    Duration,
    Size,
}

impl OptionalField {
    pub const ALL: [OptionalField; 3] = [OptionalField::Dim, OptionalField::Duration, OptionalField::Size];

    /// The tag key (`imeta` entry or legacy tag name), also the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            OptionalField::Dim => "dim",
            OptionalField::Duration => "duration",
            OptionalField::Size => "size",
        }
    }
}

impl VideoEvent {
    /// Parses a video event. A malformed `imeta` entry or `x` hash, or an addressable kind without a `d` tag, is
    /// `invalid_event`. A malformed optional `dim`/`size`/`duration` value is NOT: the value is dropped (recorded in
    /// [`VideoEvent::dropped_fields`]) and the video kept, because it only refines the post (aspect ratio, variant
    /// choice) while `x` guards the integrity of the uploaded file.
    pub fn from_event(event: &Event) -> Result<VideoEvent, TranslateError> {
        let kind = event.kind.as_u16();
        if !is_video_kind(kind) {
            return Err(TranslateError::UnsupportedKind(kind));
        }
        let tags: Vec<&[String]> = event.tags.iter().map(|t| t.as_slice()).collect();
        let first = |name: &str| -> Option<String> {
            tags.iter()
                .find(|t| t.first().map(String::as_str) == Some(name))
                .and_then(|t| t.get(1))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if is_addressable_video_kind(kind) && event.tags.find(nostr::TagKind::d()).is_none() {
            return Err(TranslateError::invalid("addressable video event without a d tag"));
        }

        let mut dropped_fields = Vec::new();
        let mut variants = Vec::new();
        for t in tags.iter().filter(|t| t.first().map(String::as_str) == Some("imeta")) {
            variants.push(parse_imeta(&t[1..], &mut dropped_fields)?);
        }
        if variants.is_empty() {
            if let Some(url) = first("url") {
                let optional = |field: OptionalField| first(field.as_str()).map(|v| (field, v));
                let (size, dim, duration) = (
                    optional(OptionalField::Size),
                    optional(OptionalField::Dim),
                    optional(OptionalField::Duration),
                );
                variants.push(VideoVariant {
                    url,
                    mime: first("m").map(|m| normalize_mime(&m)),
                    sha256: first("x").map(|x| parse_sha256(&x)).transpose()?,
                    size: size.and_then(|(n, v)| optional_field(n, parse_size(&v), &mut dropped_fields)),
                    dim: dim.and_then(|(n, v)| optional_field(n, parse_dim(&v), &mut dropped_fields)),
                    duration: duration.and_then(|(n, v)| optional_field(n, parse_duration(&v), &mut dropped_fields)),
                    alt: None,
                    fallbacks: Vec::new(),
                });
            }
        }

        let mut hashtags: Vec<String> = Vec::new();
        for t in tags.iter().filter(|t| t.first().map(String::as_str) == Some("t")) {
            let Some(raw) = t.get(1) else { continue };
            let tag = raw.trim().trim_start_matches(['#', '＃']).trim();
            if tag.is_empty() || tag.chars().any(char::is_whitespace) {
                continue;
            }
            if !hashtags.iter().any(|h| h.to_lowercase() == tag.to_lowercase()) {
                hashtags.push(tag.to_string());
            }
        }

        let text_tracks = tags
            .iter()
            .filter(|t| t.first().map(String::as_str) == Some("text-track"))
            .filter_map(|t| {
                let url = t.get(1)?.trim().to_string();
                let opt = |i: usize| t.get(i).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
                Some(TextTrack {
                    url,
                    kind: opt(2).map(|k| k.to_ascii_lowercase()),
                    lang: opt(3),
                })
            })
            .collect();

        Ok(VideoEvent {
            id: event.id.to_hex(),
            pubkey: event.pubkey.to_hex(),
            kind,
            created_at: event_time(event)?,
            coordinate: event_coordinate(event),
            title: first("title"),
            content: event.content.clone(),
            hashtags,
            langs: parse_langs(&tags),
            variants,
            text_tracks,
            alt: first("alt"),
            summary: first("summary"),
            content_warnings: parse_content_warnings(&tags),
            dropped_fields,
        })
    }

    /// The `d` identifier of an addressable video, exactly as published.
    pub fn d_tag(&self) -> Option<&str> {
        self.coordinate.as_ref().map(|c| c.identifier.as_str())
    }
}

/// [`event_time`] of an event that passed [`check_event`] (ingest's cursor and job times, reconcile). Admission bounds
/// its time by the clock, so it is always representable; were it not (an unchecked event), the result is the latest
/// representable time — it sorts after everything and is never mistaken for an old event (no epoch, no "now").
pub fn admitted_time(event: &Event) -> DateTime<Utc> {
    event_time(event).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// An event's `created_at` as a UTC datetime. A value chrono cannot hold (beyond year 262143) is `invalid_event`;
/// [`check_event`] refuses such an event anyway (it is future-dated), so for an admitted event this never fails.
/// The one conversion of Nostr time: there is no fallback to the epoch or to "now".
pub fn event_time(event: &Event) -> Result<DateTime<Utc>, TranslateError> {
    let secs = event.created_at.as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| TranslateError::invalid(format!("created_at {secs} out of range")))
}

/// An optional field's parse result: the value, or `None` with the field recorded as dropped.
fn optional_field<T>(
    field: OptionalField,
    parsed: Result<T, TranslateError>,
    dropped: &mut Vec<OptionalField>,
) -> Option<T> {
    match parsed {
        Ok(v) => Some(v),
        Err(_) => {
            dropped.push(field);
            None
        }
    }
}

fn parse_imeta(entries: &[String], dropped: &mut Vec<OptionalField>) -> Result<VideoVariant, TranslateError> {
    let mut v = VideoVariant {
        url: String::new(),
        mime: None,
        sha256: None,
        size: None,
        dim: None,
        duration: None,
        alt: None,
        fallbacks: Vec::new(),
    };
    for entry in entries {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once(' ') else {
            return Err(TranslateError::invalid(format!(
                "imeta entry {entry:?} is not \"key value\""
            )));
        };
        let value = value.trim();
        match key {
            "url" if v.url.is_empty() => v.url = value.to_string(),
            "m" if v.mime.is_none() => v.mime = Some(normalize_mime(value)),
            "x" if v.sha256.is_none() => v.sha256 = Some(parse_sha256(value)?),
            "size" if v.size.is_none() => v.size = optional_field(OptionalField::Size, parse_size(value), dropped),
            "dim" if v.dim.is_none() => v.dim = optional_field(OptionalField::Dim, parse_dim(value), dropped),
            "duration" if v.duration.is_none() => {
                v.duration = optional_field(OptionalField::Duration, parse_duration(value), dropped)
            }
            "alt" if v.alt.is_none() && !value.is_empty() => v.alt = Some(value.to_string()),
            "fallback" if !value.is_empty() => v.fallbacks.push(value.to_string()),
            _ => {}
        }
    }
    if v.url.is_empty() {
        return Err(TranslateError::invalid("imeta tag without url"));
    }
    Ok(v)
}

/// Lower-case, without parameters: `Video/MP4; codecs=x` → `video/mp4`.
pub fn normalize_mime(m: &str) -> String {
    m.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn parse_sha256(x: &str) -> Result<String, TranslateError> {
    if x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(x.to_ascii_lowercase())
    } else {
        Err(TranslateError::invalid(format!("x {x:?} is not a hex SHA-256")))
    }
}

fn parse_size(s: &str) -> Result<u64, TranslateError> {
    s.parse::<u64>()
        .map_err(|_| TranslateError::invalid(format!("size {s:?} is not a byte count")))
}

/// `WxH` with both positive.
fn parse_dim(d: &str) -> Result<(u64, u64), TranslateError> {
    let bad = || TranslateError::invalid(format!("dim {d:?} is not <width>x<height>"));
    let (w, h) = d.split_once(['x', 'X']).ok_or_else(bad)?;
    let w: u64 = w.trim().parse().map_err(|_| bad())?;
    let h: u64 = h.trim().parse().map_err(|_| bad())?;
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

fn parse_duration(s: &str) -> Result<f64, TranslateError> {
    match s.parse::<f64>() {
        Ok(d) if d.is_finite() && d >= 0.0 => Ok(d),
        _ => Err(TranslateError::invalid(format!(
            "duration {s:?} is not a number of seconds"
        ))),
    }
}

/// Languages from NIP-32 labels: `["l", "en", "ISO-639-1"]` (with or without `["L", "ISO-639-1"]`) and the bare
/// `["l", "en"]`. Labels in another namespace are ignored; codes must be ISO-639-1.
fn parse_langs(tags: &[&[String]]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in tags.iter().filter(|t| t.first().map(String::as_str) == Some("l")) {
        let Some(code) = t.get(1) else { continue };
        match t.get(2).map(|n| n.trim()) {
            None | Some("") => {}
            Some(ns) if ns.eq_ignore_ascii_case("ISO-639-1") => {}
            Some(_) => continue,
        }
        let code = code.trim().to_ascii_lowercase();
        if is_iso639_1(&code) && !out.contains(&code) {
            out.push(code);
        }
    }
    out
}

/// NIP-32 namespace of sensitive-content labels (Divine's apps write `["L", "content-warning"]` and
/// `["l", "<nudity|sexual|porn|violence|…>", "content-warning"]`).
pub const CONTENT_WARNING_NAMESPACE: &str = "content-warning";

/// NIP-36 `content-warning` reasons (trimmed, `""` for a bare tag) followed by the values of NIP-32 labels in the
/// [`CONTENT_WARNING_NAMESPACE`], in tag order, without duplicates. A label needs the namespace as its third value:
/// a bare `["l", "x"]` is a language label (see `parse_langs`).
fn parse_content_warnings(tags: &[&[String]]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |v: &str| {
        let v = v.trim().to_string();
        if !out.contains(&v) {
            out.push(v);
        }
    };
    for t in tags
        .iter()
        .filter(|t| t.first().map(String::as_str) == Some("content-warning"))
    {
        push(t.get(1).map(String::as_str).unwrap_or(""));
    }
    for t in tags.iter().filter(|t| t.first().map(String::as_str) == Some("l")) {
        if let (Some(value), Some(ns)) = (t.get(1), t.get(2)) {
            if ns.trim().eq_ignore_ascii_case(CONTENT_WARNING_NAMESPACE) && !value.trim().is_empty() {
                push(value);
            }
        }
    }
    out
}

/// Every ISO 639-1 two-letter code (including the deprecated `bh`).
const ISO_639_1: &[&str] = &[
    "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bh", "bi", "bm", "bn",
    "bo", "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv", "cy", "da", "de", "dv", "dz", "ee", "el", "en",
    "eo", "es", "et", "eu", "fa", "ff", "fi", "fj", "fo", "fr", "fy", "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he",
    "hi", "ho", "hr", "ht", "hu", "hy", "hz", "ia", "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja", "jv",
    "ka", "kg", "ki", "kj", "kk", "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky", "la", "lb", "lg", "li",
    "ln", "lo", "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "na", "nb", "nd", "ne",
    "ng", "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj", "om", "or", "os", "pa", "pi", "pl", "ps", "pt", "qu", "rm",
    "rn", "ro", "ru", "rw", "sa", "sc", "sd", "se", "sg", "si", "sk", "sl", "sm", "sn", "so", "sq", "sr", "ss", "st",
    "su", "sv", "sw", "ta", "te", "tg", "th", "ti", "tk", "tl", "tn", "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk",
    "ur", "uz", "ve", "vi", "vo", "wa", "wo", "xh", "yi", "yo", "za", "zh", "zu",
];

/// True when `code` (already lower-case) is an ISO 639-1 language code.
pub fn is_iso639_1(code: &str) -> bool {
    ISO_639_1.binary_search(&code).is_ok()
}

/// An addressable event coordinate: rust-nostr's type (`kind`, `public_key`, `identifier`), displayed as
/// `<kind>:<lower-case hex pubkey>:<d>`. That string is what `record_mappings.coordinate` and coordinate tombstones
/// store; the `d` identifier keeps its case (NIP-01 identifiers are case-sensitive), only the pubkey is normalised.
pub use nostr::nips::nip01::Coordinate;

/// The coordinate of an addressable video event (kinds 34235/34236), built from the event's own kind, author and
/// `d` tag; `None` for other kinds.
pub fn event_coordinate(event: &Event) -> Option<Coordinate> {
    if !is_addressable_video_kind(event.kind.as_u16()) {
        return None;
    }
    Some(Coordinate::new(event.kind, event.pubkey).identifier(event.tags.identifier().unwrap_or("")))
}

/// Parses an `a` target `<kind>:<pubkey>:<d>` with rust-nostr ([`Coordinate::from_kpi_format`]: kind number, hex
/// pubkey in either case). rust-nostr 0.44 splits on every ':' and keeps only the third piece as the identifier,
/// while NIP-01 allows ':' inside `d`; the identifier is therefore taken as everything after the second ':', exactly
/// as published (never case-folded).
fn parse_a_target(raw: &str) -> Option<Coordinate> {
    let parsed = Coordinate::from_kpi_format(raw).ok()?;
    let d = raw.splitn(3, ':').nth(2)?;
    Some(parsed.identifier(d))
}

/// The targets of a kind 5 event as rust-nostr's NIP-09 [`EventDeletionRequest`], deduplicated, order kept: `e`
/// event ids ([`nostr::EventId`], either hex case accepted) and `a` coordinates whose pubkey is the deletion's author
/// (a foreign one can never delete anything, so it is dropped here); `reason` is the content when it is not empty.
/// Malformed values are skipped. Relay hints are ignored (so an invalid hint does not hide a target, which
/// rust-nostr's standardized tag parsing would do). The single parser of deletion targets: ingest's ordering key and
/// [`DeleteRequest`] (which the `delete_post` job uses) both come from it.
pub fn deletion_targets(event: &Event) -> EventDeletionRequest {
    let mut request = EventDeletionRequest::new();
    for tag in event.tags.iter() {
        let Some(value) = tag.content().map(str::trim) else {
            continue;
        };
        let kind = tag.kind();
        if kind == nostr::TagKind::e() {
            if let Ok(id) = nostr::EventId::from_hex(value) {
                if !request.ids.contains(&id) {
                    request.ids.push(id);
                }
            }
        } else if kind == nostr::TagKind::a() {
            if let Some(c) = parse_a_target(value) {
                if c.public_key == event.pubkey && !request.coordinates.contains(&c) {
                    request.coordinates.push(c);
                }
            }
        }
    }
    if !event.content.is_empty() {
        request.reason = Some(event.content.clone());
    }
    request
}

/// A NIP-09 deletion request, limited to targets the author may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    pub id: nostr::EventId,
    pub pubkey: nostr::PublicKey,
    /// The request's `created_at` ([`event_time`]): a coordinate target removes revisions up to this time.
    pub created_at: DateTime<Utc>,
    /// `e` targets (authorship is checked when a target is looked up) and `a` targets of the author
    /// ([`deletion_targets`]).
    pub targets: EventDeletionRequest,
}

impl DeleteRequest {
    /// Parses a kind 5 event; a request without any usable target is valid here (it deletes nothing), see
    /// [`DeleteRequest::require_target`].
    pub fn from_event(event: &Event) -> Result<DeleteRequest, TranslateError> {
        let kind = event.kind.as_u16();
        if kind != KIND_DELETE {
            return Err(TranslateError::UnsupportedKind(kind));
        }
        Ok(DeleteRequest {
            id: event.id,
            pubkey: event.pubkey,
            created_at: event_time(event)?,
            targets: deletion_targets(event),
        })
    }

    /// `invalid_event` when no usable target remains (the translation's verdict on such a request; the
    /// `delete_post` job applies it as a no-op instead, as it always has).
    pub fn require_target(self) -> Result<DeleteRequest, TranslateError> {
        if self.targets.ids.is_empty() && self.targets.coordinates.is_empty() {
            return Err(TranslateError::invalid(
                "deletion request without an e target or an a target of its author",
            ));
        }
        Ok(self)
    }

    /// The stored keys of the targets: event ids (lower-case hex) and coordinates (`<kind>:<lower-case hex
    /// pubkey>:<d>`, `d` as published), as `nostr_tombstones.target` and `record_mappings` hold them.
    pub fn target_keys(&self) -> (Vec<String>, Vec<String>) {
        (
            self.targets.ids.iter().map(|id| id.to_hex()).collect(),
            self.targets.coordinates.iter().map(|c| c.to_string()).collect(),
        )
    }
}

/// Kind 0 metadata fields the bridge mirrors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProfileMeta {
    pub id: String,
    pub pubkey: String,
    /// [`event_time`].
    pub created_at: DateTime<Utc>,
    /// Why the content cannot translate (not a JSON object), all fields then `None`. Decision: a kind 0 with bad
    /// content is still a profile revision — it takes its place in the newest-wins order (`profile_sync`) before
    /// `translate::plan_profile` refuses it with this error — so parsing keeps it rather than failing, exactly as
    /// the job behaved when it parsed the content only after claiming the event.
    #[serde(skip)]
    pub content_error: Option<TranslateError>,
    pub name: Option<String>,
    /// `display_name` (or the legacy `displayName`).
    pub display_name: Option<String>,
    pub about: Option<String>,
    pub picture: Option<String>,
    /// `banner`: an image URL.
    pub banner: Option<String>,
    /// `website`.
    pub website: Option<String>,
}

impl ProfileMeta {
    /// Parses kind 0 content JSON; non-object content is kept as [`ProfileMeta::content_error`] (`invalid_event`),
    /// non-string fields are ignored.
    pub fn from_event(event: &Event) -> Result<ProfileMeta, TranslateError> {
        let kind = event.kind.as_u16();
        if kind != KIND_PROFILE {
            return Err(TranslateError::UnsupportedKind(kind));
        }
        let content: Result<serde_json::Map<String, serde_json::Value>, TranslateError> =
            match serde_json::from_str::<serde_json::Value>(&event.content) {
                Err(e) => Err(TranslateError::invalid(format!("kind 0 content is not JSON: {e}"))),
                Ok(serde_json::Value::Object(obj)) => Ok(obj),
                Ok(_) => Err(TranslateError::invalid("kind 0 content is not a JSON object")),
            };
        let (obj, content_error) = match content {
            Ok(obj) => (obj, None),
            Err(e) => (serde_json::Map::new(), Some(e)),
        };
        let field = |k: &str| {
            obj.get(k)
                .and_then(|v| v.as_str())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Ok(ProfileMeta {
            id: event.id.to_hex(),
            pubkey: event.pubkey.to_hex(),
            created_at: event_time(event)?,
            content_error,
            name: field("name"),
            display_name: field("display_name").or_else(|| field("displayName")),
            about: field("about"),
            picture: field("picture"),
            banner: field("banner"),
            website: field("website"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{EventBuilder, Keys, Kind, Tag, Timestamp};

    fn keys() -> Keys {
        Keys::parse("6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e").unwrap()
    }

    #[test]
    fn every_rejection_reason_is_listed() {
        let all = [
            Rejection::BadId,
            Rejection::BadSignature,
            Rejection::FutureDated { created_at: 0, now: 0 },
            Rejection::UnsupportedKind(1),
        ];
        let reasons: Vec<&str> = all.iter().map(Rejection::reason).collect();
        assert_eq!(reasons, Rejection::REASONS);
    }

    fn sign(kind: u16, content: &str, tags: Vec<Vec<&str>>, created_at: u64) -> Event {
        let tags: Vec<Tag> = tags.into_iter().map(|t| Tag::parse(t).unwrap()).collect();
        EventBuilder::new(Kind::from(kind), content)
            .tags(tags)
            .custom_created_at(Timestamp::from(created_at))
            .sign_with_keys(&keys())
            .unwrap()
    }

    #[test]
    fn iso_list_sorted_and_complete_enough() {
        let mut sorted = ISO_639_1.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ISO_639_1, "binary search needs a sorted, unique list");
        assert_eq!(ISO_639_1.len(), 184, "183 current codes plus the deprecated bh");
        for c in ["en", "ja", "zh", "pt", "es", "de", "ar", "zu"] {
            assert!(is_iso639_1(c), "{c}");
        }
        for c in ["xx", "eng", "e", "EN", "qq"] {
            assert!(!is_iso639_1(c), "{c}");
        }
    }

    #[test]
    fn check_accepts_good_and_rejects_each_reason() {
        let now = 1_735_689_600;
        let ev = sign(22, "hi", vec![vec!["url", "https://x/v.mp4"]], now);
        assert_eq!(check_event(&ev, now), Ok(()));
        // Exactly 10 minutes ahead is still accepted; one second more is not.
        let edge = sign(22, "hi", vec![], now + 600);
        assert_eq!(check_event(&edge, now), Ok(()));
        let future = sign(22, "hi", vec![], now + 601);
        let r = check_event(&future, now).unwrap_err();
        assert_eq!(r.reason(), "future_dated");
        assert_eq!(r.class(), ErrorClass::Permanent);

        let kind1 = sign(1, "note", vec![], now);
        assert_eq!(check_event(&kind1, now).unwrap_err().reason(), "unsupported_kind");

        let mut json: serde_json::Value = serde_json::from_str(&nostr::JsonUtil::as_json(&ev)).unwrap();
        json["content"] = "tampered".into();
        let tampered: Event = nostr::JsonUtil::from_json(json.to_string()).unwrap();
        assert_eq!(check_event(&tampered, now).unwrap_err().reason(), "bad_id");

        let mut json: serde_json::Value = serde_json::from_str(&nostr::JsonUtil::as_json(&ev)).unwrap();
        let sig = json["sig"].as_str().unwrap().to_string();
        let flipped = format!("{}{}", if &sig[..1] == "0" { "1" } else { "0" }, &sig[1..]);
        json["sig"] = flipped.into();
        let badsig: Event = nostr::JsonUtil::from_json(json.to_string()).unwrap();
        assert_eq!(check_event(&badsig, now).unwrap_err().reason(), "bad_signature");
    }

    #[test]
    fn imeta_and_legacy_parsing() {
        let ev = sign(
            34236,
            "body",
            vec![
                vec!["d", "clip-1"],
                vec!["title", " Title "],
                vec![
                    "imeta",
                    "url https://cdn/v.mp4",
                    "m Video/MP4",
                    "x ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
                    "dim 1080x1920",
                    "duration 6.5",
                    "size 1234",
                    "alt a cat",
                    "fallback https://b/v.mp4",
                ],
                vec!["t", "#Cats"],
                vec!["t", "cats"],
                vec!["t", "two words"],
                vec!["L", "ISO-639-1"],
                vec!["l", "EN", "ISO-639-1"],
                vec!["l", "fr"],
                vec!["l", "xx"],
                vec!["l", "de", "other"],
                vec!["text-track", "https://cdn/en.vtt", "captions", "en"],
            ],
            100,
        );
        let v = VideoEvent::from_event(&ev).unwrap();
        assert_eq!(
            v.coordinate.as_ref().unwrap().to_string(),
            format!("34236:{}:clip-1", keys().public_key().to_hex())
        );
        assert_eq!(v.title.as_deref(), Some("Title"));
        assert_eq!(v.hashtags, vec!["Cats"]);
        assert_eq!(v.langs, vec!["en", "fr"]);
        let var = &v.variants[0];
        assert_eq!(var.mime.as_deref(), Some("video/mp4"));
        assert_eq!(var.sha256.as_deref().unwrap()[..6].to_string(), "abcdef");
        assert_eq!(var.dim, Some((1080, 1920)));
        assert_eq!(var.duration, Some(6.5));
        assert_eq!(var.size, Some(1234));
        assert_eq!(var.alt.as_deref(), Some("a cat"));
        assert_eq!(var.fallbacks, vec!["https://b/v.mp4"]);
        assert_eq!(v.text_tracks[0].lang.as_deref(), Some("en"));

        let legacy = sign(
            21,
            "",
            vec![
                vec!["url", "https://cdn/l.mp4"],
                vec!["m", "video/mp4"],
                vec!["dim", "1920x1080"],
            ],
            100,
        );
        let v = VideoEvent::from_event(&legacy).unwrap();
        assert_eq!(v.variants.len(), 1);
        assert_eq!(v.variants[0].dim, Some((1920, 1080)));
        assert_eq!(v.coordinate, None);
    }

    #[test]
    fn malformed_tags_are_invalid_event() {
        for tags in [
            vec![vec!["imeta", "url"]],
            vec![vec!["imeta", "m video/mp4"]],
            vec![vec!["imeta", "url https://a/v.mp4", "x nothex"]],
            vec![vec!["url", "https://a/v.mp4"], vec!["x", "nothex"]],
        ] {
            let ev = sign(22, "", tags.clone(), 100);
            let e = VideoEvent::from_event(&ev).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidEvent, "{tags:?}");
        }
        let no_d = sign(34235, "", vec![vec!["url", "https://a/v.mp4"]], 100);
        assert_eq!(
            VideoEvent::from_event(&no_d).unwrap_err().code(),
            ErrorCode::InvalidEvent
        );
    }

    #[test]
    fn malformed_optional_fields_are_dropped_not_fatal() {
        let ev = sign(
            22,
            "",
            vec![
                vec![
                    "imeta",
                    "url https://a/v.mp4",
                    "m video/mp4",
                    "dim 0x10",
                    "duration soon",
                    "size -3",
                ],
                vec!["imeta", "url https://a/w.mp4", "dim 720x1280", "duration 6", "size 10"],
            ],
            100,
        );
        let v = VideoEvent::from_event(&ev).unwrap();
        assert_eq!(v.variants.len(), 2, "the video is kept");
        assert_eq!(
            (v.variants[0].dim, v.variants[0].duration, v.variants[0].size),
            (None, None, None)
        );
        assert_eq!(v.variants[0].mime.as_deref(), Some("video/mp4"));
        assert_eq!(v.variants[1].dim, Some((720, 1280)));
        assert_eq!(
            v.dropped_fields,
            vec![OptionalField::Dim, OptionalField::Duration, OptionalField::Size]
        );

        let legacy = sign(
            21,
            "",
            vec![
                vec!["url", "https://a/v.mp4"],
                vec!["size", "-3"],
                vec!["dim", "wide"],
                vec!["duration", "NaN"],
            ],
            100,
        );
        let v = VideoEvent::from_event(&legacy).unwrap();
        assert_eq!(v.variants[0].url, "https://a/v.mp4");
        assert_eq!(
            v.dropped_fields,
            vec![OptionalField::Size, OptionalField::Dim, OptionalField::Duration]
        );

        let clean = sign(22, "", vec![vec!["imeta", "url https://a/v.mp4", "dim 1x1"]], 100);
        assert!(VideoEvent::from_event(&clean).unwrap().dropped_fields.is_empty());
    }

    #[test]
    fn content_warnings_from_nip36_and_nip32() {
        let ev = sign(
            34236,
            "",
            vec![
                vec!["d", "x"],
                vec!["url", "https://a/v.mp4"],
                vec!["content-warning"],
                vec!["content-warning", " Nudity "],
                vec!["L", "content-warning"],
                vec!["l", "sexual", "content-warning"],
                vec!["l", "Nudity", "content-warning"],
                vec!["l", "en", "ISO-639-1"],
                vec!["l", "porn"],
            ],
            100,
        );
        let v = VideoEvent::from_event(&ev).unwrap();
        assert_eq!(v.content_warnings, vec!["", "Nudity", "sexual"]);
        assert_eq!(v.langs, vec!["en"], "content-warning labels are not languages");
        let plain = sign(22, "", vec![vec!["url", "https://a/v.mp4"], vec!["l", "porn"]], 100);
        assert!(VideoEvent::from_event(&plain).unwrap().content_warnings.is_empty());
    }

    #[test]
    fn delete_drops_foreign_a_targets() {
        let me = keys().public_key().to_hex();
        let other = "f".repeat(64);
        let id = "A".repeat(64);
        let mine = format!("34236:{me}:clip:with:colons");
        let foreign = format!("34236:{other}:clip");
        let ev = sign(
            5,
            "oops",
            vec![
                vec!["e", &id],
                vec!["e", "short"],
                vec!["a", &mine],
                vec!["a", &foreign],
                vec!["a", "garbage"],
            ],
            100,
        );
        let d = DeleteRequest::from_event(&ev).unwrap();
        assert_eq!(d.target_keys(), (vec!["a".repeat(64)], vec![mine.clone()]));
        assert_eq!(d.targets.coordinates[0].identifier, "clip:with:colons");
        assert_eq!(d.targets.reason.as_deref(), Some("oops"));
        let only_foreign = sign(5, "", vec![vec!["a", &foreign]], 100);
        let d = DeleteRequest::from_event(&only_foreign).unwrap();
        assert_eq!(d.target_keys(), (vec![], vec![]), "the job deletes nothing");
        assert_eq!(d.require_target().unwrap_err().code(), ErrorCode::InvalidEvent);
        assert_eq!(parse_event(&only_foreign).unwrap_err().code(), ErrorCode::InvalidEvent);
    }

    #[test]
    fn profile_fields() {
        let ev = sign(
            0,
            r#"{"name":"bob","displayName":"Bob B","about":"hi","picture":"https://p/a.png","nip05":3,"banner":" https://p/b.jpg ","website":"https://bob.example"}"#,
            vec![],
            100,
        );
        let p = ProfileMeta::from_event(&ev).unwrap();
        assert_eq!(p.display_name.as_deref(), Some("Bob B"));
        assert_eq!(p.name.as_deref(), Some("bob"));
        assert_eq!(p.picture.as_deref(), Some("https://p/a.png"));
        assert_eq!(p.banner.as_deref(), Some("https://p/b.jpg"));
        assert_eq!(p.website.as_deref(), Some("https://bob.example"));
        assert_eq!(p.content_error, None);
        for content in ["not json", "[1]"] {
            // Still a profile revision (it claims its place in the newest-wins order); the translation refuses it.
            let bad = ProfileMeta::from_event(&sign(0, content, vec![], 100)).unwrap();
            assert_eq!(
                bad.content_error.as_ref().map(|e| e.code()),
                Some(ErrorCode::InvalidEvent)
            );
            assert_eq!(
                crate::translate::plan_profile(&bad).unwrap_err().code(),
                ErrorCode::InvalidEvent
            );
            assert_eq!((bad.name, bad.created_at.timestamp()), (None, 100));
        }
        assert!(matches!(
            parse_event(&sign(1, "", vec![], 1)),
            Err(TranslateError::UnsupportedKind(1))
        ));
    }

    #[test]
    fn coordinate_keeps_the_case_of_d() {
        let ev = sign(
            34236,
            "",
            vec![vec!["d", "My-Clip_ABC"], vec!["url", "https://a/v.mp4"]],
            100,
        );
        let v = VideoEvent::from_event(&ev).unwrap();
        let c = v.coordinate.as_ref().unwrap();
        assert_eq!(c.identifier, "My-Clip_ABC");
        assert_eq!(v.d_tag(), Some("My-Clip_ABC"));
        assert_eq!(
            c.to_string(),
            format!("34236:{}:My-Clip_ABC", keys().public_key().to_hex())
        );
        assert_eq!(
            event_coordinate(&ev).as_ref(),
            Some(c),
            "ingest and the job derive the same coordinate"
        );
        // A deletion naming it with an upper-case pubkey and the same d hits it; a case-folded d does not.
        let upper_pk = format!("34236:{}:My-Clip_ABC", keys().public_key().to_hex().to_uppercase());
        let folded = format!("34236:{}:my-clip_abc", keys().public_key().to_hex());
        let del = sign(5, "", vec![vec!["a", &upper_pk], vec!["a", &folded]], 200);
        let (_, coords) = DeleteRequest::from_event(&del).unwrap().target_keys();
        assert_eq!(coords[0], c.to_string());
        assert_ne!(coords[1], c.to_string());
    }

    #[test]
    fn unrepresentable_created_at_is_invalid_never_the_epoch() {
        let far = u64::MAX;
        let video = sign(22, "", vec![vec!["url", "https://a/v.mp4"]], far);
        assert_eq!(
            VideoEvent::from_event(&video).unwrap_err().code(),
            divine_bridge_core::ErrorCode::InvalidEvent
        );
        assert_eq!(
            ProfileMeta::from_event(&sign(0, "{}", vec![], far)).unwrap_err().code(),
            divine_bridge_core::ErrorCode::InvalidEvent
        );
        let del = sign(5, "", vec![vec!["e", &"a".repeat(64)]], far);
        assert_eq!(
            DeleteRequest::from_event(&del).unwrap_err().code(),
            divine_bridge_core::ErrorCode::InvalidEvent
        );
        assert_eq!(
            event_time(&video).unwrap_err().code(),
            divine_bridge_core::ErrorCode::InvalidEvent
        );
        // Admission refuses it before any of that (it is future-dated).
        assert_eq!(check_event(&video, 1_735_689_600).unwrap_err().reason(), "future_dated");
        // A representable time is exact.
        let ok = sign(22, "", vec![vec!["url", "https://a/v.mp4"]], 1_735_689_600);
        assert_eq!(
            VideoEvent::from_event(&ok).unwrap().created_at.to_rfc3339(),
            "2025-01-01T00:00:00+00:00"
        );
    }
}
