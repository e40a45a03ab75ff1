//! Gateway configuration from the environment: `BIND_ADDR` (default `0.0.0.0:3000`), `DATABASE_URL`,
//! `HANDLE_DOMAIN`, `GATEWAY_SERVICE_TOKEN`, `PUBLIC_URL`, and optional `DB_POOL_SIZE` (default 8), the other `DB_*`
//! connection settings ([`divine_bridge_db::DbSettings::from_lookup`], shared with the worker) and
//! `RESERVED_HANDLE_NAMES` (comma-separated names refused under the handle domain; unset = the built-in list
//! [`DEFAULT_RESERVED_NAMES`], empty = none) and `PDS_PUBLIC_URL` (the PDS's public base URL, shown by `/export`;
//! unset = export omits the repo download URL).
//!
//! Owns parsing and validation of those values only; it opens no connection and must never log the service token.

use crate::handle::{check_handle_syntax, normalize_domain, DEFAULT_RESERVED_NAMES};
use divine_bridge_db::{Classified, DbSettings, ErrorClass};
use std::net::SocketAddr;

/// Validated settings.
#[derive(Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub database_url: String,
    /// Lower-case domain without dots at either end; handles are `<name>.<handle_domain>`.
    pub handle_domain: String,
    /// Shared secrets of the trusted login service (`Authorization: Bearer …`), several during a rotation. Never
    /// logged; only their fingerprints are.
    pub service_tokens: crate::auth::ServiceTokens,
    /// External base URL (scheme + host [+ path prefix], no trailing slash) used for NIP-98 `u` checks.
    pub public_url: String,
    /// Pool size, session timeouts and TCP keepalives (`DB_*`).
    pub db: DbSettings,
    /// Lower-case first labels refused with `handle_reserved`.
    pub reserved_names: Vec<String>,
    /// Public base URL of the bridge's PDS (no trailing slash), for the repo download link of `/export`.
    pub pds_public_url: Option<String>,
    /// Abuse controls (issue 12 §1): opt-in policy, rate limits, budgets, well-known protection.
    pub abuse: AbuseConfig,
}

/// Who may opt a user in (`OPT_IN_POLICY`). The service token may always opt users in; the policy decides what a
/// NIP-98 opt-in needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptInPolicy {
    /// `service` (default): only the Divine login service (service token); every NIP-98 opt-in is refused.
    Service,
    /// `allowlist`: NIP-98 opt-in only for pubkeys the service pre-registered (`PUT /api/opt-in-allowlist/{pubkey}`).
    Allowlist,
    /// `open`: any NIP-98 opt-in whose event id has at least `pow_difficulty` leading zero bits (NIP-13).
    Open { pow_difficulty: u8 },
}

/// `OPT_IN_POW_DIFFICULTY` default: 20 leading zero bits, about a million hashes (a second or two on a phone).
pub const DEFAULT_POW_DIFFICULTY: u8 = 20;

/// Abuse controls. [`AbuseConfig::default`] is the production default of every variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseConfig {
    /// `OPT_IN_POLICY` (+ `OPT_IN_POW_DIFFICULTY` for `open`).
    pub opt_in_policy: OptInPolicy,
    /// `TRUSTED_PROXY_HEADER`: header carrying the client IP, set by the proxy in front of the gateway (its last
    /// comma-separated value is used: the one the trusted proxy appended). Unset = the socket peer address.
    pub trusted_proxy_header: Option<http::HeaderName>,
    /// `RATE_LIMIT_PER_IP_PER_MINUTE`: `/api/*` requests per client IP per minute (burst of the same size); 0 = off.
    pub per_ip_per_minute: u32,
    /// `RATE_LIMIT_GLOBAL_PER_SECOND`: `/api/*` requests per second for this replica (burst of the same size);
    /// 0 = off.
    pub global_per_second: u32,
    /// `PROVISIONING_BUDGET_PER_HOUR`: new account links (each a DID, a PDS account, a backfill) per rolling hour,
    /// all replicas together; 0 = no new links.
    pub provisioning_budget_per_hour: u32,
    /// `TOGGLE_LIMIT_PER_HOUR`: enable + disable calls per account per rolling hour.
    pub toggle_limit_per_hour: u32,
    /// `WELL_KNOWN_CACHE_SECS`: how long a handle lookup (found or not) is answered from memory; 0 = no cache.
    pub well_known_cache_ttl: std::time::Duration,
    /// `WELL_KNOWN_CACHE_ENTRIES`: most cached handle lookups (oldest evicted first).
    pub well_known_cache_entries: usize,
    /// `WELL_KNOWN_TIMEOUT_MS`: a `/.well-known/atproto-did` request taking longer is answered 503 `timeout`.
    pub well_known_timeout: std::time::Duration,
    /// `WELL_KNOWN_MAX_CONCURRENCY`: well-known lookups in flight per replica; more are shed (503 `overloaded`).
    pub well_known_max_concurrency: usize,
    /// `NIP98_REPLAY_MEMORY_ENTRIES`: most NIP-98 event ids remembered in memory (oldest evicted first; Postgres
    /// `nip98_seen` still refuses an evicted id).
    pub replay_memory_entries: usize,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            opt_in_policy: OptInPolicy::Service,
            trusted_proxy_header: None,
            per_ip_per_minute: 60,
            global_per_second: 200,
            provisioning_budget_per_hour: 500,
            toggle_limit_per_hour: 10,
            well_known_cache_ttl: std::time::Duration::from_secs(60),
            well_known_cache_entries: 100_000,
            well_known_timeout: std::time::Duration::from_secs(2),
            well_known_max_concurrency: 256,
            replay_memory_entries: 100_000,
        }
    }
}

impl AbuseConfig {
    /// Reads the abuse variables through `get`; unset = [`AbuseConfig::default`].
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<AbuseConfig, ConfigError> {
        let d = AbuseConfig::default();
        let set = |var: &'static str| get(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        fn num<T: std::str::FromStr>(var: &'static str, v: Option<String>, default: T) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match v {
                None => Ok(default),
                Some(v) => v.parse().map_err(|e| err(var, format!("{v:?}: {e}"))),
            }
        }
        let pow_difficulty = num(
            "OPT_IN_POW_DIFFICULTY",
            set("OPT_IN_POW_DIFFICULTY"),
            DEFAULT_POW_DIFFICULTY,
        )?;
        let opt_in_policy = match set("OPT_IN_POLICY").as_deref() {
            None | Some("service") => OptInPolicy::Service,
            Some("allowlist") => OptInPolicy::Allowlist,
            Some("open") => OptInPolicy::Open { pow_difficulty },
            Some(other) => {
                return Err(err(
                    "OPT_IN_POLICY",
                    format!("{other:?}: expected service, allowlist or open"),
                ))
            }
        };
        let trusted_proxy_header = match set("TRUSTED_PROXY_HEADER") {
            None => None,
            Some(h) => Some(
                http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|e| err("TRUSTED_PROXY_HEADER", format!("{h:?}: {e}")))?,
            ),
        };
        let well_known_max_concurrency = num(
            "WELL_KNOWN_MAX_CONCURRENCY",
            set("WELL_KNOWN_MAX_CONCURRENCY"),
            d.well_known_max_concurrency,
        )?;
        if well_known_max_concurrency == 0 {
            return Err(err("WELL_KNOWN_MAX_CONCURRENCY", "must be at least 1"));
        }
        let timeout_ms: u64 = num(
            "WELL_KNOWN_TIMEOUT_MS",
            set("WELL_KNOWN_TIMEOUT_MS"),
            d.well_known_timeout.as_millis() as u64,
        )?;
        if timeout_ms == 0 {
            return Err(err("WELL_KNOWN_TIMEOUT_MS", "must be at least 1"));
        }
        Ok(AbuseConfig {
            opt_in_policy,
            trusted_proxy_header,
            per_ip_per_minute: num(
                "RATE_LIMIT_PER_IP_PER_MINUTE",
                set("RATE_LIMIT_PER_IP_PER_MINUTE"),
                d.per_ip_per_minute,
            )?,
            global_per_second: num(
                "RATE_LIMIT_GLOBAL_PER_SECOND",
                set("RATE_LIMIT_GLOBAL_PER_SECOND"),
                d.global_per_second,
            )?,
            provisioning_budget_per_hour: num(
                "PROVISIONING_BUDGET_PER_HOUR",
                set("PROVISIONING_BUDGET_PER_HOUR"),
                d.provisioning_budget_per_hour,
            )?,
            toggle_limit_per_hour: num(
                "TOGGLE_LIMIT_PER_HOUR",
                set("TOGGLE_LIMIT_PER_HOUR"),
                d.toggle_limit_per_hour,
            )?,
            well_known_cache_ttl: std::time::Duration::from_secs(num(
                "WELL_KNOWN_CACHE_SECS",
                set("WELL_KNOWN_CACHE_SECS"),
                d.well_known_cache_ttl.as_secs(),
            )?),
            well_known_cache_entries: num(
                "WELL_KNOWN_CACHE_ENTRIES",
                set("WELL_KNOWN_CACHE_ENTRIES"),
                d.well_known_cache_entries,
            )?,
            well_known_timeout: std::time::Duration::from_millis(timeout_ms),
            well_known_max_concurrency,
            replay_memory_entries: num(
                "NIP98_REPLAY_MEMORY_ENTRIES",
                set("NIP98_REPLAY_MEMORY_ENTRIES"),
                d.replay_memory_entries,
            )?,
        })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("bind_addr", &self.bind_addr)
            .field("handle_domain", &self.handle_domain)
            .field("public_url", &self.public_url)
            .field("db", &self.db)
            .field("reserved_names", &self.reserved_names)
            .field("pds_public_url", &self.pds_public_url)
            .field("abuse", &self.abuse)
            .field("service_tokens", &self.service_tokens)
            .finish_non_exhaustive()
    }
}

/// A missing or invalid setting; the process exits at startup.
#[derive(Debug, thiserror::Error)]
#[error("configuration {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl Classified for ConfigError {
    fn code(&self) -> &'static str {
        "gateway_config_invalid"
    }

    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// Normalises `PUBLIC_URL`: an absolute http(s) URL without query or fragment; the trailing slash is dropped.
pub fn normalize_public_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be http:// or https://".into());
    }
    if url.host_str().is_none() {
        return Err("has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let required = |var: &'static str| -> Result<String, ConfigError> {
            get(var)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| err(var, "is required"))
        };
        let bind_addr = get("BIND_ADDR")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "0.0.0.0:3000".to_string())
            .trim()
            .parse()
            .map_err(|e| err("BIND_ADDR", format!("not host:port: {e}")))?;
        let database_url = required("DATABASE_URL")?;
        let handle_domain = normalize_domain(&required("HANDLE_DOMAIN")?).map_err(|e| err("HANDLE_DOMAIN", e))?;
        let service_tokens = crate::auth::ServiceTokens::parse(&required("GATEWAY_SERVICE_TOKEN")?)
            .map_err(|e| err("GATEWAY_SERVICE_TOKEN", e))?;
        let public_url = normalize_public_url(&required("PUBLIC_URL")?).map_err(|e| err("PUBLIC_URL", e))?;
        let db = DbSettings::from_lookup(&get, 8).map_err(|e| err(e.var, e.reason))?;
        db.connection_url(&database_url).map_err(|e| err(e.var, e.reason))?;
        let reserved_names = match get("RESERVED_HANDLE_NAMES") {
            None => DEFAULT_RESERVED_NAMES.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                let mut names = Vec::new();
                for name in list
                    .split(',')
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty())
                {
                    check_handle_syntax(&format!("{name}.{handle_domain}"))
                        .map_err(|e| err("RESERVED_HANDLE_NAMES", format!("{name:?}: {e}")))?;
                    names.push(name);
                }
                names
            }
        };
        let pds_public_url = match get("PDS_PUBLIC_URL").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => Some(normalize_public_url(&v).map_err(|e| err("PDS_PUBLIC_URL", e))?),
        };
        let abuse = AbuseConfig::from_lookup(&get)?;
        Ok(Config {
            abuse,
            pds_public_url,
            bind_addr,
            database_url,
            handle_domain,
            service_tokens,
            public_url,
            db,
            reserved_names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        ("DATABASE_URL", "postgres://x/y"),
        ("HANDLE_DOMAIN", "Divine.Test"),
        ("GATEWAY_SERVICE_TOKEN", "secret-token-of-at-least-32-characters"),
        ("PUBLIC_URL", "https://gw.divine.test/"),
    ];

    #[test]
    fn defaults_and_normalisation() {
        let c = load(BASE).unwrap();
        assert_eq!(c.bind_addr.to_string(), "0.0.0.0:3000");
        assert_eq!(c.handle_domain, "divine.test");
        assert_eq!(c.public_url, "https://gw.divine.test");
        assert_eq!(c.db, DbSettings::with_pool_size(8));
        assert!(
            c.reserved_names.iter().any(|n| n == "pds"),
            "built-in reserved names by default"
        );
        assert!(!format!("{c:?}").contains("secret-token"), "token never printed");
    }

    #[test]
    fn several_service_tokens_of_a_minimum_length() {
        let with = |tokens: &str| {
            let mut pairs: Vec<_> = BASE
                .iter()
                .copied()
                .filter(|(k, _)| *k != "GATEWAY_SERVICE_TOKEN")
                .collect();
            pairs.push(("GATEWAY_SERVICE_TOKEN", tokens));
            load(&pairs)
        };
        let (old, new) = (
            "old-token-0123456789abcdef0123456789",
            "new-token-0123456789abcdef0123456789",
        );
        let c = with(&format!("{new}, {old}")).unwrap();
        let ids = c.service_tokens.ids();
        assert_eq!(ids.len(), 2);
        assert_eq!(c.service_tokens.verify(old).unwrap(), ids[1]);
        assert_eq!(c.service_tokens.verify(new).unwrap(), ids[0]);
        assert!(c.service_tokens.verify("new-token").is_err());
        let shown = format!("{c:?}");
        assert!(!shown.contains(old) && !shown.contains(new), "{shown}");
        assert!(shown.contains(ids[0]), "fingerprints are shown: {shown}");
        // Too short (the old default test token had 12 characters), or listed twice: refused at startup.
        let e = with("secret-token").unwrap_err();
        assert_eq!(e.var, "GATEWAY_SERVICE_TOKEN");
        assert!(!e.reason.contains("secret-token"), "{}", e.reason);
        assert_eq!(with(&format!("{old},{old}")).unwrap_err().var, "GATEWAY_SERVICE_TOKEN");
    }

    #[test]
    fn debug_never_shows_the_database_password() {
        let mut pairs: Vec<_> = BASE.iter().copied().filter(|(k, _)| *k != "DATABASE_URL").collect();
        pairs.push(("DATABASE_URL", "postgres://gateway:hunter2-secret@db:5432/bridge"));
        let c = load(&pairs).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
    }

    #[test]
    fn reserved_names_are_configurable() {
        let with = |v: &str| {
            let mut pairs = BASE.to_vec();
            pairs.push(("RESERVED_HANDLE_NAMES", v));
            load(&pairs)
        };
        assert_eq!(with(" Ops , status ,").unwrap().reserved_names, vec!["ops", "status"]);
        assert!(with("").unwrap().reserved_names.is_empty(), "empty reserves nothing");
        assert_eq!(with("bad_name").unwrap_err().var, "RESERVED_HANDLE_NAMES");
    }

    #[test]
    fn missing_and_invalid_values_name_the_variable() {
        for var in ["DATABASE_URL", "HANDLE_DOMAIN", "GATEWAY_SERVICE_TOKEN", "PUBLIC_URL"] {
            let pairs: Vec<_> = BASE.iter().copied().filter(|(k, _)| *k != var).collect();
            let e = load(&pairs).unwrap_err();
            assert_eq!(e.var, var);
            assert_eq!(e.code(), "gateway_config_invalid");
        }
        let mut bad = BASE.to_vec();
        bad.retain(|(k, _)| *k != "PUBLIC_URL");
        bad.push(("PUBLIC_URL", "ftp://x"));
        assert_eq!(load(&bad).unwrap_err().var, "PUBLIC_URL");
        let mut bad = BASE.to_vec();
        bad.push(("BIND_ADDR", "nope"));
        assert_eq!(load(&bad).unwrap_err().var, "BIND_ADDR");
        let mut bad = BASE.to_vec();
        bad.push(("DB_POOL_SIZE", "0"));
        assert_eq!(load(&bad).unwrap_err().var, "DB_POOL_SIZE");
        let mut bad = BASE.to_vec();
        bad.push(("DB_LOCK_TIMEOUT_MS", "10s"));
        assert_eq!(load(&bad).unwrap_err().var, "DB_LOCK_TIMEOUT_MS");
        let mut bad = BASE.to_vec();
        bad.retain(|(k, _)| *k != "DATABASE_URL");
        bad.push(("DATABASE_URL", "postgres://x/y?keepalives_idle=5"));
        assert_eq!(load(&bad).unwrap_err().var, "DATABASE_URL");
        let mut bad = BASE.to_vec();
        bad.push(("PDS_PUBLIC_URL", "ftp://x"));
        assert_eq!(load(&bad).unwrap_err().var, "PDS_PUBLIC_URL");
    }

    #[test]
    fn abuse_controls_default_to_the_service_policy_and_parse() {
        let c = load(BASE).unwrap();
        assert_eq!(c.abuse, AbuseConfig::default());
        assert_eq!(c.abuse.opt_in_policy, OptInPolicy::Service, "default policy is service");
        assert!(
            c.abuse.trusted_proxy_header.is_none(),
            "client IP from the socket unless a header is configured"
        );
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut all = BASE.to_vec();
            all.extend_from_slice(pairs);
            load(&all)
        };
        assert_eq!(
            with(&[("OPT_IN_POLICY", "open"), ("OPT_IN_POW_DIFFICULTY", "12")])
                .unwrap()
                .abuse
                .opt_in_policy,
            OptInPolicy::Open { pow_difficulty: 12 }
        );
        assert_eq!(
            with(&[("OPT_IN_POLICY", "allowlist")]).unwrap().abuse.opt_in_policy,
            OptInPolicy::Allowlist
        );
        let c = with(&[
            ("TRUSTED_PROXY_HEADER", "X-Forwarded-For"),
            ("WELL_KNOWN_TIMEOUT_MS", "250"),
        ])
        .unwrap();
        assert_eq!(c.abuse.trusted_proxy_header.unwrap().as_str(), "x-forwarded-for");
        assert_eq!(c.abuse.well_known_timeout, std::time::Duration::from_millis(250));
        for (var, v) in [
            ("OPT_IN_POLICY", "everyone"),
            ("OPT_IN_POW_DIFFICULTY", "300"),
            ("TRUSTED_PROXY_HEADER", "bad header"),
            ("RATE_LIMIT_PER_IP_PER_MINUTE", "-1"),
            ("PROVISIONING_BUDGET_PER_HOUR", "lots"),
            ("WELL_KNOWN_MAX_CONCURRENCY", "0"),
            ("WELL_KNOWN_TIMEOUT_MS", "0"),
        ] {
            assert_eq!(with(&[(var, v)]).unwrap_err().var, var, "{var}={v}");
        }
    }

    #[test]
    fn pds_public_url_is_optional_and_normalised() {
        assert_eq!(load(BASE).unwrap().pds_public_url, None);
        let mut pairs = BASE.to_vec();
        pairs.push(("PDS_PUBLIC_URL", "https://pds.divine.test/"));
        assert_eq!(
            load(&pairs).unwrap().pds_public_url.as_deref(),
            Some("https://pds.divine.test")
        );
    }
}
