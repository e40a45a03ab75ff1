//! The operator command line of `divine-atbridge` (clap): `run` (default), `migrate`, `jobs list|retry|cancel`,
//! `accounts show|reprovision`. Output is a readable table, or JSON with `--json` for scripts; long operations print a
//! progress line on stderr. Owns argument parsing and presentation only: state changes go through
//! `divine_bridge_db::queue` (the one place job transitions live) and the account store.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use diesel::prelude::*;
use divine_bridge_db::accounts::AccountLink;
use divine_bridge_db::schema::{account_keys, account_links, account_sessions, jobs, record_mappings};
use divine_bridge_db::{JobKind, JobState};
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
    /// Inspect and steer jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Inspect and re-drive accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
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

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub state: Option<JobState>,
    #[arg(long)]
    pub kind: Option<JobKind>,
    /// Nostr pubkey (hex) — the job's ordering key.
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
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
    #[arg(long, requires = "failed")]
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
    /// Re-run provisioning for an account (resumes from its last completed step; never mints a second DID).
    Reprovision {
        pubkey: String,
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

/// One row of `jobs list`.
#[derive(Debug, Serialize, Queryable)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub ordering_key: String,
    pub unique_key: Option<String>,
    pub attempt: i32,
    pub run_at: DateTime<Utc>,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    pub lease_owner: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Reads jobs for `jobs list`.
pub fn list_jobs(conn: &mut PgConnection, args: &ListArgs) -> QueryResult<Vec<JobRow>> {
    let mut q = jobs::table.into_boxed();
    if let Some(s) = args.state {
        q = q.filter(jobs::state.eq(s.as_str()));
    }
    if let Some(k) = args.kind {
        q = q.filter(jobs::kind.eq(k.as_str()));
    }
    if let Some(a) = &args.account {
        q = q.filter(jobs::payload.retrieve_as_text("account").eq(a.to_lowercase()));
    }
    q.order(jobs::id.desc())
        .limit(args.limit)
        .select((
            jobs::id,
            jobs::kind,
            jobs::state,
            jobs::ordering_key,
            jobs::unique_key,
            jobs::attempt,
            jobs::run_at,
            jobs::last_error_code,
            jobs::last_error,
            jobs::lease_owner,
            jobs::updated_at,
        ))
        .load(conn)
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

/// Formats `jobs list` output.
pub fn render_jobs(rows: &[JobRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.kind.clone(),
                r.state.clone(),
                short(&r.ordering_key, 12),
                r.attempt.to_string(),
                r.run_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.last_error_code.clone().unwrap_or_default(),
                short(r.last_error.as_deref().unwrap_or(""), 60),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KIND",
            "STATE",
            "ACCOUNT",
            "ATTEMPT",
            "RUN_AT",
            "ERROR_CODE",
            "ERROR",
        ],
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
    pub jobs_by_state: Vec<(String, i64)>,
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

/// Loads an [`AccountView`] by pubkey, handle or DID.
pub fn load_account(conn: &mut PgConnection, who: &str) -> Result<Option<AccountView>, divine_bridge_db::DbError> {
    let who = normalise_selector(who);
    let link: Option<AccountLink> = account_links::table
        .filter(
            account_links::nostr_pubkey
                .eq(&who)
                .or(account_links::handle.eq(&who))
                .or(account_links::did.eq(&who)),
        )
        .select(AccountLink::as_select())
        .first(conn)
        .optional()?;
    let Some(link) = link else {
        return Ok(None);
    };
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
    let jobs_by_state: Vec<(String, i64)> = jobs::table
        .filter(jobs::payload.retrieve_as_text("account").eq(&pk))
        .group_by(jobs::state)
        .select((jobs::state, diesel::dsl::count_star()))
        .order(jobs::state)
        .load(conn)?;
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
    Ok(Some(AccountView {
        audit,
        link,
        signing_did_key,
        rotation_did_key,
        provision_step,
        session_access_expires_at: session_exp.flatten(),
        jobs_by_state,
        records_by_state,
    }))
}

/// Formats `accounts show` output as `key: value` lines.
pub fn render_account(a: &AccountView) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let counts = |v: &[(String, i64)]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>().join(" ")
        }
    };
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
    fn selectors_normalise() {
        let keys = nostr::Keys::generate();
        let npub = nostr::ToBech32::to_bech32(&keys.public_key()).unwrap();
        assert_eq!(normalise_selector(&npub), keys.public_key().to_hex());
        assert_eq!(normalise_selector(" Alice.TEST "), "alice.test");
    }
}
