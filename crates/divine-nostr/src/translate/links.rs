//! Links out of a translated post: the link back to the original on Divine (`DIVINE_POST_URL_TEMPLATE`), links to
//! the Divine profile of a mentioned user who is not bridged (`DIVINE_PROFILE_URL_TEMPLATE`), and the NIP-21
//! `nostr:npub1…` / `nostr:nprofile1…` mentions those are made from. Owns the template syntax and the mention
//! rewrite; it must not look anything up (which mentioned pubkeys are bridged is resolved by the job, from the
//! database, and handed in as [`BridgedUser`]s).
//!
//! Decisions:
//! 1. The link back is a link facet on a short last line ([`LINK_BACK_TEXT`]), not an embed: the post already
//!    carries `app.bsky.embed.video`, a post has at most one embed, and `app.bsky.embed.recordWithMedia` can only
//!    pair media with a *record* (a quote), not with `app.bsky.embed.external`. The line is appended after
//!    truncation, with its length reserved, so it is never cut.
//! 2. A mention is rewritten to a short display text, because a 70-character bech32 string would eat a quarter of
//!    the 300-grapheme budget: `@<handle>` with a mention facet of the DID for a bridged user; `@npub1xxxxxxx…` with
//!    a link facet to the Divine profile for anyone else (no facet when the profile template is off).

use super::text::{FacetFeature, FacetSpan};
use nostr::nips::nip19::ToBech32;
use nostr::nips::nip21::Nip21;
use std::collections::HashMap;

/// Anchor text of the link back to the original post.
pub const LINK_BACK_TEXT: &str = "Original on Divine";
/// Default `DIVINE_POST_URL_TEMPLATE`: Divine's documented web link for a video (`/video/<hex event id>`).
pub const DEFAULT_POST_URL_TEMPLATE: &str = "https://divine.video/video/{id}";
/// Default `DIVINE_PROFILE_URL_TEMPLATE`: Divine's web profile link.
pub const DEFAULT_PROFILE_URL_TEMPLATE: &str = "https://divine.video/profile/{npub}";
/// Placeholders of the post template: hex event id, `d` tag (the event id when there is none), author npub and hex.
pub const POST_PLACEHOLDERS: &[&str] = &["id", "d", "npub", "pubkey"];
/// Placeholders of the profile template.
pub const PROFILE_PLACEHOLDERS: &[&str] = &["npub", "pubkey"];
/// Characters of the npub kept in a non-bridged mention's display text (`npub1` + 8).
const NPUB_DISPLAY_CHARS: usize = 13;

/// A URL with `{name}` placeholders, checked once (at startup) to render an http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate(String);

impl UrlTemplate {
    /// Accepts a template using only `allowed` placeholders, at least one of them, that renders (with sample
    /// values) to an absolute http(s) URL. The error is a sentence for `config_invalid`.
    pub fn parse(template: &str, allowed: &[&str]) -> Result<UrlTemplate, String> {
        let mut used = 0;
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
            let name = &rest[open + 1..open + close];
            if !allowed.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}} (allowed: {})",
                    allowed.join(", ")
                ));
            }
            used += 1;
            rest = &rest[open + close + 1..];
        }
        if used == 0 {
            return Err(format!(
                "{template:?} has none of the placeholders {}",
                allowed.join(", ")
            ));
        }
        let t = UrlTemplate(template.to_string());
        let sample: Vec<(&str, &str)> = allowed.iter().map(|n| (*n, "x")).collect();
        match url::Url::parse(&t.render(&sample)) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => Ok(t),
            _ => Err(format!("{template:?} is not an http(s) URL template")),
        }
    }

    /// Substitutes each `{name}` with its value, percent-encoded outside RFC 3986 unreserved characters (a `d` tag
    /// may contain anything).
    pub fn render(&self, values: &[(&str, &str)]) -> String {
        let mut out = self.0.clone();
        for (name, value) in values {
            out = out.replace(&format!("{{{name}}}"), &encode(value));
        }
        out
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A mentioned user who has a ready bridged account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgedUser {
    pub did: String,
    pub handle: String,
}

/// A NIP-21 profile reference found in text: `[byte_start, byte_end)` covers `nostr:<bech32>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NostrMention {
    pub byte_start: usize,
    pub byte_end: usize,
    /// Lower-case hex pubkey.
    pub pubkey: String,
}

/// Every `nostr:npub1…` / `nostr:nprofile1…` in `text` that rust-nostr decodes, in order. Other NIP-21 references
/// (`note`, `nevent`, `naddr`) and undecodable ones are left alone.
pub fn find_mentions(text: &str) -> Vec<NostrMention> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find("nostr:") {
        let start = from + i;
        let body = start + "nostr:".len();
        let end = text[body..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map(|j| body + j)
            .unwrap_or(text.len());
        from = end.max(body);
        let pubkey = match Nip21::parse(&lower[start..end]) {
            Ok(Nip21::Pubkey(pk)) => pk,
            Ok(Nip21::Profile(p)) => p.public_key,
            _ => continue,
        };
        out.push(NostrMention {
            byte_start: start,
            byte_end: end,
            pubkey: pubkey.to_hex(),
        });
    }
    out
}

/// Rewrites every mention in `text` (see decision 2) and returns the new text with the mention/profile-link facets
/// on it (UTF-8 byte offsets, in order).
pub fn rewrite_mentions(
    text: &str,
    bridged: &HashMap<String, BridgedUser>,
    profile_url: Option<&UrlTemplate>,
) -> (String, Vec<FacetSpan>) {
    let mut out = String::with_capacity(text.len());
    let mut facets = Vec::new();
    let mut copied = 0;
    for m in find_mentions(text) {
        out.push_str(&text[copied..m.byte_start]);
        copied = m.byte_end;
        let start = out.len();
        let feature = if let Some(user) = bridged.get(&m.pubkey) {
            out.push('@');
            out.push_str(&user.handle);
            Some(FacetFeature::Mention(user.did.clone()))
        } else {
            let npub = nostr::PublicKey::from_hex(&m.pubkey)
                .ok()
                .and_then(|pk| pk.to_bech32().ok())
                .unwrap_or_default();
            out.push('@');
            out.push_str(&npub[..NPUB_DISPLAY_CHARS.min(npub.len())]);
            out.push('…');
            profile_url.map(|t| FacetFeature::Link(t.render(&[("npub", &npub), ("pubkey", &m.pubkey)])))
        };
        if let Some(feature) = feature {
            facets.push(FacetSpan {
                byte_start: start,
                byte_end: out.len(),
                feature,
            });
        }
    }
    out.push_str(&text[copied..]);
    (out, facets)
}

/// The link back to the original: rendered from the post template for this event.
pub fn post_url(template: &UrlTemplate, id: &str, d: Option<&str>, pubkey: &str) -> String {
    let npub = nostr::PublicKey::from_hex(pubkey)
        .ok()
        .and_then(|pk| pk.to_bech32().ok())
        .unwrap_or_default();
    template.render(&[("id", id), ("d", d.unwrap_or(id)), ("npub", &npub), ("pubkey", pubkey)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK: &str = "385c3a6ec0b9d57a4330dbd6284989be5bd00e41c535f9ca39b6ae7c521b81cd";

    fn npub() -> String {
        nostr::PublicKey::from_hex(PK).unwrap().to_bech32().unwrap()
    }

    #[test]
    fn templates_are_checked_and_rendered() {
        let t = UrlTemplate::parse(DEFAULT_POST_URL_TEMPLATE, POST_PLACEHOLDERS).unwrap();
        assert_eq!(t.render(&[("id", "ab12")]), "https://divine.video/video/ab12");
        let d = UrlTemplate::parse("https://x.example/{npub}/{d}", POST_PLACEHOLDERS).unwrap();
        assert_eq!(
            post_url(&d, "ee", Some("clip 1/ü"), PK),
            format!("https://x.example/{}/clip%201%2F%C3%BC", npub())
        );
        assert_eq!(post_url(&d, "ee", None, PK), format!("https://x.example/{}/ee", npub()));
        assert!(UrlTemplate::parse("https://x.example/{nope}", POST_PLACEHOLDERS).is_err());
        assert!(UrlTemplate::parse("https://x.example/static", POST_PLACEHOLDERS).is_err());
        assert!(UrlTemplate::parse("ftp://x.example/{id}", POST_PLACEHOLDERS).is_err());
        assert!(UrlTemplate::parse("https://x.example/{id", POST_PLACEHOLDERS).is_err());
        assert!(UrlTemplate::parse("{id}", POST_PLACEHOLDERS).is_err());
        assert!(UrlTemplate::parse(DEFAULT_PROFILE_URL_TEMPLATE, PROFILE_PLACEHOLDERS).is_ok());
        assert!(UrlTemplate::parse("https://x.example/{id}", PROFILE_PLACEHOLDERS).is_err());
    }

    #[test]
    fn mentions_found_by_rust_nostr() {
        let nprofile = nostr::nips::nip19::Nip19Profile::new(nostr::PublicKey::from_hex(PK).unwrap(), [])
            .to_bech32()
            .unwrap();
        let text = format!("hi nostr:{}, and nostr:{nprofile} nostr:npub1bad nostr:", npub());
        let m = find_mentions(&text);
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|m| m.pubkey == PK));
        assert_eq!(&text[m[0].byte_start..m[0].byte_end], format!("nostr:{}", npub()));
        assert_eq!(&text[m[1].byte_start..m[1].byte_end], format!("nostr:{nprofile}"));
    }

    #[test]
    fn bridged_mention_becomes_did_facet_others_profile_links() {
        let other = "f".repeat(63) + "e";
        let other_pk = nostr::PublicKey::from_hex(&other);
        // Not every 32-byte value is a valid x-only key; use a real one for "other".
        let other = match other_pk {
            Ok(_) => other,
            Err(_) => nostr::Keys::generate().public_key().to_hex(),
        };
        let other_npub = nostr::PublicKey::from_hex(&other).unwrap().to_bech32().unwrap();
        let text = format!("日本 nostr:{} y nostr:{other_npub}!", npub());
        let bridged = HashMap::from([(
            PK.to_string(),
            BridgedUser {
                did: "did:plc:abc".into(),
                handle: "alice.divine.video".into(),
            },
        )]);
        let tmpl = UrlTemplate::parse(DEFAULT_PROFILE_URL_TEMPLATE, PROFILE_PLACEHOLDERS).unwrap();
        let (out, facets) = rewrite_mentions(&text, &bridged, Some(&tmpl));
        let short = format!("@{}…", &other_npub[..13]);
        assert_eq!(out, format!("日本 @alice.divine.video y {short}!"));
        assert_eq!(facets.len(), 2);
        // "日本 " is 7 bytes.
        assert_eq!((facets[0].byte_start, facets[0].byte_end), (7, 7 + 19));
        assert_eq!(facets[0].feature, FacetFeature::Mention("did:plc:abc".into()));
        assert_eq!(&out[facets[1].byte_start..facets[1].byte_end], short);
        assert_eq!(
            facets[1].feature,
            FacetFeature::Link(format!("https://divine.video/profile/{other_npub}"))
        );
        // Profile links off: the display text stays, without a facet.
        let (out2, facets2) = rewrite_mentions(&text, &bridged, None);
        assert_eq!(out2, out);
        assert_eq!(facets2.len(), 1);
    }
}
