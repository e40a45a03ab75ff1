//! The operator CLI as operators run it: the real `divine-atbridge` binary against a throwaway Postgres database
//! (`DATABASE_URL`), seeded through the stores. Checks `migrate`, `jobs list` filters (table and `--json`),
//! `jobs retry <id>` / `--failed --kind`, `jobs cancel`, `accounts show` by pubkey, handle and DID, and
//! `accounts reprovision`, including exit codes and the stable error codes printed on failure. Needs no PLC/PDS.

use diesel::prelude::*;
use divine_bridge_db::accounts::{self, OptIn};
use divine_bridge_db::queue::{self, Finish, NewJob};
use divine_bridge_db::schema::{account_links, jobs};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::JobKind;
use std::process::{Command, Output};
use std::time::Duration;

fn cli(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_divine-atbridge"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run divine-atbridge")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn pubkey(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

/// Leases the only queued job and fails it permanently (one try, like a worker would).
fn fail_head(c: &mut PgConnection, key: &str, code: &str) -> i64 {
    let leased = queue::lease(c, "cli-test", 100, Duration::from_secs(60)).unwrap();
    assert_eq!(leased.len(), 1, "exactly one job is queued");
    let job = &leased[0];
    assert_eq!(job.ordering_key, key);
    let finish = Finish::Failed {
        code: code.parse().expect("a code of ErrorCode"),
        message: format!("{code} for the CLI test"),
    };
    queue::finish(c, job.lease(), &finish).unwrap();
    job.id
}

fn state_of(c: &mut PgConnection, id: i64) -> String {
    jobs::table.find(id).select(jobs::state).first(c).unwrap()
}

#[test]
fn migrate_is_idempotent_and_reports_what_it_applied() {
    let db = TestDb::empty("cli_migrate");
    let first = cli(&db, &["migrate"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let text = stdout(&first);
    let n = divine_bridge_db::migrate::migration_count();
    assert!(text.starts_with(&format!("applied {n} migration(s):")), "{text}");
    assert_eq!(text.lines().count(), n + 1, "one line per applied version:\n{text}");
    assert!(
        text.contains("20261123000001"),
        "the foundation version is listed:\n{text}"
    );
    let again = cli(&db, &["migrate"]);
    assert!(again.status.success());
    assert_eq!(stdout(&again).trim(), "applied 0 migration(s)");
}

#[test]
fn jobs_list_retry_and_cancel() {
    let db = TestDb::migrated("cli_jobs");
    let mut c = db.conn();
    let (a, b) = (pubkey(0xa1), pubkey(0xb2));
    let pa = queue::enqueue(
        &mut c,
        &NewJob::for_account(
            JobKind::PublishPost,
            &a,
            queue::keys::account(&a),
            serde_json::json!({}),
        )
        .unique("p:a"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(fail_head(&mut c, &a, "pds_rejected"), pa);
    let pb = queue::enqueue(
        &mut c,
        &NewJob::for_account(
            JobKind::SyncProfile,
            &b,
            queue::keys::account(&b),
            serde_json::json!({}),
        )
        .unique("s:b"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(fail_head(&mut c, &b, "media_too_large"), pb);
    let queued = queue::enqueue(
        &mut c,
        &NewJob::for_account(JobKind::DeletePost, &a, queue::keys::account(&a), serde_json::json!({})).unique("d:a"),
    )
    .unwrap()
    .unwrap();

    // Table output: a header, one row per job, the error code visible.
    let table = cli(&db, &["jobs", "list", "--state", "failed"]);
    assert!(table.status.success());
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("ERROR_CODE"), "{text}");
    assert_eq!(lines.len(), 4, "header, rule, two failed jobs:\n{text}");
    assert!(
        text.contains("pds_rejected") && text.contains("media_too_large"),
        "{text}"
    );

    // Filters combine; --json gives full rows.
    let rows = json(&cli(
        &db,
        &["jobs", "list", "--state", "failed", "--kind", "publish_post", "--json"],
    ));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], pa);
    assert_eq!(rows[0]["last_error_code"], "pds_rejected");
    assert_eq!(rows[0]["attempt"], 1);
    let by_account = json(&cli(&db, &["jobs", "list", "--account", &a.to_uppercase(), "--json"]));
    let ids: Vec<i64> = by_account
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![queued, pa], "newest first, only account a");

    // Retry one job by id.
    let r = json(&cli(&db, &["jobs", "retry", &pa.to_string(), "--json"]));
    assert_eq!(
        (&r["id"], &r["retried"]),
        (&serde_json::json!(pa), &serde_json::json!(true))
    );
    assert_eq!(state_of(&mut c, pa), "queued");
    // Retrying a queued job does nothing: it says why and fails.
    let again = cli(&db, &["jobs", "retry", &pa.to_string()]);
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again).trim(),
        format!(
            "error[job_not_retryable]: job {pa} is queued; only failed, cancelled or ineligible jobs can be retried"
        )
    );

    // Bulk retry by kind leaves other kinds alone.
    let bulk = json(&cli(
        &db,
        &["jobs", "retry", "--failed", "--kind", "publish_post", "--json"],
    ));
    assert_eq!(bulk, serde_json::json!({"retried": 0, "matched": 0}));
    let bulk = cli(&db, &["jobs", "retry", "--failed", "--kind", "sync_profile"]);
    assert!(bulk.status.success());
    assert_eq!(stdout(&bulk).trim(), "retried 1 of 1 failed job(s)");
    assert!(String::from_utf8_lossy(&bulk.stderr).contains("retrying failed jobs: 1/1"));
    assert_eq!(state_of(&mut c, pb), "queued");

    // Cancel: queued → cancelled at once; a finished job cannot be cancelled.
    let cancel = json(&cli(&db, &["jobs", "cancel", &queued.to_string(), "--json"]));
    assert_eq!(cancel["cancelled"], true);
    assert_eq!(state_of(&mut c, queued), "cancelled");
    let twice = cli(&db, &["jobs", "cancel", &queued.to_string(), "--json"]);
    assert!(!twice.status.success());
    assert!(
        stderr(&twice).starts_with("error[job_already_finished]: "),
        "{}",
        stderr(&twice)
    );

    // Usage errors carry a stable code and a failing exit status.
    let usage = cli(&db, &["jobs", "retry"]);
    assert!(!usage.status.success());
    assert!(String::from_utf8_lossy(&usage.stderr).contains("error[cli_usage]"));
    let bogus = cli(&db, &["jobs", "list", "--state", "bogus"]);
    assert!(!bogus.status.success(), "clap rejects unknown states");
}

#[test]
fn accounts_show_by_any_selector_and_reprovision() {
    let db = TestDb::migrated("cli_accounts");
    let mut c = db.conn();
    let pk = pubkey(0xc3);
    accounts::opt_in(
        &mut c,
        &OptIn {
            nostr_pubkey: pk.clone(),
            handle: "carol.test".into(),
            crosspost_enabled: true,
        },
    )
    .unwrap();
    let did = "did:plc:abcdefghijklmnopqrstuvwx";
    diesel::update(account_links::table.find(&pk))
        .set((
            account_links::did.eq(did),
            account_links::provisioning_state.eq("failed"),
            account_links::provisioning_error.eq("pds_rejected"),
        ))
        .execute(&mut c)
        .unwrap();
    let provision = fail_head(&mut c, &pk, "pds_rejected");

    for who in [pk.as_str(), "Carol.TEST", did] {
        let v = json(&cli(&db, &["accounts", "show", who, "--json"]));
        assert_eq!(v["nostr_pubkey"], pk.as_str(), "selector {who}");
        assert_eq!(v["handle"], "carol.test");
        assert_eq!(v["did"], did);
        assert_eq!(v["provisioning_state"], "failed");
        assert_eq!(v["provisioning_error"], "pds_rejected");
        assert_eq!(v["jobs_by_state"], serde_json::json!([["failed", 1]]));
    }
    let table = cli(&db, &["accounts", "show", &pk]);
    assert!(table.status.success());
    let text = stdout(&table);
    assert!(text.contains("provisioning_state") && text.contains("failed"), "{text}");
    assert!(text.contains("carol.test"), "{text}");

    let missing = cli(&db, &["accounts", "show", "nobody.test"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("error[account_not_found]"));

    // Reprovision re-drives the failed provisioning job (same row, attempt kept) and resets the link.
    let r = json(&cli(&db, &["accounts", "reprovision", &pk, "--json"]));
    assert_eq!(r["job_id"], provision);
    assert_eq!(state_of(&mut c, provision), "queued");
    let link = accounts::get(&mut c, &pk).unwrap().unwrap();
    assert_eq!(link.provisioning_state, "pending", "reprovision clears the failure");
    assert_eq!(link.provisioning_error, None);
    assert_eq!(link.did.as_deref(), Some(did), "the DID is kept: no second identity");
}

/// `accounts suspend <who> --reason` (reason required), `accounts unsuspend`, and `accounts show` printing the
/// suspension reason and the audit trail with the CLI user as actor.
#[test]
fn accounts_suspend_and_unsuspend_are_audited_and_shown() {
    let db = TestDb::migrated("cli_suspend");
    let mut c = db.conn();
    let pk = pubkey(0x5a);
    accounts::opt_in(
        &mut c,
        &OptIn {
            nostr_pubkey: pk.clone(),
            handle: "sam.divine.test".into(),
            crosspost_enabled: true,
        },
    )
    .unwrap();
    let blank = cli(&db, &["accounts", "suspend", &pk, "--reason", " "]);
    assert!(!blank.status.success());
    assert!(String::from_utf8_lossy(&blank.stderr).contains("cli_usage"));

    let out = Command::new(env!("CARGO_BIN_EXE_divine-atbridge"))
        .args([
            "accounts",
            "suspend",
            "sam.divine.test",
            "--reason",
            "spam wave",
            "--json",
        ])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .env("USER", "oncall")
        .output()
        .unwrap();
    let rec = json(&out);
    assert_eq!(rec["provisioning_state"], "suspended");
    assert_eq!(rec["suspended_reason"], "spam wave");
    assert_eq!(
        accounts::enable(&mut c, &pk).unwrap_err().to_string(),
        "this account is suspended by the operator: spam wave"
    );

    let show = cli(&db, &["accounts", "show", &pk]);
    assert!(show.status.success());
    let text = stdout(&show);
    assert!(text.contains("suspended_reason"), "{text}");
    assert!(text.contains("spam wave"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("cli:oncall"))
        .unwrap_or_else(|| panic!("no audit line: {text}"));
    assert!(
        line.contains("suspend") && line.contains("pending -> suspended"),
        "{line}"
    );

    let rec = json(&cli(&db, &["accounts", "unsuspend", &pk, "--json"]));
    assert_eq!(rec["provisioning_state"], "disabled");
    let view = json(&cli(&db, &["accounts", "show", &pk, "--json"]));
    let audit = view["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 2, "{view}");
    assert_eq!(audit[0]["action"], "unsuspend");
    assert_eq!(audit[1]["action"], "suspend");
    assert_eq!(audit[1]["reason"], "spam wave");
}

fn cli_url(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_divine-atbridge"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run divine-atbridge")
}

/// The production order (docs/runbooks/key-custody.md "Database roles"): the roles before the first deploy, the
/// worker role migrates and owns the schema, the gateway's grants once the schema exists; each step repeatable.
#[test]
fn db_roles_creates_a_schema_owning_worker_and_a_gateway_kept_from_keys() {
    use divine_bridge_db::roles::Roles;
    let db = TestDb::empty("cli_roles");
    let tag = format!("c{}_{}", std::process::id(), rand::random::<u32>());
    let (worker, gateway) = (format!("{tag}_w"), format!("{tag}_g"));
    let roles = Roles::new(&worker, &gateway).unwrap();
    db.drop_roles_with_db(roles.clone());
    let args = ["db", "roles", "--worker-role", &worker, "--gateway-role", &gateway];

    let printed = cli(&db, &args);
    assert!(printed.status.success());
    let sql = stdout(&printed);
    assert!(sql.contains(&format!("CREATE ROLE \"{worker}\" LOGIN")), "{sql}");
    assert!(
        sql.contains(&format!("GRANT SELECT ON account_links TO \"{gateway}\"")),
        "{sql}"
    );
    assert!(!sql.contains(" ON account_keys "), "{sql}");

    let apply = [&args[..], &["--apply"]].concat();
    // `--apply` creates roles: serialized with every other test process that does (TestDb::roles_lock).
    let roles_lock = db.roles_lock();
    let first = cli(&db, &apply);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout(&first).contains("not migrated yet"), "{}", stdout(&first));
    let migrated = cli_url(&db.url_as(&roles.worker), &["migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    for _ in 0..2 {
        let again = cli(&db, &apply);
        assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
        assert!(stdout(&again).contains("gateway grants applied"), "{}", stdout(&again));
    }
    drop(roles_lock);
    let owner: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "(SELECT tableowner::text FROM pg_tables WHERE tablename = 'account_keys')",
    ))
    .get_result(&mut db.conn())
    .unwrap();
    assert_eq!(owner, worker);
    let mut gw = PgConnection::establish(&db.url_as(&roles.gateway)).unwrap();
    account_links::table.count().get_result::<i64>(&mut gw).unwrap();
    let e = diesel::sql_query("SELECT * FROM account_keys")
        .execute(&mut gw)
        .unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");

    let bad = cli(&db, &["db", "roles", "--gateway-role", "gw\"; DROP TABLE jobs; --"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error[db_role_invalid]"));
}

/// Issue 12 §2: `run` refuses to start without an offline recovery key (unless `ALLOW_NO_RECOVERY_KEYS=true`) and
/// with a recovery key that does not decode, before it touches the database or any peer.
#[test]
fn run_refuses_to_start_without_a_decodable_recovery_key() {
    let db = TestDb::empty("cli_recovery");
    let run = |recovery: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_divine-atbridge"));
        cmd.arg("run")
            .env("DATABASE_URL", &db.url)
            .env("PLC_DIRECTORY_URL", "http://127.0.0.1:9")
            .env("PDS_URL", "http://127.0.0.1:9")
            .env("KEY_ENCRYPTION_KEY", "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=")
            .env("ACCOUNT_EMAIL_DOMAIN", "bridge.test")
            .env("PDS_ADMIN_PASSWORD", "admin-pass")
            .env("NOSTR_RELAYS", "ws://127.0.0.1:9")
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env_remove("ALLOW_NO_RECOVERY_KEYS");
        match recovery {
            Some(keys) => cmd.env("PLC_RECOVERY_KEYS", keys),
            None => cmd.env_remove("PLC_RECOVERY_KEYS"),
        };
        cmd.output().expect("run divine-atbridge")
    };
    for (keys, code, why) in [
        (None, "config_missing", "ALLOW_NO_RECOVERY_KEYS=true"),
        (Some(""), "config_missing", "ALLOW_NO_RECOVERY_KEYS=true"),
        (Some("did:key:zbad"), "config_invalid", "does not decode"),
        (
            Some("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"),
            "config_invalid",
            "does not decode",
        ),
    ] {
        let out = run(keys);
        assert!(!out.status.success(), "{keys:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("error[{code}]")), "{keys:?}: {stderr}");
        assert!(
            stderr.contains("PLC_RECOVERY_KEYS") && stderr.contains(why),
            "{keys:?}: {stderr}"
        );
    }
    let migrated: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "to_regclass('__diesel_schema_migrations') IS NOT NULL",
    ))
    .get_result(&mut db.conn())
    .unwrap();
    assert!(!migrated, "the refused worker touched the database");
}

/// `jobs list --account` takes every selector `accounts show` takes (pubkey hex or npub, handle, DID, a unique hex
/// prefix); `--wide` prints full keys; `--help` lists the valid states and kinds from the enums.
#[test]
fn jobs_list_by_any_account_selector_wide_and_help() {
    let db = TestDb::migrated("cli_selectors");
    let mut c = db.conn();
    let keys = nostr::Keys::generate();
    let pk = keys.public_key().to_hex();
    let npub = nostr::ToBech32::to_bech32(&keys.public_key()).unwrap();
    accounts::opt_in(
        &mut c,
        &OptIn {
            nostr_pubkey: pk.clone(),
            handle: "dora.divine.test".into(),
            crosspost_enabled: true,
        },
    )
    .unwrap();
    let did = "did:plc:doradoradoradoradoradora";
    diesel::update(account_links::table.find(&pk))
        .set(account_links::did.eq(did))
        .execute(&mut c)
        .unwrap();
    let mine: Vec<i64> = queue::list(
        &mut c,
        &queue::JobFilter {
            account: Some(pk.clone()),
            ..Default::default()
        },
        100,
    )
    .unwrap()
    .iter()
    .map(|j| j.id)
    .collect();
    assert!(!mine.is_empty(), "opt-in enqueued provisioning");
    // Another account's job must not show up.
    queue::enqueue(
        &mut c,
        &NewJob::for_account(
            JobKind::SyncProfile,
            &pubkey(0xee),
            queue::keys::account(&pubkey(0xee)),
            serde_json::json!({}),
        ),
    )
    .unwrap();

    for who in [pk.as_str(), npub.as_str(), "Dora.Divine.Test", did, &pk[..10]] {
        let rows = json(&cli(&db, &["jobs", "list", "--account", who, "--json"]));
        let ids: Vec<i64> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, mine, "selector {who}");
    }
    let missing = cli(&db, &["jobs", "list", "--account", "nobody.divine.test"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).starts_with("error[account_not_found]: "),
        "{}",
        stderr(&missing)
    );

    // Two accounts share a prefix: ambiguous, said so.
    for (n, h) in [(0x77u8, "p1.divine.test"), (0x78, "p2.divine.test")] {
        let mut key = "7".repeat(8);
        key.push_str(&format!("{n:02x}").repeat(28));
        accounts::opt_in(
            &mut c,
            &OptIn {
                nostr_pubkey: key,
                handle: h.into(),
                crosspost_enabled: true,
            },
        )
        .unwrap();
    }
    let ambiguous = cli(&db, &["jobs", "list", "--account", "77777777"]);
    assert!(!ambiguous.status.success());
    assert!(
        stderr(&ambiguous).starts_with("error[account_ambiguous]: "),
        "{}",
        stderr(&ambiguous)
    );

    let narrow = stdout(&cli(&db, &["jobs", "list", "--account", &pk]));
    assert!(!narrow.contains(&pk), "keys are shortened by default:\n{narrow}");
    let wide = stdout(&cli(&db, &["jobs", "list", "--account", &pk, "--wide"]));
    assert!(wide.contains(&pk), "--wide prints the full key:\n{wide}");

    let help = stdout(&cli(&db, &["jobs", "list", "--help"]));
    for state in divine_bridge_db::JobState::ALL {
        assert!(help.contains(state.as_str()), "--help lists state {state:?}:\n{help}");
    }
    for kind in JobKind::ALL {
        assert!(help.contains(kind.as_str()), "--help lists kind {kind:?}:\n{help}");
    }
}

/// `jobs retry`/`cancel` of a missing job and of a running job, `accounts reprovision` of a ready account: each says
/// which case applied; doing nothing exits non-zero. Errors are printed once, without colour off a terminal.
#[test]
fn job_and_account_commands_say_which_case_applied() {
    let db = TestDb::migrated("cli_cases");
    let mut c = db.conn();
    let missing = cli(&db, &["jobs", "retry", "999999"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing),
        "error[job_not_found]: no job 999999\n",
        "printed once, plain"
    );
    let missing = cli(&db, &["jobs", "cancel", "999999"]);
    assert!(!missing.status.success());
    assert_eq!(stderr(&missing), "error[job_not_found]: no job 999999\n");

    let a = pubkey(0x31);
    queue::enqueue(
        &mut c,
        &NewJob::for_account(
            JobKind::PublishPost,
            &a,
            queue::keys::account(&a),
            serde_json::json!({}),
        ),
    )
    .unwrap();
    let running = queue::lease(&mut c, "cli-test", 1, Duration::from_secs(60)).unwrap()[0].id;
    let cancel = cli(&db, &["jobs", "cancel", &running.to_string()]);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert!(stdout(&cancel).contains("cancel requested"), "{}", stdout(&cancel));
    assert_eq!(state_of(&mut c, running), "running", "honoured when the try ends");

    let pk = pubkey(0x32);
    accounts::opt_in(
        &mut c,
        &OptIn {
            nostr_pubkey: pk.clone(),
            handle: "ready.divine.test".into(),
            crosspost_enabled: true,
        },
    )
    .unwrap();
    diesel::update(account_links::table.find(&pk))
        .set((
            account_links::did.eq("did:plc:readyreadyreadyreadyread"),
            account_links::provisioning_state.eq("ready"),
        ))
        .execute(&mut c)
        .unwrap();
    let jobs_before = queue::list(&mut c, &queue::JobFilter::default(), 1000).unwrap().len();
    let again = cli(&db, &["accounts", "reprovision", "ready.divine.test"]);
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again),
        format!("error[account_already_ready]: account ready.divine.test ({pk}) is ready already; nothing to re-provision\n")
    );
    assert_eq!(
        queue::list(&mut c, &queue::JobFilter::default(), 1000).unwrap().len(),
        jobs_before,
        "nothing enqueued"
    );
}

/// `divine-atbridge status`: jobs by kind (queued, running, failed, oldest runnable wait), accounts by state, relay
/// cursor ages.
#[test]
fn status_shows_the_queue_accounts_and_relay_cursors() {
    let db = TestDb::migrated("cli_status");
    let mut c = db.conn();
    let a = pubkey(0x41);
    queue::enqueue(
        &mut c,
        &NewJob::for_account(
            JobKind::PublishPost,
            &a,
            queue::keys::account(&a),
            serde_json::json!({}),
        ),
    )
    .unwrap();
    fail_head(&mut c, &queue::keys::account(&a), "pds_rejected");
    queue::enqueue(
        &mut c,
        &NewJob::for_account(
            JobKind::PublishPost,
            &a,
            queue::keys::account(&a),
            serde_json::json!({}),
        ),
    )
    .unwrap();
    diesel::sql_query(
        "INSERT INTO relay_cursors (relay_url, last_created_at, last_event_id, updated_at) \
         VALUES ('wss://relay.example', now() - interval '2 hours', 'x', now())",
    )
    .execute(&mut c)
    .unwrap();

    let st = json(&cli(&db, &["status", "--json"]));
    let publish = st["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "publish_post")
        .unwrap_or_else(|| panic!("{st}"));
    assert_eq!(
        (&publish["queued"], &publish["running"], &publish["failed"]),
        (&1.into(), &0.into(), &1.into())
    );
    assert!(publish["oldest_runnable_secs"].as_f64().is_some(), "{st}");
    assert!(
        st["accounts"].as_array().unwrap().iter().any(|s| s[0] == "ready"),
        "every state listed: {st}"
    );
    let relay = &st["relays"][0];
    assert_eq!(relay["relay_url"], "wss://relay.example");
    let age = relay["age_secs"].as_f64().unwrap();
    assert!((7100.0..7300.0).contains(&age), "{age}");

    let text = stdout(&cli(&db, &["status"]));
    assert!(
        text.contains("OLDEST_RUNNABLE") && text.contains("publish_post"),
        "{text}"
    );
    assert!(text.contains("wss://relay.example") && text.contains("2h00m"), "{text}");
}
