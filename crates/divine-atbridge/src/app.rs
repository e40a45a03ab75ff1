//! Process wiring for `divine-atbridge`: logging, TLS provider, configuration, migrations, the HTTP health server,
//! relay ingest, the worker pool and signal handling, plus the operator commands. Owns startup order and shutdown;
//! it must not contain domain logic (that lives in the modules it wires together).

use crate::cli::{AccountsCommand, Cli, Command, DbCommand, JobsCommand};
use crate::config::{ConfigError, RunArgs};
use crate::jobs::handlers::Handlers;
use crate::keys::KeyRing;
use crate::xrpc::{XrpcClient, XrpcConfig};
use divine_bridge_db::accounts::{self, AccountError, AccountLink};
use divine_bridge_db::audit::{audited, Actor};
use divine_bridge_db::migrate::run_migrations;
use divine_bridge_db::queue;
use divine_bridge_db::states::AuditAction;
use divine_bridge_db::{Classified, Db, ErrorCode};
use std::sync::Arc;
use tokio::sync::watch;

/// A fatal error with its stable code.
#[derive(Debug)]
pub struct AppError {
    code: ErrorCode,
    message: String,
}

impl AppError {
    pub fn code(&self) -> ErrorCode {
        self.code
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    fn of<E: Classified>(e: E) -> AppError {
        AppError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<ConfigError> for AppError {
    fn from(e: ConfigError) -> Self {
        AppError::of(e)
    }
}
impl From<crate::cli::CliError> for AppError {
    fn from(e: crate::cli::CliError) -> Self {
        AppError::of(e)
    }
}
impl From<divine_bridge_db::DbError> for AppError {
    fn from(e: divine_bridge_db::DbError) -> Self {
        AppError::of(e)
    }
}

/// `RUST_LOG` filter (default `info`), `LOG_FORMAT=json` for structured logs.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colour only for a person at a terminal: never in files, pipes or log collectors, never with `NO_COLOR` set.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `DATABASE_URL` of an operator command: required and of the right shape (`config_missing` / `config_invalid`).
fn database_url(raw: &Option<String>) -> Result<String, AppError> {
    use divine_bridge_db::envcfg;
    let mut p = envcfg::Problems::default();
    let url = p.required("DATABASE_URL", raw, envcfg::DATABASE_URL_SHAPE).to_string();
    if !url.is_empty() {
        if let Err(reason) = envcfg::check_database_url(&url) {
            p.invalid("DATABASE_URL", reason);
        }
    }
    Ok(p.finish(url).map_err(ConfigError)?)
}

/// Runs `f` on one direct connection to `url` (operator commands: no pool, so no background threads at exit).
async fn with_conn<
    T: Send + 'static,
    E: divine_bridge_db::Classified + From<divine_bridge_db::DbError> + Send + 'static,
>(
    url: &str,
    f: impl FnOnce(&mut diesel::PgConnection) -> Result<T, E> + Send + 'static,
) -> Result<T, AppError> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut conn = divine_bridge_db::connect_once(&url).map_err(E::from)?;
        f(&mut conn)
    })
    .await
    .map_err(|e| AppError {
        code: ErrorCode::DbUnavailable,
        message: e.to_string(),
    })?
    .map_err(AppError::of)
}

/// Runs one command.
pub async fn dispatch(cli: Cli) -> Result<(), AppError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(command) = cli.command else {
        return Err(AppError {
            code: ErrorCode::CliUsage,
            message: "no command given (main defaults to `run`)".into(),
        });
    };
    if let Command::Run(args) = command {
        return run(*args, &cli.database_url).await;
    }
    let url = database_url(&cli.database_url)?;
    match command {
        Command::Run(_) => unreachable!("handled above"),
        Command::Migrate => {
            let applied = with_conn(&url, run_migrations).await?;
            println!(
                "applied {} migration(s){}",
                applied.len(),
                if applied.is_empty() { "" } else { ":" }
            );
            for v in applied {
                println!("  {v}");
            }
            Ok(())
        }
        Command::Status { json } => {
            let status = with_conn(&url, crate::cli::load_status).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
            } else {
                println!("{}", crate::cli::render_status(&status));
            }
            Ok(())
        }
        Command::Jobs(cmd) => jobs_command(cmd, &url).await,
        Command::Accounts(cmd) => accounts_command(cmd, &url).await,
        Command::Keys(crate::cli::KeysCommand::Rotate { batch }) => keys_rotate(batch.max(1), &url).await,
        Command::Db(cmd) => db_command(cmd, &url).await,
    }
}

/// `keys rotate`: see `crate::rekey`. One progress line per batch on stdout, a summary at the end.
async fn keys_rotate(batch: i64, url: &str) -> Result<(), AppError> {
    let mut p = divine_bridge_db::envcfg::Problems::default();
    let raw = std::env::var("KEY_ENCRYPTION_KEY").ok();
    let list = p.required(
        "KEY_ENCRYPTION_KEY",
        &raw,
        "`<new>,<old>`: the new key first, then every key rows may still be sealed by",
    );
    let list = p.finish(list.to_string()).map_err(ConfigError)?;
    let ring = KeyRing::from_base64_list(&list).map_err(AppError::of)?;
    let db = Db::connect(url, 2)?;
    println!(
        "keys rotate: re-sealing under {} (ring {})",
        ring.primary().key_id(),
        ring.ids().join(",")
    );
    let done = crate::rekey::rotate(&db, &ring, batch, |p| {
        println!("keys rotate: {p}");
        std::ops::ControlFlow::Continue(())
    })
    .await
    .map_err(AppError::of)?;
    println!(
        "keys rotate: done, {done}; every row is now sealed by {}",
        ring.primary().key_id()
    );
    Ok(())
}

async fn db_command(cmd: DbCommand, url: &str) -> Result<(), AppError> {
    use divine_bridge_db::roles::{self, Applied, Roles};
    match cmd {
        DbCommand::Roles {
            worker_role,
            gateway_role,
            apply,
        } => {
            let names = Roles::new(&worker_role, &gateway_role).map_err(AppError::of)?;
            if !apply {
                print!("{}", roles::full_sql(&names));
                return Ok(());
            }
            let applied = with_conn(url, move |c| roles::apply(c, &names)).await?;
            match applied {
                Applied::All => {
                    println!("roles {worker_role} and {gateway_role} created or updated; gateway grants applied")
                }
                Applied::GatewayGrantsDeferred => println!(
                    "roles {worker_role} and {gateway_role} created or updated; the schema is not migrated yet, so \
                     the gateway's grants follow the worker's first start (GATEWAY_DB_ROLE={gateway_role}) or a \
                     second `db roles --apply` after `divine-atbridge migrate`"
                ),
            }
        }
    }
    Ok(())
}

/// `divine-atbridge run`. Startup order, each step failing with its own code and a non-zero exit:
/// 1. validate every variable at once (`config_missing` / `config_invalid`);
/// 2. bind `HTTP_ADDR` (`http_bind_failed`) — before anything else, so a port clash is a startup error instead of
///    a worker that leases jobs with no /metrics, /health or /ready;
/// 3. connect to Postgres with the shared policy (`Db::connect_within`: `db_connect_rejected` at once,
///    `db_unavailable` after `DB_CONNECT_WAIT_SECS`), migrate and re-apply the gateway role's grants, while the
///    listener already answers `/health` 200 and `/ready` 503 `starting` (`crate::http::serve_starting`);
/// 4. start the supervised tasks.
async fn run(args: RunArgs, database_url: &Option<String>) -> Result<(), AppError> {
    let (config, worker_config) = args.validate(database_url)?;
    let kek = Arc::new(KeyRing::from_keys(config.identity.key_encryption_keys.clone()).map_err(AppError::of)?);
    tracing::info!(kek_ids = ?kek.ids(), "key encryption keys loaded (the first one seals)");
    let listener = bind_http(config.http_addr)?;
    let metrics = crate::metrics::install();
    let db = {
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<()>();
        let early = tokio::net::TcpListener::from_std(listener.try_clone().map_err(bind_error(config.http_addr))?)
            .map_err(bind_error(config.http_addr))?;
        let starting = tokio::spawn(crate::http::serve_starting(early, metrics.clone(), async move {
            let _ = connected_rx.await;
        }));
        let db = Db::connect_within(&config.database_url, &config.db, config.db_connect_wait).await?;
        let applied = db.run(run_migrations).await?;
        tracing::info!(applied = applied.len(), "migrations checked");
        if let Some(role) = config.gateway_db_role.clone() {
            db.run(move |c| divine_bridge_db::roles::apply_gateway_grants(c, &role))
                .await?;
            tracing::info!("gateway role grants applied");
        }
        let _ = connected_tx.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), starting).await;
        db
    };
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error(config.http_addr))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    {
        let shutdown_tx = shutdown_tx.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: no new leases; finishing in-flight jobs");
            let _ = shutdown_tx.send(true);
        });
    }

    let xrpc = XrpcClient::new(&XrpcConfig {
        allow_insecure_http: config.allow_insecure_http,
        ..XrpcConfig::default()
    })
    .map_err(AppError::of)?;
    let handlers = Arc::new(
        Handlers::new(db.clone(), xrpc, kek, config.identity.clone(), config.crosspost.clone())
            .map_err(AppError::of)?,
    );
    let health = crate::http::TaskHealth::default();
    let http = crate::http::serve_on(listener, db.clone(), metrics, health.clone(), shutdown_rx.clone());
    let ingest_cfg = crate::ingest::IngestConfig {
        authors_per_subscription: config.crosspost.authors_per_subscription,
        shards: config.crosspost.ingest_shards,
        lease: config.crosspost.ingest_lease,
        ..crate::ingest::IngestConfig::new(
            config.crosspost.relays.clone(),
            config.crosspost.cursor_overlap,
            config.crosspost.account_refresh,
        )
    };
    let relays = config.crosspost.relays.clone();
    crate::metrics::register_relays(&relays);
    let ingest = crate::ingest::run(db.clone(), ingest_cfg, shutdown_rx.clone());
    let pool = crate::worker::WorkerPool::new(db.clone(), worker_config, handlers.registry());
    let retention = crate::retention::run(
        db.clone(),
        config.job_retention,
        divine_bridge_db::accounts::ReleaseAfter {
            disconnected: config.handle_release_grace,
            unprovisioned: config.unprovisioned_handle_release,
        },
        shutdown_rx.clone(),
    );
    let reconcile = crate::reconcile::run(
        db.clone(),
        config.db.connection_url(&config.database_url).map_err(|e| AppError {
            code: ErrorCode::ConfigInvalid,
            message: e.reason,
        })?,
        config.reconcile.clone(),
        shutdown_rx.clone(),
    );
    let workers_rx = shutdown_rx.clone();
    let tasks: Vec<(&'static str, TaskFuture)> = vec![
        ("http", Box::pin(async move { http.await.map_err(|e| e.to_string()) })),
        (
            "ingest",
            Box::pin(async move {
                let result = ingest.await.map_err(|e| format!("{e:#}"));
                // A stopped ingest is connected to nothing, whatever its last status tick said.
                for relay in relays {
                    metrics::gauge!(crate::metrics::RELAY_CONNECTED, "relay" => relay).set(0.0);
                }
                result
            }),
        ),
        (
            "workers",
            Box::pin(async move {
                pool.run(workers_rx).await;
                Ok(())
            }),
        ),
        (
            "retention",
            Box::pin(async move {
                retention.await;
                Ok(())
            }),
        ),
        (
            "reconcile",
            Box::pin(async move {
                reconcile.await;
                Ok(())
            }),
        ),
    ];
    supervise(tasks, shutdown_tx, health, TASK_EXIT_LINGER).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `HTTP_ADDR` (non-blocking, for tokio); failure is `http_bind_failed`.
fn bind_http(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, AppError> {
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error(addr))?;
    listener.set_nonblocking(true).map_err(bind_error(addr))?;
    Ok(listener)
}

fn bind_error(addr: std::net::SocketAddr) -> impl Fn(std::io::Error) -> AppError {
    move |e| AppError {
        code: ErrorCode::HttpBindFailed,
        message: format!(
            "cannot listen on HTTP_ADDR {addr}: {e} (another process on the port, or not an address of this host)"
        ),
    }
}

/// The supervised background tasks of `run`: the `task` label of `bridge_task_exits_total`.
pub const TASKS: [&str; 5] = ["http", "ingest", "workers", "retention", "reconcile"];

/// How long a process whose task died stays up, unready, before it drains and exits: three readiness probes (10 s
/// apart) take it out of the Service and Prometheus (15–30 s scrape interval) sees `bridge_task_exits_total`.
pub const TASK_EXIT_LINGER: std::time::Duration = std::time::Duration::from_secs(30);

/// A supervised task: `Err` carries why it stopped.
pub type TaskFuture = futures::future::BoxFuture<'static, Result<(), String>>;

/// Runs `tasks` (each on its own tokio task, so a panic is caught) until every one has ended.
///
/// Decision: a task that ends, fails or panics before shutdown was requested is a dead part of the process that
/// cannot repair itself (an ingest that returned means no events are read although every probe and
/// `bridge_relay_connected` looked healthy). The process then (1) counts it in `bridge_task_exits_total{task}` and
/// logs `task_exited`, (2) turns unready at once (`/ready` 503, reason `task_exited`), (3) lingers
/// [`TASK_EXIT_LINGER`] (or until a signal) so the pod leaves the Service and the counter is scraped, (4) requests
/// shutdown so the surviving tasks drain (workers finish in-flight jobs), and (5) exits non-zero (`task_exited`),
/// so Kubernetes restarts it. Staying up unready would need an operator; exiting is the repair. Tasks that end after
/// shutdown was requested are the normal drain and are not counted.
pub async fn supervise(
    tasks: Vec<(&'static str, TaskFuture)>,
    shutdown: watch::Sender<bool>,
    health: crate::http::TaskHealth,
    linger: std::time::Duration,
) -> Result<(), AppError> {
    let mut set = tokio::task::JoinSet::new();
    let mut names = std::collections::HashMap::new();
    for (name, task) in tasks {
        names.insert(set.spawn(task).id(), name);
    }
    let mut died: Option<AppError> = None;
    while let Some(joined) = set.join_next_with_id().await {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) if e.is_panic() => (e.id(), Err("panicked".to_string())),
            Err(e) => (e.id(), Err(e.to_string())),
        };
        let task = names.get(&id).copied().unwrap_or("unknown");
        if *shutdown.borrow() {
            if let Err(reason) = result {
                tracing::warn!(task, reason, "task stopped with an error during shutdown");
            }
            continue;
        }
        let reason = result.err().unwrap_or_else(|| "returned".to_string());
        metrics::counter!(crate::metrics::TASK_EXITS, "task" => task).increment(1);
        health.mark_exited(task);
        tracing::error!(
            code = "task_exited",
            task,
            reason,
            "background task ended unexpectedly; process is unready and will exit"
        );
        died.get_or_insert(AppError {
            code: ErrorCode::TaskExited,
            message: format!("background task {task} ended unexpectedly: {reason}"),
        });
        let mut signalled = shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(linger) => {}
            _ = signalled.wait_for(|s| *s) => {}
        }
        shutdown.send_replace(true);
    }
    died.map_or(Ok(()), Err)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

async fn jobs_command(cmd: JobsCommand, url: &str) -> Result<(), AppError> {
    match cmd {
        JobsCommand::List(args) => {
            let json = args.json;
            let wide = args.wide;
            let rows = with_conn(url, move |c| crate::cli::list_jobs(c, &args)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            } else {
                println!("{}", crate::cli::render_jobs(&rows, wide));
            }
        }
        JobsCommand::Retry(args) => {
            if let Some(id) = args.id {
                with_conn(url, move |c| retry_one(c, id)).await?;
                print_change(args.json, "retried", id, "re-queued, runnable now");
            } else if args.failed {
                let (kind, json) = (args.kind, args.json);
                // One connection for the whole run; one statement per job so the progress line means something and
                // a job that left `failed` meanwhile (retried by a worker or another operator) is simply skipped.
                let (done, total) = with_conn(url, move |c| {
                    let ids = queue::failed_ids(c, kind)?;
                    let total = ids.len();
                    let mut done = 0usize;
                    for (i, id) in ids.into_iter().enumerate() {
                        if queue::retry(c, id)? {
                            done += 1;
                        }
                        if !json && ((i + 1) % 100 == 0 || i + 1 == total) {
                            eprint!("\rretrying failed jobs: {}/{total}", i + 1);
                        }
                    }
                    Ok::<_, divine_bridge_db::DbError>((done, total))
                })
                .await?;
                if json {
                    println!("{}", serde_json::json!({"retried": done, "matched": total}));
                } else {
                    if total > 0 {
                        eprintln!();
                    }
                    println!("retried {done} of {total} failed job(s)");
                }
            } else {
                return Err(AppError {
                    code: ErrorCode::CliUsage,
                    message: "give a job id or --failed".into(),
                });
            }
        }
        JobsCommand::Cancel { id, json } => {
            let state = with_conn(url, move |c| cancel_one(c, id)).await?;
            let how = if state == divine_bridge_db::JobState::Running {
                "cancel requested; it ends when its current try does"
            } else {
                "cancelled"
            };
            print_change(json, "cancelled", id, how);
        }
    }
    Ok(())
}

/// `jobs retry <id>`: re-queues the job, or says why not (no such job, not in a retryable state).
fn retry_one(c: &mut diesel::PgConnection, id: i64) -> Result<(), crate::cli::CliError> {
    use crate::cli::CliError;
    if queue::retry(c, id)? {
        return Ok(());
    }
    match queue::get(c, id)? {
        None => Err(CliError::JobNotFound(id)),
        Some(job) => Err(CliError::JobNotRetryable { id, state: job.state }),
    }
}

/// `jobs cancel <id>`: cancels a queued job, requests the cancel of a running one (returns the state it was in),
/// or says why not (no such job, already finished).
fn cancel_one(c: &mut diesel::PgConnection, id: i64) -> Result<divine_bridge_db::JobState, crate::cli::CliError> {
    use crate::cli::CliError;
    let before = queue::get(c, id)?.ok_or(CliError::JobNotFound(id))?;
    if queue::cancel(c, id)? {
        return Ok(before.state);
    }
    let after = queue::get(c, id)?.ok_or(CliError::JobNotFound(id))?;
    Err(CliError::JobAlreadyFinished { id, state: after.state })
}

/// Prints what a job command did (`{"id", <verb>: true, "detail"}` with `--json`).
fn print_change(json: bool, verb: &str, id: i64, detail: &str) {
    if json {
        println!("{}", serde_json::json!({"id": id, verb: true, "detail": detail}));
    } else {
        println!("job {id}: {detail}");
    }
}

/// Runs an audited account action (actor `cli:<user>`) on the account selected by `who` (pubkey, npub, handle, DID).
async fn account_action(
    url: &str,
    who: String,
    action: AuditAction,
    reason: Option<String>,
    op: impl FnOnce(&mut diesel::PgConnection, &str) -> Result<AccountLink, AccountError> + Send + 'static,
) -> Result<AccountLink, AppError> {
    let pk = with_conn(url, move |c| crate::cli::resolve_account(c, &who)).await?;
    with_conn(url, move |c| {
        audited(c, &pk.clone(), &Actor::cli_user(), action, reason.as_deref(), |c| {
            op(c, &pk)
        })
    })
    .await
}

fn print_link(link: &AccountLink, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(link).unwrap_or_default());
    } else {
        println!("{} ({}): {}", link.handle, link.nostr_pubkey, link.provisioning_state);
    }
}

async fn accounts_command(cmd: AccountsCommand, url: &str) -> Result<(), AppError> {
    match cmd {
        AccountsCommand::Show { who, json } => {
            let view = with_conn(url, move |c| crate::cli::load_account(c, &who)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view).unwrap_or_default());
            } else {
                println!("{}", crate::cli::render_account(&view));
            }
        }
        AccountsCommand::Reprovision { who, json } => {
            let link = with_conn(url, move |c| {
                let pk = crate::cli::resolve_account(c, &who)?;
                accounts::get(c, &pk)?.ok_or(crate::cli::CliError::AccountNotFound(who))
            })
            .await?;
            if link.provisioning_state == divine_bridge_db::ProvisioningState::Ready.as_str() {
                return Err(AppError::of(crate::cli::CliError::AccountAlreadyReady {
                    pubkey: link.nostr_pubkey,
                    handle: link.handle,
                }));
            }
            let pk = link.nostr_pubkey;
            let id: Option<i64> = with_conn(url, move |c| {
                audited(
                    c,
                    &pk.clone(),
                    &Actor::cli_user(),
                    AuditAction::Reprovision,
                    None,
                    |c| {
                        accounts::reset_failed(c, &pk)?;
                        Ok(queue::requeue_or_enqueue(c, &accounts::provision_job(&pk)?)?)
                    },
                )
            })
            .await?;
            if json {
                println!("{}", serde_json::json!({"job_id": id}));
            } else {
                println!("provisioning re-queued as job {id:?}");
            }
        }
        AccountsCommand::Suspend { who, reason, json } => {
            let reason = reason.trim().to_string();
            if reason.is_empty() {
                return Err(AppError {
                    code: ErrorCode::CliUsage,
                    message: "--reason must not be blank".into(),
                });
            }
            let link = account_action(url, who, AuditAction::Suspend, Some(reason.clone()), move |c, pk| {
                Ok(accounts::suspend(c, pk, &reason)?.link)
            })
            .await?;
            print_link(&link, json);
        }
        AccountsCommand::Unsuspend { who, json } => {
            let link = account_action(url, who, AuditAction::Unsuspend, None, accounts::unsuspend).await?;
            print_link(&link, json);
        }
    }
    Ok(())
}
