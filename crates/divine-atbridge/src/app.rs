//! Process wiring for `divine-atbridge`: logging, TLS provider, configuration, migrations, the HTTP health server,
//! relay ingest, the worker pool and signal handling, plus the operator commands. Owns startup order and shutdown;
//! it must not contain domain logic (that lives in the modules it wires together).

use crate::cli::{AccountsCommand, Cli, Command, JobsCommand};
use crate::config::{Config, ConfigError};
use crate::jobs::handlers::Handlers;
use crate::keys::KeyEncryptionKey;
use crate::xrpc::{XrpcClient, XrpcConfig};
use divine_bridge_db::migrate::run_migrations;
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::states::priority;
use divine_bridge_db::{Classified, Db, JobKind};
use std::sync::Arc;
use tokio::sync::watch;

/// A fatal error with its stable code.
#[derive(Debug)]
pub struct AppError {
    code: &'static str,
    message: String,
}

impl AppError {
    pub fn code(&self) -> &'static str {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn database_url() -> Result<String, AppError> {
    Ok(crate::config::required("DATABASE_URL")?)
}

/// Runs `f` on one direct connection (operator commands: no pool, so no background threads at exit).
async fn with_conn<T: Send + 'static>(
    f: impl FnOnce(&mut diesel::PgConnection) -> Result<T, divine_bridge_db::DbError> + Send + 'static,
) -> Result<T, AppError> {
    use diesel::Connection;
    let url = database_url()?;
    tokio::task::spawn_blocking(move || {
        let mut conn =
            diesel::PgConnection::establish(&url).map_err(|e| divine_bridge_db::DbError::Pool(e.to_string()))?;
        f(&mut conn)
    })
    .await
    .map_err(|e| AppError {
        code: "db_unavailable",
        message: e.to_string(),
    })?
    .map_err(AppError::of)
}

/// Runs one command.
pub async fn dispatch(cli: Cli) -> Result<(), AppError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run().await,
        Command::Migrate => {
            let applied = with_conn(run_migrations).await?;
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
        Command::Jobs(cmd) => jobs_command(cmd).await,
        Command::Accounts(cmd) => accounts_command(cmd).await,
    }
}

async fn run() -> Result<(), AppError> {
    let config = Config::from_env()?;
    let worker_config = crate::worker::WorkerConfig::from_env().map_err(AppError::of)?;
    let kek = Arc::new(KeyEncryptionKey::from_base64(&config.identity.key_encryption_key).map_err(AppError::of)?);
    let db = Db::connect(&config.database_url, config.db_pool_size)?;
    let applied = db.run(run_migrations).await?;
    tracing::info!(applied = applied.len(), "migrations checked");
    let metrics = crate::metrics::install();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: no new leases; finishing in-flight jobs");
        let _ = shutdown_tx.send(true);
    });

    let xrpc = XrpcClient::new(&XrpcConfig::default()).map_err(AppError::of)?;
    let handlers = Arc::new(Handlers::new(
        db.clone(),
        xrpc,
        kek,
        config.identity.clone(),
        config.crosspost.clone(),
    ));
    let http = tokio::spawn(crate::http::serve(
        config.http_addr,
        db.clone(),
        metrics,
        shutdown_rx.clone(),
    ));
    let ingest_cfg = crate::ingest::IngestConfig {
        authors_per_subscription: config.crosspost.authors_per_subscription,
        ..crate::ingest::IngestConfig::new(
            config.crosspost.relays.clone(),
            config.crosspost.cursor_overlap,
            config.crosspost.account_refresh,
        )
    };
    let ingest = tokio::spawn(crate::ingest::run(db.clone(), ingest_cfg, shutdown_rx.clone()));
    let reconcile = crate::reconcile::run(
        db.clone(),
        config.database_url.clone(),
        config.reconcile.clone(),
        shutdown_rx.clone(),
    );
    let reconcile = tokio::spawn(reconcile);
    let registry = handlers.registry();
    crate::worker::WorkerPool::new(db.clone(), worker_config, registry)
        .run(shutdown_rx)
        .await;
    if let Ok(Err(e)) = ingest.await {
        tracing::warn!(error = %e, "ingest stopped with an error");
    }
    let _ = reconcile.await;
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
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

async fn jobs_command(cmd: JobsCommand) -> Result<(), AppError> {
    match cmd {
        JobsCommand::List(args) => {
            let json = args.json;
            let rows = with_conn(move |c| Ok(crate::cli::list_jobs(c, &args)?)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            } else {
                println!("{}", crate::cli::render_jobs(&rows));
            }
        }
        JobsCommand::Retry(args) => {
            if let Some(id) = args.id {
                let ok = with_conn(move |c| queue::retry(c, id)).await?;
                print_change(args.json, "retried", id, ok);
            } else if args.failed {
                let (kind, json) = (args.kind, args.json);
                // One connection for the whole run; one statement per job so the progress line means something and
                // a job that left `failed` meanwhile (retried by a worker or another operator) is simply skipped.
                let (done, total) = with_conn(move |c| {
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
                    Ok((done, total))
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
                    code: "cli_usage",
                    message: "give a job id or --failed".into(),
                });
            }
        }
        JobsCommand::Cancel { id, json } => {
            let ok = with_conn(move |c| queue::cancel(c, id)).await?;
            print_change(json, "cancelled", id, ok);
        }
    }
    Ok(())
}

fn print_change(json: bool, verb: &str, id: i64, ok: bool) {
    if json {
        println!("{}", serde_json::json!({"id": id, verb: ok}));
    } else if ok {
        println!("job {id} {verb}");
    } else {
        println!("job {id} not {verb} (not found, or not in a state that allows it)");
    }
}

async fn accounts_command(cmd: AccountsCommand) -> Result<(), AppError> {
    match cmd {
        AccountsCommand::Show { who, json } => {
            let view = with_conn(move |c| Ok(crate::cli::load_account(c, &who)?)).await?;
            match view {
                None => {
                    return Err(AppError {
                        code: "account_not_found",
                        message: "no such account".into(),
                    })
                }
                Some(v) if json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                Some(v) => println!("{}", crate::cli::render_account(&v)),
            }
        }
        AccountsCommand::Reprovision { pubkey, json } => {
            let pk = crate::cli::normalise_selector(&pubkey);
            let id = with_conn(move |c| {
                let mut job = NewJob::new(
                    JobKind::ProvisionAccount,
                    pk.clone(),
                    serde_json::json!({"nostr_pubkey": pk}),
                )
                .unique(format!("provision:{pk}"));
                job.priority = priority::ACCOUNT;
                divine_bridge_db::accounts::reset_failed(c, &pk)?;
                queue::requeue_or_enqueue(c, &job)
            })
            .await?;
            if json {
                println!("{}", serde_json::json!({"job_id": id}));
            } else {
                println!("provisioning re-queued as job {id:?}");
            }
        }
    }
    Ok(())
}
