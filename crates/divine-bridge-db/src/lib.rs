//! Postgres persistence for the Divine ATProto bridge: schema, embedded migrations, the durable job queue and the
//! account/key/session/record stores.
//!
//! Design choice: synchronous Diesel over an r2d2 pool, called from async code through [`Db::run`] (which uses
//! `tokio::task::spawn_blocking`). libpq is mature, the queue's hot statements are single round trips, and a
//! blocking-pool hop costs microseconds next to a Postgres commit; diesel-async would add a second driver stack
//! without a measurable gain for this workload. This crate owns SQL and nothing else: no HTTP, no crypto, no
//! protocol knowledge.

pub mod abuse;
pub mod accounts;
pub mod audit;
// Error classes and the state enums live in `divine-bridge-core` (the protocol crates use them without Diesel);
// re-exported so `divine_bridge_db::{class, code, states}` paths keep working.
pub use divine_bridge_core::{class, code, states};
pub mod envcfg;
pub mod error;
pub mod job_args;
pub mod listen;
pub mod migrate;
pub mod prepared;
pub mod queue;
pub mod records;
pub mod roles;
pub mod schema;
pub mod shards;
#[cfg(feature = "testutil")]
pub mod testutil;

pub use class::{Classified, ErrorClass};
pub use code::ErrorCode;
pub use error::DbError;
pub use job_args::JobArgs;
pub use states::{JobKind, JobState, ProvisioningState, RecordState};

use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::pg::PgConnection;
use diesel::r2d2::{ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel::Connection;
use std::time::{Duration, Instant};

pub use error::PgCondition;

/// A pooled connection.
pub type Conn = PooledConnection<PgManager>;

/// Connection-level settings: transport (TCP keepalives, `tcp_user_timeout`, passed to libpq as connection
/// parameters) and session (`statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout`, `SET` on
/// every new connection). Read from the environment by [`envcfg::DbArgs`] in both binaries.
///
/// Why each exists (issue 9, "Postgres restart and failover"):
/// - keepalives + `tcp_user_timeout`: a failover that does not reset TCP leaves a half-open socket; without them a
///   statement waits for an answer that never comes (until the kernel's ~2 h keepalive or the pool's max lifetime).
///   With them libpq reports the connection dead after `keepalives_idle + interval × count` idle, or after
///   `tcp_user_timeout` of unacknowledged sends, and the connection is discarded ([`PgManager::has_broken`]).
/// - `statement_timeout`: bounds a statement blocked on the server (a stuck query never holds a lease forever).
/// - `lock_timeout`: a row lock held by a dying session fails fast (55P03, transient) instead of queueing work.
/// - `idle_in_transaction_session_timeout`: a client that died inside a transaction releases its locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSettings {
    /// `DB_POOL_SIZE`: maximum connections in the pool.
    pub max_size: u32,
    /// `DB_STATEMENT_TIMEOUT_MS` (30000; 0 = none).
    pub statement_timeout: Duration,
    /// `DB_LOCK_TIMEOUT_MS` (10000; 0 = none).
    pub lock_timeout: Duration,
    /// `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS` (60000; 0 = none).
    pub idle_in_transaction_timeout: Duration,
    /// `DB_KEEPALIVES_IDLE_SECS` (30): idle time before the first TCP keepalive probe.
    pub keepalives_idle: Duration,
    /// `DB_KEEPALIVES_INTERVAL_SECS` (10): time between unanswered probes.
    pub keepalives_interval: Duration,
    /// `DB_KEEPALIVES_COUNT` (3): unanswered probes before the connection is dead.
    pub keepalives_count: u32,
    /// `DB_TCP_USER_TIMEOUT_MS` (60000; 0 = kernel default): unacknowledged sent data older than this kills the
    /// connection.
    pub tcp_user_timeout: Duration,
    /// `DB_IDLE_CHECK_MS` (5000): a connection idle at least this long is pinged (`SELECT 1`) when checked out;
    /// see [`PgManager::is_valid`].
    pub idle_check_after: Duration,
}

/// An invalid `DB_*` variable: the variable and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct DbSettingsError {
    pub var: &'static str,
    pub reason: String,
}

/// libpq connection parameters this crate sets itself; `DATABASE_URL` must not set them (one source of truth: a
/// duplicate would silently win or lose depending on libpq's parsing order).
pub const MANAGED_URL_PARAMS: [&str; 5] = [
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
];

/// `DATABASE_URL` for `Debug` and logs: the password (URI `user:password@`, `?password=`, or key/value
/// `password=…`) replaced by `***`. Everything else is kept so an operator can still tell which database is meant.
pub fn redact_database_url(url: &str) -> String {
    let redact_params = |text: &str, sep: char| -> String {
        text.split(sep)
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.trim().eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(&sep.to_string())
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_params(url, ' ');
    };
    let (authority_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match authority_path.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (authority_path, None),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}");
    if let Some(p) = path {
        out.push('/');
        out.push_str(p);
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_params(q, '&'));
    }
    out
}

impl DbSettings {
    /// Defaults with a pool of `max_size`.
    pub fn with_pool_size(max_size: u32) -> DbSettings {
        DbSettings {
            max_size,
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(60),
            keepalives_idle: Duration::from_secs(30),
            keepalives_interval: Duration::from_secs(10),
            keepalives_count: 3,
            tcp_user_timeout: Duration::from_secs(60),
            idle_check_after: Duration::from_secs(5),
        }
    }

    /// `url` with the transport parameters appended (URI form `postgres://…[?…]` or key/value form `host=… …`).
    /// Fails when `url` already sets one of [`MANAGED_URL_PARAMS`].
    pub fn connection_url(&self, url: &str) -> Result<String, DbSettingsError> {
        let uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
        // Parameter names in either form: `?a=1&b=2` or `a=1 b=2`. Only names are inspected, never values.
        let names: Vec<&str> = if uri {
            url.split_once('?')
                .map(|(_, q)| q.split('&').filter_map(|kv| kv.split('=').next()).collect())
                .unwrap_or_default()
        } else {
            url.split_whitespace().filter_map(|kv| kv.split('=').next()).collect()
        };
        if let Some(dup) = MANAGED_URL_PARAMS
            .iter()
            .find(|p| names.iter().any(|n| n.trim() == **p))
        {
            return Err(DbSettingsError {
                var: "DATABASE_URL",
                reason: format!("must not set `{dup}`; it is configured with the DB_KEEPALIVES_* / DB_TCP_USER_TIMEOUT_MS variables"),
            });
        }
        let params = [
            ("keepalives", "1".to_string()),
            ("keepalives_idle", self.keepalives_idle.as_secs().to_string()),
            ("keepalives_interval", self.keepalives_interval.as_secs().to_string()),
            ("keepalives_count", self.keepalives_count.to_string()),
            ("tcp_user_timeout", self.tcp_user_timeout.as_millis().to_string()),
        ];
        let mut out = url.to_string();
        for (i, (k, v)) in params.iter().enumerate() {
            let sep = match (uri, i == 0 && !url.contains('?')) {
                (true, true) => "?",
                (true, false) => "&",
                (false, _) => " ",
            };
            out.push_str(&format!("{sep}{k}={v}"));
        }
        Ok(out)
    }

    /// The `SET` statements run once on every new connection (values in milliseconds; 0 disables a timeout).
    pub fn session_sql(&self) -> String {
        format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; SET idle_in_transaction_session_timeout = {};",
            self.statement_timeout.as_millis(),
            self.lock_timeout.as_millis(),
            self.idle_in_transaction_timeout.as_millis()
        )
    }
}

/// Per-connection health, kept inside the connection as its diesel [`Instrumentation`] so it sees the outcome of
/// EVERY statement on it, including ones whose error a caller maps or swallows, and also statements run through
/// [`Db::conn`] by synchronous callers.
#[derive(Debug)]
pub struct ConnectionWatch {
    /// Set when a statement failed in a way that makes the connection unusable ([`PgCondition::discards_connection`]).
    lost: bool,
    /// When the last statement finished (or the connection was opened).
    last_used: Instant,
}

impl Instrumentation for ConnectionWatch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::FinishQuery { error, .. } = event {
            self.last_used = Instant::now();
            if error.is_some_and(|e| PgCondition::of(e).discards_connection()) {
                self.lost = true;
            }
        }
    }
}

fn watch(conn: &mut PgConnection) -> Option<&mut ConnectionWatch> {
    conn.instrumentation().downcast_mut::<ConnectionWatch>()
}

/// The r2d2 connection manager: opens connections with [`DbSettings`] applied and decides when one is discarded.
///
/// Decision — how broken connections are found. r2d2 asks the manager; diesel's own manager answers with
/// `is_broken`, which looks only at the transaction manager. Diesel 2.3 marks that broken when libpq reports the
/// transaction status unknown after a failed statement, so a killed connection is dropped only AFTER it failed a
/// caller's statement; an idle dead connection is still handed out (every caller of a restarted idle pool fails once),
/// a read-only connection to a demoted primary (25006) is kept forever, and nothing bounds a half-open socket. Hence:
/// 1. Error-driven discard, always on: [`ConnectionWatch`] flags a connection whose statement failed with a
///    connection-class condition (SQLSTATE 08, 57P01–57P03, or libpq reporting the socket closed) or 25006
///    (read-only: the connection reached a demoted primary; a new one may reach the new primary); r2d2 calls
///    [`PgManager::has_broken`] when the connection is returned and drops it. Costs nothing per statement.
/// 2. Idle ping on checkout: a connection unused for [`DbSettings::idle_check_after`] is pinged with `SELECT 1`
///    before it is handed out; a dead one is dropped and r2d2 hands out (or opens) another, so the caller sees no
///    error. Connections in steady use skip the ping (an `Instant` comparison), which keeps the queue's throughput:
///    a ping on every checkout (`test_on_check_out` with diesel's manager) would add a round trip to every queue
///    statement. (Not measured with `scripts/bench.sh queue` in this change: the shared build machine was too loaded
///    for the release build; the hot path adds one `Instant::elapsed` per checkout and nothing per statement.)
/// 3. Half-open sockets: TCP keepalives and `tcp_user_timeout` ([`DbSettings`]) make libpq fail the statement, which
///    then takes path 1.
///
/// Consequence, for callers: after every backend is terminated, a connection that was idle longer than
/// `idle_check_after` costs nothing; one used within that window fails exactly one statement with a transient
/// `db_connection_lost` (the caller's retry absorbs it: the queue's lease loop backs off, a job try is retried, the
/// watchdog re-queues an unfinished lease) and is never handed out again.
#[derive(Debug)]
pub struct PgManager {
    url: String,
    session_sql: String,
    idle_check_after: Duration,
}

impl ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<PgConnection, Self::Error> {
        let mut conn = PgConnection::establish(&self.url).map_err(diesel::r2d2::Error::ConnectionError)?;
        conn.batch_execute(&self.session_sql)
            .map_err(diesel::r2d2::Error::QueryError)?;
        conn.set_instrumentation(ConnectionWatch {
            lost: false,
            last_used: Instant::now(),
        });
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), Self::Error> {
        let idle = watch(conn).map(|w| w.last_used.elapsed()).unwrap_or(Duration::MAX);
        if idle < self.idle_check_after {
            return Ok(());
        }
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        std::thread::panicking() || conn.is_broken() || watch(conn).is_some_and(|w| w.lost)
    }
}

/// libpq / server messages of a first connection that waiting cannot fix, matched as substrings. Diesel reports a
/// failed connection as text only (`ConnectionError::BadConnection`, no SQLSTATE), so the decision is made on the
/// English messages of libpq (`fe-connect.c`) and the server (`postmaster/auth.c`, `utils/init/postinit.c`); a message
/// not listed here is treated as transient, which errs on the side of retrying for `DB_CONNECT_WAIT_SECS` and then
/// failing with `db_unavailable` — never of retrying forever.
pub const PERMANENT_CONNECT_ERRORS: &[&str] = &[
    // 3D000 invalid_catalog_name
    "does not exist",
    // 28P01 / 28000: password, peer, ident, SCRAM
    "authentication failed",
    "no pg_hba.conf entry",
    "no password supplied",
    // libpq cannot parse the connection string
    "invalid connection option",
    "missing \"=\" after",
    "invalid URI",
    "invalid integer value",
    "invalid port number",
    "invalid sslmode value",
    "unterminated quoted string",
    "invalid percent-encoded token",
    "forbidden value %00",
    "unexpected spaces found",
];

/// Whether a failed first connection is a configuration error ([`PERMANENT_CONNECT_ERRORS`]).
pub fn connect_error_is_permanent(message: &str) -> bool {
    PERMANENT_CONNECT_ERRORS.iter().any(|m| message.contains(m))
}

/// Opens one direct connection to `url` (operator commands, and the first try of [`Db::connect_within`]). A failure
/// is [`DbError::ConnectRejected`] when it is a configuration error ([`connect_error_is_permanent`]), else
/// [`DbError::Pool`] (`db_unavailable`, transient); the message never contains the URL's password (libpq echoes
/// parts of a connection string it cannot parse).
pub fn connect_once(url: &str) -> Result<PgConnection, DbError> {
    PgConnection::establish(url).map_err(|e| {
        let mut message = e.to_string().trim().to_string();
        if let Some(p) = envcfg::database_password(url) {
            message = message.replace(p.as_str(), "***");
        }
        if connect_error_is_permanent(&message) {
            DbError::ConnectRejected(message)
        } else {
            DbError::Pool(message)
        }
    })
}

/// Runs `f` on a connection of `pool` on tokio's blocking threads (Diesel is synchronous): the one checkout path of
/// [`Db::run`] and the lease connection. A failed checkout is `DbError::Pool`, a panicked or cancelled task
/// `DbError::Join`, both converted into the caller's error type.
async fn on_blocking_connection<T, E, F>(pool: Pool<PgManager>, f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
    F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut conn = pool.get().map_err(|e| E::from(DbError::Pool(e.to_string())))?;
        f(&mut conn)
    })
    .await
    .map_err(|e| E::from(DbError::Join(e.to_string())))?
}

/// Handle to the database: a connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<PgManager>,
    /// One connection for the worker pool's lease loop, outside `pool`, whose session carries the lease settings
    /// ([`queue::lease_session_sql`]): a lease is then one statement, one round trip, instead of a transaction of
    /// four (issue 11 §3 throughput). Opened on first use (`min_idle` 0), so processes that never lease (gateway,
    /// CLI) never open it; the same health checks as `pool` (`PgManager`) evict it after a Postgres restart.
    lease_pool: Pool<PgManager>,
    /// The connection URL with the transport parameters (for the one connection outside the pool: the listener).
    url: std::sync::Arc<str>,
}

impl Db {
    /// Connects a pool of at most `max_size` connections with default [`DbSettings`]. Fails fast (10 s) if
    /// Postgres is unreachable.
    pub fn connect(url: &str, max_size: u32) -> Result<Db, DbError> {
        Db::connect_with(url, &DbSettings::with_pool_size(max_size))
    }

    /// Connects a pool with `settings` (transport parameters added to `url`, session settings on every
    /// connection). Fails fast (10 s) if Postgres is unreachable.
    pub fn connect_with(url: &str, settings: &DbSettings) -> Result<Db, DbError> {
        let url: std::sync::Arc<str> = settings
            .connection_url(url)
            .map_err(|e| DbError::Pool(e.to_string()))?
            .into();
        let manager = |session_sql: String| PgManager {
            url: url.to_string(),
            session_sql,
            idle_check_after: settings.idle_check_after,
        };
        let lease_manager = manager(format!("{} {}", settings.session_sql(), queue::lease_session_sql()));
        let manager = manager(settings.session_sql());
        let pool = Pool::builder()
            .max_size(settings.max_size)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            // `is_valid` is an `Instant` comparison unless the connection sat idle (see `PgManager`).
            .test_on_check_out(true)
            .build(manager)
            .map_err(|e| DbError::Pool(e.to_string()))?;
        let lease_pool = Pool::builder()
            .max_size(1)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(10))
            .test_on_check_out(true)
            .build_unchecked(lease_manager);
        Ok(Db { pool, lease_pool, url })
    }

    /// The startup connection policy both binaries share (issue 14): tries one direct connection to `url` (with the
    /// transport parameters of `settings`), then builds the pool.
    /// - A permanent refusal — libpq cannot parse the URL, the database or role does not exist, authentication
    ///   failed ([`connect_error_is_permanent`]) — returns [`DbError::ConnectRejected`] at once: waiting cannot fix
    ///   a configuration error, and a crash loop that names `DATABASE_URL` is what the operator needs to see.
    /// - Anything else (refused, DNS, timeout, "the database system is starting up", too many clients) is taken as
    ///   transient: logged (`db_unavailable`, with the URL's password replaced by `***`) and retried every 2 s until
    ///   `wait` has passed, then returned as [`DbError::Pool`] (`db_unavailable`).
    ///
    /// Callers serve `/health` while this runs (the process is alive, just not ready).
    pub async fn connect_within(url: &str, settings: &DbSettings, wait: Duration) -> Result<Db, DbError> {
        let started = Instant::now();
        let full = settings
            .connection_url(url)
            .map_err(|e| DbError::ConnectRejected(e.reason))?;
        let shown = envcfg::redact_database_url(url);
        loop {
            let try_url = full.clone();
            let attempt = tokio::task::spawn_blocking(move || connect_once(&try_url).map(drop))
                .await
                .map_err(|e| DbError::Join(e.to_string()))?;
            let message = match attempt {
                Ok(()) => {
                    let (url, settings) = (url.to_string(), settings.clone());
                    return tokio::task::spawn_blocking(move || Db::connect_with(&url, &settings))
                        .await
                        .map_err(|e| DbError::Join(e.to_string()))?;
                }
                Err(DbError::Pool(message)) => message,
                Err(permanent) => return Err(permanent),
            };
            let waited = started.elapsed();
            if waited >= wait {
                return Err(DbError::Pool(format!(
                    "no connection to {shown} within DB_CONNECT_WAIT_SECS ({} s): {message}",
                    wait.as_secs()
                )));
            }
            tracing::warn!(
                code = "db_unavailable",
                database = %shown,
                error = %message,
                waited_secs = waited.as_secs(),
                "database not reachable yet; retrying in 2s"
            );
            tokio::time::sleep(Duration::from_secs(2).min(wait - waited)).await;
        }
    }

    /// A connection for synchronous callers (CLI, tests). Async code uses [`Db::run`].
    pub fn conn(&self) -> Result<Conn, DbError> {
        self.pool.get().map_err(|e| DbError::Pool(e.to_string()))
    }

    /// Runs `f` with a pooled connection on the blocking thread pool. A connection-class failure inside `f` is
    /// returned as a transient error and the connection is discarded (see [`PgManager`]); `f` is never re-run
    /// here, because only the caller knows whether it is safe to repeat.
    ///
    /// Generic over the caller's error type `E` (anything a [`DbError`] converts into): `f` may fail with a domain
    /// error of the caller (a job's gate refusing, say) as well as with a database error, and the pool and join
    /// failures of this call become `E` too, so one `?` handles all of them. Closures whose error type is not
    /// otherwise determined name it (`Ok::<_, DbError>(…)`).
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
    {
        on_blocking_connection(self.pool.clone(), f).await
    }

    /// Leases up to `limit` jobs for `owner` on the lease connection ([`queue::lease_in_session`]: one round trip);
    /// the same semantics as [`queue::lease`] on any connection.
    pub async fn lease(&self, owner: &str, limit: i64, lease_for: Duration) -> Result<Vec<queue::LeasedJob>, DbError> {
        let owner = owner.to_string();
        on_blocking_connection(self.lease_pool.clone(), move |c| {
            queue::lease_in_session(c, &owner, limit, lease_for)
        })
        .await
    }

    /// `SHOW name` on the lease connection (tests: its session carries [`queue::LEASE_SETTINGS`]).
    #[cfg(feature = "testutil")]
    pub async fn lease_connection_setting(&self, name: &str) -> Result<String, DbError> {
        #[derive(diesel::QueryableByName)]
        struct V {
            #[diesel(sql_type = diesel::sql_types::Text)]
            v: String,
        }
        let sql = format!("SELECT current_setting('{name}') AS v");
        on_blocking_connection(self.lease_pool.clone(), move |c| {
            let row: V = diesel::RunQueryDsl::get_result(diesel::sql_query(sql), c)?;
            Ok::<_, DbError>(row.v)
        })
        .await
    }

    /// Starts a job wake-up listener on its own connection (outside the pool; see [`listen`]).
    pub fn job_wakeups(&self) -> listen::JobWakeups {
        listen::JobWakeups::spawn(self.url.to_string())
    }

    /// Pool statistics for `/ready` and diagnostics.
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_passwords_are_redacted() {
        for (url, want) in [
            (
                "postgres://bridge:hunter2@db:5432/bridge",
                "postgres://bridge:***@db:5432/bridge",
            ),
            (
                "postgresql://bridge:p%40ss@db/b?sslmode=require",
                "postgresql://bridge:***@db/b?sslmode=require",
            ),
            (
                "postgres://db/b?user=u&password=hunter2",
                "postgres://db/b?user=u&password=***",
            ),
            (
                "host=db user=u password=hunter2 dbname=b",
                "host=db user=u password=*** dbname=b",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/x",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
        ] {
            assert_eq!(redact_database_url(url), want);
        }
    }
}
