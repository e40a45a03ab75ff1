//! The outermost middleware, run for EVERY response (routes, fallbacks, rejections, caught panics):
//!
//! - `X-Request-ID`: a valid incoming one (1–128 of `A-Za-z0-9._:-`) is echoed, otherwise one is generated;
//! - problem bodies: an [`ApiError`] response carries a [`Problem`] extension, rendered here with the request id;
//!   any other error response without a problem body (axum's own 404/405, a caught panic) is replaced by the
//!   problem of its status, so clients only ever see `application/problem+json` errors;
//! - metrics `gateway_http_requests_total{route,status}` with the route TEMPLATE (set by [`route_label`], a route
//!   layer that sees `MatchedPath`), `unmatched` when no route matched;
//! - one access-log line (with the problem `code` of an error answer and, for a 401, the `auth_reason`).
//!
//! Owns cross-cutting response shaping only; it must not make authorization or business decisions.

use crate::metrics::{HTTP_DURATION, HTTP_REQUESTS};
use crate::problem::{ApiError, AuthFailure, Problem, PROBLEM_JSON};
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of the current request (request extension), for handlers that log.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The matched route template, passed from [`route_label`] to [`edge`] in the response extensions.
#[derive(Debug, Clone)]
struct RouteLabel(String);

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_string())
}

fn new_request_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Route layer: records the matched route template for [`edge`].
pub async fn route_label(req: Request, next: Next) -> Response {
    let label = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let mut resp = next.run(req).await;
    if let Some(label) = label {
        resp.extensions_mut().insert(RouteLabel(label));
    }
    resp
}

/// The outermost middleware (see module docs).
pub async fn edge(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(valid_request_id)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().clone();

    let mut resp = next.run(req).await;

    let status = resp.status();
    let problem = resp.extensions_mut().remove::<Problem>().or_else(|| {
        let is_problem = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
        (status.as_u16() >= 400 && !is_problem).then(|| ApiError::from_status(status).problem())
    });
    let code = problem.as_ref().map(|p| p.code.as_str());
    let auth_failure = resp.extensions().get::<AuthFailure>().map(|a| a.0);
    if let Some(problem) = problem {
        let body = problem.to_json(&request_id).to_string();
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        *resp.body_mut() = Body::from(body);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }

    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".to_string());
    let elapsed = started.elapsed();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route.clone()).record(elapsed.as_secs_f64());
    let elapsed_ms = elapsed.as_millis() as u64;
    let status = status.as_u16();
    if matches!(route.as_str(), "/health" | "/ready" | "/metrics") && status < 400 {
        tracing::debug!(request_id, %method, route, status, elapsed_ms, "request");
    } else {
        // `code`: the problem code of an error answer; `auth_reason`: why a 401 refused the credential.
        tracing::info!(request_id, %method, route, status, code, auth_reason = auth_failure, elapsed_ms, "request");
    }
    resp
}
