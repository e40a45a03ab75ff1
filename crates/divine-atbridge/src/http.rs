//! The operational HTTP server of `divine-atbridge` on `HTTP_ADDR`: `/metrics` (Prometheus text), `/health`
//! (200 while the process runs), `/ready` (200 only when the database is reachable and every migration is applied,
//! else 503 with a JSON `reason`: `migrations_pending` or `database_unavailable`). Owns nothing else: no admin
//! actions here, and it never changes the database.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use divine_bridge_db::Db;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

#[derive(Clone)]
struct AppState {
    db: Db,
    metrics: PrometheusHandle,
}

/// The router (exposed for tests).
pub fn router(db: Db, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(|| async { (StatusCode::OK, "ok") }))
        .route("/ready", get(ready))
        .with_state(AppState { db, metrics })
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    match s.db.run(divine_bridge_db::migrate::migrations_applied).await {
        Ok(true) => (StatusCode::OK, axum::Json(serde_json::json!({"ready": true}))),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "reason": "migrations_pending"})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "reason": "database_unavailable", "detail": e.to_string()})),
        ),
    }
}

/// Binds `addr` (`HTTP_ADDR`, default `0.0.0.0:9090`) and serves until `shutdown` becomes true.
pub async fn serve(
    addr: std::net::SocketAddr,
    db: Db,
    metrics: PrometheusHandle,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, db, metrics, shutdown).await
}

/// Serves on an already bound listener (tests bind `127.0.0.1:0`) until `shutdown` becomes true.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    db: Db,
    metrics: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "health server listening");
    axum::serve(listener, router(db, metrics))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
