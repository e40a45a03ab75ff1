//! Brakes on the public surface (issue 12 §1). Every refusal is a problem with its own code and a `Retry-After`:
//!
//! 1. Request rate, `/api/*` only ([`rate_limit`], a route layer that runs before authentication so a flood costs
//!    no signature check and no query): per client IP (`RATE_LIMIT_PER_IP_PER_MINUTE`, 429 `rate_limited`) and per
//!    replica (`RATE_LIMIT_GLOBAL_PER_SECOND`, 429 `global_rate_limited`), GCRA buckets from `governor` whose burst is
//!    the per-period number. `/.well-known/atproto-did` is deliberately not rate limited per IP: Bluesky's resolvers
//!    call it from a few addresses for every user; it has its cache, timeout and load shedding instead (`lib.rs`).
//!    The per-IP bucket is skipped for a request carrying the valid service token: the Divine login service calls
//!    from a handful of addresses on behalf of every user, and is trusted (the global bucket still applies). Checking
//!    the token is one SHA-256, cheaper than the bucket lookup; an invalid token is counted like any other request.
//! 2. The client IP ([`client_ip`]) is the last value of `TRUSTED_PROXY_HEADER` (the one the trusted proxy
//!    appended; anything a client wrote before it is ignored) when that header is configured and parses, else the
//!    socket peer address. Without a configured header, `X-Forwarded-For` and friends are never read: a client cannot
//!    choose its own bucket.
//! 3. The per-IP table is bounded: above [`MAX_TRACKED_CLIENTS`] keys, idle (fully refilled) buckets are dropped, at
//!    most once a second.
//! 4. New accounts: at most `PROVISIONING_BUDGET_PER_HOUR` links are created per rolling hour over all replicas
//!    ([`check_provisioning_budget`], 429 `provisioning_budget_exhausted`, metric
//!    `gateway_provisioning_budget_exhausted_total`); repeats of an existing link are not counted.
//! 5. Enable/disable: at most `TOGGLE_LIMIT_PER_HOUR` per account per rolling hour ([`check_toggle_limit`], 429
//!    `toggle_rate_limited`), whoever calls (the user or the login service acting for them).
//! 6. The opt-in policy ([`admit_opt_in`], `OPT_IN_POLICY`): the service token may always opt users in; a NIP-98
//!    opt-in is refused under `service` (403 `opt_in_service_only`), needs the pubkey on the allowlist under
//!    `allowlist` (403 `opt_in_not_allowlisted`) and NIP-13 proof of work on the event id under `open` (403
//!    `insufficient_pow`).
//!
//! Limits 4 and 5 count rows in Postgres (`divine_bridge_db::abuse`, which states why they may overshoot by the
//! requests in flight). Owns these decisions only; authentication is `auth`'s.

use crate::auth::Credential;
use crate::config::{AbuseConfig, OptInPolicy};
use crate::metrics::{RateLimitScope, PROVISIONING_BUDGET_EXHAUSTED, PROVISIONING_BUDGET_USED, RATE_LIMITED};
use crate::problem::ApiError;
use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use divine_bridge_db::{abuse, accounts};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Per-IP buckets kept before idle ones are dropped (rule 3).
pub const MAX_TRACKED_CLIENTS: usize = 100_000;

/// The request-rate limiters of one replica (rule 1).
pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    global: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
    started: Instant,
    /// Milliseconds since `started` of the last idle-bucket sweep.
    last_sweep_ms: AtomicU64,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("per_ip", &self.per_ip.is_some())
            .field("global", &self.global.is_some())
            .finish()
    }
}

impl RateLimits {
    pub fn new(cfg: &AbuseConfig) -> RateLimits {
        RateLimits {
            per_ip: NonZeroU32::new(cfg.per_ip_per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            global: NonZeroU32::new(cfg.global_per_second).map(|n| RateLimiter::direct(Quota::per_second(n))),
            clock: DefaultClock::default(),
            started: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    /// Per-IP buckets held now.
    pub fn tracked_clients(&self) -> usize {
        self.per_ip.as_ref().map_or(0, |l| l.len())
    }

    /// Takes one request of `ip` from both buckets, or says how long to wait.
    pub fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        if let Some(per_ip) = &self.per_ip {
            if per_ip.len() > MAX_TRACKED_CLIENTS {
                let now_ms = self.started.elapsed().as_millis() as u64;
                let last = self.last_sweep_ms.load(Ordering::Relaxed);
                if now_ms.saturating_sub(last) >= 1_000
                    && self
                        .last_sweep_ms
                        .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    per_ip.retain_recent();
                    per_ip.shrink_to_fit();
                }
            }
            if let Err(not_until) = per_ip.check_key(&ip) {
                metrics::counter!(RATE_LIMITED, "scope" => RateLimitScope::Client.as_str()).increment(1);
                return Err(ApiError::RateLimited(not_until.wait_time_from(self.clock.now())));
            }
        }
        self.check_global()
    }

    /// Takes one request from the replica's bucket only.
    pub fn check_global(&self) -> Result<(), ApiError> {
        if let Some(global) = &self.global {
            if let Err(not_until) = global.check() {
                metrics::counter!(RATE_LIMITED, "scope" => RateLimitScope::Global.as_str()).increment(1);
                return Err(ApiError::GlobalRateLimited(not_until.wait_time_from(self.clock.now())));
            }
        }
        Ok(())
    }
}

/// The client IP of a request (rule 2): the last comma-separated value of `trusted` when configured and present and
/// an IP address (with or without port), else `peer`, else the unspecified address (every such request shares one
/// bucket; only in-process callers lack a peer).
pub fn client_ip(headers: &HeaderMap, trusted: Option<&HeaderName>, peer: Option<SocketAddr>) -> IpAddr {
    let from_header = trusted.and_then(|name| {
        let last = headers.get_all(name).iter().next_back()?;
        let value = last.to_str().ok()?.rsplit(',').next()?.trim();
        value
            .parse::<IpAddr>()
            .ok()
            .or_else(|| value.parse::<SocketAddr>().ok().map(|s| s.ip()))
    });
    from_header
        .or_else(|| peer.map(|p| p.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Whether `headers` carry the valid service token (rule 1: the login service skips the per-IP bucket).
fn is_service(headers: &HeaderMap, state: &AppState) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::split_authorization)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, token)| state.config.service_tokens.verify(token).is_ok())
}

/// Route layer of `/api/*` (rule 1).
pub async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let ip = client_ip(req.headers(), state.config.abuse.trusted_proxy_header.as_ref(), peer);
    let checked = if is_service(req.headers(), &state) {
        state.limits.check_global()
    } else {
        state.limits.check(ip)
    };
    match checked {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::info!(client = %ip, code = %divine_bridge_db::Classified::code(&e), "request rate limited");
            e.into_response()
        }
    }
}

/// Rule 6: whether `credential` may opt `pubkey` in under the configured policy.
pub async fn admit_opt_in(state: &AppState, credential: &Credential, pubkey: &str) -> Result<(), ApiError> {
    let claim = match credential {
        Credential::Service { .. } => return Ok(()),
        Credential::Nostr(claim) => claim,
    };
    match state.config.abuse.opt_in_policy {
        OptInPolicy::Service => Err(ApiError::OptInServiceOnly),
        OptInPolicy::Open { pow_difficulty } if claim.pow_bits >= pow_difficulty => Ok(()),
        OptInPolicy::Open { pow_difficulty } => Err(ApiError::InsufficientPow {
            required: pow_difficulty,
            got: claim.pow_bits,
        }),
        OptInPolicy::Allowlist => {
            let pk = pubkey.to_string();
            if state.db.run(move |c| abuse::is_allowed(c, &pk)).await? {
                Ok(())
            } else {
                Err(ApiError::OptInNotAllowlisted)
            }
        }
    }
}

/// Rule 4: refuses a NEW link of `pubkey` when the hour's budget is used up (an existing link passes).
pub async fn check_provisioning_budget(state: &AppState, pubkey: &str) -> Result<(), ApiError> {
    let budget = i64::from(state.config.abuse.provisioning_budget_per_hour);
    let pk = pubkey.to_string();
    let window = state
        .db
        .run(move |c| {
            if accounts::get(c, &pk)?.is_some() {
                return Ok(None);
            }
            abuse::links_created(c, chrono::Utc::now()).map(Some)
        })
        .await?;
    let Some(window) = window else { return Ok(()) };
    metrics::gauge!(PROVISIONING_BUDGET_USED).set(window.count as f64);
    if window.count >= budget {
        metrics::counter!(PROVISIONING_BUDGET_EXHAUSTED).increment(1);
        tracing::warn!(
            used = window.count,
            budget,
            code = "provisioning_budget_exhausted",
            "new opt-in refused: hourly provisioning budget used up"
        );
        return Err(ApiError::ProvisioningBudgetExhausted(window.retry_after()));
    }
    Ok(())
}

/// Rule 5: refuses one more enable/disable of `pubkey` this hour beyond the limit.
pub async fn check_toggle_limit(state: &AppState, pubkey: &str) -> Result<(), ApiError> {
    let limit = i64::from(state.config.abuse.toggle_limit_per_hour);
    let pk = pubkey.to_string();
    let window = state
        .db
        .run(move |c| abuse::toggles(c, &pk, chrono::Utc::now()))
        .await?;
    if window.count >= limit {
        metrics::counter!(RATE_LIMITED, "scope" => RateLimitScope::Toggle.as_str()).increment(1);
        return Err(ApiError::ToggleRateLimited(window.retry_after()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_client_ip_comes_from_the_trusted_header_only() {
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        let xff = HeaderName::from_static("x-forwarded-for");
        let mut h = HeaderMap::new();
        h.append(&xff, HeaderValue::from_static("1.1.1.1, 203.0.113.7"));
        // Not configured: the header is ignored.
        assert_eq!(client_ip(&h, None, Some(peer)), peer.ip());
        // Configured: the last value (the one the proxy appended), not the client-written first one.
        assert_eq!(
            client_ip(&h, Some(&xff), Some(peer)),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        h.append(&xff, HeaderValue::from_static("[2001:db8::1]:443"));
        assert_eq!(
            client_ip(&h, Some(&xff), Some(peer)),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Configured but absent or garbage: the peer.
        assert_eq!(client_ip(&HeaderMap::new(), Some(&xff), Some(peer)), peer.ip());
        let mut bad = HeaderMap::new();
        bad.insert(&xff, HeaderValue::from_static("not-an-ip"));
        assert_eq!(client_ip(&bad, Some(&xff), Some(peer)), peer.ip());
    }

    #[test]
    fn buckets_refuse_with_a_wait() {
        let limits = RateLimits::new(&AbuseConfig {
            per_ip_per_minute: 2,
            global_per_second: 0,
            ..AbuseConfig::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limits.check(a).is_ok() && limits.check(a).is_ok());
        match limits.check(a) {
            Err(ApiError::RateLimited(wait)) => assert!(wait.as_secs() > 0 && wait.as_secs() <= 30, "{wait:?}"),
            other => panic!("{other:?}"),
        }
        assert!(limits.check(b).is_ok(), "another client has its own bucket");
        assert_eq!(limits.tracked_clients(), 2);
    }
}
