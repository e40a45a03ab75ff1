//! Post text: composition from title/content/hashtags, grapheme- and byte-bounded truncation, and facet detection
//! (hashtags and links) with UTF-8 byte offsets. Pure string work; it must not know about events or records.

use unicode_segmentation::UnicodeSegmentation;

/// The ellipsis appended when text is cut (1 grapheme, 3 bytes).
pub const ELLIPSIS: &str = "…";
/// `app.bsky.richtext.facet#tag` limit on `tag` (graphemes).
pub const MAX_TAG_GRAPHEMES: usize = 64;
/// `app.bsky.richtext.facet#tag` limit on `tag` (bytes).
pub const MAX_TAG_BYTES: usize = 640;

/// A detected facet on the final text: `[byte_start, byte_end)` in UTF-8 bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FacetSpan {
    pub byte_start: usize,
    pub byte_end: usize,
    pub feature: FacetFeature,
}

/// What a facet annotates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FacetFeature {
    /// Hashtag, without the leading '#'.
    Tag(String),
    /// Full http(s) URL.
    Link(String),
    /// Mention of a Bluesky account (its DID).
    Mention(String),
}

/// Number of extended grapheme clusters.
pub fn grapheme_len(s: &str) -> usize {
    s.graphemes(true).count()
}

/// Cuts `s` to at most `max_graphemes` graphemes and `max_bytes` bytes on a grapheme boundary. When it had to cut,
/// trailing whitespace is trimmed and [`ELLIPSIS`] appended (the ellipsis counts against both limits). Returns the
/// text and, when cut, the byte length of the kept prefix (before the ellipsis).
pub fn truncate(s: &str, max_graphemes: usize, max_bytes: usize) -> (String, Option<usize>) {
    if s.len() <= max_bytes && grapheme_len(s) <= max_graphemes {
        return (s.to_string(), None);
    }
    let budget_graphemes = max_graphemes.saturating_sub(1);
    let budget_bytes = max_bytes.saturating_sub(ELLIPSIS.len());
    let mut end = 0;
    for (n, (i, g)) in s.grapheme_indices(true).enumerate() {
        if n >= budget_graphemes || i + g.len() > budget_bytes {
            break;
        }
        end = i + g.len();
    }
    let kept = s[..end].trim_end();
    let cut = kept.len();
    (format!("{kept}{ELLIPSIS}"), Some(cut))
}

/// `title` on its own line, then `content` (the title is skipped when the content already starts with it), then
/// the `hashtags` not already present in the text as `#tag` (case-insensitive), space-separated on a last line.
pub fn compose(title: Option<&str>, content: &str, hashtags: &[String]) -> String {
    let title = title.map(str::trim).unwrap_or("");
    let content = content.trim();
    let mut text = if title.is_empty() {
        content.to_string()
    } else if content.is_empty() {
        title.to_string()
    } else if content.starts_with(title) {
        content.to_string()
    } else {
        format!("{title}\n{content}")
    };
    let present: Vec<String> = detect_facets(&text)
        .into_iter()
        .filter_map(|f| match f.feature {
            FacetFeature::Tag(t) => Some(t.to_lowercase()),
            _ => None,
        })
        .collect();
    let mut missing: Vec<String> = Vec::new();
    for h in hashtags {
        let lower = h.to_lowercase();
        if !present.contains(&lower) && !missing.iter().any(|m| m.to_lowercase() == lower) {
            missing.push(h.clone());
        }
    }
    if !missing.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        let line: Vec<String> = missing.iter().map(|h| format!("#{h}")).collect();
        text.push_str(&line.join(" "));
    }
    text
}

/// Punctuation stripped from the end of hashtags and links (ASCII plus common CJK/typographic marks).
fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '…' | '。'
                | '、'
                | '，'
                | '．'
                | '！'
                | '？'
                | '：'
                | '；'
                | '「'
                | '」'
                | '『'
                | '』'
                | '（'
                | '）'
                | '【'
                | '】'
                | '“'
                | '”'
                | '‘'
                | '’'
                | '«'
                | '»'
                | '¡'
                | '¿'
                | '·'
                | '—'
                | '–'
        )
}

/// Characters that end a hashtag besides whitespace (invisible joiners/spaces, as in the Bluesky client).
fn is_tag_breaker(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}' | '\u{2060}' | '\u{200A}' | '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{20E2}'
        )
}

fn preceded_by_space(text: &str, pos: usize) -> bool {
    text[..pos].chars().next_back().is_none_or(char::is_whitespace)
}

/// Finds hashtag and link facets in `text`, sorted by start; offsets are UTF-8 bytes.
pub fn detect_facets(text: &str) -> Vec<FacetSpan> {
    let mut links = detect_links(text);
    let mut tags: Vec<FacetSpan> = detect_tags(text)
        .into_iter()
        .filter(|t| {
            !links
                .iter()
                .any(|l| t.byte_start < l.byte_end && l.byte_start < t.byte_end)
        })
        .collect();
    links.append(&mut tags);
    links.sort_by_key(|f| f.byte_start);
    links
}

fn detect_links(text: &str) -> Vec<FacetSpan> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while from < text.len() {
        let next = ["https://", "http://"]
            .iter()
            .filter_map(|p| lower[from..].find(p).map(|i| from + i))
            .min();
        let Some(start) = next else { break };
        let prev_ok = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '(' | '（' | '「' | '"' | '\''));
        let token_end = text[start..]
            .char_indices()
            .find(|(_, c)| c.is_whitespace())
            .map(|(i, _)| start + i)
            .unwrap_or(text.len());
        from = token_end.max(start + 1);
        if !prev_ok {
            continue;
        }
        let mut token = &text[start..token_end];
        while let Some(last) = token.chars().next_back() {
            let unbalanced_paren = last == ')' && token.matches('(').count() < token.matches(')').count();
            if (is_punct(last) && last != ')' && last != '/') || unbalanced_paren {
                token = &token[..token.len() - last.len_utf8()];
            } else {
                break;
            }
        }
        let Ok(url) = url::Url::parse(token) else { continue };
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            continue;
        }
        out.push(FacetSpan {
            byte_start: start,
            byte_end: start + token.len(),
            feature: FacetFeature::Link(token.to_string()),
        });
    }
    out
}

fn detect_tags(text: &str) -> Vec<FacetSpan> {
    let mut out = Vec::new();
    for (pos, c) in text.char_indices() {
        if !(c == '#' || c == '＃') || !preceded_by_space(text, pos) {
            continue;
        }
        let body_start = pos + c.len_utf8();
        let rest = &text[body_start..];
        if rest.starts_with('\u{FE0F}') {
            continue; // keycap emoji "#️⃣"
        }
        let body_end = rest
            .char_indices()
            .find(|(_, ch)| is_tag_breaker(*ch))
            .map(|(i, _)| body_start + i)
            .unwrap_or(text.len());
        let tag = text[body_start..body_end].trim_end_matches(is_punct);
        if tag.is_empty()
            || !tag.chars().any(|ch| !ch.is_ascii_digit() && !is_punct(ch))
            || grapheme_len(tag) > MAX_TAG_GRAPHEMES
            || tag.len() > MAX_TAG_BYTES
        {
            continue;
        }
        out.push(FacetSpan {
            byte_start: pos,
            byte_end: body_start + tag.len(),
            feature: FacetFeature::Tag(tag.to_string()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_leaves_short_text_alone() {
        assert_eq!(truncate("hello", 300, 3000), ("hello".to_string(), None));
        let exact = "a".repeat(300);
        assert_eq!(truncate(&exact, 300, 3000).1, None, "exactly at the grapheme limit");
        let exact_bytes = "é".repeat(1500); // 1500 graphemes, 3000 bytes
        assert_eq!(truncate(&exact_bytes, 1500, 3000).1, None, "exactly at the byte limit");
    }

    #[test]
    fn truncate_by_graphemes() {
        let s = "a".repeat(301);
        let (t, cut) = truncate(&s, 300, 3000);
        assert_eq!(grapheme_len(&t), 300);
        assert!(t.ends_with(ELLIPSIS));
        assert_eq!(cut, Some(299));
        assert_eq!(&t[..299], &s[..299]);
    }

    #[test]
    fn truncate_by_bytes_with_few_graphemes() {
        // Each family emoji is one grapheme of 25 bytes: 150 of them = 150 graphemes, 3750 bytes.
        let fam = "👨‍👩‍👧‍👦";
        assert_eq!(fam.len(), 25);
        assert_eq!(grapheme_len(fam), 1);
        let s = fam.repeat(150);
        let (t, cut) = truncate(&s, 300, 3000);
        assert!(t.len() <= 3000);
        // (3000 - 3) / 25 = 119 whole families fit.
        assert_eq!(cut, Some(119 * 25));
        assert_eq!(grapheme_len(&t), 120);
        assert!(t.ends_with(ELLIPSIS));
        // Never splits a cluster: the kept prefix is whole families.
        assert_eq!(t.trim_end_matches(ELLIPSIS), fam.repeat(119));
    }

    #[test]
    fn truncate_byte_boundary_exact() {
        // 2997 bytes of 'a' + 'é' (2 bytes) = 2999 ≤ 3000: fits.
        let s = format!("{}é", "a".repeat(2997));
        assert_eq!(truncate(&s, 5000, 3000).1, None);
        // 2999 'a' + 'é' = 3001 bytes: cut; kept prefix ≤ 2997 bytes.
        let s = format!("{}é", "a".repeat(2999));
        let (t, cut) = truncate(&s, 5000, 3000);
        assert_eq!(cut, Some(2997));
        assert_eq!(t.len(), 3000);
    }

    #[test]
    fn truncate_trims_trailing_space_before_ellipsis() {
        let s = format!("{} tail", "a".repeat(298));
        let (t, cut) = truncate(&s, 300, 3000);
        assert_eq!(cut, Some(298));
        assert_eq!(t, format!("{}…", "a".repeat(298)));
    }

    #[test]
    fn compose_rules() {
        assert_eq!(compose(Some("T"), "body", &[]), "T\nbody");
        assert_eq!(compose(Some("Hello"), "Hello world", &[]), "Hello world");
        assert_eq!(compose(None, " body ", &[]), "body");
        assert_eq!(compose(Some("T"), "", &["x".into()]), "T\n#x");
        assert_eq!(compose(None, "", &["x".into(), "y".into()]), "#x #y");
        assert_eq!(
            compose(None, "I love #Cats.", &["cats".into(), "dogs".into(), "DOGS".into()]),
            "I love #Cats.\n#dogs"
        );
    }

    #[test]
    fn facets_multibyte_offsets() {
        let text = "日本 #猫 https://example.com/a?b=1. 👨‍👩‍👧 #tag2!";
        let f = detect_facets(text);
        assert_eq!(f.len(), 3);
        // "日本 " = 3+3+1 = 7 bytes; "#猫" = 1+3 bytes.
        assert_eq!((f[0].byte_start, f[0].byte_end), (7, 11));
        assert_eq!(f[0].feature, FacetFeature::Tag("猫".into()));
        assert_eq!((f[1].byte_start, f[1].byte_end), (12, 37));
        assert_eq!(f[1].feature, FacetFeature::Link("https://example.com/a?b=1".into()));
        let fam_end = 37 + 2 + "👨‍👩‍👧".len() + 1;
        assert_eq!((f[2].byte_start, f[2].byte_end), (fam_end, fam_end + 5));
        for s in &f {
            let slice = &text[s.byte_start..s.byte_end];
            match &s.feature {
                FacetFeature::Tag(t) => assert_eq!(slice, format!("#{t}")),
                FacetFeature::Link(u) => assert_eq!(slice, u),
                FacetFeature::Mention(_) => unreachable!("detect_facets finds no mentions"),
            }
        }
    }

    #[test]
    fn tag_rules() {
        let tags = |s: &str| {
            detect_facets(s)
                .into_iter()
                .filter_map(|f| match f.feature {
                    FacetFeature::Tag(t) => Some(t),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(tags("#123 #a1 x#no #️⃣ ＃全角"), vec!["a1", "全角"]);
        assert_eq!(tags(&format!("#{}", "a".repeat(64))).len(), 1);
        assert!(tags(&format!("#{}", "a".repeat(65))).is_empty(), "over 64 graphemes");
        assert_eq!(tags("see https://x.org/#frag"), Vec::<String>::new());
        assert_eq!(tags("(#paren) #end."), vec!["end"]);
    }

    #[test]
    fn link_rules() {
        let links = |s: &str| {
            detect_facets(s)
                .into_iter()
                .filter_map(|f| match f.feature {
                    FacetFeature::Link(u) => Some(u),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            links("(see https://en.wikipedia.org/wiki/Foo_(bar))"),
            vec!["https://en.wikipedia.org/wiki/Foo_(bar)"]
        );
        assert_eq!(links("go to HTTP://A.COM/x, now"), vec!["HTTP://A.COM/x"]);
        assert!(links("ftp://a.com nothttps://b.com https://").is_empty());
    }
}
