//! Test support: a throwaway database per test (created from `TEST_DATABASE_URL`'s server, default
//! `postgres://postgres@127.0.0.1:5432`), migrated, and dropped on drop. Only compiled with the `testutil` feature.

use crate::{migrate, Db};
use diesel::pg::PgConnection;
use diesel::prelude::*;

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// The cross-process roles lock of [`TestDb::roles_lock`]; released when its session ends (on drop).
pub struct RolesLock {
    _admin: PgConnection,
}

/// A uniquely named database that is dropped (with `FORCE`) when this value is dropped.
pub struct TestDb {
    /// Connection URL of the test database.
    pub url: String,
    name: String,
    admin_url: String,
    /// Roles created by [`TestDb::with_roles`], dropped after the database.
    roles: std::sync::Mutex<Option<crate::roles::Roles>>,
}

fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

impl TestDb {
    /// Creates an empty database (no migrations).
    pub fn empty(prefix: &str) -> TestDb {
        let server = server_url();
        let admin_url = format!("{server}/postgres");
        let name = format!(
            "{}_{}_{}",
            prefix.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin = PgConnection::establish(&admin_url).expect("connect to test Postgres server");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .expect("create test database");
        TestDb {
            url: format!("{server}/{name}"),
            name,
            admin_url,
            roles: std::sync::Mutex::new(None),
        }
    }

    /// Creates a database and applies all migrations.
    pub fn migrated(prefix: &str) -> TestDb {
        let db = TestDb::empty(prefix);
        let mut conn = PgConnection::establish(&db.url).expect("connect to test database");
        migrate::run_migrations(&mut conn).expect("migrations");
        db
    }

    /// A pool on the test database.
    pub fn pool(&self, max_size: u32) -> Db {
        Db::connect(&self.url, max_size).expect("pool")
    }

    /// URL of the server's `postgres` database (for tests that must act on the test database from outside,
    /// e.g. terminate its sessions).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Terminates (`pg_terminate_backend`) every backend connected to this test database — and only to it — as a
    /// Postgres restart or failover would, and waits until those backends are gone; returns how many there were.
    pub fn terminate_backends(&self) -> usize {
        use diesel::sql_types::{Array, Integer, Text};
        let mut admin = PgConnection::establish(&self.admin_url).expect("connect to test Postgres server");
        let pids: Vec<i32> =
            diesel::sql_query("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                .bind::<Text, _>(&self.name)
                .load::<Pid>(&mut admin)
                .expect("list backends")
                .into_iter()
                .map(|p| p.pid)
                .collect();
        diesel::sql_query("SELECT pg_terminate_backend(pid) FROM unnest($1) AS pid")
            .bind::<Array<Integer>, _>(&pids)
            .execute(&mut admin)
            .expect("terminate backends");
        for _ in 0..250 {
            let left = diesel::sql_query("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind::<Array<Integer>, _>(&pids)
                .load::<Pid>(&mut admin)
                .expect("list terminated backends")
                .len();
            if left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        pids.len()
    }

    /// Creates this database's own worker and gateway roles and applies [`crate::roles::roles_sql`] as the
    /// superuser (roles are cluster-wide, so each test database gets uniquely named ones; they are dropped with it).
    pub fn with_roles(&self) -> crate::roles::Roles {
        let tag = format!("r{}_{}", std::process::id(), rand::random::<u32>());
        let (roles, applied) = self.with_roles_deferred(&tag);
        assert_eq!(
            applied,
            crate::roles::Applied::All,
            "roles applied before the migrations"
        );
        roles
    }

    /// [`TestDb::with_roles`] with the role names derived from `tag`, on a database that may not be migrated yet.
    pub fn with_roles_deferred(&self, tag: &str) -> (crate::roles::Roles, crate::roles::Applied) {
        let roles = crate::roles::Roles::new(&format!("{tag}_worker"), &format!("{tag}_gateway")).expect("role names");
        self.drop_roles_with_db(roles.clone());
        let _lock = self.roles_lock();
        let applied = crate::roles::apply(&mut self.conn(), &roles).expect("apply roles SQL");
        (roles, applied)
    }

    /// Serializes creating and granting roles across test processes until the guard drops. Roles, memberships and
    /// grants of roles live in cluster-wide catalogs: two test processes applying their roles at once deadlocked on
    /// them (CI: `deadlock detected` in e2e_chaos). One advisory lock in the server's `postgres` database (advisory
    /// locks are per database) serializes them. Take it around anything that creates roles, also through the CLI
    /// (`db roles --apply`).
    pub fn roles_lock(&self) -> RolesLock {
        let mut admin = PgConnection::establish(&self.admin_url).expect("connect to test Postgres server");
        diesel::sql_query("SELECT pg_advisory_lock(7243001)")
            .execute(&mut admin)
            .expect("take the roles lock");
        RolesLock { _admin: admin }
    }

    /// Drops `roles` (created by someone else, e.g. the CLI) after this database.
    pub fn drop_roles_with_db(&self, roles: crate::roles::Roles) {
        let mut held = self.roles.lock().unwrap_or_else(|e| e.into_inner());
        assert!(held.is_none(), "one set of roles per test database");
        *held = Some(roles);
    }

    /// The URL of this database as `role` (the test server trusts local connections, so no password).
    pub fn url_as(&self, role: &crate::roles::RoleName) -> String {
        let server = server_url();
        let (scheme, rest) = server.split_once("://").expect("TEST_DATABASE_URL has a scheme");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{}@{host}/{}", role.as_str(), self.name)
    }

    /// A single connection on the test database.
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DB").is_some() {
            eprintln!("keeping test database {}", self.url);
            return;
        }
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
                .execute(&mut admin);
            if let Some(roles) = self.roles.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                for role in [&roles.gateway, &roles.worker] {
                    let _ = diesel::sql_query(format!("DROP ROLE IF EXISTS \"{}\"", role.as_str())).execute(&mut admin);
                }
            }
        }
    }
}

/// Log lines as an operator's pipeline reads them (`LOG_FORMAT=json`), for tests that assert what is logged: one
/// process-global subscriber per test binary, tracing-subscriber's own JSON formatter, every line kept in memory.
pub mod logs {
    use std::io::Write;
    use std::sync::{Arc, Mutex, OnceLock};

    /// Everything the process logged since [`capture`] installed the subscriber.
    #[derive(Clone, Default)]
    pub struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        /// The raw text captured so far.
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()).expect("UTF-8 log output")
        }

        /// Every captured line, parsed; a line that is not JSON fails the test.
        pub fn lines(&self) -> Vec<serde_json::Value> {
            self.text()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
                .collect()
        }
    }

    /// Installs the JSON subscriber with the `EnvFilter` directives `filter` on the first call and returns the
    /// capture; later calls return the same capture (the subscriber is global: one filter per test binary).
    pub fn capture(filter: &str) -> &'static Capture {
        static CAPTURE: OnceLock<Capture> = OnceLock::new();
        CAPTURE.get_or_init(|| {
            let capture = Capture::default();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(capture.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
            capture
        })
    }
}

/// Running the real service binaries in startup tests (both services' `tests/startup.rs`): a clean environment,
/// a bounded wait for exit, a port nothing listens on, and a bare HTTP GET that needs no client crate.
pub mod process {
    use std::io::{Read, Write};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// `bin` with an empty environment (nothing inherited from the test runner) plus `vars`, output captured.
    pub fn clean_command(bin: &str, args: &[&str], vars: &[(&str, &str)]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            c.env(k, v);
        }
        c
    }

    /// Waits for `child` at most `limit`; kills it and panics if it is still running (the "keeps running" failure).
    pub fn finish_within(mut child: Child, limit: Duration, what: &str) -> Output {
        let started = Instant::now();
        while started.elapsed() < limit {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "{what}: still running after {limit:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Output bytes as text.
    pub fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Asserts a process reported its fatal error exactly once, as one `error[code]: …` line containing `message`,
    /// across stdout and stderr (no log line repeating it).
    pub fn reported_once(out: &Output, message: &str) {
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(
            all.matches(message).count(),
            1,
            "{message:?} not exactly once in:\n{all}"
        );
        assert_eq!(all.matches("error[").count(), 1, "one error line:\n{all}");
    }

    /// A local port with nothing listening on it.
    pub fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// `GET path` over plain HTTP/1.0: (status, body), or `None` when nothing answers yet.
    pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let status = buf.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
    }
}

/// A [`crate::queue::LeasedJob`] of `kind` carrying `payload`, as the lease would return it (id 1, first try), for
/// unit tests of payload decoding that need no database.
pub fn leased_job(kind: crate::JobKind, payload: serde_json::Value) -> crate::queue::LeasedJob {
    let now = chrono::Utc::now();
    crate::queue::LeasedJob {
        id: 1,
        kind,
        ordering_key: String::new(),
        unique_key: None,
        payload,
        priority: crate::states::priority::LIVE,
        attempt: 1,
        source_created_at: now,
        created_at: now,
        lease_token: 1,
    }
}
