//! The operational HTTP server of `divine-atbridge` on `HTTP_ADDR`: `/metrics` (Prometheus text), `/health`
//! (process alive), `/ready` (database reachable and migrations applied). Owns nothing else: no admin actions here.

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

/// Serves until `shutdown` becomes true.
pub async fn serve(
    addr: std::net::SocketAddr,
    db: Db,
    metrics: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health server listening");
    axum::serve(listener, router(db, metrics))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
