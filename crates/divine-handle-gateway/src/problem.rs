//! Every error the gateway answers with, as ONE enum ([`ApiError`]) whose stable codes ([`ErrorCode`] variants, each
//! with its runbook entry) are decided in `fn code`, rendered as RFC 9457 `application/problem+json`
//! `{type, title, status, detail, code, request_id}`.
//!
//! Owns the mapping error → HTTP status/code/body and nothing else: it must not decide *whether* a request is
//! valid (extractors, `auth` and `handle` do) and must not know about request ids (the `edge` middleware fills
//! `request_id` in, because it alone knows it). An `ApiError` turned into a response carries a [`Problem`] in the
//! response extensions; `edge` serialises it with the request id.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use divine_bridge_core::ReasonLabel;
use divine_bridge_db::accounts::AccountError;
use divine_bridge_db::{Classified, DbError, ErrorClass, ErrorCode};
use std::time::Duration;

/// Whole seconds of a wait, rounded up (what `Retry-After` carries).
pub fn secs(d: &Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Content type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Errors answered by the gateway. Each variant has one stable code (see [`Classified::code`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed or rejected credentials (bearer token or NIP-98). `reason` is a metric label.
    #[error("{detail}")]
    Unauthorized { reason: AuthReason, detail: String },
    #[error("invalid pubkey: {0}")]
    InvalidPubkey(String),
    #[error("invalid handle: {0}")]
    InvalidHandle(String),
    #[error("handle {0} is already taken by another account")]
    HandleTaken(String),
    /// The name is on the operator's `RESERVED_HANDLE_NAMES` list (service hosts such as `pds`, `relay`, `www`).
    #[error("handle {0} is reserved by the operator")]
    HandleReserved(String),
    #[error("this pubkey is already linked as {0}; handle changes are not supported")]
    HandleMismatch(String),
    #[error("no account link for this pubkey")]
    AccountNotFound,
    /// The operator suspended the account; the user cannot enable it.
    #[error("this account is suspended by the operator: {0}")]
    AccountSuspended(String),
    /// The account is disconnecting or disconnected; it cannot be enabled or opted in again until its handle is
    /// released (divine_bridge_db::accounts, disconnect rule 5).
    #[error("this account was disconnected from the bridge")]
    AccountDisconnected,
    /// A route only the operator (service token) may call was called with a user's NIP-98 credential.
    #[error("only the operator (service token) may do this")]
    OperatorOnly,
    #[error("no ready account for host {0:?}")]
    HandleNotFound(String),
    #[error("{0} event ids given; at most 100 per request")]
    TooManyIds(usize),
    #[error("invalid event id {0:?}: expected 64 hex characters")]
    InvalidEventId(String),
    #[error("invalid cursor {0:?}: pass the `cursor` of the previous page")]
    InvalidCursor(String),
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    #[error("unsupported content type {0:?}; send application/json")]
    UnsupportedMediaType(String),
    #[error("request body larger than 64 KiB")]
    PayloadTooLarge,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("no such route")]
    NotFound,
    /// This client IP sent more `/api/*` requests than `RATE_LIMIT_PER_IP_PER_MINUTE` allows.
    #[error("too many requests from this client; retry in {}s", secs(.0))]
    RateLimited(Duration),
    /// This replica answers more `/api/*` requests than `RATE_LIMIT_GLOBAL_PER_SECOND` allows.
    #[error("the gateway is at its request limit; retry in {}s", secs(.0))]
    GlobalRateLimited(Duration),
    /// This account was enabled/disabled `TOGGLE_LIMIT_PER_HOUR` times in the last hour.
    #[error("too many enable/disable changes for this account; retry in {}s", secs(.0))]
    ToggleRateLimited(Duration),
    /// `PROVISIONING_BUDGET_PER_HOUR` new account links were created in the last hour.
    #[error("the hourly budget of new accounts is used up; retry in {}s", secs(.0))]
    ProvisioningBudgetExhausted(Duration),
    /// `OPT_IN_POLICY=service`: only the login service may opt users in.
    #[error("opt-in goes through the Divine login service (NIP-98 opt-in is disabled)")]
    OptInServiceOnly,
    /// `OPT_IN_POLICY=allowlist`: this pubkey was not pre-registered by the login service.
    #[error("this pubkey is not pre-registered for opt-in")]
    OptInNotAllowlisted,
    /// `OPT_IN_POLICY=open`: the NIP-98 event id lacks the required NIP-13 proof of work.
    #[error("opt-in needs NIP-13 proof of work of {required} leading zero bits in the NIP-98 event id; got {got}")]
    InsufficientPow { required: u8, got: u8 },
    /// Load shedding: the well-known route is at `WELL_KNOWN_MAX_CONCURRENCY`.
    #[error("too many handle lookups in flight; retry shortly")]
    Overloaded,
    /// The request did not finish within its deadline (`WELL_KNOWN_TIMEOUT_MS`).
    #[error("the request did not finish in time")]
    Timeout,
    /// `/ready` fails: `reason` is the readiness reason both services report (`migrations_pending`,
    /// `database_unavailable`).
    #[error("not ready: {detail}")]
    NotReady { reason: &'static str, detail: String },
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classified for ApiError {
    fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthorized { .. } => ErrorCode::Unauthorized,
            ApiError::InvalidPubkey(_) => ErrorCode::InvalidPubkey,
            ApiError::InvalidHandle(_) => ErrorCode::InvalidHandle,
            ApiError::HandleTaken(_) => ErrorCode::HandleTaken,
            ApiError::HandleReserved(_) => ErrorCode::HandleReserved,
            ApiError::HandleMismatch(_) => ErrorCode::HandleMismatch,
            ApiError::AccountNotFound => ErrorCode::AccountNotFound,
            ApiError::AccountSuspended(_) => ErrorCode::AccountSuspended,
            ApiError::AccountDisconnected => ErrorCode::AccountDisconnected,
            ApiError::OperatorOnly => ErrorCode::OperatorOnly,
            ApiError::HandleNotFound(_) => ErrorCode::HandleNotFound,
            ApiError::TooManyIds(_) => ErrorCode::TooManyIds,
            ApiError::InvalidEventId(_) => ErrorCode::InvalidEventId,
            ApiError::InvalidCursor(_) => ErrorCode::InvalidCursor,
            ApiError::InvalidJson(_) => ErrorCode::InvalidJson,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::RateLimited(_) => ErrorCode::RateLimited,
            ApiError::GlobalRateLimited(_) => ErrorCode::GlobalRateLimited,
            ApiError::ToggleRateLimited(_) => ErrorCode::ToggleRateLimited,
            ApiError::ProvisioningBudgetExhausted(_) => ErrorCode::ProvisioningBudgetExhausted,
            ApiError::OptInServiceOnly => ErrorCode::OptInServiceOnly,
            ApiError::OptInNotAllowlisted => ErrorCode::OptInNotAllowlisted,
            ApiError::InsufficientPow { .. } => ErrorCode::InsufficientPow,
            ApiError::Overloaded => ErrorCode::Overloaded,
            ApiError::Timeout => ErrorCode::Timeout,
            ApiError::NotReady { .. } => ErrorCode::NotReady,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            ApiError::NotReady { .. }
            | ApiError::Unavailable(_)
            | ApiError::Internal(_)
            | ApiError::RateLimited(_)
            | ApiError::GlobalRateLimited(_)
            | ApiError::ToggleRateLimited(_)
            | ApiError::ProvisioningBudgetExhausted(_)
            | ApiError::Overloaded
            | ApiError::Timeout => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::NotReady { .. } | ApiError::Unavailable(_) => Some(Duration::from_secs(5)),
            ApiError::RateLimited(d)
            | ApiError::GlobalRateLimited(d)
            | ApiError::ToggleRateLimited(d)
            | ApiError::ProvisioningBudgetExhausted(d) => Some(*d),
            ApiError::Overloaded | ApiError::Timeout => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::InvalidPubkey(_)
            | ApiError::InvalidHandle(_)
            | ApiError::TooManyIds(_)
            | ApiError::InvalidEventId(_)
            | ApiError::InvalidCursor(_)
            | ApiError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            ApiError::HandleTaken(_) | ApiError::HandleReserved(_) | ApiError::HandleMismatch(_) => {
                StatusCode::CONFLICT
            }
            ApiError::AccountNotFound | ApiError::HandleNotFound(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::AccountSuspended(_)
            | ApiError::OperatorOnly
            | ApiError::OptInServiceOnly
            | ApiError::OptInNotAllowlisted
            | ApiError::InsufficientPow { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_)
            | ApiError::GlobalRateLimited(_)
            | ApiError::ToggleRateLimited(_)
            | ApiError::ProvisioningBudgetExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded | ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::AccountDisconnected => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotReady { .. } | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short human summary, constant per code.
    pub fn title(&self) -> &'static str {
        match self {
            ApiError::Unauthorized { .. } => "Unauthorized",
            ApiError::InvalidPubkey(_) => "Invalid Nostr public key",
            ApiError::InvalidHandle(_) => "Invalid handle",
            ApiError::HandleTaken(_) => "Handle already taken",
            ApiError::HandleReserved(_) => "Handle reserved",
            ApiError::HandleMismatch(_) => "Pubkey already linked to another handle",
            ApiError::AccountNotFound => "Account link not found",
            ApiError::AccountSuspended(_) => "Account suspended",
            ApiError::AccountDisconnected => "Account disconnected",
            ApiError::OperatorOnly => "Operator only",
            ApiError::HandleNotFound(_) => "Handle not found",
            ApiError::TooManyIds(_) => "Too many event ids",
            ApiError::InvalidEventId(_) => "Invalid event id",
            ApiError::InvalidCursor(_) => "Invalid cursor",
            ApiError::InvalidJson(_) => "Invalid JSON body",
            ApiError::UnsupportedMediaType(_) => "Unsupported media type",
            ApiError::PayloadTooLarge => "Payload too large",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::NotFound => "Not found",
            ApiError::RateLimited(_) => "Rate limited",
            ApiError::GlobalRateLimited(_) => "Gateway request limit reached",
            ApiError::ToggleRateLimited(_) => "Too many enable/disable changes",
            ApiError::ProvisioningBudgetExhausted(_) => "Provisioning budget exhausted",
            ApiError::OptInServiceOnly => "Opt-in through the login service only",
            ApiError::OptInNotAllowlisted => "Pubkey not pre-registered",
            ApiError::InsufficientPow { .. } => "Proof of work required",
            ApiError::Overloaded => "Overloaded",
            ApiError::Timeout => "Timeout",
            ApiError::NotReady { .. } => "Not ready",
            ApiError::Unavailable(_) => "Service unavailable",
            ApiError::Internal(_) => "Internal server error",
        }
    }

    /// The error for a bare status produced outside our handlers (axum's own rejections, a caught panic), so such
    /// responses still carry a problem body with a stable code.
    pub fn from_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized {
                reason: AuthReason::Rejected,
                detail: "authorization required".into(),
            },
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType("unknown".into()),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable("service unavailable".into()),
            s if s.is_client_error() => ApiError::InvalidJson(format!("request rejected ({s})")),
            s => ApiError::Internal(format!("unexpected status {s}")),
        }
    }

    /// The problem document (without request id; `edge` adds it).
    pub fn problem(&self) -> Problem {
        Problem {
            status: self.status().as_u16(),
            code: self.code(),
            title: self.title(),
            detail: self.to_string(),
            not_ready: match self {
                ApiError::NotReady { reason, .. } => Some(reason),
                _ => None,
            },
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::HandleTaken { handle } => ApiError::HandleTaken(handle),
            AccountError::HandleMismatch { existing } => ApiError::HandleMismatch(existing),
            AccountError::NotFound => ApiError::AccountNotFound,
            AccountError::Suspended { reason } => ApiError::AccountSuspended(reason),
            AccountError::Disconnected => ApiError::AccountDisconnected,
            AccountError::Db(db) => db.into(),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        // Details of database failures go to the log, not to the client.
        tracing::error!(code = %e.code(), error = %e, "database error");
        match e.class() {
            ErrorClass::Transient => ApiError::Unavailable(format!("database ({})", e.code())),
            ErrorClass::Permanent => ApiError::Internal(format!("database ({})", e.code())),
        }
    }
}

/// Why a credential was refused: the `reason` label of `gateway_auth_failures_total` (every value created at zero on
/// startup, `metrics::prometheus`) and the `auth_reason` of the access-log line. A closed set, decided where the
/// refusal is born (`auth`); the spellings are the core's [`ReasonLabel`]s, which the runbook check covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthReason {
    Missing,
    Malformed,
    BadScheme,
    BadToken,
    BadSignature,
    WrongKind,
    Stale,
    Future,
    WrongUrl,
    WrongMethod,
    WrongPubkey,
    PayloadMissing,
    PayloadMismatch,
    Replay,
    Rejected,
}

impl AuthReason {
    /// Every reason.
    pub const ALL: [AuthReason; 15] = [
        AuthReason::Missing,
        AuthReason::Malformed,
        AuthReason::BadScheme,
        AuthReason::BadToken,
        AuthReason::BadSignature,
        AuthReason::WrongKind,
        AuthReason::Stale,
        AuthReason::Future,
        AuthReason::WrongUrl,
        AuthReason::WrongMethod,
        AuthReason::WrongPubkey,
        AuthReason::PayloadMissing,
        AuthReason::PayloadMismatch,
        AuthReason::Replay,
        AuthReason::Rejected,
    ];

    /// The runbook's label of this reason.
    pub const fn label(self) -> ReasonLabel {
        match self {
            AuthReason::Missing => ReasonLabel::Missing,
            AuthReason::Malformed => ReasonLabel::Malformed,
            AuthReason::BadScheme => ReasonLabel::BadScheme,
            AuthReason::BadToken => ReasonLabel::BadToken,
            AuthReason::BadSignature => ReasonLabel::BadSignature,
            AuthReason::WrongKind => ReasonLabel::WrongKind,
            AuthReason::Stale => ReasonLabel::Stale,
            AuthReason::Future => ReasonLabel::Future,
            AuthReason::WrongUrl => ReasonLabel::WrongUrl,
            AuthReason::WrongMethod => ReasonLabel::WrongMethod,
            AuthReason::WrongPubkey => ReasonLabel::WrongPubkey,
            AuthReason::PayloadMissing => ReasonLabel::PayloadMissing,
            AuthReason::PayloadMismatch => ReasonLabel::PayloadMismatch,
            AuthReason::Replay => ReasonLabel::Replay,
            AuthReason::Rejected => ReasonLabel::Rejected,
        }
    }

    /// The metric label / log value.
    pub const fn as_str(self) -> &'static str {
        self.label().as_str()
    }
}

/// Why a 401 was answered (the `reason` label of `gateway_auth_failures_total`), passed to the access-log line in
/// the response extensions.
#[derive(Debug, Clone, Copy)]
pub struct AuthFailure(pub &'static str);

/// The parts of a problem document known where the error is born.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: u16,
    pub code: ErrorCode,
    pub title: &'static str,
    pub detail: String,
    /// For `/ready` failures: the readiness reason, rendered as the extension members `"ready": false, "reason"`
    /// (the shape `divine-atbridge`'s `/ready` answers in, so one probe parser reads both services).
    pub not_ready: Option<&'static str>,
}

impl Problem {
    /// The JSON body with `request_id`.
    pub fn to_json(&self, request_id: &str) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": format!("urn:divine-bridge:problem:{}", self.code),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code.as_str(),
            "request_id": request_id,
        });
        if let Some(reason) = self.not_ready {
            body["ready"] = serde_json::Value::Bool(false);
            body["reason"] = serde_json::Value::from(reason);
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let mut resp = (
            self.status(),
            [(header::CONTENT_TYPE, PROBLEM_JSON)],
            problem.to_json("").to_string(),
        )
            .into_response();
        if let ApiError::Unauthorized { reason, .. } = &self {
            metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => reason.as_str()).increment(1);
            // For the access-log line (`edge`): why the credential was refused.
            resp.extensions_mut().insert(AuthFailure(reason.as_str()));
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer, Nostr"));
        }
        if let Some(after) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs(&after)));
        }
        resp.extensions_mut().insert(problem);
        resp
    }
}
