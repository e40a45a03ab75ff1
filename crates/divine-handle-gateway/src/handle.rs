//! Syntax of what users give us: Nostr pubkeys (64 hex or `npub1…`), event ids (64 hex), and handles under the
//! operator's `HANDLE_DOMAIN`, plus the `Host` → handle mapping of `/.well-known/atproto-did`.
//!
//! Owns normalisation (trim, lower-case, npub → hex) and validation only; it never touches the database and never
//! decides whether a handle is *available* (the store does).

use crate::problem::ApiError;

/// Longest handle the reference PDS accepts (the whole handle, domain included).
pub const MAX_HANDLE_LEN: usize = 30;

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pubkey as 64 lower-case hex: accepts 64 hex characters (any case) or a bech32 `npub1…`.
pub fn normalize_pubkey(raw: &str) -> Result<String, ApiError> {
    let s = raw.trim();
    if is_hex64(s) {
        return Ok(s.to_ascii_lowercase());
    }
    if s.starts_with("npub1") {
        return nostr::PublicKey::parse(s)
            .map(|pk| pk.to_hex())
            .map_err(|e| ApiError::InvalidPubkey(format!("{s:?} is not a valid npub: {e}")));
    }
    Err(ApiError::InvalidPubkey(format!(
        "{s:?}: expected 64 hex characters or an npub1… key"
    )))
}

/// An event id as 64 lower-case hex.
pub fn normalize_event_id(raw: &str) -> Result<String, ApiError> {
    if is_hex64(raw) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ApiError::InvalidEventId(raw.chars().take(80).collect()))
    }
}

/// Checks ATProto handle syntax on an already lower-cased name: labels of `a-z0-9-` (1–63, not starting or ending
/// with `-`), at least two labels, total ≤ 253, and a TLD that does not start with a digit.
pub fn check_handle_syntax(handle: &str) -> Result<(), String> {
    if handle.is_empty() {
        return Err("empty".into());
    }
    if handle.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    let labels: Vec<&str> = handle.split('.').collect();
    if labels.len() < 2 {
        return Err("needs at least two labels (name.domain)".into());
    }
    for label in &labels {
        if label.is_empty() {
            return Err("empty label (leading, trailing or double dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("label {label:?} may only contain a-z, 0-9 and '-'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    if labels[labels.len() - 1].as_bytes()[0].is_ascii_digit() {
        return Err("the top-level label must not start with a digit".into());
    }
    Ok(())
}

/// Normalises `HANDLE_DOMAIN` (trim, lower-case, no leading/trailing dot) and checks that it is a domain under
/// which at least a one-character name fits within [`MAX_HANDLE_LEN`].
pub fn normalize_domain(raw: &str) -> Result<String, String> {
    let d = raw.trim().trim_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err("empty".into());
    }
    // "x.<domain>" must be a syntactically valid handle.
    check_handle_syntax(&format!("x.{d}"))?;
    if d.len() + 2 > MAX_HANDLE_LEN {
        return Err(format!(
            "too long: handles under it would exceed {MAX_HANDLE_LEN} characters"
        ));
    }
    Ok(d)
}

/// Names refused under the handle domain unless `RESERVED_HANDLE_NAMES` says otherwise: hosts an operator is likely
/// to run next to the handles (`pds.<domain>`, `relay.<domain>` …) and names that would impersonate the service.
/// Issue 12 §1 added the names an operator expects to be kept back (login, support, moderation, the ATProto and
/// Bluesky brands …).
pub const DEFAULT_RESERVED_NAMES: &[&str] = &[
    "abuse",
    "account",
    "admin",
    "api",
    "app",
    "atproto",
    "auth",
    "bluesky",
    "bridge",
    "bsky",
    "cdn",
    "divine",
    "help",
    "login",
    "mail",
    "media",
    "moderation",
    "official",
    "pds",
    "plc",
    "registry",
    "relay",
    "root",
    "security",
    "staff",
    "staging",
    "status",
    "support",
    "team",
    "www",
];

/// The ACE prefix of an IDNA (punycode) label. Such names render as Unicode in clients and can imitate another
/// handle with look-alike characters (`xn--pple-43d` shows as `аpple` with a Cyrillic `а`), so a handle's own
/// label may not carry it; the operator's `HANDLE_DOMAIN` is the operator's choice and is not checked.
pub const PUNYCODE_PREFIX: &str = "xn--";

/// Normalises (trim, lower-case) and validates a requested handle: ATProto syntax, exactly one label before
/// `.<domain>`, total length ≤ [`MAX_HANDLE_LEN`], and that label not in `reserved` (→ `handle_reserved`).
/// `domain` must already be normalised; `reserved` holds lower-case names.
pub fn normalize_handle(raw: &str, domain: &str, reserved: &[String]) -> Result<String, ApiError> {
    let handle = raw.trim().to_lowercase();
    check_handle_syntax(&handle).map_err(|why| ApiError::InvalidHandle(format!("{handle:?}: {why}")))?;
    let Some(name) = handle.strip_suffix(domain).and_then(|rest| rest.strip_suffix('.')) else {
        return Err(ApiError::InvalidHandle(format!("{handle:?}: must be <name>.{domain}")));
    };
    if name.starts_with(PUNYCODE_PREFIX) {
        return Err(ApiError::InvalidHandle(format!(
            "{handle:?}: punycode (xn--) names are not accepted (they can imitate other handles)"
        )));
    }
    if name.contains('.') {
        return Err(ApiError::InvalidHandle(format!(
            "{handle:?}: exactly one label may precede .{domain}"
        )));
    }
    if handle.len() > MAX_HANDLE_LEN {
        return Err(ApiError::InvalidHandle(format!(
            "{handle:?}: longer than {MAX_HANDLE_LEN} characters"
        )));
    }
    if reserved.iter().any(|r| r == name) {
        return Err(ApiError::HandleReserved(handle));
    }
    Ok(handle)
}

/// The handle a `Host` header names: port stripped, lower-cased, trailing dot removed.
pub fn host_to_handle(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        // IPv6 literal: never a handle; keep the bracketed address.
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use divine_bridge_db::{Classified, ErrorCode};

    const D: &str = "divine.test";

    fn reserved() -> Vec<String> {
        DEFAULT_RESERVED_NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn normalize_handle(raw: &str, domain: &str) -> Result<String, ApiError> {
        super::normalize_handle(raw, domain, &reserved())
    }

    fn bad(raw: &str) -> String {
        let e = normalize_handle(raw, D).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidHandle);
        e.to_string()
    }

    #[test]
    fn handles_are_normalised_and_validated() {
        assert_eq!(
            normalize_handle("  Alice.Divine.Test ", D).unwrap(),
            "alice.divine.test"
        );
        assert_eq!(normalize_handle("a-1.divine.test", D).unwrap(), "a-1.divine.test");
        assert_eq!(normalize_handle("0day.divine.test", D).unwrap(), "0day.divine.test");
        // exactly 30 characters
        let name = "a".repeat(30 - D.len() - 1);
        assert_eq!(normalize_handle(&format!("{name}.{D}"), D).unwrap().len(), 30);
        assert!(bad(&format!("a{name}.{D}")).contains("longer than 30"));
        assert!(bad("-alice.divine.test").contains("starts or ends"));
        assert!(bad("alice-.divine.test").contains("starts or ends"));
        assert!(bad("al_ice.divine.test").contains("may only contain"));
        assert!(bad("alïce.divine.test").contains("may only contain"));
        assert!(bad("alice..divine.test").contains("empty label"));
        assert!(bad(".divine.test").contains("empty label"));
        assert!(bad("alice.divine.test.").contains("empty label"));
        assert!(bad("alice").contains("two labels"));
        assert!(bad("").contains("empty"));
        assert!(bad("alice.other.test").contains("must be <name>.divine.test"));
        assert!(bad("alicedivine.test").contains("must be <name>.divine.test"));
        assert!(bad("a.b.divine.test").contains("exactly one label"));
        assert!(bad("divine.test").contains("must be <name>"));
        // Punycode labels (a Cyrillic look-alike of "apple", and any other xn-- name) are refused.
        assert!(bad("xn--pple-43d.divine.test").contains("punycode"));
        assert!(bad("XN--80AK6AA92E.divine.test").contains("punycode"));
        assert_eq!(normalize_handle("xn-x.divine.test", D).unwrap(), "xn-x.divine.test");
        assert!(check_handle_syntax("alice.1test").unwrap_err().contains("top-level"));
        assert!(check_handle_syntax(&format!("{}.test", "a".repeat(64)))
            .unwrap_err()
            .contains("63"));
    }

    #[test]
    fn reserved_names_are_refused_with_their_own_code() {
        for name in [
            "pds",
            "relay",
            "www",
            "app",
            "login",
            "auth",
            "account",
            "admin",
            "support",
            "help",
            "official",
            "team",
            "moderation",
            "abuse",
            "security",
            "status",
            "staging",
            "media",
            "cdn",
            "api",
            "registry",
            "bsky",
            "bluesky",
            "atproto",
            "divine",
        ] {
            let e = normalize_handle(&format!(" {}.Divine.Test", name.to_uppercase()), D).unwrap_err();
            assert_eq!(e.code(), ErrorCode::HandleReserved, "{name}");
            assert_eq!(e.status(), axum::http::StatusCode::CONFLICT);
            assert!(e.to_string().contains(&format!("{name}.divine.test")));
        }
        // Only the whole label is reserved, and an empty list reserves nothing.
        assert_eq!(normalize_handle("pdsfan.divine.test", D).unwrap(), "pdsfan.divine.test");
        assert_eq!(
            super::normalize_handle("pds.divine.test", D, &[]).unwrap(),
            "pds.divine.test"
        );
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(normalize_domain(" .Divine.Test. ").unwrap(), "divine.test");
        assert_eq!(normalize_domain("test").unwrap(), "test");
        assert!(normalize_domain("").is_err());
        assert!(normalize_domain("bad_domain.test").is_err());
        assert!(normalize_domain(&format!("{}.test", "a".repeat(25))).is_err());
    }

    #[test]
    fn pubkeys_accept_hex_and_npub() {
        let keys = nostr::Keys::generate();
        let hex = keys.public_key().to_hex();
        assert_eq!(normalize_pubkey(&hex.to_uppercase()).unwrap(), hex);
        let npub = nostr::ToBech32::to_bech32(&keys.public_key()).unwrap();
        assert_eq!(normalize_pubkey(&npub).unwrap(), hex);
        for bad in [
            "",
            "abc",
            &hex[..63],
            &format!("{hex}0"),
            &format!("{}g", &hex[..63]),
            "npub1qqqq",
        ] {
            assert_eq!(
                normalize_pubkey(bad).unwrap_err().code(),
                ErrorCode::InvalidPubkey,
                "{bad}"
            );
        }
    }

    #[test]
    fn event_ids_must_be_hex64() {
        let id = "AB".repeat(32);
        assert_eq!(normalize_event_id(&id).unwrap(), "ab".repeat(32));
        assert_eq!(normalize_event_id("xyz").unwrap_err().code(), ErrorCode::InvalidEventId);
        assert_eq!(
            normalize_event_id(&"a".repeat(65)).unwrap_err().code(),
            ErrorCode::InvalidEventId
        );
    }

    #[test]
    fn hosts_map_to_handles() {
        assert_eq!(host_to_handle("Alice.Divine.Test:3000"), "alice.divine.test");
        assert_eq!(host_to_handle("alice.divine.test."), "alice.divine.test");
        assert_eq!(host_to_handle("alice.divine.test"), "alice.divine.test");
        assert_eq!(host_to_handle("[::1]:80"), "[::1]");
    }
}
