//! Process configuration for `divine-atbridge`, read once from the environment at startup. Owns parsing, defaults and
//! the startup error codes; it must not open connections or read files (callers do, with these values).
//!
//! Every variable and its default is listed in README.md and docs/runbooks/troubleshooting.md.

use divine_bridge_db::{Classified, DbSettings, ErrorClass};
use std::time::Duration;

/// A missing or malformed environment variable. Startup stops with this code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("required environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(
        "PLC_RECOVERY_KEYS is empty: every DID would have no offline recovery key; set it, or set \
         ALLOW_NO_RECOVERY_KEYS=true (localnet and tests only)"
    )]
    NoRecoveryKeys,
    #[error("PLC_RECOVERY_KEYS entry {key:?} does not decode: {reason}")]
    RecoveryKeyInvalid { key: String, reason: String },
}

impl Classified for ConfigError {
    fn code(&self) -> &'static str {
        match self {
            ConfigError::Missing(_) => "config_missing",
            ConfigError::Invalid { .. } => "config_invalid",
            ConfigError::NoRecoveryKeys => "recovery_keys_missing",
            ConfigError::RecoveryKeyInvalid { .. } => "recovery_key_invalid",
        }
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// Reads an optional variable (empty counts as unset).
pub fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Reads a required variable.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or(ConfigError::Missing(name))
}

/// Parses an optional variable with a default.
pub fn parse_or<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid {
            name,
            reason: format!("{v:?}: {e}"),
        }),
    }
}

/// Parses a boolean (`true/false/1/0/yes/no`).
pub fn bool_or(name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match var(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Some(v) => Err(ConfigError::Invalid {
            name,
            reason: format!("{v:?} is not a boolean"),
        }),
    }
}

/// Splits a comma-separated list, dropping empty items.
pub fn list(name: &str) -> Vec<String> {
    var(name)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Validates an http(s) URL and strips a trailing slash.
pub fn url(name: &'static str, value: String) -> Result<String, ConfigError> {
    let parsed = url::Url::parse(&value).map_err(|e| ConfigError::Invalid {
        name,
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be an http(s) URL".into(),
        });
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// Reads a URL template (see `translate::links`): unset → `default`; set but empty → `None` (the feature is off,
/// which is why this cannot use [`var`], where empty counts as unset); otherwise it must use only `allowed`
/// placeholders and render an http(s) URL, or startup fails with `config_invalid`.
pub fn template_or(
    name: &'static str,
    default: &str,
    allowed: &[&str],
) -> Result<Option<crate::translate::UrlTemplate>, ConfigError> {
    let value = match std::env::var(name) {
        Err(_) => default.to_string(),
        Ok(v) if v.trim().is_empty() => return Ok(None),
        Ok(v) => v.trim().to_string(),
    };
    crate::translate::UrlTemplate::parse(&value, allowed)
        .map(Some)
        .map_err(|reason| ConfigError::Invalid { name, reason })
}

/// Identity settings: where accounts are created and how their keys are protected.
#[derive(Clone)]
pub struct IdentityConfig {
    pub plc_url: String,
    pub pds_url: String,
    /// base64 of 32 bytes; parsed by `keys::KeyEncryptionKey`.
    pub key_encryption_key: String,
    pub recovery_keys: Vec<String>,
    pub email_domain: String,
    /// `PDS_ADMIN_PASSWORD` (secret): mints the invite code of each account (the PDS requires invites).
    pub pds_admin_password: String,
}

impl std::fmt::Debug for IdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityConfig")
            .field("plc_url", &self.plc_url)
            .field("pds_url", &self.pds_url)
            .field("key_encryption_key", &"<redacted>")
            .field("recovery_keys", &self.recovery_keys)
            .field("email_domain", &self.email_domain)
            .field("pds_admin_password", &"<redacted>")
            .finish()
    }
}

impl IdentityConfig {
    pub fn from_env() -> Result<IdentityConfig, ConfigError> {
        let recovery_keys = recovery_keys(list("PLC_RECOVERY_KEYS"), bool_or("ALLOW_NO_RECOVERY_KEYS", false)?)?;
        Ok(IdentityConfig {
            plc_url: url("PLC_DIRECTORY_URL", required("PLC_DIRECTORY_URL")?)?,
            pds_url: url("PDS_URL", required("PDS_URL")?)?,
            key_encryption_key: required("KEY_ENCRYPTION_KEY")?,
            recovery_keys,
            email_domain: required("ACCOUNT_EMAIL_DOMAIN")?,
            pds_admin_password: required("PDS_ADMIN_PASSWORD")?,
        })
    }
}

/// `PLC_RECOVERY_KEYS`, checked at startup (issue 12 §2).
///
/// Decision: an empty list is refused unless `ALLOW_NO_RECOVERY_KEYS=true` (set only by localnet and the test
/// harnesses): without an offline recovery key in `rotationKeys`, a leaked bridge rotation key lets an attacker
/// take every DID for good, and nothing would have said so at deploy time. Every key is fully decoded
/// (`keys::decode_did_key`: multibase, multicodec secp256k1/P-256, a point on the curve), so a typo stops the
/// process at startup instead of failing each account's provisioning with `plc_rejected`.
pub fn recovery_keys(keys: Vec<String>, allow_none: bool) -> Result<Vec<String>, ConfigError> {
    if keys.is_empty() && !allow_none {
        return Err(ConfigError::NoRecoveryKeys);
    }
    for key in &keys {
        crate::keys::decode_did_key(key).map_err(|e| ConfigError::RecoveryKeyInvalid {
            key: key.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(keys)
}

/// Cross-posting settings.
#[derive(Debug, Clone)]
pub struct CrosspostConfig {
    pub relays: Vec<String>,
    pub cursor_overlap: Duration,
    pub account_refresh: Duration,
    /// `NOSTR_AUTHORS_PER_SUBSCRIPTION` (250): authors per live subscription filter (relays cap it).
    pub authors_per_subscription: usize,
    /// `NOSTR_INGEST_SHARDS` (1, at most 1024): stable author buckets per relay, the unit of division among replicas.
    pub ingest_shards: u32,
    /// `INGEST_LEASE_SECS` (30, at least 3): an ingest shard lease; a dead replica's shards are free after it.
    pub ingest_lease: Duration,
    pub media_allowed_hosts: Vec<String>,
    pub media_allow_loopback: bool,
    /// `MEDIA_REQUIRE_VIDEO_HASH` (true): a video event without `x` is ineligible (`media_hash_missing`).
    pub media_require_video_hash: bool,
    pub media_timeout: Duration,
    /// `MEDIA_SPOOL_DIR`: where fetched videos are spooled (default `<temp dir>/divine-atbridge-spool`).
    pub media_spool_dir: std::path::PathBuf,
    /// `MEDIA_MEMORY_BUDGET_BYTES` (200,000,000, at least the 100 MB video cap): media bytes in flight at once.
    pub media_budget_bytes: u64,
    pub backfill_max_events: usize,
    /// `DIVINE_POST_URL_TEMPLATE`: link back to the original on Divine; `None` when set empty (off).
    pub post_url_template: Option<crate::translate::UrlTemplate>,
    /// `DIVINE_PROFILE_URL_TEMPLATE`: where mentions of non-bridged users link; `None` when set empty (off).
    pub profile_url_template: Option<crate::translate::UrlTemplate>,
}

impl CrosspostConfig {
    pub fn from_env() -> Result<CrosspostConfig, ConfigError> {
        let relays = list("NOSTR_RELAYS");
        for r in &relays {
            if !(r.starts_with("ws://") || r.starts_with("wss://")) {
                return Err(ConfigError::Invalid {
                    name: "NOSTR_RELAYS",
                    reason: format!("{r:?} is not a ws(s) URL"),
                });
            }
        }
        Ok(CrosspostConfig {
            relays,
            cursor_overlap: cursor_overlap(parse_or(
                "CURSOR_OVERLAP_SECS",
                crate::ingest::DEFAULT_CURSOR_OVERLAP_SECS,
            )?)?,
            account_refresh: Duration::from_secs(parse_or("ACCOUNT_REFRESH_SECS", 5u64)?),
            authors_per_subscription: match parse_or(
                "NOSTR_AUTHORS_PER_SUBSCRIPTION",
                crate::ingest::DEFAULT_AUTHORS_PER_SUBSCRIPTION,
            )? {
                0 => {
                    return Err(ConfigError::Invalid {
                        name: "NOSTR_AUTHORS_PER_SUBSCRIPTION",
                        reason: "must be at least 1".into(),
                    })
                }
                n => n,
            },
            ingest_shards: match parse_or("NOSTR_INGEST_SHARDS", crate::ingest::DEFAULT_INGEST_SHARDS)? {
                n @ 1..=crate::ingest::MAX_INGEST_SHARDS => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "NOSTR_INGEST_SHARDS",
                        reason: format!("must be between 1 and {}", crate::ingest::MAX_INGEST_SHARDS),
                    })
                }
            },
            ingest_lease: match parse_or("INGEST_LEASE_SECS", crate::ingest::DEFAULT_INGEST_LEASE.as_secs())? {
                n if n >= 3 => Duration::from_secs(n),
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "INGEST_LEASE_SECS",
                        reason: "must be at least 3 (heartbeats run every third of it)".into(),
                    })
                }
            },
            media_allowed_hosts: list("MEDIA_ALLOWED_HOSTS"),
            media_allow_loopback: bool_or("MEDIA_ALLOW_LOOPBACK", false)?,
            media_require_video_hash: bool_or("MEDIA_REQUIRE_VIDEO_HASH", true)?,
            media_timeout: Duration::from_secs(parse_or("MEDIA_TIMEOUT_SECS", 120u64)?),
            media_spool_dir: match std::env::var("MEDIA_SPOOL_DIR") {
                Ok(d) if !d.trim().is_empty() => std::path::PathBuf::from(d.trim()),
                _ => crate::spool::default_spool_root(),
            },
            media_budget_bytes: media_budget(parse_or(
                "MEDIA_MEMORY_BUDGET_BYTES",
                crate::spool::DEFAULT_MEDIA_BUDGET_BYTES,
            )?)?,
            backfill_max_events: parse_or("BACKFILL_MAX_EVENTS", 1000usize)?,
            post_url_template: template_or(
                "DIVINE_POST_URL_TEMPLATE",
                crate::translate::links::DEFAULT_POST_URL_TEMPLATE,
                crate::translate::links::POST_PLACEHOLDERS,
            )?,
            profile_url_template: template_or(
                "DIVINE_PROFILE_URL_TEMPLATE",
                crate::translate::links::DEFAULT_PROFILE_URL_TEMPLATE,
                crate::translate::links::PROFILE_PLACEHOLDERS,
            )?,
        })
    }
}

/// `MEDIA_MEMORY_BUDGET_BYTES`: at least one maximum-size video ([`crate::translate::MAX_VIDEO_BYTES`]). A smaller
/// budget would still let one video run alone (permits are capped at the budget), so it would silently mean "one
/// video at a time" rather than the figure configured; refusing it keeps the setting honest.
fn media_budget(bytes: u64) -> Result<u64, ConfigError> {
    if bytes < crate::translate::MAX_VIDEO_BYTES {
        return Err(ConfigError::Invalid {
            name: "MEDIA_MEMORY_BUDGET_BYTES",
            reason: format!(
                "{bytes} is below the {} byte video size cap",
                crate::translate::MAX_VIDEO_BYTES
            ),
        });
    }
    Ok(bytes)
}

/// `CURSOR_OVERLAP_SECS`: at least `ingest::MIN_CURSOR_OVERLAP_SECS` (the admission check's future skew plus a
/// margin), so a cursor position taken from an event dated at the skew limit cannot hide the events after it.
fn cursor_overlap(secs: u64) -> Result<Duration, ConfigError> {
    if secs < crate::ingest::MIN_CURSOR_OVERLAP_SECS {
        return Err(ConfigError::Invalid {
            name: "CURSOR_OVERLAP_SECS",
            reason: format!(
                "{secs} is below {} (the {} s future skew events may have plus a {} s margin)",
                crate::ingest::MIN_CURSOR_OVERLAP_SECS,
                crate::nostr::MAX_FUTURE_SKEW_SECS,
                crate::ingest::CURSOR_OVERLAP_MARGIN_SECS
            ),
        });
    }
    Ok(Duration::from_secs(secs))
}

/// The reconciliation sweep's settings (`crate::reconcile`), from `RECONCILE_INTERVAL_SECS` (0 = off),
/// `RECONCILE_WINDOW_SECS`, `RECONCILE_GRACE_SECS` and `RECONCILE_PAGE_SIZE`, with the relays and author chunking of
/// the live path.
pub fn reconcile_from_env(crosspost: &CrosspostConfig) -> Result<crate::reconcile::ReconcileConfig, ConfigError> {
    use crate::reconcile as r;
    reconcile_settings(
        crosspost,
        parse_or("RECONCILE_INTERVAL_SECS", r::DEFAULT_INTERVAL_SECS)?,
        parse_or("RECONCILE_WINDOW_SECS", r::DEFAULT_WINDOW_SECS)?,
        parse_or("RECONCILE_GRACE_SECS", r::DEFAULT_GRACE_SECS)?,
        parse_or("RECONCILE_PAGE_SIZE", r::DEFAULT_PAGE_SIZE)?,
    )
}

/// Validates the sweep settings. With the sweep on (interval > 0): the window must reach back at least the live
/// overlap plus one interval (older than the overlap is exactly what the live path cannot see again, and each event
/// must fall inside some sweep's window), the grace must be shorter than the window, and a page holds at least one
/// event.
fn reconcile_settings(
    crosspost: &CrosspostConfig,
    interval: u64,
    window: u64,
    grace: u64,
    page_size: usize,
) -> Result<crate::reconcile::ReconcileConfig, ConfigError> {
    let invalid = |name: &'static str, reason: String| Err(ConfigError::Invalid { name, reason });
    if interval > 0 {
        let floor = crosspost.cursor_overlap.as_secs().saturating_add(interval);
        if window < floor {
            return invalid(
                "RECONCILE_WINDOW_SECS",
                format!("{window} is below CURSOR_OVERLAP_SECS + RECONCILE_INTERVAL_SECS ({floor})"),
            );
        }
        if grace >= window {
            return invalid(
                "RECONCILE_GRACE_SECS",
                format!("{grace} must be below RECONCILE_WINDOW_SECS ({window})"),
            );
        }
        if page_size == 0 {
            return invalid("RECONCILE_PAGE_SIZE", "must be at least 1".into());
        }
    }
    Ok(crate::reconcile::ReconcileConfig {
        relays: crosspost.relays.clone(),
        interval: Duration::from_secs(interval),
        window: Duration::from_secs(window),
        grace: Duration::from_secs(grace),
        page_size,
        authors_per_query: crosspost.authors_per_subscription,
    })
}

/// Everything `divine-atbridge run` needs besides the worker pool settings (`worker::WorkerConfig::from_env`).
/// `Debug` redacts the `DATABASE_URL` password (and `IdentityConfig` the KEK).
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub http_addr: std::net::SocketAddr,
    /// Pool size, session timeouts and TCP keepalives (`DB_*`, shared with the gateway).
    pub db: DbSettings,
    pub identity: IdentityConfig,
    pub crosspost: CrosspostConfig,
    /// `JOB_RETENTION_SECS` (14 days, at least 1 hour): finished jobs older than this are pruned
    /// (`crate::retention`).
    pub job_retention: Duration,
    /// `HANDLE_RELEASE_GRACE_SECS` (30 days, at least 1 hour): how long a disconnected account's handle stays taken
    /// before the release pass frees it (`crate::retention::release_pass`).
    pub handle_release_grace: Duration,
    /// `UNPROVISIONED_HANDLE_RELEASE_SECS` (7 days, at least 1 hour): how long an opt-in that never finished
    /// provisioning (`pending`/`failed`, no DID) holds its handle before the same release pass frees it.
    pub unprovisioned_handle_release: Duration,
    /// The reconciliation sweep (`RECONCILE_*`).
    pub reconcile: crate::reconcile::ReconcileConfig,
    /// `ALLOW_INSECURE_HTTP` (false): plain http to a non-loopback PDS/PLC (localnet only; see `xrpc` rule 2).
    pub allow_insecure_http: bool,
    /// `GATEWAY_DB_ROLE` (unset): the gateway's least-privilege Postgres role; after migrating, the worker (the
    /// schema's owner) re-applies its grants (`divine_bridge_db::roles::apply_gateway_grants`).
    pub gateway_db_role: Option<divine_bridge_db::roles::RoleName>,
}

/// `JOB_RETENTION_SECS`: whole seconds, at least [`crate::retention::MIN_RETENTION`].
pub fn job_retention() -> Result<Duration, ConfigError> {
    let secs = parse_or("JOB_RETENTION_SECS", crate::retention::DEFAULT_RETENTION.as_secs())?;
    if secs < crate::retention::MIN_RETENTION.as_secs() {
        return Err(ConfigError::Invalid {
            name: "JOB_RETENTION_SECS",
            reason: format!(
                "{secs} is below the minimum of {} seconds",
                crate::retention::MIN_RETENTION.as_secs()
            ),
        });
    }
    Ok(Duration::from_secs(secs))
}

/// `HANDLE_RELEASE_GRACE_SECS`: whole seconds, at least one hour (a user who disconnected by mistake, or an operator
/// looking at a disconnect, has time before someone else can take the handle).
pub fn handle_release_grace() -> Result<Duration, ConfigError> {
    let secs = parse_or(
        "HANDLE_RELEASE_GRACE_SECS",
        crate::retention::DEFAULT_HANDLE_RELEASE_GRACE.as_secs(),
    )?;
    if secs < 3600 {
        return Err(ConfigError::Invalid {
            name: "HANDLE_RELEASE_GRACE_SECS",
            reason: format!("{secs} is below the minimum of 3600 seconds"),
        });
    }
    Ok(Duration::from_secs(secs))
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field(
                "database_url",
                &divine_bridge_db::redact_database_url(&self.database_url),
            )
            .field("http_addr", &self.http_addr)
            .field("db", &self.db)
            .field("identity", &self.identity)
            .field("crosspost", &self.crosspost)
            .field("job_retention", &self.job_retention)
            .field("handle_release_grace", &self.handle_release_grace)
            .field("reconcile", &self.reconcile)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("gateway_db_role", &self.gateway_db_role)
            .field("unprovisioned_handle_release", &self.unprovisioned_handle_release)
            .finish()
    }
}

/// `UNPROVISIONED_HANDLE_RELEASE_SECS`: whole seconds, at least one hour (provisioning retries transient failures
/// for much longer; this only frees names whose opt-in has visibly gone nowhere).
pub fn unprovisioned_handle_release() -> Result<Duration, ConfigError> {
    let secs = parse_or(
        "UNPROVISIONED_HANDLE_RELEASE_SECS",
        crate::retention::DEFAULT_UNPROVISIONED_RELEASE.as_secs(),
    )?;
    if secs < 3600 {
        return Err(ConfigError::Invalid {
            name: "UNPROVISIONED_HANDLE_RELEASE_SECS",
            reason: format!("{secs} is below the minimum of 3600 seconds"),
        });
    }
    Ok(Duration::from_secs(secs))
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let database_url = required("DATABASE_URL")?;
        let invalid = |e: divine_bridge_db::DbSettingsError| ConfigError::Invalid {
            name: e.var,
            reason: e.reason,
        };
        let db = DbSettings::from_lookup(var, 16).map_err(invalid)?;
        db.connection_url(&database_url).map_err(invalid)?;
        let crosspost = CrosspostConfig::from_env()?;
        Ok(Config {
            database_url,
            http_addr: parse_or("HTTP_ADDR", "0.0.0.0:9090".parse().expect("valid default"))?,
            db,
            identity: IdentityConfig::from_env()?,
            reconcile: reconcile_from_env(&crosspost)?,
            crosspost,
            job_retention: job_retention()?,
            handle_release_grace: handle_release_grace()?,
            allow_insecure_http: bool_or("ALLOW_INSECURE_HTTP", false)?,
            gateway_db_role: var("GATEWAY_DB_ROLE")
                .map(|v| divine_bridge_db::roles::RoleName::parse(&v))
                .transpose()
                .map_err(|e| ConfigError::Invalid {
                    name: "GATEWAY_DB_ROLE",
                    reason: e.to_string(),
                })?,
            unprovisioned_handle_release: unprovisioned_handle_release()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_budget_must_hold_one_maximum_size_video() {
        assert_eq!(media_budget(crate::translate::MAX_VIDEO_BYTES).unwrap(), 100_000_000);
        assert_eq!(
            media_budget(crate::spool::DEFAULT_MEDIA_BUDGET_BYTES).unwrap(),
            200_000_000
        );
        let e = media_budget(99_999_999).unwrap_err();
        assert!(e.to_string().contains("MEDIA_MEMORY_BUDGET_BYTES"), "{e}");
    }

    #[test]
    fn recovery_keys_are_required_unless_allowed_and_fully_decoded() {
        let e = recovery_keys(vec![], false).unwrap_err();
        assert_eq!(e.code(), "recovery_keys_missing");
        assert_eq!(recovery_keys(vec![], true).unwrap(), Vec::<String>::new());
        let k256 = crate::keys::AccountKey::generate().did_key();
        // P-256 generator point, compressed (multicodec 0x1200).
        let p256 = "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169".to_string();
        assert_eq!(
            recovery_keys(vec![k256.clone(), p256.clone()], false).unwrap(),
            vec![k256.clone(), p256]
        );
        // Shaped like a did:key (the old prefix check passed these) but not a key.
        for bad in [
            "did:key:zbad".to_string(),
            k256[..k256.len() - 2].to_string(),
            "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".to_string(),
        ] {
            let e = recovery_keys(vec![k256.clone(), bad.clone()], true).unwrap_err();
            assert_eq!(e.code(), "recovery_key_invalid", "{bad}");
        }
    }

    #[test]
    fn codes_and_parsers() {
        assert_eq!(ConfigError::Missing("X").code(), "config_missing");
        assert_eq!(
            url("X", "http://localhost:2583/".into()).unwrap(),
            "http://localhost:2583"
        );
        assert!(url("X", "ftp://x".into()).is_err());
        assert!(url("X", "not a url".into()).is_err());
    }

    #[test]
    fn cursor_overlap_covers_the_future_skew_plus_a_margin() {
        let default = crate::ingest::DEFAULT_CURSOR_OVERLAP_SECS;
        assert!(default >= 15 * 60, "default overlap is at least 15 min");
        assert_eq!(cursor_overlap(default).unwrap(), Duration::from_secs(default));
        let min = crate::nostr::MAX_FUTURE_SKEW_SECS + crate::ingest::CURSOR_OVERLAP_MARGIN_SECS;
        assert!(cursor_overlap(min).is_ok());
        // The old default (300 s) is shorter than the 600 s skew: refused at startup.
        let err = cursor_overlap(300).unwrap_err();
        assert_eq!(err.code(), "config_invalid");
        assert!(cursor_overlap(min - 1).is_err());
    }

    fn crosspost() -> CrosspostConfig {
        CrosspostConfig {
            relays: vec!["ws://relay.test".into()],
            cursor_overlap: Duration::from_secs(900),
            account_refresh: Duration::from_secs(5),
            authors_per_subscription: 7,
            media_allowed_hosts: vec![],
            media_allow_loopback: false,
            media_require_video_hash: true,
            media_timeout: Duration::from_secs(1),
            backfill_max_events: 1,
            post_url_template: None,
            profile_url_template: None,
            ingest_shards: 1,
            ingest_lease: Duration::from_secs(30),
            media_spool_dir: crate::spool::default_spool_root(),
            media_budget_bytes: crate::spool::DEFAULT_MEDIA_BUDGET_BYTES,
        }
    }

    #[test]
    fn debug_never_shows_the_database_password_or_the_kek() {
        let kek = "a2V5LWVuY3J5cHRpb24ta2V5LW9mLTMyLWJ5dGVzISE=";
        let c = crosspost();
        let config = Config {
            database_url: "postgres://bridge:hunter2-secret@db:5432/bridge".into(),
            http_addr: "127.0.0.1:9090".parse().unwrap(),
            db: DbSettings::from_lookup(|_: &str| None, 16).unwrap(),
            identity: IdentityConfig {
                plc_url: "https://plc.directory".into(),
                pds_url: "https://pds.example".into(),
                key_encryption_key: kek.into(),
                recovery_keys: vec![],
                email_domain: "bridge.example".into(),
                pds_admin_password: "admin-hunter3".into(),
            },
            reconcile: reconcile_settings(&c, 0, 0, 0, 0).unwrap(),
            crosspost: c,
            job_retention: Duration::from_secs(3600),
            handle_release_grace: Duration::from_secs(3600),
            allow_insecure_http: false,
            gateway_db_role: None,
            unprovisioned_handle_release: Duration::from_secs(3600),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("admin-hunter3"), "{shown}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(!shown.contains(kek), "{shown}");
        assert!(shown.contains("postgres://bridge:***@db:5432/bridge"), "{shown}");
    }

    #[test]
    fn reconcile_settings_are_validated() {
        let c = crosspost();
        let ok = reconcile_settings(&c, 300, 86_400, 60, 500).unwrap();
        assert_eq!(ok.interval, Duration::from_secs(300));
        assert_eq!(ok.authors_per_query, 7);
        assert_eq!(ok.relays, c.relays);
        // The defaults are valid with the default overlap.
        use crate::reconcile as r;
        assert!(reconcile_settings(
            &c,
            r::DEFAULT_INTERVAL_SECS,
            r::DEFAULT_WINDOW_SECS,
            r::DEFAULT_GRACE_SECS,
            r::DEFAULT_PAGE_SIZE
        )
        .is_ok());
        // 0 = off: nothing else is checked.
        assert!(reconcile_settings(&c, 0, 0, 0, 0).unwrap().interval.is_zero());
        let name = |e: ConfigError| match e {
            ConfigError::Invalid { name, .. } => name,
            ConfigError::Missing(name) => name,
            ConfigError::NoRecoveryKeys | ConfigError::RecoveryKeyInvalid { .. } => "PLC_RECOVERY_KEYS",
        };
        // A window that does not reach past the live overlap plus one interval would miss what only the sweep finds.
        assert_eq!(
            name(reconcile_settings(&c, 300, 1199, 60, 500).unwrap_err()),
            "RECONCILE_WINDOW_SECS"
        );
        assert!(reconcile_settings(&c, 300, 1200, 60, 500).is_ok());
        assert_eq!(
            name(reconcile_settings(&c, 300, 1200, 1200, 500).unwrap_err()),
            "RECONCILE_GRACE_SECS"
        );
        assert_eq!(
            name(reconcile_settings(&c, 300, 1200, 60, 0).unwrap_err()),
            "RECONCILE_PAGE_SIZE"
        );
    }
}
