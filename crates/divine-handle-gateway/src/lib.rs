//! divine-handle-gateway: the HTTP front door of the Divine ATProto bridge. Users (through the Divine login
//! service, or directly with NIP-98) opt in, enable/disable cross-posting and read their account and per-post
//! status; Bluesky resolves `<name>.<HANDLE_DOMAIN>` handles through `/.well-known/atproto-did`.
//!
//! This crate owns HTTP only: routing, authentication, input validation, problem+json errors, metrics. Account
//! state and job writes live in `divine_bridge_db::accounts`; provisioning and publishing are the worker's
//! (`divine-atbridge`). The binary (`src/main.rs`) only loads [`config::Config`] and calls [`run`].

pub mod auth;
pub mod cache;
pub mod config;
pub mod edge;
pub mod extract;
pub mod handle;
pub mod limits;
pub mod metrics;
pub mod problem;
pub mod ready;
pub mod routes;

use crate::auth::ReplayGuard;
use crate::cache::TtlCache;
use crate::config::Config;
use crate::limits::RateLimits;
use crate::ready::ReadyProbe;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;
use divine_bridge_db::{migrate, Db, ErrorCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    pub replay: Arc<ReplayGuard>,
    pub prometheus: PrometheusHandle,
    /// `/api/*` request-rate limiters (`limits`).
    pub limits: Arc<RateLimits>,
    /// `/.well-known/atproto-did` answers by handle: `Some(did)` or `None` (not found), for `WELL_KNOWN_CACHE_SECS`.
    pub well_known: Arc<Mutex<TtlCache<Option<String>>>>,
    /// `/ready`'s own connection (`ready`).
    pub ready: Arc<ReadyProbe>,
}

impl AppState {
    /// State over an existing pool (the process-wide Prometheus recorder is installed on first use).
    pub fn new(db: Db, config: Config) -> AppState {
        let abuse = &config.abuse;
        AppState {
            db,
            replay: Arc::new(ReplayGuard::new(abuse.replay_memory_entries)),
            prometheus: metrics::prometheus(),
            limits: Arc::new(RateLimits::new(abuse)),
            well_known: Arc::new(Mutex::new(TtlCache::new(
                abuse.well_known_cache_ttl,
                abuse.well_known_cache_entries,
            ))),
            ready: Arc::new(ReadyProbe::new(&config)),
            config: Arc::new(config),
        }
    }
}

/// The gateway's routes and middleware. Tests drive it with `tower::ServiceExt::oneshot` or a real listener.
///
/// `/api/*` passes the rate limits first (`limits::rate_limit`, a route layer of those routes only).
/// `/.well-known/atproto-did` is answered from a bounded cache (`routes::atproto_did`) and wrapped, outermost first,
/// in: `Vary: Host`, the mapping of tower errors to problems, load shedding (503 `overloaded` at once when
/// `WELL_KNOWN_MAX_CONCURRENCY` lookups are in flight, instead of queueing), the concurrency limit, and the
/// `WELL_KNOWN_TIMEOUT_MS` deadline (503 `timeout`).
pub fn router(state: AppState) -> Router {
    let abuse = &state.config.abuse;
    let well_known = get(routes::atproto_did).layer(
        ServiceBuilder::new()
            .layer(axum::middleware::map_response(routes::vary_host))
            .layer(HandleErrorLayer::new(routes::well_known_refused))
            .load_shed()
            .concurrency_limit(abuse.well_known_max_concurrency)
            .timeout(abuse.well_known_timeout),
    );
    Router::new()
        .route("/api/account-links/opt-in", post(routes::opt_in))
        .route("/api/account-links/{pubkey}/enable", post(routes::enable))
        .route("/api/account-links/{pubkey}/disable", post(routes::disable))
        .route("/api/account-links/{pubkey}/disconnect", post(routes::disconnect))
        .route("/api/account-links/{pubkey}/suspend", post(routes::suspend))
        .route("/api/account-links/{pubkey}/unsuspend", post(routes::unsuspend))
        .route("/api/account-links/{pubkey}/posts", get(routes::history))
        .route("/api/account-links/{pubkey}/export", get(routes::export))
        .route("/api/account-links/{pubkey}/status", get(routes::status))
        .route(
            "/api/account-links/{pubkey}/crosspost-status",
            post(routes::crosspost_status),
        )
        .route(
            "/api/opt-in-allowlist/{pubkey}",
            put(routes::allowlist_add).merge(delete(routes::allowlist_remove)),
        )
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::rate_limit))
        .route("/.well-known/atproto-did", well_known)
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        // After the routes: applies to each of them.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .route_layer(axum::middleware::from_fn(edge::route_label))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(edge::edge))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address feeds the per-IP rate limit when no trusted proxy header is configured.
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; draining"),
        _ = term => tracing::info!("SIGTERM received; draining"),
    }
}

/// Why the gateway could not start (after configuration, which is [`config::ConfigError`]): a stable code decided
/// where the failure is born, printed as `error[code]: message` by the binary.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `BIND_ADDR` cannot be bound (in use, not an address of this host).
    #[error("cannot listen on BIND_ADDR {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Connecting (`db_connect_rejected`, `db_unavailable`) or migrating (`db_migration_failed`).
    #[error(transparent)]
    Db(#[from] divine_bridge_db::DbError),
    /// The server stopped with an I/O error.
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

impl divine_bridge_db::Classified for StartError {
    fn code(&self) -> ErrorCode {
        match self {
            StartError::Bind { .. } => ErrorCode::GatewayBindFailed,
            StartError::Db(e) => e.code(),
            StartError::Serve(_) => ErrorCode::GatewayServeFailed,
        }
    }

    fn class(&self) -> divine_bridge_db::ErrorClass {
        match self {
            StartError::Db(e) => e.class(),
            _ => divine_bridge_db::ErrorClass::Permanent,
        }
    }
}

/// What the listener answers while the gateway is still connecting to Postgres and migrating: `/health` 200 (alive;
/// a liveness probe must not kill a pod for waiting on its database), `/ready` and every API route 503
/// (`not_ready` / `unavailable` with `Retry-After`), `/metrics` as usual.
pub fn starting_router() -> Router {
    let starting = "starting: connecting to the database";
    Router::new()
        .route("/health", get(routes::health))
        .route(
            "/ready",
            get(move || async move {
                problem::ApiError::NotReady {
                    reason: "starting",
                    detail: starting.into(),
                }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    metrics::render(&metrics::prometheus()),
                )
            }),
        )
        .fallback(move || async move { problem::ApiError::Unavailable(starting.into()) })
}

/// Startup, in this order: bind `BIND_ADDR` (`gateway_bind_failed` at once), then connect with the policy both
/// binaries share ([`Db::connect_within`]: a configuration error of `DATABASE_URL` fails at once with
/// `db_connect_rejected`, an unreachable server is retried for `DB_CONNECT_WAIT_SECS` and then `db_unavailable`),
/// serving [`starting_router`] meanwhile; then serve until SIGTERM/SIGINT.
///
/// Decision: the gateway never migrates. It runs as the least-privilege gateway role (`divine_bridge_db::roles`),
/// which cannot create or alter anything; the worker (the schema's owner) or `divine-atbridge migrate` migrates, and
/// until every migration is applied `/ready` answers 503 `migrations_pending`, so no replica takes traffic on an
/// old schema.
pub async fn run(config: Config) -> Result<(), StartError> {
    let addr = config.bind_addr;
    let bind = |source| StartError::Bind { addr, source };
    let socket = std::net::TcpListener::bind(addr).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    let early = tokio::net::TcpListener::from_std(socket.try_clone().map_err(bind)?).map_err(bind)?;
    tracing::info!(addr = %early.local_addr().map_err(bind)?, "gateway listening; connecting to the database");
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<()>();
    let starting = tokio::spawn(async move {
        axum::serve(early, starting_router())
            .with_graceful_shutdown(async move {
                let _ = connected_rx.await;
            })
            .await
    });
    tracing::info!(service_tokens = ?config.service_tokens.ids(), "service tokens accepted (fingerprints)");
    let db = Db::connect_within(&config.database_url, &config.db, config.db_connect_wait).await?;
    if !db.run(migrate::migrations_applied).await? {
        tracing::warn!("migrations pending: unready until the worker (or `divine-atbridge migrate`) applies them");
    }
    let _ = connected_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), starting).await;
    let listener = tokio::net::TcpListener::from_std(socket).map_err(bind)?;
    tracing::info!(addr = %addr, domain = %config.handle_domain, "gateway ready");
    serve(listener, AppState::new(db, config), shutdown_signal())
        .await
        .map_err(StartError::Serve)?;
    tracing::info!("gateway stopped");
    Ok(())
}
