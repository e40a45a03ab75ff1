//! Authentication of `/api/*` requests. Two schemes:
//!
//! - `Authorization: Bearer <GATEWAY_SERVICE_TOKEN>` — the trusted login service acting for a user; compared in
//!   constant time (SHA-256 of both sides through `subtle`, so the length is not leaked either). Several tokens
//!   may be valid at once ([`ServiceTokens`]: `GATEWAY_SERVICE_TOKEN` is a comma-separated list, each at least
//!   [`MIN_SERVICE_TOKEN_LEN`] characters) so the token rotates without downtime; each is known in logs only by its
//!   fingerprint ([`ServiceToken::id`]), never by its value.
//! - `Authorization: Nostr <base64 event>` — NIP-98: a kind-27235 event signed by the pubkey the request acts on,
//!   whose `u` tag is `PUBLIC_URL + path (+ ?query)`, `method` tag the request method, `created_at` within ±60 s,
//!   `payload` tag the hex SHA-256 of the body (required when the body is not empty), used once: event ids are
//!   remembered in memory for [`MEMORY_TTL`] and in Postgres (`nip98_seen`, shared by replicas, pruned after
//!   [`DB_RETENTION`]).
//!
//! The [`Credential`] extractor checks everything that depends on the request line alone (so a bad credential is
//! answered 401 before the body is read); [`Credential::authorize`] finishes with the acting pubkey and the body.
//! This module decides *who* may act, never *what* the action does.

use crate::cache::TtlCache;
use crate::problem::{ApiError, AuthReason};
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Uri};
use base64::Engine;
use chrono::Utc;
use diesel::prelude::*;
use divine_bridge_db::schema::nip98_seen;
use divine_bridge_db::Db;
use nostr::{Event, JsonUtil, Kind};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Allowed distance between a NIP-98 event's `created_at` and now, either way.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;
/// How long a replica remembers used event ids in memory (covers the whole ±60 s acceptance window).
pub const MEMORY_TTL: Duration = Duration::from_secs(180);
/// Age after which `nip98_seen` rows are pruned.
pub const DB_RETENTION: Duration = Duration::from_secs(600);
/// Largest accepted `Authorization: Nostr` token (base64 characters).
pub const MAX_NIP98_TOKEN: usize = 16 * 1024;

fn unauthorized(reason: AuthReason, detail: impl Into<String>) -> ApiError {
    ApiError::Unauthorized {
        reason,
        detail: detail.into(),
    }
}

/// A verified NIP-98 event, pending the checks that need the acting pubkey and the body.
#[derive(Debug, Clone)]
pub struct Nip98Claim {
    /// Event id (hex), the replay key.
    pub event_id: String,
    /// Signer (hex).
    pub pubkey: String,
    /// The `payload` tag, lower-cased, if present.
    pub payload: Option<String>,
    /// NIP-13 proof of work of the event: leading zero bits of its id (checked by `OPT_IN_POLICY=open`).
    pub pow_bits: u8,
}

/// Shortest accepted service token (characters): 32 random URL-safe characters are ~190 bits.
pub const MIN_SERVICE_TOKEN_LEN: usize = 32;

/// One accepted service token. `Debug` shows only its fingerprint; the value is zeroed on drop.
#[derive(Clone)]
pub struct ServiceToken {
    secret: zeroize::Zeroizing<String>,
    id: String,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ServiceToken {
    /// `tok-` + the first 8 hex characters of a domain-separated SHA-256: names the credential in logs without
    /// giving anything usable away.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Every service token accepted at once (`GATEWAY_SERVICE_TOKEN`, comma-separated).
#[derive(Clone, Debug, Default)]
pub struct ServiceTokens(Vec<ServiceToken>);

impl ServiceTokens {
    /// Parses the comma-separated list: at least one token, each at least [`MIN_SERVICE_TOKEN_LEN`] characters,
    /// no duplicates. The error never contains a token.
    pub fn parse(list: &str) -> Result<ServiceTokens, String> {
        let mut tokens: Vec<ServiceToken> = Vec::new();
        for (i, raw) in list.split(',').map(str::trim).enumerate() {
            if raw.chars().count() < MIN_SERVICE_TOKEN_LEN {
                return Err(format!(
                    "token {} is shorter than {MIN_SERVICE_TOKEN_LEN} characters",
                    i + 1
                ));
            }
            let mut h = Sha256::new();
            h.update(b"divine-bridge service token id v1");
            h.update(raw.as_bytes());
            let id = format!("tok-{}", &hex::encode(h.finalize())[..8]);
            if tokens.iter().any(|t| t.id == id) {
                return Err(format!("token {} is listed twice", i + 1));
            }
            tokens.push(ServiceToken {
                secret: zeroize::Zeroizing::new(raw.to_string()),
                id,
            });
        }
        Ok(ServiceTokens(tokens))
    }

    /// Fingerprints of the accepted tokens, in configuration order.
    pub fn ids(&self) -> Vec<&str> {
        self.0.iter().map(|t| t.id.as_str()).collect()
    }

    /// The fingerprint of the token `given` matches. Every token is compared (constant time each, no early exit),
    /// so timing does not tell which one matched or how many there are.
    pub fn verify(&self, given: &str) -> Result<&str, ApiError> {
        let mut matched: Option<&str> = None;
        for t in &self.0 {
            if verify_bearer(given, &t.secret).is_ok() {
                matched = Some(&t.id);
            }
        }
        matched.ok_or_else(|| unauthorized(AuthReason::BadToken, "invalid bearer token"))
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The login service, holding one of the `GATEWAY_SERVICE_TOKEN`s (named by its fingerprint); may act for any
    /// pubkey.
    Service { token_id: String },
    /// A user, proven by a NIP-98 event.
    Nostr(Nip98Claim),
}

/// Constant-time comparison of a presented bearer token with the configured one.
pub fn verify_bearer(given: &str, expected: &str) -> Result<(), ApiError> {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    if bool::from(a.as_slice().ct_eq(b.as_slice())) {
        Ok(())
    } else {
        Err(unauthorized(AuthReason::BadToken, "invalid bearer token"))
    }
}

/// The URL a NIP-98 event must name for this request: `PUBLIC_URL` + path (+ `?query`).
pub fn expected_url(public_url: &str, uri: &Uri) -> String {
    match uri.query() {
        Some(q) => format!("{public_url}{}?{q}", uri.path()),
        None => format!("{public_url}{}", uri.path()),
    }
}

fn tag_value<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event.tags.iter().find_map(|t| {
        let s = t.as_slice();
        (s.first().map(String::as_str) == Some(name)).then(|| s.get(1).map(String::as_str).unwrap_or(""))
    })
}

/// Checks a NIP-98 token against the request line at unix time `now`: decodes, verifies id and signature, kind
/// 27235, `u` == `url`, `method` == `method`, `created_at` within ±[`MAX_CLOCK_SKEW_SECS`].
pub fn verify_nip98(token: &str, method: &str, url: &str, now: i64) -> Result<Nip98Claim, ApiError> {
    if token.len() > MAX_NIP98_TOKEN {
        return Err(unauthorized(AuthReason::Malformed, "NIP-98 token too large"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(token))
        .map_err(|_| unauthorized(AuthReason::Malformed, "NIP-98 token is not base64"))?;
    let event =
        Event::from_json(&raw).map_err(|e| unauthorized(AuthReason::Malformed, format!("NIP-98 event: {e}")))?;
    event.verify().map_err(|e| {
        unauthorized(
            AuthReason::BadSignature,
            format!("NIP-98 event id or signature invalid: {e}"),
        )
    })?;
    if event.kind != Kind::HttpAuth {
        return Err(unauthorized(
            AuthReason::WrongKind,
            format!("NIP-98 event must be kind 27235, got {}", event.kind.as_u16()),
        ));
    }
    let created = event.created_at.as_secs() as i64;
    if created < now - MAX_CLOCK_SKEW_SECS {
        return Err(unauthorized(
            AuthReason::Stale,
            format!(
                "NIP-98 event created {}s ago (max {MAX_CLOCK_SKEW_SECS}s)",
                now - created
            ),
        ));
    }
    if created > now + MAX_CLOCK_SKEW_SECS {
        return Err(unauthorized(
            AuthReason::Future,
            format!(
                "NIP-98 event created {}s in the future (max {MAX_CLOCK_SKEW_SECS}s)",
                created - now
            ),
        ));
    }
    match tag_value(&event, "u") {
        Some(u) if u == url => {}
        Some(u) => {
            return Err(unauthorized(
                AuthReason::WrongUrl,
                format!("NIP-98 u tag {u:?} does not match {url:?}"),
            ))
        }
        None => return Err(unauthorized(AuthReason::WrongUrl, "NIP-98 event has no u tag")),
    }
    match tag_value(&event, "method") {
        Some(m) if m == method => {}
        other => {
            return Err(unauthorized(
                AuthReason::WrongMethod,
                format!("NIP-98 method tag {other:?} does not match {method}"),
            ))
        }
    }
    Ok(Nip98Claim {
        event_id: event.id.to_hex(),
        pubkey: event.pubkey.to_hex(),
        payload: tag_value(&event, "payload").map(|p| p.to_ascii_lowercase()),
        pow_bits: nostr::nips::nip13::get_leading_zero_bits(event.id.as_bytes()),
    })
}

/// An `Authorization` value as `(scheme, credentials)`, both trimmed; `None` without the separating space. The one
/// reading of the header: the [`Credential`] extractor and the rate limiter's service-token exemption share it.
pub fn split_authorization(value: &str) -> Option<(&str, &str)> {
    value.trim().split_once(' ').map(|(scheme, rest)| (scheme, rest.trim()))
}

impl FromRequestParts<AppState> for Credential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized(AuthReason::Missing, "Authorization header required (Bearer or Nostr)"))?
            .to_str()
            .map_err(|_| unauthorized(AuthReason::Malformed, "Authorization header is not ASCII"))?;
        let (scheme, rest) = split_authorization(value).ok_or_else(|| {
            unauthorized(
                AuthReason::Malformed,
                "Authorization header must be '<scheme> <credentials>'",
            )
        })?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let token_id = state.config.service_tokens.verify(rest)?;
            Ok(Credential::Service {
                token_id: token_id.to_string(),
            })
        } else if scheme.eq_ignore_ascii_case("nostr") {
            let url = expected_url(&state.config.public_url, &parts.uri);
            let claim = verify_nip98(rest, parts.method.as_str(), &url, Utc::now().timestamp())?;
            Ok(Credential::Nostr(claim))
        } else {
            Err(unauthorized(
                AuthReason::BadScheme,
                "unsupported Authorization scheme (use Bearer or Nostr)",
            ))
        }
    }
}

impl Credential {
    /// Who this credential is, for the `account_audit` trail.
    pub fn actor(&self) -> divine_bridge_db::audit::Actor {
        match self {
            Credential::Service { .. } => divine_bridge_db::audit::Actor::Service,
            Credential::Nostr(claim) => divine_bridge_db::audit::Actor::Nip98(claim.pubkey.clone()),
        }
    }

    /// Operator-only routes (suspend, unsuspend): the service token, never a user's NIP-98 event.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self {
            Credential::Service { .. } => Ok(()),
            Credential::Nostr(_) => Err(ApiError::OperatorOnly),
        }
    }

    /// Which credential acts, for the log line of every action: `service:<token fingerprint>` or
    /// `nip98:<pubkey>`. Never the token itself.
    pub fn label(&self) -> String {
        match self {
            Credential::Service { token_id } => format!("service:{token_id}"),
            Credential::Nostr(claim) => format!("nip98:{}", claim.pubkey),
        }
    }

    /// Completes authorization for a request acting on `acting_pubkey` (hex) with `body`: a NIP-98 event must be
    /// signed by that pubkey, carry the body's hash, and not have been used before (recorded here). The service
    /// token may act for anyone.
    pub async fn authorize(&self, state: &AppState, acting_pubkey: &str, body: &[u8]) -> Result<(), ApiError> {
        let claim = match self {
            Credential::Service { .. } => return Ok(()),
            Credential::Nostr(claim) => claim,
        };
        if claim.pubkey != acting_pubkey {
            return Err(unauthorized(
                AuthReason::WrongPubkey,
                "NIP-98 event is not signed by the pubkey this request acts on",
            ));
        }
        match &claim.payload {
            None if !body.is_empty() => {
                return Err(unauthorized(
                    AuthReason::PayloadMissing,
                    "NIP-98 payload tag required for a request with a body",
                ))
            }
            Some(p) if *p != hex::encode(Sha256::digest(body)) => {
                return Err(unauthorized(
                    AuthReason::PayloadMismatch,
                    "NIP-98 payload tag does not match the body's SHA-256",
                ))
            }
            _ => {}
        }
        state.replay.check_and_record(&state.db, &claim.event_id).await
    }
}

/// Remembers used NIP-98 event ids: in memory (this replica, at most `NIP98_REPLAY_MEMORY_ENTRIES`, oldest evicted
/// first — an evicted id is still refused by Postgres) and in Postgres (all replicas).
#[derive(Debug)]
pub struct ReplayGuard {
    recent: Mutex<TtlCache<()>>,
    /// Unix seconds of the last `nip98_seen` prune by this replica.
    last_db_prune: AtomicI64,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::new(crate::config::AbuseConfig::default().replay_memory_entries)
    }
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` ids in memory.
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            recent: Mutex::new(TtlCache::new(MEMORY_TTL, capacity)),
            last_db_prune: AtomicI64::new(0),
        }
    }

    /// Ids held in memory now (never above the capacity).
    pub fn memory_len(&self) -> usize {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn seen_in_memory(&self, id: &str) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.get(id).is_some()
    }

    fn remember(&self, id: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.insert(id.to_string(), ());
    }

    /// Accepts `event_id` once: a second use (in this replica's memory or in `nip98_seen`) is a replay. Every 60 s
    /// a replica also deletes `nip98_seen` rows older than [`DB_RETENTION`].
    pub async fn check_and_record(&self, db: &Db, event_id: &str) -> Result<(), ApiError> {
        if self.seen_in_memory(event_id) {
            return Err(unauthorized(AuthReason::Replay, "NIP-98 event was already used"));
        }
        let now = Utc::now();
        let prev = self.last_db_prune.load(Ordering::Relaxed);
        let prune = now.timestamp() - prev >= 60
            && self
                .last_db_prune
                .compare_exchange(prev, now.timestamp(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let id = event_id.to_string();
        let fresh = db
            .run(move |c| {
                let inserted = diesel::insert_into(nip98_seen::table)
                    .values((nip98_seen::event_id.eq(&id), nip98_seen::seen_at.eq(now)))
                    .on_conflict_do_nothing()
                    .execute(c)?;
                if prune {
                    let cutoff = now - chrono::Duration::from_std(DB_RETENTION).unwrap_or_default();
                    diesel::delete(nip98_seen::table.filter(nip98_seen::seen_at.lt(cutoff))).execute(c)?;
                }
                Ok::<_, divine_bridge_db::DbError>(inserted == 1)
            })
            .await?;
        self.remember(event_id);
        if fresh {
            Ok(())
        } else {
            Err(unauthorized(AuthReason::Replay, "NIP-98 event was already used"))
        }
    }
}
