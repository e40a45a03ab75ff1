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
use divine_bridge_db::{Classified, DbSettings, ErrorClass};
use std::net::SocketAddr;
use std::time::Duration;

/// Shortest `GATEWAY_SERVICE_TOKEN` accepted: 32 characters (e.g. `openssl rand -hex 32` gives 64); a short shared
/// bearer secret is guessable.
pub const MIN_SERVICE_TOKEN_CHARS: usize = 32;

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
    /// Bearer token of the trusted Divine login service (required; at least 32 characters, e.g.
    /// `openssl rand -hex 32`). Never logged.
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
}

/// Validated settings.
#[derive(Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub database_url: String,
    /// Lower-case domain without dots at either end; handles are `<name>.<handle_domain>`.
    pub handle_domain: String,
    /// Shared secret of the trusted login service (`Authorization: Bearer …`). Never logged.
    pub service_token: String,
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
            .field("service_token", &"<redacted>")
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
    fn code(&self) -> &'static str {
        "gateway_config_invalid"
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
        let service_token = p
            .required(
                "GATEWAY_SERVICE_TOKEN",
                &self.gateway_service_token,
                "at least 32 random characters, e.g. `openssl rand -hex 32`",
            )
            .to_string();
        let chars = service_token.chars().count();
        if chars > 0 && chars < MIN_SERVICE_TOKEN_CHARS {
            p.invalid(
                "GATEWAY_SERVICE_TOKEN",
                format!(
                    "is {chars} characters; use at least {MIN_SERVICE_TOKEN_CHARS} random characters \
                     (e.g. `openssl rand -hex 32`) and give the same value to the Divine login service"
                ),
            );
        }
        let public = p.required("PUBLIC_URL", &self.public_url, "e.g. https://bridge.divine.video");
        let public_url = if public.is_empty() {
            String::new()
        } else {
            p.http_url("PUBLIC_URL", public)
        };
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
            service_token,
            public_url,
            db,
            db_connect_wait,
            reserved_names,
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
            assert_eq!(e.code(), "gateway_config_invalid");
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
        assert!(text.contains("is 11 characters; use at least 32"), "{text}");
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
        let rows = envcfg::readme_table(&readme, "`divine-handle-gateway`");
        assert!(!rows.is_empty(), "README has a gateway configuration table");
        let mut vars = envcfg::env_vars(&GatewayArgs::command());
        vars.extend(
            envcfg::LOGGING_VARS
                .iter()
                .map(|(n, d, _)| (n.to_string(), Some(d.to_string()))),
        );
        for (name, default) in &vars {
            let Some((_, cell)) = rows.iter().find(|(n, _)| n == name) else {
                panic!("README gateway configuration table has no row for {name}");
            };
            if let Some(d) = default.as_deref().filter(|d| !d.is_empty()) {
                assert!(
                    cell.contains(d),
                    "README default of {name} is {cell:?}, clap says {d:?}"
                );
            }
        }
        for (name, _) in &rows {
            assert!(
                vars.iter().any(|(n, _)| n == name),
                "README row {name} is not read by divine-handle-gateway"
            );
        }
    }
}
