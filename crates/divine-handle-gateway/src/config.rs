//! Gateway configuration: every environment variable is a clap option of [`GatewayArgs`], so
//! `divine-handle-gateway --help` is the configuration reference (env name, default and meaning of each), validated
//! once at startup into [`Config`], every problem reported at once (`gateway_config_invalid`, exit status 2).
//!
//! Owns parsing and validation of those values only; it opens no connection and must never log the service token.
//!
//! How to add a variable (the same three steps as in `divine-atbridge`'s config.rs):
//! 1. Add a field to [`GatewayArgs`]: `/// help line` + `#[arg(long, env = "MY_VAR", value_parser = Raw,
//!    default_value_t = DEFAULT.to_string())] pub my_var: String` (`Option<String>` without default for a required
//!    variable, `value_parser = KeepEmpty` when empty must mean "none" rather than "default",
//!    `hide_env_values = true` for a secret).
//! 2. Turn it into the typed [`Config`] field in [`GatewayArgs::validate`] with the `Problems` helpers (never `?`).
//! 3. Add a row to README.md's gateway configuration table (checked by `readme_table_matches_the_clap_definitions`)
//!    and set it in deploy/k8s/base/gateway.env (checked by scripts/test.d/30-k8s.sh).

use crate::handle::{check_handle_syntax, normalize_domain, DEFAULT_RESERVED_NAMES};
use divine_bridge_db::envcfg::{self, DbArgs, KeepEmpty, Problems, Raw};
use divine_bridge_db::{Classified, DbSettings, ErrorClass, ErrorCode};
use std::net::SocketAddr;
use std::time::Duration;

/// HTTP gateway of the Divine bridge: opt-in, enable/disable, status and handle resolution.
///
/// Every option is also an environment variable (shown as `env:`), the way deployments set them. --help and
/// --version never touch the database.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "divine-handle-gateway", version, about, long_about, after_help = envcfg::logging_help())]
pub struct GatewayArgs {
    /// Address to listen on. Bound before connecting to Postgres: /health answers while the database is awaited.
    #[arg(long, env = "BIND_ADDR", value_parser = Raw, default_value = "0.0.0.0:3000")]
    pub bind_addr: String,
    /// Postgres URL, postgres://USER:PASSWORD@HOST:5432/DATABASE (required; must not set keepalives* /
    /// tcp_user_timeout, which the DB_* variables configure).
    #[arg(long, env = "DATABASE_URL", value_parser = Raw, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Postgres connections in this process's pool.
    #[arg(long, env = "DB_POOL_SIZE", value_parser = Raw, default_value = "8")]
    pub db_pool_size: String,
    #[command(flatten)]
    pub db: DbArgs,
    /// Handles are `<name>.<HANDLE_DOMAIN>` (required), e.g. divine.video.
    #[arg(long, env = "HANDLE_DOMAIN", value_parser = Raw, help_heading = "Gateway")]
    pub handle_domain: Option<String>,
    /// Bearer token(s) of the trusted Divine login service (required; each at least 32 characters, e.g.
    /// `openssl rand -hex 32`); comma-separated `<new>,<old>` while rotating. Never logged, only fingerprints.
    #[arg(long, env = "GATEWAY_SERVICE_TOKEN", value_parser = Raw, hide_env_values = true, help_heading = "Gateway")]
    pub gateway_service_token: Option<String>,
    /// External base URL of the API host with scheme (required), e.g. https://bridge.divine.video: NIP-98 `u` tags
    /// must match it.
    #[arg(long, env = "PUBLIC_URL", value_parser = Raw, help_heading = "Gateway")]
    pub public_url: Option<String>,
    /// Comma-separated first labels refused under HANDLE_DOMAIN (409 handle_reserved); empty = none.
    #[arg(long, env = "RESERVED_HANDLE_NAMES", value_parser = KeepEmpty, help_heading = "Gateway",
          default_value_t = DEFAULT_RESERVED_NAMES.join(","))]
    pub reserved_handle_names: String,
    /// Public base URL of the bridge's PDS, for the repo download link of /export (unset = no link).
    #[arg(long, env = "PDS_PUBLIC_URL", value_parser = Raw, help_heading = "Gateway")]
    pub pds_public_url: Option<String>,
    #[command(flatten)]
    pub abuse: AbuseArgs,
}

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
    /// `DB_CONNECT_WAIT_SECS`: how long startup retries an unreachable Postgres (`Db::connect_within`).
    pub db_connect_wait: Duration,
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

/// The abuse controls' variables ([`AbuseConfig`]; defaults from its `Default`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Abuse controls")]
pub struct AbuseArgs {
    /// Who may opt users in: `service` (only the login service's token), `allowlist` (NIP-98 only for pubkeys the
    /// service pre-registered) or `open` (NIP-98 with NIP-13 proof of work of OPT_IN_POW_DIFFICULTY bits).
    #[arg(long, env = "OPT_IN_POLICY", value_parser = Raw, default_value = "service")]
    pub opt_in_policy: String,
    /// Leading zero bits a NIP-98 opt-in event id needs under OPT_IN_POLICY=open.
    #[arg(long, env = "OPT_IN_POW_DIFFICULTY", value_parser = Raw, default_value_t = DEFAULT_POW_DIFFICULTY.to_string())]
    pub opt_in_pow_difficulty: String,
    /// Header carrying the client IP, set by the trusted proxy in front of the gateway (its last value is used);
    /// unset = the socket peer address.
    #[arg(long, env = "TRUSTED_PROXY_HEADER", value_parser = Raw)]
    pub trusted_proxy_header: Option<String>,
    /// `/api/*` requests per client IP per minute (0 = off); the login service's token is exempt.
    #[arg(long, env = "RATE_LIMIT_PER_IP_PER_MINUTE", value_parser = Raw,
          default_value_t = AbuseConfig::default().per_ip_per_minute.to_string())]
    pub rate_limit_per_ip_per_minute: String,
    /// `/api/*` requests per second for this replica (0 = off).
    #[arg(long, env = "RATE_LIMIT_GLOBAL_PER_SECOND", value_parser = Raw,
          default_value_t = AbuseConfig::default().global_per_second.to_string())]
    pub rate_limit_global_per_second: String,
    /// New account links per rolling hour, all replicas together (0 = none).
    #[arg(long, env = "PROVISIONING_BUDGET_PER_HOUR", value_parser = Raw,
          default_value_t = AbuseConfig::default().provisioning_budget_per_hour.to_string())]
    pub provisioning_budget_per_hour: String,
    /// Enable + disable calls per account per rolling hour.
    #[arg(long, env = "TOGGLE_LIMIT_PER_HOUR", value_parser = Raw,
          default_value_t = AbuseConfig::default().toggle_limit_per_hour.to_string())]
    pub toggle_limit_per_hour: String,
    /// Seconds a handle lookup (found or not) is answered from memory (0 = no cache).
    #[arg(long, env = "WELL_KNOWN_CACHE_SECS", value_parser = Raw,
          default_value_t = AbuseConfig::default().well_known_cache_ttl.as_secs().to_string())]
    pub well_known_cache_secs: String,
    /// Most cached handle lookups (oldest evicted first).
    #[arg(long, env = "WELL_KNOWN_CACHE_ENTRIES", value_parser = Raw,
          default_value_t = AbuseConfig::default().well_known_cache_entries.to_string())]
    pub well_known_cache_entries: String,
    /// A well-known request taking longer (ms) is answered 503 `timeout`; at least 1.
    #[arg(long, env = "WELL_KNOWN_TIMEOUT_MS", value_parser = Raw,
          default_value_t = AbuseConfig::default().well_known_timeout.as_millis().to_string())]
    pub well_known_timeout_ms: String,
    /// Well-known lookups in flight per replica; more are shed (503 `overloaded`); at least 1.
    #[arg(long, env = "WELL_KNOWN_MAX_CONCURRENCY", value_parser = Raw,
          default_value_t = AbuseConfig::default().well_known_max_concurrency.to_string())]
    pub well_known_max_concurrency: String,
    /// Most NIP-98 event ids remembered in memory (Postgres still refuses an evicted id).
    #[arg(long, env = "NIP98_REPLAY_MEMORY_ENTRIES", value_parser = Raw,
          default_value_t = AbuseConfig::default().replay_memory_entries.to_string())]
    pub nip98_replay_memory_entries: String,
}

impl AbuseArgs {
    /// The abuse controls, every problem recorded in `p`.
    pub fn validate(&self, p: &mut Problems) -> AbuseConfig {
        let pow_difficulty: u8 = p.parse("OPT_IN_POW_DIFFICULTY", &self.opt_in_pow_difficulty);
        let opt_in_policy = match self.opt_in_policy.as_str() {
            "service" => OptInPolicy::Service,
            "allowlist" => OptInPolicy::Allowlist,
            "open" => OptInPolicy::Open { pow_difficulty },
            other => {
                p.invalid(
                    "OPT_IN_POLICY",
                    format!("{other:?}: expected service, allowlist or open"),
                );
                OptInPolicy::Service
            }
        };
        let trusted_proxy_header = match self.trusted_proxy_header.as_deref().filter(|h| !h.is_empty()) {
            None => None,
            Some(h) => match http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(name) => Some(name),
                Err(e) => {
                    p.invalid("TRUSTED_PROXY_HEADER", format!("{h:?}: {e}"));
                    None
                }
            },
        };
        AbuseConfig {
            opt_in_policy,
            trusted_proxy_header,
            per_ip_per_minute: p.parse("RATE_LIMIT_PER_IP_PER_MINUTE", &self.rate_limit_per_ip_per_minute),
            global_per_second: p.parse("RATE_LIMIT_GLOBAL_PER_SECOND", &self.rate_limit_global_per_second),
            provisioning_budget_per_hour: p.parse("PROVISIONING_BUDGET_PER_HOUR", &self.provisioning_budget_per_hour),
            toggle_limit_per_hour: p.parse("TOGGLE_LIMIT_PER_HOUR", &self.toggle_limit_per_hour),
            well_known_cache_ttl: p.secs("WELL_KNOWN_CACHE_SECS", &self.well_known_cache_secs, 0, ""),
            well_known_cache_entries: p.parse("WELL_KNOWN_CACHE_ENTRIES", &self.well_known_cache_entries),
            well_known_timeout: Duration::from_millis(p.at_least(
                "WELL_KNOWN_TIMEOUT_MS",
                &self.well_known_timeout_ms,
                1u64,
                "",
            )),
            well_known_max_concurrency: p.at_least(
                "WELL_KNOWN_MAX_CONCURRENCY",
                &self.well_known_max_concurrency,
                1usize,
                "",
            ),
            replay_memory_entries: p.parse("NIP98_REPLAY_MEMORY_ENTRIES", &self.nip98_replay_memory_entries),
        }
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
            .field("service_tokens", &self.service_tokens)
            .field("abuse", &self.abuse)
            .finish_non_exhaustive()
    }
}

/// Every configuration problem found at startup; the process exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}\nsee `divine-handle-gateway --help` for every variable, its default and meaning")]
pub struct ConfigError(pub Problems);

impl ConfigError {
    /// The variables with a problem, in the order found.
    pub fn vars(&self) -> Vec<&'static str> {
        self.0.list().iter().map(|p| p.var).collect()
    }
}

impl Classified for ConfigError {
    fn code(&self) -> ErrorCode {
        ErrorCode::GatewayConfigInvalid
    }

    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// Normalises `PUBLIC_URL`: an absolute http(s) URL without query or fragment; the trailing slash is dropped. A
/// bare host gets a hint with the scheme added.
pub fn normalize_public_url(raw: &str) -> Result<String, String> {
    envcfg::check_http_url(raw)
}

impl GatewayArgs {
    /// Validates every variable, reporting every problem at once.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let bind_addr = match self.bind_addr.parse() {
            Ok(a) => a,
            Err(e) => {
                p.invalid("BIND_ADDR", format!("{:?} is not host:port ({e})", self.bind_addr));
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };
        let (database_url, db, db_connect_wait) = self.db.validate(&mut p, &self.database_url, &self.db_pool_size);
        let domain = p.required("HANDLE_DOMAIN", &self.handle_domain, "e.g. divine.video");
        let handle_domain = if domain.is_empty() {
            String::new()
        } else {
            normalize_domain(domain).unwrap_or_else(|e| {
                p.invalid("HANDLE_DOMAIN", e);
                String::new()
            })
        };
        let tokens = p.required(
            "GATEWAY_SERVICE_TOKEN",
            &self.gateway_service_token,
            "at least 32 random characters, e.g. `openssl rand -hex 32`",
        );
        let service_tokens = if tokens.is_empty() {
            crate::auth::ServiceTokens::default()
        } else {
            crate::auth::ServiceTokens::parse(tokens).unwrap_or_else(|e| {
                p.invalid(
                    "GATEWAY_SERVICE_TOKEN",
                    format!(
                        "{e}; use at least {} random characters per token (e.g. `openssl rand -hex 32`) and give \
                         the same value to the Divine login service",
                        crate::auth::MIN_SERVICE_TOKEN_LEN
                    ),
                );
                crate::auth::ServiceTokens::default()
            })
        };
        let public_url = p.required_http_url("PUBLIC_URL", &self.public_url, "e.g. https://bridge.divine.video");
        let mut reserved_names = Vec::new();
        for name in envcfg::list(&self.reserved_handle_names) {
            let name = name.to_ascii_lowercase();
            // A name is checked as a handle under the domain, so only once the domain itself is valid.
            if !handle_domain.is_empty() {
                if let Err(e) = check_handle_syntax(&format!("{name}.{handle_domain}")) {
                    p.invalid("RESERVED_HANDLE_NAMES", format!("{name:?}: {e}"));
                }
            }
            reserved_names.push(name);
        }
        let pds_public_url = self
            .pds_public_url
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| p.http_url("PDS_PUBLIC_URL", v));
        let config = Config {
            pds_public_url,
            bind_addr,
            database_url,
            handle_domain,
            service_tokens,
            public_url,
            db,
            db_connect_wait,
            reserved_names,
            abuse: self.abuse.validate(&mut p),
        };
        p.finish(config).map_err(ConfigError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        envcfg::parse_pairs::<GatewayArgs>(pairs).unwrap().validate()
    }

    const TOKEN: &str = "secret-token-0123456789abcdef0123456789";

    const BASE: &[(&str, &str)] = &[
        ("DATABASE_URL", "postgres://x/y"),
        ("HANDLE_DOMAIN", "Divine.Test"),
        ("GATEWAY_SERVICE_TOKEN", TOKEN),
        ("PUBLIC_URL", "https://gw.divine.test/"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut pairs: Vec<_> = BASE
            .iter()
            .copied()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .collect();
        pairs.extend_from_slice(extra);
        load(&pairs)
    }

    #[test]
    fn defaults_and_normalisation() {
        let c = load(BASE).unwrap();
        assert_eq!(c.bind_addr.to_string(), "0.0.0.0:3000");
        assert_eq!(c.handle_domain, "divine.test");
        assert_eq!(c.public_url, "https://gw.divine.test");
        assert_eq!(c.db, DbSettings::with_pool_size(8));
        assert_eq!(c.db_connect_wait, envcfg::DEFAULT_CONNECT_WAIT);
        assert!(
            c.reserved_names.iter().any(|n| n == "pds"),
            "built-in reserved names by default"
        );
        assert!(!format!("{c:?}").contains(TOKEN), "token never printed");
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
        assert_eq!(e.vars(), ["GATEWAY_SERVICE_TOKEN"]);
        assert!(!e.to_string().contains("secret-token"), "{e}");
        assert_eq!(
            with(&format!("{old},{old}")).unwrap_err().vars(),
            ["GATEWAY_SERVICE_TOKEN"]
        );
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
    fn abuse_controls_default_to_the_service_policy_and_parse() {
        let c = load(BASE).unwrap();
        assert_eq!(c.abuse, AbuseConfig::default());
        assert_eq!(c.abuse.opt_in_policy, OptInPolicy::Service, "default policy is service");
        assert!(
            c.abuse.trusted_proxy_header.is_none(),
            "client IP from the socket unless a header is configured"
        );
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
            assert_eq!(with(&[(var, v)]).unwrap_err().vars(), [var], "{var}={v}");
        }
    }

    #[test]
    fn reserved_names_are_configurable() {
        let names = |v: &'static str| with(&[("RESERVED_HANDLE_NAMES", v)]);
        assert_eq!(names(" Ops , status ,").unwrap().reserved_names, vec!["ops", "status"]);
        assert!(names("").unwrap().reserved_names.is_empty(), "empty reserves nothing");
        assert_eq!(names("bad_name").unwrap_err().vars(), ["RESERVED_HANDLE_NAMES"]);
    }

    #[test]
    fn missing_and_invalid_values_name_the_variable() {
        for var in ["DATABASE_URL", "HANDLE_DOMAIN", "GATEWAY_SERVICE_TOKEN", "PUBLIC_URL"] {
            let pairs: Vec<_> = BASE.iter().copied().filter(|(k, _)| *k != var).collect();
            let e = load(&pairs).unwrap_err();
            assert_eq!(e.vars(), [var]);
            assert_eq!(e.code(), ErrorCode::GatewayConfigInvalid);
        }
        for (var, bad) in [
            ("PUBLIC_URL", "ftp://x"),
            ("BIND_ADDR", "nope"),
            ("DB_POOL_SIZE", "0"),
            ("DB_LOCK_TIMEOUT_MS", "10s"),
            ("DATABASE_URL", "postgres://x/y?keepalives_idle=5"),
            ("PDS_PUBLIC_URL", "ftp://x"),
        ] {
            assert_eq!(with(&[(var, bad)]).unwrap_err().vars(), [var], "{var}={bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_with_hints() {
        // Before: `configuration PUBLIC_URL: relative URL without a base`, one variable per restart.
        let e = load(&[
            ("PUBLIC_URL", "gw.divine.test"),
            ("GATEWAY_SERVICE_TOKEN", "short-token"),
            ("DB_POOL_SIZE", "none"),
        ])
        .unwrap_err();
        assert_eq!(
            e.vars(),
            [
                "DATABASE_URL",
                "DB_POOL_SIZE",
                "HANDLE_DOMAIN",
                "GATEWAY_SERVICE_TOKEN",
                "PUBLIC_URL"
            ]
        );
        let text = e.to_string();
        assert!(text.contains("e.g. https://gw.divine.test"), "{text}");
        assert!(
            text.contains("token 1 is shorter than 32 characters; use at least 32"),
            "{text}"
        );
        assert!(!text.contains("short-token"), "the token is never echoed: {text}");
        assert!(text.contains("--help"), "{text}");
    }

    #[test]
    fn pds_public_url_is_optional_and_normalised() {
        assert_eq!(load(BASE).unwrap().pds_public_url, None);
        assert_eq!(
            with(&[("PDS_PUBLIC_URL", "https://pds.divine.test/")])
                .unwrap()
                .pds_public_url
                .as_deref(),
            Some("https://pds.divine.test")
        );
    }

    /// README.md's gateway configuration table against the clap definitions, both ways, defaults included.
    #[test]
    fn readme_table_matches_the_clap_definitions() {
        use clap::CommandFactory;
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let mismatches = envcfg::readme_table_mismatches(&readme, "`divine-handle-gateway`", &GatewayArgs::command());
        assert!(mismatches.is_empty(), "{mismatches:#?}");
    }
}
