//! Process configuration of `divine-atbridge run`: every environment variable is a clap argument (so
//! `divine-atbridge run --help` is the configuration reference, with each variable's env name, default and meaning),
//! validated once at startup into the typed [`Config`] and [`crate::worker::WorkerConfig`]. Owns parsing, defaults,
//! validation and the startup codes `config_missing` / `config_invalid`; it must not open connections or read files
//! (callers do, with these values).
//!
//! Every problem is reported at once: `validate` collects into one [`divine_bridge_db::envcfg::Problems`] and the
//! process exits with all of them in one message (see `envcfg` for why clap's typed parsers are not used).
//!
//! How to add a variable (the same three steps in `divine-handle-gateway`'s config.rs):
//! 1. Add a field to the `*Args` struct of its section below:
//!    ```ignore
//!    /// One line for `--help`: what it does, its unit, its limits.
//!    #[arg(long, env = "MY_VAR", value_parser = Raw, default_value_t = DEFAULT_MY_VAR.to_string())]
//!    pub my_var: String,
//!    ```
//!    (`Option<String>` without `default_value_t` for a required variable; `value_parser = KeepEmpty` when an empty
//!    value must mean "off" rather than "default"; `hide_env_values = true` for a secret, so `--help` never prints
//!    it). Keep the default in one const next to the code that uses it and refer to it here.
//! 2. Turn the text into the typed field in the section's `validate`, with the `Problems` helpers
//!    (`p.at_least(..)`, `p.secs(..)`, `p.flag(..)`, `p.http_url(..)`, `p.required(..)`, `p.invalid(..)`) — never `?`
//!    on the first error. Cross-variable rules run only when their inputs parsed (`!p.has("OTHER_VAR")`).
//! 3. Add a row to README.md's configuration table (checked by `readme_table_matches_the_clap_definitions`) and set
//!    it in deploy/k8s/base/atbridge.env (checked by scripts/test.d/30-k8s.sh).

use divine_bridge_db::envcfg::{self, DbArgs, KeepEmpty, Problems, Raw};
use divine_bridge_db::{Classified, DbSettings, ErrorClass, ErrorCode};
use std::time::Duration;

/// The configuration problems found at startup, all of them. Code `config_missing` when every problem is an unset
/// required variable, else `config_invalid`; both permanent (a restart does not fix configuration).
#[derive(Debug, thiserror::Error)]
#[error("{0}\nsee `divine-atbridge run --help` for every variable, its default and meaning")]
pub struct ConfigError(pub Problems);

impl ConfigError {
    /// One invalid variable (checks outside `validate`, e.g. [`crate::worker::WorkerConfig::validate`]).
    pub fn invalid(var: &'static str, reason: impl Into<String>) -> ConfigError {
        let mut p = Problems::default();
        p.invalid(var, reason);
        ConfigError(p)
    }

    /// The variables with a problem, in the order found.
    pub fn vars(&self) -> Vec<&'static str> {
        self.0.list().iter().map(|p| p.var).collect()
    }
}

impl Classified for ConfigError {
    fn code(&self) -> ErrorCode {
        match self.0.all_missing() {
            true => ErrorCode::ConfigMissing,
            false => ErrorCode::ConfigInvalid,
        }
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

impl From<Problems> for ConfigError {
    fn from(p: Problems) -> Self {
        ConfigError(p)
    }
}

/// Parses the `*Args` section `A` from the process environment alone (no command line): the `from_env`
/// constructors that tests and the dev binaries use.
pub fn args_from_env<A: clap::Args + clap::FromArgMatches>() -> Result<A, ConfigError> {
    A::augment_args(clap::Command::new("env"))
        .try_get_matches_from(["env"])
        .and_then(|m| A::from_arg_matches(&m))
        .map_err(|e| ConfigError::invalid("environment", e.to_string()))
}

/// Everything `divine-atbridge run` reads. Flattened into the `run` subcommand (`cli.rs`); `DATABASE_URL` is a global
/// option of the CLI because the operator commands need it too.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub crosspost: CrosspostArgs,
    #[command(flatten)]
    pub reconcile: ReconcileArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// The process itself.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Service")]
pub struct ServiceArgs {
    /// Address of /metrics, /health and /ready. Bound before anything else: a bind failure exits at once.
    #[arg(long, env = "HTTP_ADDR", value_parser = Raw, default_value = "0.0.0.0:9090")]
    pub http_addr: String,
    /// Postgres connections in this process's pool; at least WORKERS + 8 (ingest, watchdog, stats, health).
    #[arg(long, env = "DB_POOL_SIZE", value_parser = Raw, default_value = "16")]
    pub db_pool_size: String,
    /// Localnet only: plain http:// to a non-loopback PDS/PLC. Otherwise PDS/PLC calls are https-only (loopback
    /// http is always allowed), never follow redirects and cap response bodies (`xrpc` rule 2).
    #[arg(long, env = "ALLOW_INSECURE_HTTP", value_parser = Raw, default_value = "false")]
    pub allow_insecure_http: String,
    /// The gateway's least-privilege Postgres role (`divine-atbridge db roles`); after migrating, this worker (the
    /// schema's owner) re-applies its grants. Unset: grants are left to `db roles --apply`.
    #[arg(long, env = "GATEWAY_DB_ROLE", value_parser = Raw)]
    pub gateway_db_role: Option<String>,
}

/// Identity settings: where accounts are created and how their keys are protected.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Identity")]
pub struct IdentityArgs {
    /// PLC directory base URL (required), e.g. https://plc.directory.
    #[arg(long, env = "PLC_DIRECTORY_URL", value_parser = Raw)]
    pub plc_directory_url: Option<String>,
    /// PDS base URL (required); must equal the PDS's public URL byte for byte (it is written into every DID).
    #[arg(long, env = "PDS_URL", value_parser = Raw)]
    pub pds_url: Option<String>,
    /// base64 of 32 random bytes (required; `openssl rand -base64 32`): seals account keys, passwords and sessions.
    /// During a rotation a comma-separated list: the first seals, the others only open (`divine-atbridge keys
    /// rotate`). Back it up before first use.
    #[arg(long, env = "KEY_ENCRYPTION_KEY", value_parser = Raw, hide_env_values = true)]
    pub key_encryption_key: Option<String>,
    /// Comma-separated did:key list (secp256k1 or P-256) placed first in every DID's rotationKeys (the operator's
    /// offline recovery keys). Required: empty stops the worker unless ALLOW_NO_RECOVERY_KEYS=true; every entry is
    /// fully decoded at startup.
    #[arg(long, env = "PLC_RECOVERY_KEYS", value_parser = Raw, default_value = "")]
    pub plc_recovery_keys: String,
    /// Localnet, tests and a private staging PLC only: run without PLC_RECOVERY_KEYS.
    #[arg(long, env = "ALLOW_NO_RECOVERY_KEYS", value_parser = Raw, default_value = "false")]
    pub allow_no_recovery_keys: String,
    /// The PDS's admin password (required, secret): the worker mints one single-use invite code per account it
    /// creates, so the PDS can refuse open sign-up (PDS_INVITE_REQUIRED=true).
    #[arg(long, env = "PDS_ADMIN_PASSWORD", value_parser = Raw, hide_env_values = true)]
    pub pds_admin_password: Option<String>,
    /// Accounts get `<pubkey prefix>@<domain>` as email (required; the PDS requires one).
    #[arg(long, env = "ACCOUNT_EMAIL_DOMAIN", value_parser = Raw)]
    pub account_email_domain: Option<String>,
}

/// Relay ingest, media and translation.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Cross-posting")]
pub struct CrosspostArgs {
    /// Comma-separated ws:// or wss:// relays to read (empty: ingest is idle, workers still run).
    #[arg(long, env = "NOSTR_RELAYS", value_parser = Raw, default_value = "")]
    pub nostr_relays: String,
    /// Seconds a resubscription reaches back; at least 720 (the 600 s future skew events may have plus a 120 s
    /// margin).
    #[arg(long, env = "CURSOR_OVERLAP_SECS", value_parser = Raw,
          default_value_t = crate::ingest::DEFAULT_CURSOR_OVERLAP_SECS.to_string())]
    pub cursor_overlap_secs: String,
    /// How often (seconds) the opted-in account set is re-read.
    #[arg(long, env = "ACCOUNT_REFRESH_SECS", value_parser = Raw, default_value = "5")]
    pub account_refresh_secs: String,
    /// Authors per live subscription filter (relays cap it; the set is split over several subscriptions).
    #[arg(long, env = "NOSTR_AUTHORS_PER_SUBSCRIPTION", value_parser = Raw,
          default_value_t = crate::ingest::DEFAULT_AUTHORS_PER_SUBSCRIPTION.to_string())]
    pub nostr_authors_per_subscription: String,
    /// Stable author buckets per relay (1–1024), each read by exactly one replica; change only with the fleet
    /// stopped.
    #[arg(long, env = "NOSTR_INGEST_SHARDS", value_parser = Raw,
          default_value_t = crate::ingest::DEFAULT_INGEST_SHARDS.to_string())]
    pub nostr_ingest_shards: String,
    /// Ingest shard lease in seconds (at least 3; heartbeats run every third of it).
    #[arg(long, env = "INGEST_LEASE_SECS", value_parser = Raw,
          default_value_t = crate::ingest::DEFAULT_INGEST_LEASE.as_secs().to_string())]
    pub ingest_lease_secs: String,
    /// Comma-separated media host allow-list (`host` or `*.suffix`).
    #[arg(long, env = "MEDIA_ALLOWED_HOSTS", value_parser = Raw, default_value = "")]
    pub media_allowed_hosts: String,
    /// Localnet only: allow media from 127.0.0.1.
    #[arg(long, env = "MEDIA_ALLOW_LOOPBACK", value_parser = Raw, default_value = "false")]
    pub media_allow_loopback: String,
    /// A video event without its SHA-256 (`x`) is ineligible (media_hash_missing); false accepts unhashed videos.
    #[arg(long, env = "MEDIA_REQUIRE_VIDEO_HASH", value_parser = Raw, default_value = "true")]
    pub media_require_video_hash: String,
    /// Whole-download time cap in seconds (one deadline over a URL and its fallbacks).
    #[arg(long, env = "MEDIA_TIMEOUT_SECS", value_parser = Raw, default_value = "120")]
    pub media_timeout_secs: String,
    /// Where videos are spooled between fetch and upload [default: <temp dir>/divine-atbridge-spool].
    #[arg(long, env = "MEDIA_SPOOL_DIR", value_parser = Raw)]
    pub media_spool_dir: Option<String>,
    /// Media bytes in flight at once, process-wide; at least 100000000 (one maximum-size video).
    #[arg(long, env = "MEDIA_MEMORY_BUDGET_BYTES", value_parser = Raw,
          default_value_t = crate::spool::DEFAULT_MEDIA_BUDGET_BYTES.to_string())]
    pub media_memory_budget_bytes: String,
    /// Events of history imported on opt-in / re-enable.
    #[arg(long, env = "BACKFILL_MAX_EVENTS", value_parser = Raw, default_value = "1000")]
    pub backfill_max_events: String,
    /// Link back to the original on Divine in every post; placeholders {id} {d} {npub} {pubkey}. Empty = off.
    #[arg(long, env = "DIVINE_POST_URL_TEMPLATE", value_parser = KeepEmpty,
          default_value = crate::translate::links::DEFAULT_POST_URL_TEMPLATE)]
    pub divine_post_url_template: String,
    /// Where a mention of a user who is not bridged links to; placeholders {npub} {pubkey}. Empty = no link.
    #[arg(long, env = "DIVINE_PROFILE_URL_TEMPLATE", value_parser = KeepEmpty,
          default_value = crate::translate::links::DEFAULT_PROFILE_URL_TEMPLATE)]
    pub divine_profile_url_template: String,
}

/// The reconciliation sweep (`crate::reconcile`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Reconciliation sweep")]
pub struct ReconcileArgs {
    /// Sweep period in seconds (0 = off); one replica sweeps at a time.
    #[arg(long, env = "RECONCILE_INTERVAL_SECS", value_parser = Raw,
          default_value_t = crate::reconcile::DEFAULT_INTERVAL_SECS.to_string())]
    pub reconcile_interval_secs: String,
    /// How far back (seconds, by event created_at) each sweep looks; at least CURSOR_OVERLAP_SECS +
    /// RECONCILE_INTERVAL_SECS.
    #[arg(long, env = "RECONCILE_WINDOW_SECS", value_parser = Raw,
          default_value_t = crate::reconcile::DEFAULT_WINDOW_SECS.to_string())]
    pub reconcile_window_secs: String,
    /// Events younger than this (seconds) are left to the live path; below the window.
    #[arg(long, env = "RECONCILE_GRACE_SECS", value_parser = Raw,
          default_value_t = crate::reconcile::DEFAULT_GRACE_SECS.to_string())]
    pub reconcile_grace_secs: String,
    /// Events per relay request while paging the window (at least 1).
    #[arg(long, env = "RECONCILE_PAGE_SIZE", value_parser = Raw,
          default_value_t = crate::reconcile::DEFAULT_PAGE_SIZE.to_string())]
    pub reconcile_page_size: String,
}

/// The job worker pool ([`crate::worker::WorkerConfig`]; defaults from its `Default`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Job workers")]
pub struct WorkerArgs {
    /// Jobs run at once by this process.
    #[arg(long, env = "WORKERS", value_parser = Raw, default_value_t = worker_default().workers.to_string())]
    pub workers: String,
    /// Job lease in seconds (at least 2; the heartbeat renews it every third).
    #[arg(long, env = "LEASE_SECS", value_parser = Raw, default_value_t = worker_default().lease.as_secs().to_string())]
    pub lease_secs: String,
    /// Requeue jobs whose lease expired, from this process too (safe on every replica).
    #[arg(long, env = "WATCHDOG_ENABLED", value_parser = Raw, default_value_t = worker_default().watchdog_enabled.to_string())]
    pub watchdog_enabled: String,
    /// Watchdog period in seconds (at least 1 when the watchdog is on).
    #[arg(long, env = "WATCHDOG_INTERVAL_SECS", value_parser = Raw,
          default_value_t = worker_default().watchdog_interval.as_secs().to_string())]
    pub watchdog_interval_secs: String,
    /// SIGTERM: seconds in-flight jobs get to finish before their leases are released.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", value_parser = Raw,
          default_value_t = worker_default().shutdown_grace.as_secs().to_string())]
    pub shutdown_grace_secs: String,
    /// Retry backoff base in seconds.
    #[arg(long, env = "RETRY_BASE_SECS", value_parser = Raw, default_value_t = worker_default().retry_base.as_secs().to_string())]
    pub retry_base_secs: String,
    /// Retry backoff ceiling in seconds (also caps a server's Retry-After); not below RETRY_BASE_SECS.
    #[arg(long, env = "RETRY_CAP_SECS", value_parser = Raw, default_value_t = worker_default().retry_cap.as_secs().to_string())]
    pub retry_cap_secs: String,
    /// Transient failures of a job older than this (seconds since created) fail it (retry_window_exhausted).
    #[arg(long, env = "RETRY_MAX_AGE_SECS", value_parser = Raw,
          default_value_t = worker_default().retry_max_age.as_secs().to_string())]
    pub retry_max_age_secs: String,
    /// A try running longer than this (seconds) is cut off and retried (try_timeout).
    #[arg(long, env = "TRY_TIMEOUT_SECS", value_parser = Raw, default_value_t = worker_default().try_timeout.as_secs().to_string())]
    pub try_timeout_secs: String,
    /// Expired leases of one job before the watchdog parks it (suspected_poison).
    #[arg(long, env = "RECLAIM_LIMIT", value_parser = Raw, default_value_t = worker_default().reclaim_limit.to_string())]
    pub reclaim_limit: String,
    /// Handler panics of one job before it fails (handler_panicked).
    #[arg(long, env = "PANIC_LIMIT", value_parser = Raw, default_value_t = worker_default().panic_limit.to_string())]
    pub panic_limit: String,
    /// Idle poll interval in ms when nothing is runnable (a replica also re-polls as soon as it finalizes a job).
    #[arg(long, env = "POLL_INTERVAL_MS", value_parser = Raw,
          default_value_t = worker_default().poll_interval.as_millis().to_string())]
    pub poll_interval_ms: String,
}

fn worker_default() -> crate::worker::WorkerConfig {
    crate::worker::WorkerConfig::default()
}

/// Pruning of finished jobs and release of disconnected handles (`crate::retention`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Retention")]
pub struct RetentionArgs {
    /// Finished jobs older than this (seconds) are deleted; at least 3600.
    #[arg(long, env = "JOB_RETENTION_SECS", value_parser = Raw,
          default_value_t = crate::retention::DEFAULT_RETENTION.as_secs().to_string())]
    pub job_retention_secs: String,
    /// How long (seconds) a disconnected account's handle stays taken before it is freed; at least 3600.
    #[arg(long, env = "HANDLE_RELEASE_GRACE_SECS", value_parser = Raw,
          default_value_t = crate::retention::DEFAULT_HANDLE_RELEASE_GRACE.as_secs().to_string())]
    pub handle_release_grace_secs: String,
    /// How long (seconds) an opt-in that never finished provisioning (no DID) holds its handle before the same
    /// release pass frees it; at least 3600.
    #[arg(long, env = "UNPROVISIONED_HANDLE_RELEASE_SECS", value_parser = Raw,
          default_value_t = crate::retention::DEFAULT_UNPROVISIONED_RELEASE.as_secs().to_string())]
    pub unprovisioned_handle_release_secs: String,
}

/// Identity settings, validated.
#[derive(Clone)]
pub struct IdentityConfig {
    pub plc_url: String,
    pub pds_url: String,
    /// `KEY_ENCRYPTION_KEY`, parsed once here by [`check_kek`] (the sealing key first; empty only in a configuration
    /// that failed validation and is never returned). `app` builds the `KeyRing` from these.
    pub key_encryption_keys: Vec<crate::keys::KeyEncryptionKey>,
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
            .field("key_encryption_keys", &"<redacted>")
            .field("recovery_keys", &self.recovery_keys)
            .field("email_domain", &self.email_domain)
            .field("pds_admin_password", &"<redacted>")
            .finish()
    }
}

/// `KEY_ENCRYPTION_KEY`: must parse as [`crate::keys::KeyEncryptionKey`] (the one definition of a valid key). The
/// common mistake — 64 hex digits from `openssl rand -hex 32`, which is also valid base64 of 48 bytes — gets a hint
/// saying so and how to generate a key. The value itself is never echoed. Returns the parsed keys, in order. The
/// list is split by [`crate::keys::kek_entries`], as `keys rotate` splits it: an empty entry is refused, never dropped.
pub fn check_kek(raw: &str) -> Result<Vec<crate::keys::KeyEncryptionKey>, String> {
    let several = raw.contains(',');
    crate::keys::kek_entries(raw)
        .enumerate()
        .map(|(i, key)| check_one_kek(key).map_err(|e| if several { format!("entry {}: {e}", i + 1) } else { e }))
        .collect()
}

fn check_one_kek(raw: &str) -> Result<crate::keys::KeyEncryptionKey, String> {
    let e = match crate::keys::KeyEncryptionKey::from_base64(raw) {
        Ok(kek) => return Ok(kek),
        Err(e) => e,
    };
    let detail = match e {
        crate::keys::KeyError::KekInvalid(d) => d,
        other => other.to_string(),
    };
    let hex = raw.len() >= 32 && raw.len().is_multiple_of(2) && raw.bytes().all(|b| b.is_ascii_hexdigit());
    let hint = if hex {
        "it looks like hex; it must be base64 of 32 bytes: generate one with `openssl rand -base64 32`, or convert \
         this one with `echo <hex> | xxd -r -p | base64`"
    } else {
        "it must be base64 of 32 random bytes: generate one with `openssl rand -base64 32` (never replace the key of \
         a running deployment: restore it from the secret manager)"
    };
    Err(format!("{detail}; {hint}"))
}

impl IdentityArgs {
    pub fn validate(&self, p: &mut Problems) -> IdentityConfig {
        let allow_none = p.flag("ALLOW_NO_RECOVERY_KEYS", &self.allow_no_recovery_keys);
        let recovery_keys = envcfg::list(&self.plc_recovery_keys);
        if recovery_keys.is_empty() && !allow_none {
            p.missing(
                "PLC_RECOVERY_KEYS",
                "the did:key list of the offline recovery keys; or ALLOW_NO_RECOVERY_KEYS=true (localnet and tests only)",
            );
        } else if let Err(reason) = recovery_keys_ok(&recovery_keys) {
            p.invalid("PLC_RECOVERY_KEYS", reason);
        }
        let pds_admin_password = p.required(
            "PDS_ADMIN_PASSWORD",
            &self.pds_admin_password,
            "the PDS's admin password (it mints one invite code per account)",
        );
        let plc_url = p.required_http_url(
            "PLC_DIRECTORY_URL",
            &self.plc_directory_url,
            "e.g. https://plc.directory",
        );
        let pds_url = p.required_http_url(
            "PDS_URL",
            &self.pds_url,
            "the PDS's public URL, e.g. https://pds.example.com",
        );
        let kek = p.required(
            "KEY_ENCRYPTION_KEY",
            &self.key_encryption_key,
            "base64 of 32 bytes: `openssl rand -base64 32`",
        );
        let key_encryption_keys = match check_kek(kek) {
            Ok(keys) => keys,
            Err(reason) => {
                p.invalid("KEY_ENCRYPTION_KEY", reason);
                Vec::new()
            }
        };
        let email_domain = p.required(
            "ACCOUNT_EMAIL_DOMAIN",
            &self.account_email_domain,
            "e.g. bridge.example.com",
        );
        IdentityConfig {
            plc_url,
            pds_url,
            key_encryption_keys,
            recovery_keys,
            email_domain: email_domain.to_string(),
            pds_admin_password: pds_admin_password.to_string(),
        }
    }
}

/// `PLC_RECOVERY_KEYS`, checked at startup (issue 12 §2) by [`IdentityArgs::validate`].
///
/// Decision: an empty list is refused unless `ALLOW_NO_RECOVERY_KEYS=true` (set only by localnet and the test
/// harnesses): without an offline recovery key in `rotationKeys`, a leaked bridge rotation key lets an attacker
/// take every DID for good, and nothing would have said so at deploy time. `validate` refuses the empty list (as
/// missing) before it calls this function, which only decodes: every key is fully decoded
/// (`keys::decode_did_key`: multibase, multicodec secp256k1/P-256, a point on the curve), so a typo stops the
/// process at startup instead of failing each account's provisioning with `plc_rejected`.
pub fn recovery_keys_ok(keys: &[String]) -> Result<(), String> {
    for key in keys {
        crate::keys::decode_did_key(key).map_err(|e| format!("{key:?} does not decode as a did:key: {e}"))?;
    }
    Ok(())
}

impl IdentityConfig {
    /// From the process environment alone (tests, dev binaries).
    pub fn from_env() -> Result<IdentityConfig, ConfigError> {
        let mut p = Problems::default();
        let c = args_from_env::<IdentityArgs>()?.validate(&mut p);
        Ok(p.finish(c)?)
    }
}

/// Cross-posting settings, validated.
#[derive(Debug, Clone)]
pub struct CrosspostConfig {
    pub relays: Vec<String>,
    pub cursor_overlap: Duration,
    pub account_refresh: Duration,
    /// `NOSTR_AUTHORS_PER_SUBSCRIPTION`: authors per live subscription filter (relays cap it).
    pub authors_per_subscription: usize,
    /// `NOSTR_INGEST_SHARDS` (at most 1024): stable author buckets per relay, the unit of division among replicas.
    pub ingest_shards: u32,
    /// `INGEST_LEASE_SECS` (at least 3): an ingest shard lease; a dead replica's shards are free after it.
    pub ingest_lease: Duration,
    pub media_allowed_hosts: Vec<String>,
    pub media_allow_loopback: bool,
    /// `MEDIA_REQUIRE_VIDEO_HASH` (true): a video event without `x` is ineligible (`media_hash_missing`).
    pub media_require_video_hash: bool,
    pub media_timeout: Duration,
    /// `MEDIA_SPOOL_DIR`: where fetched videos are spooled (default `<temp dir>/divine-atbridge-spool`).
    pub media_spool_dir: std::path::PathBuf,
    /// `MEDIA_MEMORY_BUDGET_BYTES` (at least the 100 MB video cap): media bytes in flight at once.
    pub media_budget_bytes: u64,
    pub backfill_max_events: usize,
    /// `DIVINE_POST_URL_TEMPLATE`: link back to the original on Divine; `None` when set empty (off).
    pub post_url_template: Option<crate::translate::UrlTemplate>,
    /// `DIVINE_PROFILE_URL_TEMPLATE`: where mentions of non-bridged users link; `None` when set empty (off).
    pub profile_url_template: Option<crate::translate::UrlTemplate>,
}

/// A URL template (see `translate::links`): empty → `None` (the feature is off); otherwise it must use only
/// `allowed` placeholders and render an http(s) URL.
fn template(p: &mut Problems, var: &'static str, raw: &str, allowed: &[&str]) -> Option<crate::translate::UrlTemplate> {
    if raw.is_empty() {
        return None;
    }
    match crate::translate::UrlTemplate::parse(raw, allowed) {
        Ok(t) => Some(t),
        Err(reason) => {
            p.invalid(var, reason);
            None
        }
    }
}

impl CrosspostArgs {
    pub fn validate(&self, p: &mut Problems) -> CrosspostConfig {
        use crate::ingest::{MAX_INGEST_SHARDS, MIN_CURSOR_OVERLAP_SECS};
        let relays = envcfg::list(&self.nostr_relays);
        if let Some(bad) = relays
            .iter()
            .find(|r| !(r.starts_with("ws://") || r.starts_with("wss://")))
        {
            p.invalid("NOSTR_RELAYS", format!("{bad:?} is not a ws(s) URL"));
        }
        let overlap_why = format!(
            "the {} s future skew events may have plus a {} s margin",
            crate::nostr::MAX_FUTURE_SKEW_SECS,
            crate::ingest::CURSOR_OVERLAP_MARGIN_SECS
        );
        let ingest_shards = p.at_least("NOSTR_INGEST_SHARDS", &self.nostr_ingest_shards, 1u32, "");
        if ingest_shards > MAX_INGEST_SHARDS {
            p.invalid(
                "NOSTR_INGEST_SHARDS",
                format!("{ingest_shards} is above the maximum of {MAX_INGEST_SHARDS}"),
            );
        }
        CrosspostConfig {
            relays,
            cursor_overlap: p.secs(
                "CURSOR_OVERLAP_SECS",
                &self.cursor_overlap_secs,
                MIN_CURSOR_OVERLAP_SECS,
                &overlap_why,
            ),
            account_refresh: p.secs("ACCOUNT_REFRESH_SECS", &self.account_refresh_secs, 0, ""),
            authors_per_subscription: p.at_least(
                "NOSTR_AUTHORS_PER_SUBSCRIPTION",
                &self.nostr_authors_per_subscription,
                1usize,
                "",
            ),
            ingest_shards,
            ingest_lease: p.secs(
                "INGEST_LEASE_SECS",
                &self.ingest_lease_secs,
                3,
                "heartbeats run every third of it",
            ),
            media_allowed_hosts: envcfg::list(&self.media_allowed_hosts),
            media_allow_loopback: p.flag("MEDIA_ALLOW_LOOPBACK", &self.media_allow_loopback),
            media_require_video_hash: p.flag("MEDIA_REQUIRE_VIDEO_HASH", &self.media_require_video_hash),
            media_timeout: p.secs("MEDIA_TIMEOUT_SECS", &self.media_timeout_secs, 0, ""),
            media_spool_dir: match self.media_spool_dir.as_deref().filter(|d| !d.is_empty()) {
                Some(d) => std::path::PathBuf::from(d),
                None => crate::spool::default_spool_root(),
            },
            media_budget_bytes: media_budget(p, &self.media_memory_budget_bytes),
            backfill_max_events: p.parse("BACKFILL_MAX_EVENTS", &self.backfill_max_events),
            post_url_template: template(
                p,
                "DIVINE_POST_URL_TEMPLATE",
                &self.divine_post_url_template,
                crate::translate::links::POST_PLACEHOLDERS,
            ),
            profile_url_template: template(
                p,
                "DIVINE_PROFILE_URL_TEMPLATE",
                &self.divine_profile_url_template,
                crate::translate::links::PROFILE_PLACEHOLDERS,
            ),
        }
    }
}

impl CrosspostConfig {
    /// From the process environment alone (tests, dev binaries).
    pub fn from_env() -> Result<CrosspostConfig, ConfigError> {
        let mut p = Problems::default();
        let c = args_from_env::<CrosspostArgs>()?.validate(&mut p);
        Ok(p.finish(c)?)
    }
}

/// `MEDIA_MEMORY_BUDGET_BYTES`: at least one maximum-size video ([`crate::translate::MAX_VIDEO_BYTES`]). A smaller
/// budget would still let one video run alone (permits are capped at the budget), so it would silently mean "one
/// video at a time" rather than the figure configured; refusing it keeps the setting honest.
fn media_budget(p: &mut Problems, raw: &str) -> u64 {
    p.at_least(
        "MEDIA_MEMORY_BUDGET_BYTES",
        raw,
        crate::translate::MAX_VIDEO_BYTES,
        "the video size cap: one maximum-size video must fit",
    )
}

impl ReconcileArgs {
    /// The sweep settings, with the relays and author chunking of the live path.
    pub fn validate(&self, p: &mut Problems, crosspost: &CrosspostConfig) -> crate::reconcile::ReconcileConfig {
        let interval = p.parse("RECONCILE_INTERVAL_SECS", &self.reconcile_interval_secs);
        let window = p.parse("RECONCILE_WINDOW_SECS", &self.reconcile_window_secs);
        let grace = p.parse("RECONCILE_GRACE_SECS", &self.reconcile_grace_secs);
        let page_size = p.parse("RECONCILE_PAGE_SIZE", &self.reconcile_page_size);
        reconcile_settings(p, crosspost, interval, window, grace, page_size)
    }
}

/// Validates the sweep settings. With the sweep on (interval > 0): the window must reach back at least the live
/// overlap plus one interval (older than the overlap is exactly what the live path cannot see again, and each event
/// must fall inside some sweep's window), the grace must be shorter than the window, and a page holds at least one
/// event. Rules whose inputs did not parse are skipped (their own problem is already recorded).
fn reconcile_settings(
    p: &mut Problems,
    crosspost: &CrosspostConfig,
    interval: u64,
    window: u64,
    grace: u64,
    page_size: usize,
) -> crate::reconcile::ReconcileConfig {
    let parsed = |p: &Problems, vars: &[&str]| vars.iter().all(|v| !p.has(v));
    if interval > 0 && parsed(p, &["RECONCILE_INTERVAL_SECS"]) {
        let floor = crosspost.cursor_overlap.as_secs().saturating_add(interval);
        if window < floor && parsed(p, &["RECONCILE_WINDOW_SECS", "CURSOR_OVERLAP_SECS"]) {
            p.invalid(
                "RECONCILE_WINDOW_SECS",
                format!("{window} is below CURSOR_OVERLAP_SECS + RECONCILE_INTERVAL_SECS ({floor})"),
            );
        }
        if grace >= window && parsed(p, &["RECONCILE_GRACE_SECS", "RECONCILE_WINDOW_SECS"]) {
            p.invalid(
                "RECONCILE_GRACE_SECS",
                format!("{grace} must be below RECONCILE_WINDOW_SECS ({window})"),
            );
        }
        if page_size == 0 && parsed(p, &["RECONCILE_PAGE_SIZE"]) {
            p.invalid("RECONCILE_PAGE_SIZE", "must be at least 1");
        }
    }
    crate::reconcile::ReconcileConfig {
        relays: crosspost.relays.clone(),
        interval: Duration::from_secs(interval),
        window: Duration::from_secs(window),
        grace: Duration::from_secs(grace),
        page_size,
        authors_per_query: crosspost.authors_per_subscription,
    }
}

impl WorkerArgs {
    /// The pool settings; the rules between them are [`crate::worker::WorkerConfig::check`].
    pub fn validate(&self, p: &mut Problems) -> crate::worker::WorkerConfig {
        let d = crate::worker::WorkerConfig::default();
        let secs = |p: &mut Problems, var, raw: &str| Duration::from_secs(p.parse(var, raw));
        let c = crate::worker::WorkerConfig {
            workers: p.parse("WORKERS", &self.workers),
            lease: secs(p, "LEASE_SECS", &self.lease_secs),
            watchdog_enabled: p.flag("WATCHDOG_ENABLED", &self.watchdog_enabled),
            watchdog_interval: secs(p, "WATCHDOG_INTERVAL_SECS", &self.watchdog_interval_secs),
            shutdown_grace: secs(p, "SHUTDOWN_GRACE_SECS", &self.shutdown_grace_secs),
            retry_base: secs(p, "RETRY_BASE_SECS", &self.retry_base_secs),
            retry_cap: secs(p, "RETRY_CAP_SECS", &self.retry_cap_secs),
            retry_max_age: secs(p, "RETRY_MAX_AGE_SECS", &self.retry_max_age_secs),
            try_timeout: secs(p, "TRY_TIMEOUT_SECS", &self.try_timeout_secs),
            reclaim_limit: p.parse("RECLAIM_LIMIT", &self.reclaim_limit),
            panic_limit: p.parse("PANIC_LIMIT", &self.panic_limit),
            poll_interval: Duration::from_millis(p.parse("POLL_INTERVAL_MS", &self.poll_interval_ms)),
            stats_interval: d.stats_interval,
        };
        c.check(p);
        c
    }
}

impl RetentionArgs {
    /// `JOB_RETENTION_SECS`: at least [`crate::retention::MIN_RETENTION`].
    pub fn job_retention(&self, p: &mut Problems) -> Duration {
        p.secs(
            "JOB_RETENTION_SECS",
            &self.job_retention_secs,
            crate::retention::MIN_RETENTION.as_secs(),
            "",
        )
    }

    /// `HANDLE_RELEASE_GRACE_SECS`: at least one hour (a user who disconnected by mistake, or an operator looking
    /// at a disconnect, has time before someone else can take the handle).
    pub fn handle_release_grace(&self, p: &mut Problems) -> Duration {
        p.secs("HANDLE_RELEASE_GRACE_SECS", &self.handle_release_grace_secs, 3600, "")
    }

    /// `UNPROVISIONED_HANDLE_RELEASE_SECS`: at least one hour (provisioning retries transient failures for much
    /// longer; this only frees names whose opt-in has visibly gone nowhere).
    pub fn unprovisioned_handle_release(&self, p: &mut Problems) -> Duration {
        p.secs(
            "UNPROVISIONED_HANDLE_RELEASE_SECS",
            &self.unprovisioned_handle_release_secs,
            3600,
            "",
        )
    }
}

/// `JOB_RETENTION_SECS` from the process environment alone.
pub fn job_retention() -> Result<Duration, ConfigError> {
    let mut p = Problems::default();
    let d = args_from_env::<RetentionArgs>()?.job_retention(&mut p);
    Ok(p.finish(d)?)
}

/// `HANDLE_RELEASE_GRACE_SECS` from the process environment alone.
pub fn handle_release_grace() -> Result<Duration, ConfigError> {
    let mut p = Problems::default();
    let d = args_from_env::<RetentionArgs>()?.handle_release_grace(&mut p);
    Ok(p.finish(d)?)
}

/// Everything `divine-atbridge run` needs besides the worker pool settings. `Debug` redacts the `DATABASE_URL`
/// password (and `IdentityConfig` the KEK and the PDS admin password).
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub http_addr: std::net::SocketAddr,
    /// Pool size, session timeouts and TCP keepalives (`DB_*`, shared with the gateway).
    pub db: DbSettings,
    /// `DB_CONNECT_WAIT_SECS`: how long startup retries an unreachable Postgres (`Db::connect_within`).
    pub db_connect_wait: Duration,
    pub identity: IdentityConfig,
    pub crosspost: CrosspostConfig,
    /// `JOB_RETENTION_SECS`: finished jobs older than this are pruned (`crate::retention`).
    pub job_retention: Duration,
    /// `HANDLE_RELEASE_GRACE_SECS`: how long a disconnected account's handle stays taken before the release pass
    /// frees it (`crate::retention::release_pass`).
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

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &envcfg::redact_database_url(&self.database_url))
            .field("http_addr", &self.http_addr)
            .field("db", &self.db)
            .field("db_connect_wait", &self.db_connect_wait)
            .field("identity", &self.identity)
            .field("crosspost", &self.crosspost)
            .field("job_retention", &self.job_retention)
            .field("handle_release_grace", &self.handle_release_grace)
            .field("unprovisioned_handle_release", &self.unprovisioned_handle_release)
            .field("reconcile", &self.reconcile)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("gateway_db_role", &self.gateway_db_role)
            .finish()
    }
}

impl RunArgs {
    /// Validates every section, reporting every problem at once. `database_url` is the CLI's global
    /// `DATABASE_URL` option.
    pub fn validate(
        &self,
        database_url: &Option<String>,
    ) -> Result<(Config, crate::worker::WorkerConfig), ConfigError> {
        let mut p = Problems::default();
        let http_addr = match self.service.http_addr.parse() {
            Ok(a) => a,
            Err(e) => {
                p.invalid(
                    "HTTP_ADDR",
                    format!("{:?} is not host:port ({e})", self.service.http_addr),
                );
                std::net::SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };
        let (database_url, db, db_connect_wait) = self.db.validate(&mut p, database_url, &self.service.db_pool_size);
        let identity = self.identity.validate(&mut p);
        let crosspost = self.crosspost.validate(&mut p);
        let reconcile = self.reconcile.validate(&mut p, &crosspost);
        let worker = self.worker.validate(&mut p);
        let allow_insecure_http = p.flag("ALLOW_INSECURE_HTTP", &self.service.allow_insecure_http);
        let gateway_db_role = match self.service.gateway_db_role.as_deref().filter(|r| !r.is_empty()) {
            None => None,
            Some(raw) => match divine_bridge_db::roles::RoleName::parse(raw) {
                Ok(r) => Some(r),
                Err(e) => {
                    p.invalid("GATEWAY_DB_ROLE", e.to_string());
                    None
                }
            },
        };
        let config = Config {
            database_url,
            http_addr,
            db,
            db_connect_wait,
            identity,
            job_retention: self.retention.job_retention(&mut p),
            handle_release_grace: self.retention.handle_release_grace(&mut p),
            unprovisioned_handle_release: self.retention.unprovisioned_handle_release(&mut p),
            reconcile,
            allow_insecure_http,
            gateway_db_role,
            crosspost,
        };
        Ok(p.finish((config, worker))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(pairs: &[(&str, &str)]) -> RunArgs {
        envcfg::parse_pairs(pairs).unwrap()
    }

    const KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn valid() -> Vec<(&'static str, &'static str)> {
        vec![
            ("PLC_DIRECTORY_URL", "https://plc.test/"),
            ("PDS_URL", "https://pds.test"),
            ("KEY_ENCRYPTION_KEY", KEK),
            ("ACCOUNT_EMAIL_DOMAIN", "bridge.test"),
            ("PDS_ADMIN_PASSWORD", "admin-hunter3"),
            ("ALLOW_NO_RECOVERY_KEYS", "true"),
        ]
    }

    #[test]
    fn recovery_keys_are_required_unless_allowed_and_fully_decoded() {
        // Empty: refused as missing by `validate` unless allowed; nothing to decode here.
        let db = Some("postgres://bridge@db:5432/bridge".to_string());
        let mut pairs = valid();
        pairs.retain(|(n, _)| *n != "ALLOW_NO_RECOVERY_KEYS");
        let missing = run_args(&pairs).validate(&db).unwrap_err();
        assert_eq!(missing.vars(), ["PLC_RECOVERY_KEYS"]);
        assert!(missing.to_string().contains("ALLOW_NO_RECOVERY_KEYS=true"), "{missing}");
        run_args(&valid()).validate(&db).unwrap();
        recovery_keys_ok(&[]).unwrap();
        let k256 = crate::keys::AccountKey::generate().did_key();
        // P-256 generator point, compressed (multicodec 0x1200).
        let p256 = "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169".to_string();
        recovery_keys_ok(&[k256.clone(), p256]).unwrap();
        // Shaped like a did:key (the old prefix check passed these) but not a key.
        for bad in [
            "did:key:zbad".to_string(),
            k256[..k256.len() - 2].to_string(),
            "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".to_string(),
        ] {
            let e = recovery_keys_ok(&[k256.clone(), bad.clone()]).unwrap_err();
            assert!(e.contains("does not decode"), "{bad}: {e}");
        }
    }

    #[test]
    fn debug_never_shows_the_database_password_the_kek_or_the_admin_password() {
        let (c, _) = run_args(&valid())
            .validate(&Some("postgres://bridge:hunter2-secret@db:5432/bridge".into()))
            .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("admin-hunter3"), "{shown}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(!shown.contains(KEK), "{shown}");
        assert!(shown.contains("postgres://bridge:***@db:5432/bridge"), "{shown}");
    }

    #[test]
    fn a_kek_list_is_checked_key_by_key() {
        let with_kek = |kek: &str| {
            let mut pairs: Vec<(&str, &str)> = valid()
                .into_iter()
                .filter(|(k, _)| *k != "KEY_ENCRYPTION_KEY")
                .collect();
            pairs.push(("KEY_ENCRYPTION_KEY", kek));
            run_args(&pairs).validate(&Some("postgres://u@h/db".into()))
        };
        with_kek(&format!("{KEK},{KEK}")).unwrap();
        let e = with_kek(&format!("{KEK},not-a-key")).unwrap_err();
        assert_eq!(e.vars(), ["KEY_ENCRYPTION_KEY"]);
    }

    #[test]
    fn defaults_validate() {
        let (c, w) = run_args(&valid()).validate(&Some("postgres://u@h/db".into())).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(c.identity.plc_url, "https://plc.test");
        assert_eq!(c.db, DbSettings::with_pool_size(16));
        assert_eq!(c.db_connect_wait, envcfg::DEFAULT_CONNECT_WAIT);
        assert_eq!(
            c.crosspost.cursor_overlap.as_secs(),
            crate::ingest::DEFAULT_CURSOR_OVERLAP_SECS
        );
        assert!(c.crosspost.post_url_template.is_some());
        assert_eq!(c.job_retention, crate::retention::DEFAULT_RETENTION);
        assert_eq!(
            format!("{w:?}"),
            format!("{:?}", crate::worker::WorkerConfig::default())
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_hints() {
        // Before: the first missing variable stopped startup, one per restart.
        let e = run_args(&[
            ("PDS_URL", "pds.test"),
            (
                "KEY_ENCRYPTION_KEY",
                "0001020304050607080900010203040506070809000102030405060708090001",
            ),
            ("CURSOR_OVERLAP_SECS", "300"),
            ("WORKERS", "0"),
            ("HTTP_ADDR", "9090"),
            ("LEASE_SECS", "soon"),
        ])
        .validate(&None)
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ConfigInvalid);
        assert_eq!(
            e.vars(),
            [
                "HTTP_ADDR",
                "DATABASE_URL",
                "PLC_RECOVERY_KEYS",
                "PDS_ADMIN_PASSWORD",
                "PLC_DIRECTORY_URL",
                "PDS_URL",
                "KEY_ENCRYPTION_KEY",
                "ACCOUNT_EMAIL_DOMAIN",
                "CURSOR_OVERLAP_SECS",
                "LEASE_SECS",
                "WORKERS",
            ]
        );
        let text = e.to_string();
        assert!(text.starts_with("11 configuration problems:"), "{text}");
        assert!(
            text.contains("ALLOW_NO_RECOVERY_KEYS=true (localnet and tests only)"),
            "{text}"
        );
        assert!(
            text.contains("openssl rand -base64 32") && text.contains("looks like hex"),
            "{text}"
        );
        assert!(
            text.contains("has no scheme; write the full URL, e.g. https://pds.test"),
            "{text}"
        );
        assert!(text.contains("300 is below the minimum of 720"), "{text}");
        assert!(text.contains("run --help"), "{text}");
        assert!(!text.contains("0001020304050607"), "the key is never echoed: {text}");

        let only_missing = run_args(&[]).validate(&None).unwrap_err();
        assert_eq!(only_missing.code(), ErrorCode::ConfigMissing);
    }

    #[test]
    fn kek_must_be_base64_of_32_bytes() {
        let parsed = check_kek(KEK).unwrap();
        let expected = crate::keys::KeyEncryptionKey::from_base64(KEK).unwrap().key_id();
        assert_eq!(
            parsed.iter().map(|k| k.key_id()).collect::<Vec<_>>(),
            std::slice::from_ref(&expected)
        );
        // The configuration carries the parsed keys; startup builds its ring from them, no second parse.
        let (c, _) = run_args(&valid()).validate(&Some("postgres://u@h/db".into())).unwrap();
        let ring = crate::keys::KeyRing::from_keys(c.identity.key_encryption_keys).unwrap();
        assert_eq!(ring.ids(), [expected]);
        let e = check_kek("c2hvcnQ=").unwrap_err();
        assert!(e.contains("32 bytes") && e.contains("openssl rand -base64 32"), "{e}");
        // An empty entry (an unset `$OLD` in `$NEW,$OLD`) is refused with its position, as `keys rotate` refuses it.
        for (list, entry) in [
            (format!("{KEK},"), "entry 2"),
            (format!("{KEK}, ,{KEK}"), "entry 2"),
            (format!(",{KEK}"), "entry 1"),
        ] {
            let e = check_kek(&list).unwrap_err();
            assert!(e.contains(entry) && e.contains("empty"), "{list}: {e}");
        }
    }

    #[test]
    fn media_budget_must_hold_one_maximum_size_video() {
        let mut p = Problems::default();
        assert_eq!(media_budget(&mut p, "100000000"), 100_000_000);
        assert!(p.is_empty());
        media_budget(&mut p, "99999999");
        assert!(p.has("MEDIA_MEMORY_BUDGET_BYTES"), "{p}");
    }

    #[test]
    fn cursor_overlap_covers_the_future_skew_plus_a_margin() {
        let min = crate::nostr::MAX_FUTURE_SKEW_SECS + crate::ingest::CURSOR_OVERLAP_MARGIN_SECS;
        const { assert!(crate::ingest::DEFAULT_CURSOR_OVERLAP_SECS >= 15 * 60) };
        let overlap = |v: &str| {
            let mut p = Problems::default();
            run_args(&[("CURSOR_OVERLAP_SECS", v)]).crosspost.validate(&mut p);
            p.is_empty()
        };
        assert!(overlap(&min.to_string()));
        // The old default (300 s) is shorter than the 600 s skew: refused at startup.
        assert!(!overlap("300"));
        assert!(!overlap(&(min - 1).to_string()));
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
    fn reconcile_settings_are_validated() {
        let c = crosspost();
        let check = |interval, window, grace, page| {
            let mut p = Problems::default();
            let r = reconcile_settings(&mut p, &c, interval, window, grace, page);
            (r, p.list().iter().map(|x| x.var).collect::<Vec<_>>())
        };
        let (ok, none) = check(300, 86_400, 60, 500);
        assert!(none.is_empty());
        assert_eq!(ok.interval, Duration::from_secs(300));
        assert_eq!(ok.authors_per_query, 7);
        assert_eq!(ok.relays, c.relays);
        use crate::reconcile as r;
        assert!(check(
            r::DEFAULT_INTERVAL_SECS,
            r::DEFAULT_WINDOW_SECS,
            r::DEFAULT_GRACE_SECS,
            r::DEFAULT_PAGE_SIZE
        )
        .1
        .is_empty());
        // 0 = off: nothing else is checked.
        assert!(check(0, 0, 0, 0).1.is_empty());
        // A window that does not reach past the live overlap plus one interval would miss what only the sweep finds.
        assert_eq!(check(300, 1199, 60, 500).1, ["RECONCILE_WINDOW_SECS"]);
        assert!(check(300, 1200, 60, 500).1.is_empty());
        assert_eq!(check(300, 1200, 1200, 500).1, ["RECONCILE_GRACE_SECS"]);
        assert_eq!(check(300, 1200, 60, 0).1, ["RECONCILE_PAGE_SIZE"]);
    }

    /// README.md's configuration tables against the clap definitions, both ways: every variable either binary's
    /// clap definition reads (plus [`envcfg::LOGGING_VARS`]) has a row, every row is such a variable, and a row's default
    /// cell shows the clap default.
    #[test]
    fn readme_table_matches_the_clap_definitions() {
        use clap::CommandFactory;
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let mismatches = envcfg::readme_table_mismatches(&readme, "`divine-atbridge`", &crate::cli::Cli::command());
        assert!(mismatches.is_empty(), "{mismatches:#?}");
    }

    #[test]
    fn run_help_lists_every_variable_with_its_default() {
        use clap::CommandFactory;
        let mut cmd = crate::cli::Cli::command();
        cmd.build(); // propagates the global DATABASE_URL into `run`, as parsing does
        let help = cmd
            .find_subcommand_mut("run")
            .expect("run subcommand")
            .render_long_help()
            .to_string();
        assert!(
            help.contains("[env: CURSOR_OVERLAP_SECS=") || help.contains("[env: CURSOR_OVERLAP_SECS]"),
            "{help}"
        );
        assert!(help.contains("[default: 900]"), "{help}");
        for (name, _) in envcfg::env_vars(&crate::cli::Cli::command()) {
            assert!(help.contains(&format!("env: {name}")), "run --help lacks {name}");
        }
        for (name, _, _) in envcfg::LOGGING_VARS {
            assert!(help.contains(name), "run --help lacks {name}");
        }
    }
}
