//! HTTP handlers. Each `/api/*` handler: authenticate ([`Credential`] extractor, then
//! [`Credential::authorize`] with the acting pubkey and body), validate, call the account store in
//! `divine_bridge_db::accounts` on the blocking pool, and answer the [`AccountLinkRecord`] JSON.
//!
//! Opt-in semantics (documented for the login service and the app):
//! - new pubkey + free handle → 202, link `pending`, `provision_account` job written in the same transaction;
//! - same pubkey + same handle again → 202 with the existing link, no second job (a `disabled` link is enabled
//!   again, as by `/enable`);
//! - handle held by another pubkey → 409 `handle_taken`;
//! - same pubkey with a different handle → 409 `handle_mismatch` (handle changes are out of scope, whatever the
//!   link's state).
//!
//! Lifecycle actions (opt-in, enable, disable, suspend, unsuspend) are written to `account_audit` with the caller as
//! actor, in the action's transaction ([`audited`]). Suspend and unsuspend are operator-only (service token); a
//! user's enable or opt-in of a suspended account is refused with 403 `account_suspended`.
//!
//! Disconnect (`POST /api/account-links/{pubkey}/disconnect`, the user by NIP-98 or the service): 202 with the link
//! `disconnecting` and its `disconnect_account` job queued; repeats answer 202 again and re-drive a failed job; the
//! status endpoint shows `disconnected` when the job is done. Afterwards enable and opt-in answer 409
//! `account_disconnected` and the handle stays taken until the release grace period is over (see
//! divine_bridge_db::accounts, disconnect semantics).
//!
//! Owns request/response shapes only; state changes and their atomicity belong to the store.

use crate::auth::Credential;
use crate::edge::RequestId;
use crate::extract::{JsonBody, PubkeyParam, RawBody};
use crate::handle::{host_to_handle, normalize_event_id, normalize_handle, normalize_pubkey, MAX_HANDLE_LEN};
use crate::limits;
use crate::metrics::{OPT_INS, WELL_KNOWN_HIT, WELL_KNOWN_LOOKUPS, WELL_KNOWN_MISS};
use crate::problem::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use diesel::pg::PgConnection;
use divine_bridge_db::accounts::{
    self, AccountError, AccountLink, CrosspostStatus, OptIn, OptInOutcome, MAX_STATUS_IDS,
};
use divine_bridge_db::audit::audited;
use divine_bridge_db::states::AuditAction;
use serde::{Deserialize, Serialize};

/// The account link as the API shows it: the [`AccountLink`] row (one definition of the fields and their types)
/// serialised with only its public fields, in this order, and RFC 3339 timestamps (µs, `Z`). The operator-only
/// fields (`provisioning_error_detail`, `suspended_reason`, `disconnected_at`) are never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLinkRecord(pub AccountLink);

impl Serialize for AccountLinkRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let l = &self.0;
        let mut out = serializer.serialize_struct("AccountLinkRecord", 9)?;
        out.serialize_field("nostr_pubkey", &l.nostr_pubkey)?;
        out.serialize_field("handle", &l.handle)?;
        out.serialize_field("did", &l.did)?;
        out.serialize_field("crosspost_enabled", &l.crosspost_enabled)?;
        out.serialize_field("provisioning_state", &l.provisioning_state)?;
        out.serialize_field("provisioning_error", &l.provisioning_error)?;
        out.serialize_field("disabled_at", &l.disabled_at.map(rfc3339))?;
        out.serialize_field("created_at", &rfc3339(l.created_at))?;
        out.serialize_field("updated_at", &rfc3339(l.updated_at))?;
        out.end()
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl From<AccountLink> for AccountLinkRecord {
    fn from(l: AccountLink) -> Self {
        AccountLinkRecord(l)
    }
}

/// `POST /api/account-links/opt-in` body.
#[derive(Debug, Deserialize)]
pub struct OptInBody {
    pub nostr_pubkey: String,
    pub handle: String,
    #[serde(default = "default_true")]
    pub crosspost_enabled: bool,
}

fn default_true() -> bool {
    true
}

/// `POST /api/account-links/{pubkey}/crosspost-status` body.
#[derive(Debug, Deserialize)]
pub struct CrosspostStatusBody {
    pub nostr_event_ids: Vec<String>,
}

/// `POST /api/account-links/{pubkey}/crosspost-status` answer.
#[derive(Debug, Serialize)]
pub struct CrosspostStatusResponse {
    pub statuses: Vec<CrosspostStatus>,
}

/// The one shape of every account action (opt-in, enable, disable, disconnect, suspend, unsuspend): `op` runs for
/// `pubkey` inside [`audited`] (the change and its audit row, with the credential's actor and `reason`, commit in one
/// transaction); a database failure or an [`AccountError`] becomes the API error for it. Authorization and rate
/// limits stay in each handler, because they differ per action.
async fn audited_action<T: Send + 'static>(
    state: &AppState,
    credential: &Credential,
    pubkey: String,
    action: AuditAction,
    reason: Option<String>,
    op: impl FnOnce(&mut PgConnection, &str) -> Result<T, AccountError> + Send + 'static,
) -> Result<T, ApiError> {
    let actor = credential.actor();
    state
        .db
        .run(move |c| audited(c, &pubkey, &actor, action, reason.as_deref(), |c| op(c, &pubkey)))
        .await
        .map_err(ApiError::from)
}

/// `POST /api/account-links/opt-in` → 202 record.
pub async fn opt_in(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    credential: Credential,
    body: JsonBody<OptInBody>,
) -> Result<Response, ApiError> {
    let pubkey = normalize_pubkey(&body.value.nostr_pubkey)?;
    credential.authorize(&state, &pubkey, &body.raw).await?;
    limits::admit_opt_in(&state, &credential, &pubkey).await?;
    let handle = normalize_handle(
        &body.value.handle,
        &state.config.handle_domain,
        &state.config.reserved_names,
    )?;
    limits::check_provisioning_budget(&state, &pubkey).await?;
    let req = OptIn {
        nostr_pubkey: pubkey,
        handle,
        crosspost_enabled: body.value.crosspost_enabled,
    };
    let pubkey = req.nostr_pubkey.clone();
    let result = audited_action(&state, &credential, pubkey, AuditAction::OptIn, None, move |c, _| {
        accounts::opt_in(c, &req)
    })
    .await?;
    let outcome = match result.outcome {
        OptInOutcome::Created => "created",
        OptInOutcome::Existing => "existing",
        OptInOutcome::Reenabled => "reenabled",
    };
    metrics::counter!(OPT_INS, "outcome" => outcome).increment(1);
    tracing::info!(request_id = %request_id.0, credential = %credential.label(), pubkey = %result.link.nostr_pubkey, handle = %result.link.handle, outcome, "opt-in");
    Ok((StatusCode::ACCEPTED, Json(AccountLinkRecord::from(result.link))).into_response())
}

/// `POST /api/account-links/{pubkey}/enable` → 200 record.
pub async fn enable(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    RawBody(body): RawBody,
) -> Result<Json<AccountLinkRecord>, ApiError> {
    credential.authorize(&state, &pubkey, &body).await?;
    limits::check_toggle_limit(&state, &pubkey).await?;
    let link = audited_action(&state, &credential, pubkey, AuditAction::Enable, None, accounts::enable).await?;
    tracing::info!(credential = %credential.label(), pubkey = %link.nostr_pubkey, state = %link.provisioning_state, "enabled");
    Ok(Json(link.into()))
}

/// `POST /api/account-links/{pubkey}/disable` → 200 record.
pub async fn disable(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    RawBody(body): RawBody,
) -> Result<Json<AccountLinkRecord>, ApiError> {
    credential.authorize(&state, &pubkey, &body).await?;
    limits::check_toggle_limit(&state, &pubkey).await?;
    let disabled = audited_action(
        &state,
        &credential,
        pubkey,
        AuditAction::Disable,
        None,
        accounts::disable,
    )
    .await?;
    tracing::info!(
        credential = %credential.label(),
        pubkey = %disabled.link.nostr_pubkey,
        cancelled_jobs = disabled.cancelled_jobs,
        "disabled"
    );
    Ok(Json(disabled.link.into()))
}

/// `POST /api/account-links/{pubkey}/disconnect` → 202 record (`disconnecting`, or `disconnected` on a repeat after
/// the job finished). The user (NIP-98) or the service; audited as `disconnect`.
pub async fn disconnect(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<AccountLinkRecord>), ApiError> {
    credential.authorize(&state, &pubkey, &body).await?;
    let started = audited_action(
        &state,
        &credential,
        pubkey,
        AuditAction::Disconnect,
        None,
        accounts::begin_disconnect,
    )
    .await?;
    tracing::info!(
        credential = %credential.label(),
        pubkey = %started.link.nostr_pubkey,
        cancelled_jobs = started.cancelled_jobs,
        job_id = ?started.job_id,
        "disconnect requested"
    );
    Ok((StatusCode::ACCEPTED, Json(started.link.into())))
}

/// `POST /api/account-links/{pubkey}/suspend` body.
#[derive(Debug, Deserialize)]
pub struct SuspendBody {
    /// Why the operator suspends the account (required, shown by `accounts show` and kept in the audit trail).
    pub reason: String,
}

/// `POST /api/account-links/{pubkey}/suspend` `{"reason": "..."}` → 200 record. Operator only (service token): 403
/// `operator_only` for a NIP-98 caller; 400 `invalid_json` without a non-blank reason.
pub async fn suspend(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    body: JsonBody<SuspendBody>,
) -> Result<Json<AccountLinkRecord>, ApiError> {
    credential.require_operator()?;
    credential.authorize(&state, &pubkey, &body.raw).await?;
    let reason = body.value.reason.trim().to_string();
    if reason.is_empty() {
        return Err(ApiError::InvalidJson("a non-blank `reason` is required".into()));
    }
    let suspended = audited_action(
        &state,
        &credential,
        pubkey,
        AuditAction::Suspend,
        Some(reason.clone()),
        move |c, pubkey| accounts::suspend(c, pubkey, &reason),
    )
    .await?;
    tracing::info!(credential = %credential.label(), pubkey = %suspended.link.nostr_pubkey, cancelled_jobs = suspended.cancelled_jobs, "suspended");
    Ok(Json(suspended.link.into()))
}

/// `POST /api/account-links/{pubkey}/unsuspend` → 200 record (`disabled`: cross-posting stays off until enabled).
/// Operator only.
pub async fn unsuspend(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    RawBody(body): RawBody,
) -> Result<Json<AccountLinkRecord>, ApiError> {
    credential.require_operator()?;
    credential.authorize(&state, &pubkey, &body).await?;
    limits::check_toggle_limit(&state, &pubkey).await?;
    let link = audited_action(
        &state,
        &credential,
        pubkey,
        AuditAction::Unsuspend,
        None,
        accounts::unsuspend,
    )
    .await?;
    tracing::info!(credential = %credential.label(), pubkey = %link.nostr_pubkey, "unsuspended");
    Ok(Json(link.into()))
}

/// `GET /api/account-links/{pubkey}/status` → 200 record or 404 `account_not_found`.
pub async fn status(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    RawBody(body): RawBody,
) -> Result<Json<AccountLinkRecord>, ApiError> {
    credential.authorize(&state, &pubkey, &body).await?;
    let link = state.db.run(move |c| accounts::get(c, &pubkey)).await?;
    link.map(|l| Json(l.into())).ok_or(ApiError::AccountNotFound)
}

/// `POST /api/account-links/{pubkey}/crosspost-status` → 200 `{"statuses": [...]}`.
pub async fn crosspost_status(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    body: JsonBody<CrosspostStatusBody>,
) -> Result<Json<CrosspostStatusResponse>, ApiError> {
    credential.authorize(&state, &pubkey, &body.raw).await?;
    let ids = &body.value.nostr_event_ids;
    if ids.len() > MAX_STATUS_IDS {
        return Err(ApiError::TooManyIds(ids.len()));
    }
    let ids: Vec<String> = ids.iter().map(|id| normalize_event_id(id)).collect::<Result<_, _>>()?;
    let statuses = state
        .db
        .run(move |c| accounts::crosspost_status(c, &pubkey, &ids))
        .await?;
    Ok(Json(CrosspostStatusResponse { statuses }))
}

/// `GET /api/account-links/{pubkey}/export` answer: what a user needs to take their Bluesky account elsewhere.
#[derive(Debug, Serialize)]
pub struct ExportRecord {
    pub nostr_pubkey: String,
    pub did: Option<String>,
    pub handle: String,
    pub provisioning_state: String,
    /// Public base URL of the PDS hosting the repo (`PDS_PUBLIC_URL`), when configured.
    pub pds: Option<String>,
    /// Public, unauthenticated download of the whole repo as a CAR (`com.atproto.sync.getRepo`): it never expires
    /// and needs no signature, because a public repo is public data.
    pub repo_car_url: Option<String>,
    /// Always `none`: no private key or password leaves the bridge (docs/runbooks/account-lifecycle.md).
    pub key_handover: &'static str,
    pub instructions: &'static str,
}

/// What `/export` tells the user to do with the CAR.
pub const EXPORT_INSTRUCTIONS: &str = "Download repo_car_url (com.atproto.sync.getRepo) to keep a copy of every \
     record of your Bluesky account. No signing key leaves the bridge: to move the account to another PDS, contact \
     the operator, who runs the documented migration by hand.";

/// `GET /api/account-links/{pubkey}/export` → 200 [`ExportRecord`]; 404 `account_not_found`.
pub async fn export(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    RawBody(body): RawBody,
) -> Result<Json<ExportRecord>, ApiError> {
    credential.authorize(&state, &pubkey, &body).await?;
    let link = state
        .db
        .run(move |c| accounts::get(c, &pubkey))
        .await?
        .ok_or(ApiError::AccountNotFound)?;
    let pds = state.config.pds_public_url.clone();
    let repo_car_url = match (&pds, &link.did) {
        (Some(pds), Some(did)) => Some(format!("{pds}/xrpc/com.atproto.sync.getRepo?did={did}")),
        _ => None,
    };
    Ok(Json(ExportRecord {
        nostr_pubkey: link.nostr_pubkey,
        did: link.did,
        handle: link.handle,
        provisioning_state: link.provisioning_state,
        pds,
        repo_car_url,
        key_handover: "none",
        instructions: EXPORT_INSTRUCTIONS,
    }))
}

/// `GET /api/account-links/{pubkey}/posts` query.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1..=100 (default 50).
    pub limit: Option<i64>,
}

/// `GET /api/account-links/{pubkey}/posts?cursor=&limit=` → 200 `{"posts": [...], "cursor": "..."}`: the account's
/// bridged posts, newest first, each with status, AT-URI and error code (as `crosspost-status`), for the app's
/// settings screen. 400 `invalid_cursor` for a cursor this endpoint did not hand out.
pub async fn history(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
    query: axum::extract::Query<HistoryQuery>,
    RawBody(body): RawBody,
) -> Result<Json<accounts::HistoryPage>, ApiError> {
    credential.authorize(&state, &pubkey, &body).await?;
    let before = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::InvalidCursor(c.to_string()))?,
        ),
    };
    let limit = query.limit.unwrap_or(50);
    let page = state
        .db
        .run(move |c| accounts::history(c, &pubkey, before, limit))
        .await?;
    Ok(Json(page))
}

/// `GET /.well-known/atproto-did` with `Host: <handle>` → `text/plain` DID of a `ready` account, else 404
/// `handle_not_found`. Found and not-found answers are cached for `WELL_KNOWN_CACHE_SECS` (bounded by
/// `WELL_KNOWN_CACHE_ENTRIES`), so a flood of lookups, for real or invented names, costs one query per name per
/// period; a host that cannot be a handle (wrong domain, too long) never reaches the database or the cache.
pub async fn atproto_did(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let handle = host_to_handle(&host);
    let suffix = format!(".{}", state.config.handle_domain);
    if !handle.ends_with(&suffix) || handle.len() > MAX_HANDLE_LEN {
        return Err(ApiError::HandleNotFound(handle));
    }
    let cached = state
        .well_known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&handle)
        .cloned();
    let did = match cached {
        Some(did) => {
            metrics::counter!(WELL_KNOWN_LOOKUPS, "result" => WELL_KNOWN_HIT).increment(1);
            did
        }
        None => {
            metrics::counter!(WELL_KNOWN_LOOKUPS, "result" => WELL_KNOWN_MISS).increment(1);
            let lookup = handle.clone();
            let did = state.db.run(move |c| accounts::resolve_handle(c, &lookup)).await?;
            state
                .well_known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(handle.clone(), did.clone());
            did
        }
    };
    match did {
        Some(did) => Ok((
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=60"),
            ],
            did,
        )
            .into_response()),
        None => Err(ApiError::HandleNotFound(handle)),
    }
}

/// Every well-known answer depends on `Host`: shared caches must key on it.
pub async fn vary_host(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::VARY, axum::http::HeaderValue::from_static("Host"));
    resp
}

/// The well-known route's tower errors as problems: shed load → 503 `overloaded`, deadline → 503 `timeout`.
pub async fn well_known_refused(err: tower::BoxError) -> ApiError {
    if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded
    } else if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout
    } else {
        ApiError::Internal(format!("well-known middleware: {err}"))
    }
}

/// `PUT /api/opt-in-allowlist/{pubkey}` → 200 `{"nostr_pubkey", "allowlisted": true, "changed"}`: the login service
/// pre-registers a pubkey for NIP-98 opt-in under `OPT_IN_POLICY=allowlist`. Service token only (403
/// `operator_only` for NIP-98). Idempotent.
pub async fn allowlist_add(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    credential.require_operator()?;
    let pk = pubkey.clone();
    let changed = state.db.run(move |c| divine_bridge_db::abuse::allow(c, &pk)).await?;
    tracing::info!(pubkey = %pubkey, changed, "opt-in allowlist: added");
    Ok(Json(
        serde_json::json!({"nostr_pubkey": pubkey, "allowlisted": true, "changed": changed}),
    ))
}

/// `DELETE /api/opt-in-allowlist/{pubkey}` → 200 `{"nostr_pubkey", "allowlisted": false, "changed"}`. Service token
/// only. An existing link is not touched.
pub async fn allowlist_remove(
    State(state): State<AppState>,
    credential: Credential,
    PubkeyParam(pubkey): PubkeyParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    credential.require_operator()?;
    let pk = pubkey.clone();
    let changed = state.db.run(move |c| divine_bridge_db::abuse::disallow(c, &pk)).await?;
    tracing::info!(pubkey = %pubkey, changed, "opt-in allowlist: removed");
    Ok(Json(
        serde_json::json!({"nostr_pubkey": pubkey, "allowlisted": false, "changed": changed}),
    ))
}

/// `GET /health` → 200 while the process serves.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /ready` → 200 `{"ready": true}` when Postgres answers `SELECT 1` (within 3 s) and every migration is
/// applied, else 503 `not_ready` whose problem body also carries `"ready": false, "reason"` (`migrations_pending`,
/// `database_unavailable`): the shape of `divine-atbridge`'s `/ready`. Runs on the probe's own connection
/// (`crate::ready`), never on the request pool.
pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.ready.check().await?;
    Ok(Json(serde_json::json!({"ready": true})))
}

/// `GET /metrics` → Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::render(&state.prometheus),
    )
        .into_response()
}

/// Fallback for unknown routes → 404 `not_found`.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Fallback for a known route with another method → 405 `method_not_allowed`.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_shows_the_public_fields_of_the_row_only() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .to_utc();
        let link = AccountLink {
            nostr_pubkey: "ab".repeat(32),
            handle: "alice.divine.test".into(),
            did: Some("did:plc:alice".into()),
            crosspost_enabled: true,
            provisioning_state: "failed".into(),
            provisioning_error: Some("plc_rejected".into()),
            provisioning_error_detail: Some("operator detail".into()),
            disabled_at: None,
            created_at: t,
            updated_at: t,
            suspended_reason: Some("operator reason".into()),
            disconnected_at: Some(t),
        };
        let shown = serde_json::to_value(AccountLinkRecord::from(link)).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({
                "nostr_pubkey": "ab".repeat(32),
                "handle": "alice.divine.test",
                "did": "did:plc:alice",
                "crosspost_enabled": true,
                "provisioning_state": "failed",
                "provisioning_error": "plc_rejected",
                "disabled_at": null,
                "created_at": "2026-01-02T03:04:05.123456Z",
                "updated_at": "2026-01-02T03:04:05.123456Z",
            })
        );
    }
}
