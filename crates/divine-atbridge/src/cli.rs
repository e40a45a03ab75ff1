//! The operator command line of `divine-atbridge` (clap): `run` (default), `migrate`, `status`,
//! `jobs list|retry|cancel`, `accounts show|reprovision|suspend|unsuspend`. Output is a readable table, or JSON with
//! `--json` for scripts; long operations print a progress line on stderr. A command that did nothing (no such job,
//! not in a state that allows it) fails with a stable code, printed once as `error[code]: …`, exit status 1.
//! Owns argument parsing and presentation only: queries and state changes go through `divine_bridge_db::queue` (the
//! one place job transitions, the job listing and the per-account job counts live) and the account store.

use chrono::{DateTime, Utc};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use diesel::prelude::*;
use divine_bridge_db::accounts::AccountLink;
use divine_bridge_db::queue::JobRow;
use divine_bridge_db::schema::{account_keys, account_links, account_sessions, record_mappings};
use divine_bridge_db::{Classified, DbError, ErrorClass, ErrorCode, JobKind, JobState};
use serde::Serialize;

/// Divine → ATProto bridge worker and operator tools.
///
/// Every setting is an environment variable (or the matching --flag): `divine-atbridge run --help` lists them all
/// with their defaults. --help and --version never touch the database.
#[derive(Debug, Parser)]
#[command(name = "divine-atbridge", version, about, long_about)]
pub struct Cli {
    /// Postgres URL, postgres://USER:PASSWORD@HOST:5432/DATABASE (required by every command; must not set
    /// keepalives* / tcp_user_timeout, which the DB_* variables of `run` configure).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true, value_parser = divine_bridge_db::envcfg::Raw)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge: relay ingest, job workers, watchdog, /metrics /health /ready (the default).
    #[command(after_help = divine_bridge_db::envcfg::logging_help())]
    Run(Box<crate::config::RunArgs>),
    /// Apply pending database migrations (under the advisory lock) and exit.
    Migrate,
    /// The first minute of an incident: jobs queued/running/failed by kind with the oldest runnable job's wait,
    /// accounts by provisioning state, and each relay's cursor age.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Inspect and steer jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Inspect and re-drive accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Key-encryption-key custody.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Database administration.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-seal every account key, password and session under the FIRST key of `KEY_ENCRYPTION_KEY` (the others
    /// must still be listed: they open what is not re-sealed yet). Resumable: run it again after any interruption.
    Rotate {
        /// Rows read per batch (a progress line is printed after each).
        #[arg(long, default_value_t = crate::rekey::DEFAULT_BATCH)]
        batch: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Print (or `--apply` with `DATABASE_URL`, as a superuser or the database owner) the SQL that creates the
    /// least-privilege worker and gateway roles (`divine_bridge_db::roles`). Idempotent.
    Roles {
        #[arg(long, default_value = divine_bridge_db::roles::DEFAULT_WORKER_ROLE)]
        worker_role: String,
        #[arg(long, default_value = divine_bridge_db::roles::DEFAULT_GATEWAY_ROLE)]
        gateway_role: String,
        /// Apply it to `DATABASE_URL` instead of printing it.
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List(ListArgs),
    /// Put a failed, cancelled or ineligible job back in the queue (`<id>`), or all failed jobs (`--failed`).
    Retry(RetryArgs),
    /// Cancel a job: queued jobs at once, running jobs when they finish their current try.
    Cancel {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

/// `--state`: the valid values are the queue's states ([`JobState::ALL`]), listed by `--help`.
fn job_state_arg() -> impl TypedValueParser<Value = JobState> {
    PossibleValuesParser::new(JobState::ALL.iter().map(|s| s.as_str())).try_map(|s| s.parse::<JobState>())
}

/// `--kind`: the valid values are the job kinds ([`JobKind::ALL`]), listed by `--help`.
fn job_kind_arg() -> impl TypedValueParser<Value = JobKind> {
    PossibleValuesParser::new(JobKind::ALL.iter().map(|k| k.as_str())).try_map(|s| s.parse::<JobKind>())
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state.
    #[arg(long, value_parser = job_state_arg())]
    pub state: Option<JobState>,
    /// Only jobs of this kind.
    #[arg(long, value_parser = job_kind_arg())]
    pub kind: Option<JobKind>,
    /// Only the jobs of one account: Nostr pubkey (hex or npub), handle, DID, or a unique prefix of the hex pubkey
    /// (as `accounts show`).
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Full ordering keys and error messages instead of shortened ones.
    #[arg(long)]
    pub wide: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Job id to retry.
    pub id: Option<i64>,
    /// Retry every failed job (optionally of one `--kind`).
    #[arg(long, conflicts_with = "id")]
    pub failed: bool,
    #[arg(long, requires = "failed", value_parser = job_kind_arg())]
    pub kind: Option<JobKind>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Show an account by Nostr pubkey (hex or npub), handle or DID.
    Show {
        who: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-run provisioning for an account (resumes from its last completed step; never mints a second DID). An
    /// account that is ready already is left alone (`error[account_already_ready]`).
    Reprovision {
        /// Nostr pubkey (hex or npub), handle, DID or a unique hex prefix.
        who: String,
        #[arg(long)]
        json: bool,
    },
    /// Suspend an account (operator only): no new cross-posts, deletes still honoured; the user cannot lift it.
    Suspend {
        who: String,
        /// Why (required; kept on the account and in the audit trail).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Lift a suspension: the account becomes `disabled` (cross-posting stays off until it is enabled again).
    Unsuspend {
        who: String,
        #[arg(long)]
        json: bool,
    },
}

/// Why an operator command did nothing. Each has a stable code (printed as `error[code]: …`, documented in
/// troubleshooting.md) and makes the command exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no account matches {0:?} (pubkey hex or npub, handle, DID, or a hex prefix)")]
    AccountNotFound(String),
    #[error("{selector:?} matches {count} accounts (e.g. {examples}); give more of the pubkey")]
    AccountAmbiguous {
        selector: String,
        count: usize,
        examples: String,
    },
    #[error("no job {0}")]
    JobNotFound(i64),
    #[error("job {id} is {state}; only failed, cancelled or ineligible jobs can be retried")]
    JobNotRetryable { id: i64, state: JobState },
    #[error("job {id} already finished ({state}); nothing to cancel")]
    JobAlreadyFinished { id: i64, state: JobState },
    #[error("account {handle} ({pubkey}) is ready already; nothing to re-provision")]
    AccountAlreadyReady { pubkey: String, handle: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Classified for CliError {
    fn code(&self) -> ErrorCode {
        match self {
            CliError::AccountNotFound(_) => ErrorCode::AccountNotFound,
            CliError::AccountAmbiguous { .. } => ErrorCode::AccountAmbiguous,
            CliError::JobNotFound(_) => ErrorCode::JobNotFound,
            CliError::JobNotRetryable { .. } => ErrorCode::JobNotRetryable,
            CliError::JobAlreadyFinished { .. } => ErrorCode::JobAlreadyFinished,
            CliError::AccountAlreadyReady { .. } => ErrorCode::AccountAlreadyReady,
            CliError::Db(e) => e.code(),
        }
    }
    fn class(&self) -> ErrorClass {
        match self {
            CliError::Db(e) => e.class(),
            _ => ErrorClass::Permanent,
        }
    }
}

/// The shortest hex prefix `--account`/`accounts show` accept (shorter ones match too much to be meant).
pub const MIN_PREFIX: usize = 4;

/// Resolves an account selector to its pubkey (lower-case hex): an exact pubkey (hex or npub), handle or DID, else a
/// prefix of the hex pubkey of at least [`MIN_PREFIX`] characters that matches exactly one account. The one resolver
/// of every CLI command that names an account.
pub fn resolve_account(conn: &mut PgConnection, who: &str) -> Result<String, CliError> {
    let selector = normalise_selector(who);
    let exact: Option<String> = account_links::table
        .filter(
            account_links::nostr_pubkey
                .eq(&selector)
                .or(account_links::handle.eq(&selector))
                .or(account_links::did.eq(&selector)),
        )
        .select(account_links::nostr_pubkey)
        .first(conn)
        .optional()
        .map_err(DbError::from)?;
    if let Some(pk) = exact {
        return Ok(pk);
    }
    let is_prefix =
        selector.len() >= MIN_PREFIX && selector.len() < 64 && selector.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_prefix {
        return Err(CliError::AccountNotFound(who.to_string()));
    }
    let matches: Vec<String> = account_links::table
        .filter(account_links::nostr_pubkey.like(format!("{selector}%")))
        .select(account_links::nostr_pubkey)
        .order(account_links::nostr_pubkey)
        .limit(3)
        .load(conn)
        .map_err(DbError::from)?;
    match matches.as_slice() {
        [] => Err(CliError::AccountNotFound(who.to_string())),
        [one] => Ok(one.clone()),
        more => {
            let count: i64 = account_links::table
                .filter(account_links::nostr_pubkey.like(format!("{selector}%")))
                .count()
                .get_result(conn)
                .map_err(DbError::from)?;
            Err(CliError::AccountAmbiguous {
                selector: who.to_string(),
                count: count as usize,
                examples: more.iter().take(2).map(|k| short(k, 16)).collect::<Vec<_>>().join(", "),
            })
        }
    }
}

fn is_full_hex_pubkey(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads jobs for `jobs list` through the queue's listing ([`divine_bridge_db::queue::list`]), the account
/// selector resolved first.
pub fn list_jobs(conn: &mut PgConnection, args: &ListArgs) -> Result<Vec<JobRow>, CliError> {
    // A full hex pubkey needs no link row: the jobs of an account whose link was deleted (handle released after a
    // disconnect) stay listable by the key they were enqueued under.
    let account = match &args.account {
        Some(who) => match resolve_account(conn, who) {
            Err(CliError::AccountNotFound(_)) if is_full_hex_pubkey(&normalise_selector(who)) => {
                Some(normalise_selector(who))
            }
            resolved => Some(resolved?),
        },
        None => None,
    };
    let filter = divine_bridge_db::queue::JobFilter {
        state: args.state,
        kind: args.kind,
        ordering_key: None,
        account,
    };
    Ok(divine_bridge_db::queue::list(conn, &filter, args.limit)?)
}

/// Renders rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.push(line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Formats `jobs list` output: ordering keys and errors shortened, or in full with `wide`.
pub fn render_jobs(rows: &[JobRow], wide: bool) -> String {
    let cut = |s: &str, n: usize| if wide { s.to_string() } else { short(s, n) };
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.kind.to_string(),
                r.state.to_string(),
                cut(&r.ordering_key, 12),
                r.attempt.to_string(),
                r.run_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.last_error_code.clone().unwrap_or_default(),
                cut(r.last_error.as_deref().unwrap_or(""), 60),
            ]
        })
        .collect();
    table(
        &["ID", "KIND", "STATE", "KEY", "ATTEMPT", "RUN_AT", "ERROR_CODE", "ERROR"],
        &body,
    )
}

/// Everything an operator wants to know about one account: the link row (flattened, so `--json` shows its fields
/// at the top level) plus keys, provisioning step, session expiry and job/record counts.
#[derive(Debug, Serialize)]
pub struct AccountView {
    #[serde(flatten)]
    pub link: AccountLink,
    pub signing_did_key: Option<String>,
    pub rotation_did_key: Option<String>,
    pub provision_step: Option<String>,
    pub session_access_expires_at: Option<DateTime<Utc>>,
    pub jobs_by_state: Vec<(JobState, i64)>,
    pub records_by_state: Vec<(String, i64)>,
    /// The newest entries of the `account_audit` trail, newest first.
    pub audit: Vec<divine_bridge_db::audit::AuditEntry>,
}

/// How many audit entries `accounts show` prints.
pub const SHOW_AUDIT_ENTRIES: i64 = 20;

/// Normalises an account selector: npub → hex, hex lower-cased; handles and DIDs pass through.
pub fn normalise_selector(who: &str) -> String {
    let who = who.trim();
    if who.starts_with("npub1") {
        if let Ok(pk) = nostr::PublicKey::parse(who) {
            return pk.to_hex();
        }
    }
    who.to_lowercase()
}

/// Loads an [`AccountView`] by any selector [`resolve_account`] accepts.
pub fn load_account(conn: &mut PgConnection, who: &str) -> Result<AccountView, CliError> {
    let pk = resolve_account(conn, who)?;
    Ok(account_view(conn, &pk)?)
}

fn account_view(conn: &mut PgConnection, pk: &str) -> Result<AccountView, DbError> {
    let link: AccountLink = account_links::table
        .find(pk)
        .select(AccountLink::as_select())
        .first(conn)?;
    let pk = link.nostr_pubkey.clone();
    let keys: Option<(String, String, Option<serde_json::Value>)> = account_keys::table
        .find(&pk)
        .select((
            account_keys::signing_did_key,
            account_keys::rotation_did_key,
            account_keys::provision_state,
        ))
        .first(conn)
        .optional()?;
    let session_exp: Option<Option<DateTime<Utc>>> = match &link.did {
        Some(d) => account_sessions::table
            .find(d)
            .select(account_sessions::access_expires_at)
            .first(conn)
            .optional()?,
        None => None,
    };
    let jobs_by_state = divine_bridge_db::queue::count_by_state_for_account(conn, &pk)?;
    let records_by_state: Vec<(String, i64)> = record_mappings::table
        .filter(record_mappings::nostr_pubkey.eq(&pk))
        .group_by(record_mappings::state)
        .select((record_mappings::state, diesel::dsl::count_star()))
        .order(record_mappings::state)
        .load(conn)?;
    let (signing_did_key, rotation_did_key, provision_step) = match keys {
        Some((s, r, st)) => (
            Some(s),
            Some(r),
            st.and_then(|v| v.get("step").and_then(|s| s.as_str()).map(str::to_string)),
        ),
        None => (None, None, None),
    };
    let audit = divine_bridge_db::audit::list(conn, &pk, SHOW_AUDIT_ENTRIES)?;
    Ok(AccountView {
        audit,
        link,
        signing_did_key,
        rotation_did_key,
        provision_step,
        session_access_expires_at: session_exp.flatten(),
        jobs_by_state,
        records_by_state,
    })
}

/// Formats `accounts show` output as `key: value` lines.
pub fn render_account(a: &AccountView) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    fn counts<S: std::fmt::Display>(v: &[(S, i64)]) -> String {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>().join(" ")
        }
    }
    let rows = vec![
        vec!["nostr_pubkey".into(), a.link.nostr_pubkey.clone()],
        vec!["handle".into(), a.link.handle.clone()],
        vec!["did".into(), opt(&a.link.did)],
        vec!["crosspost_enabled".into(), a.link.crosspost_enabled.to_string()],
        vec!["provisioning_state".into(), a.link.provisioning_state.clone()],
        vec!["provision_step".into(), opt(&a.provision_step)],
        vec!["provisioning_error".into(), opt(&a.link.provisioning_error)],
        vec!["error_detail".into(), opt(&a.link.provisioning_error_detail)],
        vec![
            "disabled_at".into(),
            a.link.disabled_at.map(|d| d.to_rfc3339()).unwrap_or_else(|| "-".into()),
        ],
        vec!["suspended_reason".into(), opt(&a.link.suspended_reason)],
        vec!["signing_did_key".into(), opt(&a.signing_did_key)],
        vec!["rotation_did_key".into(), opt(&a.rotation_did_key)],
        vec![
            "session_expires_at".into(),
            a.session_access_expires_at
                .map(|d| d.to_rfc3339())
                .unwrap_or_else(|| "-".into()),
        ],
        vec!["jobs".into(), counts(&a.jobs_by_state)],
        vec!["records".into(), counts(&a.records_by_state)],
        vec!["created_at".into(), a.link.created_at.to_rfc3339()],
        vec!["updated_at".into(), a.link.updated_at.to_rfc3339()],
    ];
    let mut out = table(&["FIELD", "VALUE"], &rows);
    out.push_str("\naudit (newest first):\n");
    let state = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .and_then(|v| v.get("provisioning_state"))
            .and_then(|s| s.as_str())
            .unwrap_or("-")
            .to_string()
    };
    let audit: Vec<Vec<String>> = a
        .audit
        .iter()
        .map(|e| {
            vec![
                e.created_at.to_rfc3339(),
                e.actor.clone(),
                e.action.clone(),
                format!("{} -> {}", state(&e.before_state), state(&e.after_state)),
                opt(&e.reason),
            ]
        })
        .collect();
    out.push_str(&table(&["AT", "ACTOR", "ACTION", "STATE", "REASON"], &audit));
    out
}

/// What `divine-atbridge status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Per kind with a queued, running or failed job.
    pub jobs: Vec<divine_bridge_db::queue::KindStatus>,
    /// Every provisioning state with its account count.
    pub accounts: Vec<(String, i64)>,
    /// Every stored relay position with its age.
    pub relays: Vec<divine_bridge_db::shards::CursorPosition>,
}

/// Reads [`Status`] (three read-only queries of the db crate).
pub fn load_status(conn: &mut PgConnection) -> Result<Status, CliError> {
    Ok(Status {
        jobs: divine_bridge_db::queue::kind_status(conn)?,
        accounts: divine_bridge_db::accounts::count_by_state(conn)?
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect(),
        relays: divine_bridge_db::shards::cursor_positions(conn)?,
    })
}

/// A duration for people: `45s`, `12m05s`, `3h04m`, `2d03h`; negative ages (ahead of the clock) get a `-`.
pub fn human_age(secs: f64) -> String {
    let sign = if secs < 0.0 { "-" } else { "" };
    let s = secs.abs().round() as u64;
    let body = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    };
    format!("{sign}{body}")
}

/// Formats `status` output: three tables.
pub fn render_status(st: &Status) -> String {
    let jobs: Vec<Vec<String>> = st
        .jobs
        .iter()
        .map(|k| {
            vec![
                k.kind.to_string(),
                k.queued.to_string(),
                k.running.to_string(),
                k.failed.to_string(),
                k.oldest_runnable_secs.map_or_else(|| "-".to_string(), human_age),
            ]
        })
        .collect();
    let accounts: Vec<Vec<String>> = st
        .accounts
        .iter()
        .map(|(s, n)| vec![s.clone(), n.to_string()])
        .collect();
    let relays: Vec<Vec<String>> = st
        .relays
        .iter()
        .map(|r| {
            vec![
                r.relay_url.clone(),
                r.shards.to_string(),
                r.at.to_rfc3339(),
                human_age(r.age_secs),
            ]
        })
        .collect();
    let mut out = String::from("jobs (queued, running, failed; oldest runnable job's wait):\n");
    if jobs.is_empty() {
        out.push_str("no queued, running or failed jobs\n");
    } else {
        out.push_str(&table(
            &["KIND", "QUEUED", "RUNNING", "FAILED", "OLDEST_RUNNABLE"],
            &jobs,
        ));
        out.push('\n');
    }
    out.push_str("\naccounts by provisioning state:\n");
    out.push_str(&table(&["STATE", "ACCOUNTS"], &accounts));
    out.push_str("\n\nrelay cursors:\n");
    if relays.is_empty() {
        out.push_str("no relay cursor stored yet");
    } else {
        out.push_str(&table(&["RELAY", "SHARDS", "CURSOR_AT", "AGE"], &relays));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_truncate() {
        let t = table(
            &["A", "LONGER"],
            &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A    LONGER");
        assert_eq!(lines[1], "---  ------");
        assert_eq!(lines[2], "xyz  1");
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(short("abc", 4), "abc");
    }

    #[test]
    fn parses_the_command_tree() {
        let cli = Cli::try_parse_from([
            "divine-atbridge",
            "jobs",
            "list",
            "--state",
            "failed",
            "--kind",
            "publish_post",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Jobs(JobsCommand::List(a))) => {
                assert_eq!(a.state, Some(JobState::Failed));
                assert_eq!(a.kind, Some(JobKind::PublishPost));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["divine-atbridge", "jobs", "retry", "7", "--failed"]).is_err());
        assert!(Cli::try_parse_from(["divine-atbridge", "jobs", "list", "--state", "bogus"]).is_err());
        assert!(
            Cli::try_parse_from(["divine-atbridge"]).unwrap().command.is_none(),
            "run is the default (main re-parses with `run`)"
        );
        let cli = Cli::try_parse_from([
            "divine-atbridge",
            "--database-url",
            "postgres://h/d",
            "run",
            "--workers",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.database_url.as_deref(), Some("postgres://h/d"));
        match cli.command {
            Some(Command::Run(a)) => assert_eq!(a.worker.workers, "3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ages_read_like_people_write_them() {
        assert_eq!(human_age(5.2), "5s");
        assert_eq!(human_age(725.0), "12m05s");
        assert_eq!(human_age(3.0 * 3600.0 + 240.0), "3h04m");
        assert_eq!(human_age(2.0 * 86_400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(human_age(-90.0), "-1m30s");
    }

    #[test]
    fn selectors_normalise() {
        let keys = nostr::Keys::generate();
        let npub = nostr::ToBech32::to_bech32(&keys.public_key()).unwrap();
        assert_eq!(normalise_selector(&npub), keys.public_key().to_hex());
        assert_eq!(normalise_selector(" Alice.TEST "), "alice.test");
    }
}
