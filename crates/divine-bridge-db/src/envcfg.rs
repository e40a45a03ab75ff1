//! Configuration from the environment, the part both binaries share: the clap value parser every variable uses
//! ([`Raw`]), the collector that reports every bad variable at once ([`Problems`]), the `DB_*` variables
//! ([`DbArgs`]) and the shape check of `DATABASE_URL` ([`check_database_url`]). It lives in this crate because it is
//! the one both binaries link (it belongs to the core crate of issue 13 once that exists); it reads nothing itself:
//! clap reads the environment, this module only checks text.
//!
//! The pattern each binary's `config.rs` follows (its header repeats how to add a variable):
//! 1. Every variable is a field of a clap `Args` struct, `#[arg(long, env = "NAME", default_value_t = …,
//!    value_parser = Raw)] name: String`, or `Option<String>` without a default for a required one. The field's doc
//!    comment is its `--help` text, so `--help` is the configuration reference and shows the env name and default.
//! 2. Values stay text until `validate`, which turns them into the typed configuration through one [`Problems`]:
//!    each check records what is wrong and carries on, so a bad deployment is fixed in one round trip instead of one
//!    variable per restart. Clap's own typed parsers stop at the first error, which is why they are not used here.
//! 3. README.md's configuration table has a row per variable; a unit test in each binary compares the table with
//!    the clap definitions (names and defaults).
//!
//! Decision: an empty or blank value means "unset" (the default applies), as before clap, because manifests and
//! env files write `NAME=` for "nothing special" (e.g. `PLC_RECOVERY_KEYS=` in deploy/k8s). The two variables
//! where empty means "off" (the link templates) use [`KeepEmpty`] instead.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The value parser of every configuration variable: the text, trimmed; blank counts as unset, so the argument's
/// default (if any) applies. Never fails: validation happens in `validate`, where every problem is collected.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl clap::builder::TypedValueParser for Raw {
    type Value = String;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let text = value.to_string_lossy().trim().to_string();
        if text.is_empty() {
            if let Some(default) = arg.and_then(|a| a.get_default_values().first()) {
                return Ok(default.to_string_lossy().trim().to_string());
            }
        }
        Ok(text)
    }
}

/// Like [`Raw`], but an empty value stays empty (for variables where "set but empty" means "off").
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepEmpty;

impl clap::builder::TypedValueParser for KeepEmpty {
    type Value = String;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        Ok(value.to_string_lossy().trim().to_string())
    }
}

/// Variables read by the logging setup of both binaries (tracing-subscriber) rather than by clap: listed in
/// `--help` ([`logging_help`]) and the README tables all the same. (name, default, meaning)
pub const LOGGING_VARS: &[(&str, &str, &str)] = &[
    (
        "RUST_LOG",
        "info",
        "log filter (tracing EnvFilter syntax, e.g. `info,divine_atbridge=debug`)",
    ),
    (
        "LOG_FORMAT",
        "text",
        "`json` for one JSON object per line (production), anything else for text",
    ),
    (
        "NO_COLOR",
        "unset",
        "set (non-empty) to turn off ANSI colours in text logs",
    ),
];

/// The `after_help` text listing [`LOGGING_VARS`].
pub fn logging_help() -> String {
    let mut s = String::from("Logging (environment only, read by the logging setup):\n");
    for (name, default, meaning) in LOGGING_VARS {
        s.push_str(&format!("  {name:<11} {meaning} [default: {default}]\n"));
    }
    s
}

/// What is wrong with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub var: &'static str,
    /// Required and not set (or blank).
    pub missing: bool,
    /// Why, with a hint where a common mistake is likely. Never contains a secret value.
    pub reason: String,
}

/// Every configuration problem found in one pass. Empty means the configuration is valid.
///
/// The typed checks return a placeholder (`T::default()`) after recording a problem so that `validate` can go on
/// checking the other variables; placeholders never leave `validate`, because [`Problems::finish`] fails whenever
/// anything was recorded. Checks that combine several variables run only when those parsed ([`Problems::has`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records that required `var` is not set; `expected` says what a valid value looks like.
    pub fn missing(&mut self, var: &'static str, expected: &str) {
        if self.has(var) {
            return;
        }
        self.0.push(Problem {
            var,
            missing: true,
            reason: format!("is required and not set ({expected})"),
        });
    }

    /// Records that `var` is invalid. One problem per variable: the first found is the one reported (a later rule
    /// would only be judging the placeholder left by the first).
    pub fn invalid(&mut self, var: &'static str, reason: impl Into<String>) {
        if self.has(var) {
            return;
        }
        self.0.push(Problem {
            var,
            missing: false,
            reason: reason.into(),
        });
    }

    /// Whether a problem was recorded for `var`.
    pub fn has(&self, var: &str) -> bool {
        self.0.iter().any(|p| p.var == var)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order they were found.
    pub fn list(&self) -> &[Problem] {
        &self.0
    }

    /// Whether every problem is a missing variable (the `config_missing` case).
    pub fn all_missing(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|p| p.missing)
    }

    /// Adds the problems of another pass (a sub-section validated on its own).
    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// `value` when nothing was recorded, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, Problems> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// A required value: `raw` when set and not blank, else a `missing` problem and `""`.
    pub fn required<'a>(&mut self, var: &'static str, raw: &'a Option<String>, expected: &str) -> &'a str {
        match raw.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => v,
            _ => {
                self.missing(var, expected);
                ""
            }
        }
    }

    /// Parses `raw` (a number, an address, …).
    pub fn parse<T: FromStr + Default>(&mut self, var: &'static str, raw: &str) -> T
    where
        T::Err: fmt::Display,
    {
        match raw.trim().parse() {
            Ok(v) => v,
            Err(e) => {
                self.invalid(var, format!("{raw:?}: {e}"));
                T::default()
            }
        }
    }

    /// Parses a number that must be at least `min`; `why` (may be empty) explains the minimum.
    pub fn at_least<T: FromStr + Default + PartialOrd + fmt::Display>(
        &mut self,
        var: &'static str,
        raw: &str,
        min: T,
        why: &str,
    ) -> T
    where
        T::Err: fmt::Display,
    {
        let before = self.0.len();
        let v: T = self.parse(var, raw);
        if self.0.len() == before && v < min {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            self.invalid(var, format!("{v} is below the minimum of {min}{why}"));
        }
        v
    }

    /// Whole seconds, at least `min_secs`.
    pub fn secs(&mut self, var: &'static str, raw: &str, min_secs: u64, why: &str) -> Duration {
        Duration::from_secs(self.at_least(var, raw, min_secs, why))
    }

    /// A boolean: `true/false/1/0/yes/no/on/off` (any case).
    pub fn flag(&mut self, var: &'static str, raw: &str) -> bool {
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            other => {
                self.invalid(
                    var,
                    format!("{other:?} is not a boolean (true/false/1/0/yes/no/on/off)"),
                );
                false
            }
        }
    }

    /// An absolute http(s) URL with a host, without its trailing slash. A value without a scheme gets the hint.
    pub fn http_url(&mut self, var: &'static str, raw: &str) -> String {
        match check_http_url(raw) {
            Ok(v) => v,
            Err(reason) => {
                self.invalid(var, reason);
                String::new()
            }
        }
    }

    /// A required http(s) URL: missing (with `expected`) when unset or blank, else checked as [`Problems::http_url`].
    pub fn required_http_url(&mut self, var: &'static str, raw: &Option<String>, expected: &str) -> String {
        match self.required(var, raw, expected) {
            "" => String::new(),
            v => self.http_url(var, v),
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} configuration problem{}:", if n == 1 { "" } else { "s" })?;
        for p in &self.0 {
            write!(f, "\n  - {}: {}", p.var, p.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Splits a comma-separated list, dropping blank items.
pub fn list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// An absolute http(s) URL with a host and without query or fragment; returns it without its trailing slash. The
/// common mistake — a bare host such as `bridge.example.com` — gets a hint with the scheme added.
pub fn check_http_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let url = match url::Url::parse(raw) {
        Ok(u) => u,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err(format!(
                "{raw:?} has no scheme; write the full URL, e.g. https://{}",
                raw.trim_start_matches('/')
            ))
        }
        Err(e) => return Err(format!("{raw:?}: {e}")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        // `host:port` parses as scheme `host` with a path: the same mistake as a bare host.
        if url.cannot_be_a_base() {
            return Err(format!("{raw:?} has no scheme; write the full URL, e.g. https://{raw}"));
        }
        return Err(format!("{raw:?} must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{raw:?} must not have a query or fragment"));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// The shape `DATABASE_URL` must have, quoted in every message about it.
pub const DATABASE_URL_SHAPE: &str = "postgres://USER:PASSWORD@HOST:5432/DATABASE";

/// Checks `DATABASE_URL`'s shape without connecting: a `postgres://` / `postgresql://` URI with a host and a
/// database name, or a libpq key/value string (`host=… dbname=…`). Messages never contain the value (it holds the
/// password); they name the variable and the expected shape.
pub fn check_database_url(raw: &str) -> Result<(), String> {
    let raw = raw.trim();
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        let url =
            url::Url::parse(raw).map_err(|e| format!("is not a valid URL ({e}); expected {DATABASE_URL_SHAPE}"))?;
        // A Unix-socket URL (`postgres:///db?host=/run/postgresql`) has no host in the authority: libpq allows it.
        let socket = url.query_pairs().any(|(k, _)| k == "host");
        if url.host_str().is_none_or(str::is_empty) && !socket {
            return Err(format!("has no host; expected {DATABASE_URL_SHAPE}"));
        }
        if url.path().trim_start_matches('/').is_empty() && !url.query_pairs().any(|(k, _)| k == "dbname") {
            return Err(format!("names no database; expected {DATABASE_URL_SHAPE}"));
        }
        return Ok(());
    }
    if raw.contains("://") {
        let scheme = raw.split("://").next().unwrap_or_default();
        return Err(format!(
            "has scheme {scheme:?}; expected postgres:// or postgresql:// ({DATABASE_URL_SHAPE})"
        ));
    }
    if raw.split_whitespace().all(|kv| kv.contains('=')) {
        return Ok(());
    }
    Err(format!(
        "is neither a postgres:// URL nor a key=value string; expected {DATABASE_URL_SHAPE}"
    ))
}

/// `DATABASE_URL` with its password replaced by `***`: the one redaction, [`crate::redact_database_url`].
pub use crate::redact_database_url;

/// The password in `DATABASE_URL`, if any (so that a message echoing the URL can be scrubbed).
pub fn database_password(url: &str) -> Option<String> {
    if let Ok(u) = url::Url::parse(url) {
        return u.password().filter(|p| !p.is_empty()).map(|p| {
            // The URL form is percent-encoded; libpq echoes either form, so both are scrubbed by the caller.
            p.to_string()
        });
    }
    url.split_whitespace()
        .find_map(|kv| kv.strip_prefix("password="))
        .map(|p| p.trim_matches('\'').to_string())
        .filter(|p| !p.is_empty())
}

/// The `DB_*` connection settings both binaries share (all but `DB_POOL_SIZE`, whose default differs per binary).
/// Defaults come from [`crate::DbSettings::with_pool_size`], the one place they are written down.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Database")]
pub struct DbArgs {
    /// Statement timeout set on every connection, in ms (0 = none; migrations run without it).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", value_parser = Raw,
          default_value_t = crate::DbSettings::with_pool_size(1).statement_timeout.as_millis().to_string())]
    pub db_statement_timeout_ms: String,
    /// Lock timeout set on every connection, in ms (0 = none; migrations run without it).
    #[arg(long, env = "DB_LOCK_TIMEOUT_MS", value_parser = Raw,
          default_value_t = crate::DbSettings::with_pool_size(1).lock_timeout.as_millis().to_string())]
    pub db_lock_timeout_ms: String,
    /// idle_in_transaction_session_timeout set on every connection, in ms (0 = none).
    #[arg(long, env = "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", value_parser = Raw,
          default_value_t = crate::DbSettings::with_pool_size(1).idle_in_transaction_timeout.as_millis().to_string())]
    pub db_idle_in_transaction_timeout_ms: String,
    /// TCP keepalive: idle seconds before the first probe (a half-open connection is dead after
    /// idle + interval × count).
    #[arg(long, env = "DB_KEEPALIVES_IDLE_SECS", value_parser = Raw,
          default_value_t = crate::DbSettings::with_pool_size(1).keepalives_idle.as_secs().to_string())]
    pub db_keepalives_idle_secs: String,
    /// TCP keepalive: seconds between unanswered probes.
    #[arg(long, env = "DB_KEEPALIVES_INTERVAL_SECS", value_parser = Raw,
          default_value_t = crate::DbSettings::with_pool_size(1).keepalives_interval.as_secs().to_string())]
    pub db_keepalives_interval_secs: String,
    /// TCP keepalive: unanswered probes before the connection is dead.
    #[arg(long, env = "DB_KEEPALIVES_COUNT", value_parser = Raw,
          default_value_t = crate::DbSettings::with_pool_size(1).keepalives_count.to_string())]
    pub db_keepalives_count: String,
    /// Unacknowledged sent data older than this (ms) kills the connection (0 = kernel default).
    #[arg(long, env = "DB_TCP_USER_TIMEOUT_MS", value_parser = Raw,
          default_value_t = crate::DbSettings::with_pool_size(1).tcp_user_timeout.as_millis().to_string())]
    pub db_tcp_user_timeout_ms: String,
    /// A pooled connection idle this long (ms) is pinged before use (dead ones are replaced without an error).
    #[arg(long, env = "DB_IDLE_CHECK_MS", value_parser = Raw,
          default_value_t = crate::DbSettings::with_pool_size(1).idle_check_after.as_millis().to_string())]
    pub db_idle_check_ms: String,
    /// Startup: how long (seconds) to keep retrying while Postgres is unreachable before exiting with
    /// db_unavailable. Permanent errors (bad URL, unknown database or role, authentication) exit at once.
    #[arg(long, env = "DB_CONNECT_WAIT_SECS", value_parser = Raw, default_value_t = DEFAULT_CONNECT_WAIT.as_secs().to_string())]
    pub db_connect_wait_secs: String,
}

/// `DB_CONNECT_WAIT_SECS` default: long enough for a Postgres restart or a pod scheduled before its database.
pub const DEFAULT_CONNECT_WAIT: Duration = Duration::from_secs(60);

impl DbArgs {
    /// Validates `DATABASE_URL` (`database_url`, required), `DB_POOL_SIZE` (`pool_size`, given by the binary) and
    /// the `DB_*` settings into `(url, settings, connect wait)`, recording problems in `p`.
    pub fn validate(
        &self,
        p: &mut Problems,
        database_url: &Option<String>,
        pool_size: &str,
    ) -> (String, crate::DbSettings, Duration) {
        let url = p.required("DATABASE_URL", database_url, DATABASE_URL_SHAPE).to_string();
        let ms = |p: &mut Problems, var, raw: &str| Duration::from_millis(p.at_least::<u64>(var, raw, 0, ""));
        let settings = crate::DbSettings {
            max_size: p.at_least("DB_POOL_SIZE", pool_size, 1u32, ""),
            statement_timeout: ms(p, "DB_STATEMENT_TIMEOUT_MS", &self.db_statement_timeout_ms),
            lock_timeout: ms(p, "DB_LOCK_TIMEOUT_MS", &self.db_lock_timeout_ms),
            idle_in_transaction_timeout: ms(
                p,
                "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                &self.db_idle_in_transaction_timeout_ms,
            ),
            keepalives_idle: p.secs("DB_KEEPALIVES_IDLE_SECS", &self.db_keepalives_idle_secs, 1, ""),
            keepalives_interval: p.secs("DB_KEEPALIVES_INTERVAL_SECS", &self.db_keepalives_interval_secs, 1, ""),
            keepalives_count: p.at_least("DB_KEEPALIVES_COUNT", &self.db_keepalives_count, 1u32, ""),
            tcp_user_timeout: ms(p, "DB_TCP_USER_TIMEOUT_MS", &self.db_tcp_user_timeout_ms),
            idle_check_after: ms(p, "DB_IDLE_CHECK_MS", &self.db_idle_check_ms),
        };
        let wait = p.secs("DB_CONNECT_WAIT_SECS", &self.db_connect_wait_secs, 1, "");
        if !url.is_empty() {
            if let Err(reason) = check_database_url(&url) {
                p.invalid("DATABASE_URL", reason);
            } else if let Err(e) = settings.connection_url(&url) {
                p.invalid(e.var, e.reason);
            }
        }
        (url, settings, wait)
    }
}

/// Parses `A` from `NAME=value` pairs only, ignoring the process environment (tests of `validate`): each pair is
/// passed as the flag of the argument whose `env` is `NAME`. Panics on a name no argument reads (a test bug).
pub fn parse_pairs<A: clap::Args + clap::FromArgMatches>(pairs: &[(&str, &str)]) -> Result<A, clap::Error> {
    let with_env = A::augment_args(clap::Command::new("pairs"));
    let mut argv = vec!["pairs".to_string()];
    for (name, value) in pairs {
        let long = with_env
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == *name))
            .and_then(|a| a.get_long())
            .unwrap_or_else(|| panic!("no argument reads {name}"));
        argv.push(format!("--{long}={value}"));
    }
    let cmd = with_env.mut_args(|a| a.env(None::<&str>));
    let matches = cmd.try_get_matches_from(argv)?;
    A::from_arg_matches(&matches)
}

/// Every environment variable read by `cmd` and its subcommands, with the default shown in `--help` (if any).
pub fn env_vars(cmd: &clap::Command) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().into_owned();
            let default = a.get_default_values().first().map(|d| d.to_string_lossy().into_owned());
            Some((env, default))
        })
        .collect();
    for sub in cmd.get_subcommands() {
        for v in env_vars(sub) {
            if !out.iter().any(|(n, _)| *n == v.0) {
                out.push(v);
            }
        }
    }
    out
}

/// The rows of the README configuration table that follows the line starting with `marker`: `(variable, default
/// cell)` for every row whose first cell is one backticked variable. The table ends at the first non-table line.
pub fn readme_table(readme: &str, marker: &str) -> Vec<(String, String)> {
    let mut lines = readme.lines().skip_while(|l| !l.starts_with(marker)).skip(1);
    let mut rows = Vec::new();
    let mut started = false;
    for line in lines.by_ref() {
        let line = line.trim();
        if !line.starts_with('|') {
            if started {
                break;
            }
            continue;
        }
        started = true;
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 2 {
            continue;
        }
        let name = cells[0];
        if name.len() > 2 && name.starts_with('`') && name.ends_with('`') && !name[1..name.len() - 1].contains('`') {
            rows.push((name[1..name.len() - 1].to_string(), cells[1].to_string()));
        }
    }
    rows
}

/// README.md's configuration table after `marker` against `cmd`'s clap definitions plus [`LOGGING_VARS`], both
/// ways: every variable `cmd` reads has a row, every row is such a variable, and a row's default cell shows the clap
/// default. Returns one line per mismatch (empty when they agree); both binaries' unit tests assert on it.
pub fn readme_table_mismatches(readme: &str, marker: &str, cmd: &clap::Command) -> Vec<String> {
    let rows = readme_table(readme, marker);
    if rows.is_empty() {
        return vec![format!("README has no configuration table after {marker}")];
    }
    let mut vars = env_vars(cmd);
    vars.extend(
        LOGGING_VARS
            .iter()
            .map(|(n, d, _)| (n.to_string(), Some(d.to_string()))),
    );
    let mut out = Vec::new();
    for (name, default) in &vars {
        match rows.iter().find(|(n, _)| n == name) {
            None => out.push(format!("README table {marker} has no row for {name}")),
            Some((_, cell)) => {
                if let Some(d) = default.as_deref().filter(|d| !d.is_empty() && !cell.contains(d)) {
                    out.push(format!("README default of {name} is {cell:?}, clap says {d:?}"));
                }
            }
        }
    }
    for (name, _) in &rows {
        if !vars.iter().any(|(n, _)| n == name) {
            out.push(format!("README row {name} is not read by {}", cmd.get_name()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct T {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, env = "DATABASE_URL_T")]
        url: Option<String>,
    }

    #[test]
    fn problems_are_collected_not_short_circuited() {
        let mut p = Problems::default();
        assert_eq!(p.at_least::<u32>("A", "0", 1, "why"), 0);
        assert_eq!(p.parse::<u32>("B", "x"), 0);
        assert!(!p.flag("C", "maybe"));
        assert_eq!(p.required("D", &Some("  ".into()), "a thing"), "");
        assert_eq!(p.at_least::<u32>("E", "5", 1, ""), 5);
        let vars: Vec<_> = p.list().iter().map(|x| x.var).collect();
        assert_eq!(vars, ["A", "B", "C", "D"]);
        assert!(!p.all_missing());
        let text = p.to_string();
        assert!(text.starts_with("4 configuration problems:"), "{text}");
        assert!(text.contains("A: 0 is below the minimum of 1 (why)"), "{text}");
        assert!(p.finish(()).is_err());
    }

    #[test]
    fn urls_without_scheme_get_a_hint() {
        assert_eq!(check_http_url("https://x.test/").unwrap(), "https://x.test");
        for bare in ["bridge.example.com", "bridge.example.com:8080", "localhost:3000/api"] {
            let e = check_http_url(bare).unwrap_err();
            assert!(e.contains("has no scheme") && e.contains("https://"), "{bare}: {e}");
        }
        assert!(check_http_url("ftp://x.test")
            .unwrap_err()
            .contains("http:// or https://"));
        assert!(check_http_url("https://x.test/?q=1").is_err());
    }

    #[test]
    fn database_url_shape_is_checked_without_echoing_the_value() {
        for ok in [
            "postgres://u:p@h:5432/db",
            "postgresql://u@h/db?sslmode=require",
            "host=h dbname=db user=u password=secret",
            "postgres:///db?host=/run/postgresql",
        ] {
            assert!(check_database_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "postgress://u:hunter2@h/db",
            "postgres://u:hunter2@h",
            "hunter2",
            "postgres://u:hunter2@:5432/db",
        ] {
            let e = check_database_url(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains(DATABASE_URL_SHAPE), "{e}");
        }
        assert_eq!(
            redact_database_url("postgres://u:hunter2@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redact_database_url("host=h password=hunter2 dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(
            database_password("postgres://u:hunter2@h/db").as_deref(),
            Some("hunter2")
        );
        assert_eq!(database_password("host=h password=hunter2").as_deref(), Some("hunter2"));
    }

    #[test]
    fn db_args_default_blank_and_report_every_bad_value() {
        let a: DbArgs = parse_pairs(&[("DB_LOCK_TIMEOUT_MS", " 250 ")]).unwrap();
        let mut p = Problems::default();
        let (url, s, wait) = a.validate(&mut p, &Some("postgres://u@h/db".into()), "3");
        assert!(p.is_empty(), "{p}");
        assert_eq!(url, "postgres://u@h/db");
        assert_eq!(
            s,
            crate::DbSettings {
                max_size: 3,
                lock_timeout: Duration::from_millis(250),
                ..crate::DbSettings::with_pool_size(3)
            }
        );
        assert_eq!(wait, DEFAULT_CONNECT_WAIT);

        let a: DbArgs = parse_pairs(&[
            ("DB_LOCK_TIMEOUT_MS", "10s"),
            ("DB_KEEPALIVES_COUNT", "0"),
            ("DB_KEEPALIVES_IDLE_SECS", "-1"),
            ("DB_STATEMENT_TIMEOUT_MS", ""),
        ])
        .unwrap();
        let mut p = Problems::default();
        let (_, s, _) = a.validate(&mut p, &Some("postgres://u@h/db?keepalives_idle=5".into()), "0");
        let vars: Vec<_> = p.list().iter().map(|x| x.var).collect();
        assert_eq!(
            vars,
            [
                "DB_POOL_SIZE",
                "DB_LOCK_TIMEOUT_MS",
                "DB_KEEPALIVES_IDLE_SECS",
                "DB_KEEPALIVES_COUNT",
                "DATABASE_URL"
            ]
        );
        assert_eq!(s.statement_timeout, Duration::from_secs(30), "blank = default");

        let mut p = Problems::default();
        a.validate(&mut p, &None, "1");
        assert!(p.list().iter().any(|x| x.var == "DATABASE_URL" && x.missing));
    }

    #[test]
    fn help_lists_env_names_and_defaults() {
        use clap::CommandFactory;
        let vars = env_vars(&T::command());
        assert!(vars.contains(&("DB_IDLE_CHECK_MS".to_string(), Some("5000".to_string()))));
        assert!(vars.contains(&("DATABASE_URL_T".to_string(), None)));
    }

    #[test]
    fn readme_rows_are_read() {
        let md = "x\n## A\n\n| variable | default | meaning |\n|---|---|---|\n| `X` | 1 | m |\n| `Y` / `Z` | 2 | m |\n\nafter\n| `W` | 3 | m |";
        assert_eq!(readme_table(md, "## A"), vec![("X".to_string(), "1".to_string())]);
    }

    #[test]
    fn required_http_url_is_missing_or_checked() {
        let mut p = Problems::default();
        assert_eq!(
            p.required_http_url("U", &Some("https://a.test/".into()), "e.g."),
            "https://a.test"
        );
        assert!(p.is_empty());
        assert_eq!(p.required_http_url("U", &Some("  ".into()), "e.g."), "");
        assert!(p.has("U") && p.all_missing(), "{p}");
        let mut p = Problems::default();
        assert_eq!(p.required_http_url("U", &Some("a.test".into()), "e.g."), "");
        assert!(p.has("U") && !p.all_missing(), "{p}");
    }

    #[test]
    fn readme_table_mismatches_go_both_ways() {
        let cmd = clap::Command::new("t").arg(clap::Arg::new("x").long("x").env("X").default_value("1"));
        let logging: String = LOGGING_VARS
            .iter()
            .map(|(n, d, _)| format!("| `{n}` | `{d}` | m |\n"))
            .collect();
        let table = |rows: &str| format!("## A\n\n| variable | default | meaning |\n|---|---|---|\n{rows}{logging}");
        assert!(readme_table_mismatches(&table("| `X` | `1` | m |\n"), "## A", &cmd).is_empty());
        assert_eq!(
            readme_table_mismatches(&table("| `X` | `2` | m |\n| `Y` | | m |\n"), "## A", &cmd),
            [
                "README default of X is \"`2`\", clap says \"1\"",
                "README row Y is not read by t"
            ]
        );
        assert_eq!(
            readme_table_mismatches(&table(""), "## A", &cmd),
            ["README table ## A has no row for X"]
        );
        assert_eq!(
            readme_table_mismatches("no table", "## A", &cmd),
            ["README has no configuration table after ## A"]
        );
    }
}
