//! The operational HTTP server of `divine-atbridge` on `HTTP_ADDR`: `/metrics` (Prometheus text), `/health`
//! (200 `{"status":"ok"}` while the process runs), `/ready` (200 `{"ready":true}` only when the database is reachable
//! and every migration is applied, else 503 `{"ready":false,"reason":…}` — the gateway answers in the same shape —
//! with `reason`: `starting` (still connecting to Postgres or migrating, [`serve_starting`]),
//! `task_exited` (a supervised background task ended unexpectedly, see
//! [`TaskHealth`] and `app::supervise`), `migrations_pending` or `database_unavailable`). Owns nothing else: no admin
//! actions here, and it never changes the database.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use divine_bridge_db::Classified;
use divine_bridge_db::Db;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Which supervised background tasks ended unexpectedly. Shared by the supervisor (writes) and `/ready` (reads):
/// once a task is recorded here the process stays unready until it exits.
#[derive(Clone, Default)]
pub struct TaskHealth(Arc<Mutex<Vec<&'static str>>>);

impl TaskHealth {
    /// Records that `task` ended unexpectedly.
    pub fn mark_exited(&self, task: &'static str) {
        let mut tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !tasks.contains(&task) {
            tasks.push(task);
        }
    }
    /// Tasks that ended unexpectedly, in the order they did.
    pub fn exited(&self) -> Vec<&'static str> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Clone)]
struct AppState {
    db: Db,
    metrics: PrometheusHandle,
    tasks: TaskHealth,
}

/// The router (exposed for tests).
pub fn router(db: Db, metrics: PrometheusHandle, tasks: TaskHealth) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .with_state(AppState { db, metrics, tasks })
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    let exited = s.tasks.exited();
    if !exited.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "reason": "task_exited", "tasks": exited})),
        );
    }
    match s.db.run(divine_bridge_db::migrate::migrations_applied).await {
        Ok(true) => (StatusCode::OK, axum::Json(serde_json::json!({"ready": true}))),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "reason": "migrations_pending"})),
        ),
        // The body carries the error's code only: the raw database error (host names, database and role names)
        // goes to the log, not to whoever can reach the probe port.
        Err(e) => {
            tracing::warn!(code = %e.code(), error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(
                    serde_json::json!({"ready": false, "reason": "database_unavailable", "code": e.code().as_str()}),
                ),
            )
        }
    }
}

/// What the listener answers while `run` is still connecting to Postgres and migrating (`Db::connect_within` may
/// wait up to `DB_CONNECT_WAIT_SECS`): `/health` 200 (the process is alive: a liveness probe must not restart it
/// for waiting on its database), `/ready` 503 `{"ready":false,"reason":"starting"}`, `/metrics` as usual. Serves
/// until `connected` resolves, then drains so [`serve_on`] takes over the same socket.
pub async fn serve_starting(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    connected: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "health server listening; connecting to the database");
    let router = Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }),
        )
        .route("/health", get(|| async { (StatusCode::OK, "ok") }))
        .route(
            "/ready",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({"ready": false, "reason": "starting"})),
                )
            }),
        );
    axum::serve(listener, router).with_graceful_shutdown(connected).await
}

/// Serves on an already bound listener (`HTTP_ADDR`, bound first by `app::run`; tests bind `127.0.0.1:0`) until
/// `shutdown` becomes true.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    db: Db,
    metrics: PrometheusHandle,
    tasks: TaskHealth,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "health server listening");
    axum::serve(listener, router(db, metrics, tasks))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
