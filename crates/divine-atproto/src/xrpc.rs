//! The one HTTP path for every PDS and PLC call: a wrapper around a single `reqwest::Client` (connect + total
//! timeouts, user agent), optional bearer auth, JSON or raw-bytes/streamed bodies, per-request metrics, and the ONE
//! place where transport failures and HTTP statuses become a classified [`XrpcError`].
//!
//! Owns: status/XRPC-error-name → code/class mapping, `Retry-After`/`RateLimit-Reset` parsing, the
//! `bridge_pds_requests_total{method,status}` counter. Must not: know about specific endpoints (pds/ and plc.rs
//! refine errors per call), retry by itself, or log bearer tokens or request bodies.
//!
//! Transport rules (issue 12 §3), enforced here for every PDS and PLC call:
//! 1. Redirects are never followed (`redirect::Policy::none`): a 307/308 would replay a `createAccount` or
//!    `createSession` body, password included, to wherever `Location` points. Any 3xx is
//!    [`XrpcError::Redirected`] (`xrpc_redirect_refused`, permanent).
//! 2. `https` only. Plain `http` is accepted for loopback hosts (`localhost`, 127.0.0.0/8, `::1`: the bytes never
//!    leave the machine) and, only with `ALLOW_INSECURE_HTTP=true` ([`XrpcConfig::allow_insecure_http`]), for any
//!    host (a localnet where the PDS is `http://pds:2583`). Anything else is [`XrpcError::InsecureUrl`]
//!    (`xrpc_insecure_url`, permanent) before a connection is opened.
//! 3. Response bodies are streamed and counted; past [`XrpcConfig::max_response_bytes`] the stream is dropped and
//!    the call is [`XrpcError::ResponseTooLarge`] (`xrpc_response_too_large`, permanent): a hostile or broken peer
//!    cannot make the worker buffer an unbounded body.

use bytes::Bytes;
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Metric name counting every request, labelled `method` ([`XrpcMethod`]) and `status` ([`status_label`]).
pub const REQUESTS_METRIC: &str = crate::metrics::PDS_REQUESTS;

/// Every PDS and PLC call the bridge makes: the `method` label of the request metrics and of errors and log lines
/// (the NSID for XRPC calls, `plc.<op>` for PLC calls). A closed set, so the metrics exist at zero from startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XrpcMethod {
    DescribeServer,
    CreateAccount,
    CreateInviteCode,
    CreateSession,
    RefreshSession,
    GetSession,
    ActivateAccount,
    DeactivateAccount,
    CheckAccountStatus,
    GetRecommendedDidCredentials,
    ResolveHandle,
    PutRecord,
    GetRecord,
    DeleteRecord,
    UploadBlob,
    DescribeRepo,
    GetRepoStatus,
    PlcSubmit,
    PlcLastOp,
    PlcData,
    PlcAuditLog,
}

impl XrpcMethod {
    /// Every method.
    pub const ALL: [XrpcMethod; 21] = [
        XrpcMethod::DescribeServer,
        XrpcMethod::CreateAccount,
        XrpcMethod::CreateInviteCode,
        XrpcMethod::CreateSession,
        XrpcMethod::RefreshSession,
        XrpcMethod::GetSession,
        XrpcMethod::ActivateAccount,
        XrpcMethod::DeactivateAccount,
        XrpcMethod::CheckAccountStatus,
        XrpcMethod::GetRecommendedDidCredentials,
        XrpcMethod::ResolveHandle,
        XrpcMethod::PutRecord,
        XrpcMethod::GetRecord,
        XrpcMethod::DeleteRecord,
        XrpcMethod::UploadBlob,
        XrpcMethod::DescribeRepo,
        XrpcMethod::GetRepoStatus,
        XrpcMethod::PlcSubmit,
        XrpcMethod::PlcLastOp,
        XrpcMethod::PlcData,
        XrpcMethod::PlcAuditLog,
    ];

    /// The NSID (`com.atproto.repo.putRecord`) or `plc.<op>`.
    pub const fn as_str(self) -> &'static str {
        use atrium_api::com::atproto::{identity, repo, server, sync};
        match self {
            XrpcMethod::DescribeServer => server::describe_server::NSID,
            XrpcMethod::CreateAccount => server::create_account::NSID,
            XrpcMethod::CreateInviteCode => server::create_invite_code::NSID,
            XrpcMethod::CreateSession => server::create_session::NSID,
            XrpcMethod::RefreshSession => server::refresh_session::NSID,
            XrpcMethod::GetSession => server::get_session::NSID,
            XrpcMethod::ActivateAccount => server::activate_account::NSID,
            XrpcMethod::DeactivateAccount => server::deactivate_account::NSID,
            XrpcMethod::CheckAccountStatus => server::check_account_status::NSID,
            XrpcMethod::GetRecommendedDidCredentials => identity::get_recommended_did_credentials::NSID,
            XrpcMethod::ResolveHandle => identity::resolve_handle::NSID,
            XrpcMethod::PutRecord => repo::put_record::NSID,
            XrpcMethod::GetRecord => repo::get_record::NSID,
            XrpcMethod::DeleteRecord => repo::delete_record::NSID,
            XrpcMethod::UploadBlob => repo::upload_blob::NSID,
            XrpcMethod::DescribeRepo => repo::describe_repo::NSID,
            XrpcMethod::GetRepoStatus => sync::get_repo_status::NSID,
            XrpcMethod::PlcSubmit => "plc.submit",
            XrpcMethod::PlcLastOp => "plc.last_op",
            XrpcMethod::PlcData => "plc.data",
            XrpcMethod::PlcAuditLog => "plc.audit_log",
        }
    }
}

impl std::fmt::Display for XrpcMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every value of the `status` label of [`REQUESTS_METRIC`] ([`status_label`], plus `error` when no response
/// arrived).
pub const STATUS_LABELS: [&str; 18] = [
    "200", "400", "401", "403", "404", "409", "413", "429", "500", "502", "503", "504", "2xx", "3xx", "4xx", "5xx",
    "other", "error",
];

/// The `status` label of an HTTP status: the code itself for the statuses the runbooks tell apart (success, the
/// client errors the PDS and PLC answer, rate limiting, the gateway/server errors), its class (`2xx` … `5xx`) for
/// any other, `other` outside 200–599. A closed set ([`STATUS_LABELS`]), so every method × status series can exist at
/// zero from startup while `status!~"2.."` and `status=~"5.."` still select as they did.
// The exact codes come first on purpose; the class ranges after them catch the rest.
#[allow(clippy::match_overlapping_arm)]
pub const fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        201..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Longest error-body excerpt kept in an error (bytes of text).
const MAX_MESSAGE_CHARS: usize = 512;

/// Default [`XrpcConfig::max_response_bytes`]: 8 MiB. The largest bodies the bridge reads are PLC audit logs and
/// `listRecords` pages, far below it; blobs are uploaded, never downloaded, through this client.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Client settings.
#[derive(Clone, Debug)]
pub struct XrpcConfig {
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Total time for one request, from send to the last body byte.
    pub timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Largest response body read (transport rule 3).
    pub max_response_bytes: usize,
    /// `ALLOW_INSECURE_HTTP`: plain `http` to non-loopback hosts (transport rule 2). Localnet only.
    pub allow_insecure_http: bool,
}

impl Default for XrpcConfig {
    fn default() -> Self {
        XrpcConfig {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            user_agent: format!("divine-atbridge/{}", env!("CARGO_PKG_VERSION")),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            allow_insecure_http: false,
        }
    }
}

/// The `{error, message}` body of an XRPC (or PLC: `{message}`) error response. For non-JSON bodies `message` is a
/// text excerpt and `error` is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: Option<String>,
    pub message: Option<String>,
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.error, &self.message) {
            (Some(e), Some(m)) => write!(f, "{e}: {m}"),
            (Some(e), None) => write!(f, "{e}"),
            (None, Some(m)) => write!(f, "{m}"),
            (None, None) => write!(f, "(no body)"),
        }
    }
}

/// A failed request, classified where it was born.
#[derive(Debug, thiserror::Error)]
pub enum XrpcError {
    /// Connection refused/reset, DNS, TLS, or the body stream broke.
    #[error("{method}: transport error: {detail}")]
    Transport { method: String, detail: String },
    /// Connect or total timeout elapsed.
    #[error("{method}: timed out: {detail}")]
    Timeout { method: String, detail: String },
    /// HTTP 429.
    #[error("{method}: rate limited (HTTP {status}, retry after {retry_after:?}): {body}")]
    RateLimited {
        method: String,
        status: u16,
        retry_after: Option<Duration>,
        body: ErrorBody,
    },
    /// HTTP 5xx.
    #[error("{method}: server error HTTP {status}: {body}")]
    ServerError {
        method: String,
        status: u16,
        body: ErrorBody,
    },
    /// 400/401 with `ExpiredToken`, `InvalidToken` or `BadJwt*`: the session must be refreshed, the request is fine.
    #[error("{method}: session expired (HTTP {status}): {body}")]
    SessionExpired {
        method: String,
        status: u16,
        body: ErrorBody,
    },
    /// Any other 4xx (and unexpected 1xx/3xx): the peer refused this request.
    #[error("{method}: rejected HTTP {status}: {body}")]
    Rejected {
        method: String,
        status: u16,
        body: ErrorBody,
    },
    /// 2xx whose body is not what the endpoint promises (e.g. HTML from a proxy, wrong JSON shape).
    #[error("{method}: unexpected response body (HTTP {status}): {detail}")]
    BadResponse {
        method: String,
        status: u16,
        detail: String,
    },
    /// The request could not be built (bad URL, body not serializable). A bug or bad configuration.
    #[error("{method}: invalid request: {detail}")]
    InvalidRequest { method: String, detail: String },
    /// A 3xx answer: redirects are never followed (transport rule 1).
    #[error("{method}: refused to follow HTTP {status} redirect to {location:?}")]
    Redirected {
        method: String,
        status: u16,
        location: Option<String>,
    },
    /// A plain-http URL to a non-loopback host without `ALLOW_INSECURE_HTTP` (transport rule 2).
    #[error("{method}: refusing plain http to {host:?} (https required; ALLOW_INSECURE_HTTP=true for localnet)")]
    InsecureUrl { method: String, host: String },
    /// The response body exceeded `max_response_bytes` (transport rule 3).
    #[error("{method}: response body exceeds {limit} bytes (HTTP {status})")]
    ResponseTooLarge { method: String, status: u16, limit: usize },
}

impl Classified for XrpcError {
    fn code(&self) -> ErrorCode {
        match self {
            XrpcError::Transport { .. } => ErrorCode::XrpcTransport,
            XrpcError::Timeout { .. } => ErrorCode::XrpcTimeout,
            XrpcError::RateLimited { .. } => ErrorCode::XrpcRateLimited,
            XrpcError::ServerError { .. } => ErrorCode::XrpcServerError,
            XrpcError::SessionExpired { .. } => ErrorCode::SessionExpired,
            XrpcError::Rejected { .. } => ErrorCode::XrpcRejected,
            XrpcError::BadResponse { .. } => ErrorCode::XrpcBadResponse,
            XrpcError::InvalidRequest { .. } => ErrorCode::XrpcRequestInvalid,
            XrpcError::Redirected { .. } => ErrorCode::XrpcRedirectRefused,
            XrpcError::InsecureUrl { .. } => ErrorCode::XrpcInsecureUrl,
            XrpcError::ResponseTooLarge { .. } => ErrorCode::XrpcResponseTooLarge,
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            // A redirect, an insecure URL or an oversized body is configuration or a hostile peer: retrying the
            // same request gives the same answer.
            XrpcError::Rejected { .. }
            | XrpcError::InvalidRequest { .. }
            | XrpcError::Redirected { .. }
            | XrpcError::InsecureUrl { .. }
            | XrpcError::ResponseTooLarge { .. } => ErrorClass::Permanent,
            // A 2xx with a body we cannot read is a peer/proxy fault, not something wrong with our request.
            XrpcError::Transport { .. }
            | XrpcError::Timeout { .. }
            | XrpcError::RateLimited { .. }
            | XrpcError::ServerError { .. }
            | XrpcError::SessionExpired { .. }
            | XrpcError::BadResponse { .. } => ErrorClass::Transient,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            XrpcError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl XrpcError {
    /// HTTP status, when a response arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            XrpcError::RateLimited { status, .. }
            | XrpcError::ServerError { status, .. }
            | XrpcError::SessionExpired { status, .. }
            | XrpcError::Rejected { status, .. }
            | XrpcError::BadResponse { status, .. }
            | XrpcError::Redirected { status, .. }
            | XrpcError::ResponseTooLarge { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The XRPC `error` name of the response body, if any.
    pub fn error_name(&self) -> Option<&str> {
        self.body().and_then(|b| b.error.as_deref())
    }

    /// The `message` of the response body (or a text excerpt), if any.
    pub fn message(&self) -> Option<&str> {
        self.body().and_then(|b| b.message.as_deref())
    }

    /// The parsed error body, when a response arrived.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            XrpcError::RateLimited { body, .. }
            | XrpcError::ServerError { body, .. }
            | XrpcError::SessionExpired { body, .. }
            | XrpcError::Rejected { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The metric/method label of the failed request.
    pub fn method(&self) -> &str {
        match self {
            XrpcError::Transport { method, .. }
            | XrpcError::Timeout { method, .. }
            | XrpcError::RateLimited { method, .. }
            | XrpcError::ServerError { method, .. }
            | XrpcError::SessionExpired { method, .. }
            | XrpcError::Rejected { method, .. }
            | XrpcError::BadResponse { method, .. }
            | XrpcError::InvalidRequest { method, .. }
            | XrpcError::Redirected { method, .. }
            | XrpcError::InsecureUrl { method, .. }
            | XrpcError::ResponseTooLarge { method, .. } => method,
        }
    }
}

/// Request body.
#[derive(Debug, Default)]
pub enum RequestBody {
    /// No body.
    #[default]
    Empty,
    /// Serialized JSON (`Content-Type: application/json`).
    Json(Vec<u8>),
    /// Raw bytes or a stream with an explicit content type (blob uploads) and, for a stream, its length.
    Raw {
        content_type: String,
        body: reqwest::Body,
        length: Option<u64>,
    },
}

/// Basic credentials; `Debug` never shows the password.
pub struct BasicAuth {
    user: String,
    password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One request. `label` is the metric/method label.
#[derive(Debug)]
pub struct XrpcRequest {
    method: Method,
    url: String,
    label: XrpcMethod,
    bearer: Option<String>,
    basic: Option<BasicAuth>,
    query: Vec<(String, String)>,
    body: RequestBody,
    timeout: Option<Duration>,
    /// A 404 is an expected answer of this request ([`XrpcRequest::not_found_expected`]).
    not_found_expected: bool,
}

impl XrpcRequest {
    /// A GET of `url`.
    pub fn get(url: impl Into<String>, label: XrpcMethod) -> XrpcRequest {
        XrpcRequest::new(Method::GET, url, label)
    }

    /// A POST to `url` (empty body until one is set).
    pub fn post(url: impl Into<String>, label: XrpcMethod) -> XrpcRequest {
        XrpcRequest::new(Method::POST, url, label)
    }

    fn new(method: Method, url: impl Into<String>, label: XrpcMethod) -> XrpcRequest {
        XrpcRequest {
            method,
            url: url.into(),
            label,
            bearer: None,
            basic: None,
            query: Vec::new(),
            body: RequestBody::Empty,
            timeout: None,
            not_found_expected: false,
        }
    }

    /// Marks a 404 as an expected answer (e.g. "is this DID registered yet?" during provisioning): it is still
    /// returned as [`XrpcError::Rejected`] and counted, but not logged as a failure.
    pub fn not_found_expected(mut self) -> XrpcRequest {
        self.not_found_expected = true;
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: impl Into<String>) -> XrpcRequest {
        self.bearer = Some(token.into());
        self
    }

    /// `Authorization: Basic` (the PDS admin API: `admin:<PDS_ADMIN_PASSWORD>`).
    pub fn basic(mut self, user: impl Into<String>, password: impl Into<String>) -> XrpcRequest {
        self.basic = Some(BasicAuth {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Appends a query parameter.
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> XrpcRequest {
        self.query.push((key.into(), value.into()));
        self
    }

    /// A JSON body.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Result<XrpcRequest, XrpcError> {
        let bytes = serde_json::to_vec(body).map_err(|e| XrpcError::InvalidRequest {
            method: self.label.to_string(),
            detail: format!("JSON body: {e}"),
        })?;
        self.body = RequestBody::Json(bytes);
        Ok(self)
    }

    /// A raw body (bytes or a stream) with its content type.
    pub fn raw(mut self, content_type: impl Into<String>, body: impl Into<reqwest::Body>) -> XrpcRequest {
        self.body = RequestBody::Raw {
            content_type: content_type.into(),
            body: body.into(),
            length: None,
        };
        self
    }

    /// A raw body of known length (a stream), sent with `Content-Length` rather than chunked.
    pub fn raw_sized(mut self, content_type: impl Into<String>, body: reqwest::Body, length: u64) -> XrpcRequest {
        self.body = RequestBody::Raw {
            content_type: content_type.into(),
            body,
            length: Some(length),
        };
        self
    }

    /// A deadline for this request instead of the client's (`XrpcConfig::timeout`), e.g. one scaled with an
    /// upload's size.
    pub fn timeout(mut self, timeout: Duration) -> XrpcRequest {
        self.timeout = Some(timeout);
        self
    }

    /// The metric label.
    pub fn label(&self) -> XrpcMethod {
        self.label
    }
}

/// A successful (2xx) response.
#[derive(Debug, Clone)]
pub struct XrpcResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    label: String,
}

impl XrpcResponse {
    /// Decodes the body as JSON; a body of the wrong shape is [`XrpcError::BadResponse`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, XrpcError> {
        serde_json::from_slice(&self.body).map_err(|e| XrpcError::BadResponse {
            method: self.label.clone(),
            status: self.status,
            detail: format!("{e}; body starts {:?}", excerpt(&self.body)),
        })
    }
}

/// The shared HTTP client. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct XrpcClient {
    http: reqwest::Client,
    max_response_bytes: usize,
    allow_insecure_http: bool,
}

/// `{base}/xrpc/{nsid}`.
pub fn xrpc_url(base: &str, nsid: &str) -> String {
    format!("{}/xrpc/{nsid}", base.trim_end_matches('/'))
}

impl XrpcClient {
    /// Builds the client. Installs ring as the rustls crypto provider if none is installed yet.
    pub fn new(config: &XrpcConfig) -> Result<XrpcClient, XrpcError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .user_agent(config.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| XrpcError::InvalidRequest {
                method: "client".into(),
                detail: error_chain(&e),
            })?;
        Ok(XrpcClient {
            http,
            max_response_bytes: config.max_response_bytes,
            allow_insecure_http: config.allow_insecure_http,
        })
    }

    /// Sends `request`; any non-2xx status becomes a classified error. Counts the request in
    /// `bridge_pds_requests_total`.
    pub async fn send(&self, request: XrpcRequest) -> Result<XrpcResponse, XrpcError> {
        let label = request.label.as_str();
        let not_found_expected = request.not_found_expected;
        let started = Instant::now();
        let result = self.send_inner(request).await;
        let status_label = match &result {
            Ok(resp) => status_label(resp.status),
            Err(e) => e.status().map_or("error", status_label),
        };
        let elapsed = started.elapsed();
        metrics::counter!(REQUESTS_METRIC, "method" => label, "status" => status_label).increment(1);
        metrics::histogram!(crate::metrics::PDS_REQUEST_DURATION, "method" => label).record(elapsed.as_secs_f64());
        let elapsed_ms = elapsed.as_millis() as u64;
        match &result {
            Ok(_) => tracing::debug!(method = %label, status = %status_label, elapsed_ms, "xrpc ok"),
            // The caller asked for a 404 as an answer ("not there yet"), not a failure: no failure line.
            Err(XrpcError::Rejected { status: 404, .. }) if not_found_expected => {
                tracing::debug!(method = %label, status = %status_label, elapsed_ms, outcome = "not_found", "xrpc not found (expected)")
            }
            Err(e) => {
                tracing::info!(method = %label, status = %status_label, elapsed_ms, code = %e.code(), error = %e, "xrpc failed")
            }
        }
        result
    }

    async fn send_inner(&self, request: XrpcRequest) -> Result<XrpcResponse, XrpcError> {
        let XrpcRequest {
            method,
            url,
            label,
            bearer,
            basic,
            query,
            body,
            timeout,
            not_found_expected: _,
        } = request;
        let label = label.as_str().to_string();
        let parsed = url::Url::parse(&url).map_err(|e| XrpcError::InvalidRequest {
            method: label.clone(),
            detail: format!("URL {url:?}: {e}"),
        })?;
        check_transport(&parsed, self.allow_insecure_http).map_err(|host| XrpcError::InsecureUrl {
            method: label.clone(),
            host,
        })?;
        let mut builder = self.http.request(method, parsed);
        if !query.is_empty() {
            builder = builder.query(&query);
        }
        if let Some(token) = bearer {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(BasicAuth { user, password }) = basic {
            builder = builder.basic_auth(user, Some(password));
        }
        builder = match body {
            RequestBody::Empty => builder,
            RequestBody::Json(bytes) => builder.header(CONTENT_TYPE, "application/json").body(bytes),
            RequestBody::Raw {
                content_type,
                body,
                length,
            } => {
                let builder = builder.header(CONTENT_TYPE, content_type);
                match length {
                    Some(n) => builder.header(reqwest::header::CONTENT_LENGTH, n),
                    None => builder,
                }
                .body(body)
            }
        };
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        let mut response = builder.send().await.map_err(|e| transport_error(&label, &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if (300..400).contains(&status) {
            return Err(XrpcError::Redirected {
                method: label,
                status,
                location: headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            });
        }
        let limit = self.max_response_bytes;
        let too_large = |label: String| XrpcError::ResponseTooLarge {
            method: label,
            status,
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large(label));
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&label, &e))? {
            if buf.len() + chunk.len() > limit {
                // Dropping `response` closes the connection: the rest of the body is never read.
                return Err(too_large(label));
            }
            buf.extend_from_slice(&chunk);
        }
        let body = Bytes::from(buf);
        if (200..300).contains(&status) {
            return Ok(XrpcResponse {
                status,
                headers,
                body,
                label,
            });
        }
        Err(classify_status(label, status, &headers, &body, chrono::Utc::now()))
    }
}

/// Transport rule 2: `Err(host)` for a plain-http URL to a non-loopback host unless `allow_insecure_http`.
pub fn check_transport(url: &url::Url, allow_insecure_http: bool) -> Result<(), String> {
    if url.scheme() == "https" || allow_insecure_http {
        return Ok(());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() == "http" && loopback {
        Ok(())
    } else {
        Err(url.host_str().unwrap_or_default().to_string())
    }
}

fn transport_error(label: &str, e: &reqwest::Error) -> XrpcError {
    if e.is_timeout() {
        XrpcError::Timeout {
            method: label.to_string(),
            detail: error_chain(e),
        }
    } else if e.is_builder() {
        XrpcError::InvalidRequest {
            method: label.to_string(),
            detail: error_chain(e),
        }
    } else {
        XrpcError::Transport {
            method: label.to_string(),
            detail: error_chain(e),
        }
    }
}

/// `e: cause: cause…`, so the root cause (e.g. "connection refused") is visible in one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.chars().count() > MAX_MESSAGE_CHARS {
        format!("{}…", trimmed.chars().take(MAX_MESSAGE_CHARS).collect::<String>())
    } else {
        trimmed.to_string()
    }
}

/// Parses an XRPC/PLC error body: JSON `{error?, message?}` or, failing that, a text excerpt as the message.
pub fn parse_error_body(body: &[u8]) -> ErrorBody {
    #[derive(serde::Deserialize)]
    struct Raw {
        error: Option<serde_json::Value>,
        message: Option<serde_json::Value>,
    }
    let as_text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    match serde_json::from_slice::<Raw>(body) {
        Ok(raw) if raw.error.is_some() || raw.message.is_some() => ErrorBody {
            error: raw.error.map(as_text).filter(|s| !s.is_empty()),
            message: raw.message.map(as_text),
        },
        _ => {
            let text = excerpt(body);
            // A bare JSON string (PLC sometimes answers `"OK"`-style bodies) is unwrapped.
            let text = serde_json::from_str::<String>(&text).unwrap_or(text);
            ErrorBody {
                error: None,
                message: (!text.is_empty()).then_some(text),
            }
        }
    }
}

fn is_session_expired_name(name: &str) -> bool {
    name == "ExpiredToken" || name == "InvalidToken" || name.starts_with("BadJwt")
}

/// Maps a non-2xx response to its error. `now` is injectable for `Retry-After` HTTP dates in tests.
pub fn classify_status(
    method: String,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> XrpcError {
    let body = parse_error_body(body);
    match status {
        429 => XrpcError::RateLimited {
            method,
            status,
            retry_after: retry_after_from_headers(headers, now),
            body,
        },
        500..=599 => XrpcError::ServerError { method, status, body },
        400 | 401 if body.error.as_deref().is_some_and(is_session_expired_name) => {
            XrpcError::SessionExpired { method, status, body }
        }
        _ => XrpcError::Rejected { method, status, body },
    }
}

/// `Retry-After` (delay seconds or HTTP date), else `RateLimit-Reset` (epoch seconds when it looks like one — the
/// atproto PDS sends epoch seconds — otherwise delay seconds).
pub fn retry_after_from_headers(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    if let Some(value) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::trim) {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(date) = chrono::DateTime::parse_from_rfc2822(value) {
            let delta = date.with_timezone(&chrono::Utc) - now;
            return Some(delta.to_std().unwrap_or(Duration::ZERO));
        }
    }
    let reset = headers
        .get("ratelimit-reset")
        .and_then(|v| v.to_str().ok())?
        .trim()
        .parse::<i64>()
        .ok()?;
    if reset >= 1_000_000_000 {
        Some(Duration::from_secs((reset - now.timestamp()).max(0) as u64))
    } else {
        Some(Duration::from_secs(reset.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_a_closed_set_and_methods_distinct() {
        let mut reached = std::collections::BTreeSet::from(["error"]);
        for status in 0..=u16::MAX {
            let label = status_label(status);
            assert!(STATUS_LABELS.contains(&label), "{status} -> {label}");
            reached.insert(label);
        }
        assert_eq!(reached.len(), STATUS_LABELS.len(), "every label is reachable");
        assert_eq!(
            (status_label(201), status_label(429), status_label(599)),
            ("2xx", "429", "5xx")
        );
        let names: std::collections::BTreeSet<&str> = XrpcMethod::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(names.len(), XrpcMethod::ALL.len());
        assert_eq!(XrpcMethod::PutRecord.as_str(), "com.atproto.repo.putRecord");
    }
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn status_mapping() {
        let now = chrono::Utc::now();
        let h = HeaderMap::new();
        let cases: &[(u16, &str, &str, ErrorClass)] = &[
            (
                500,
                r#"{"error":"InternalServerError","message":"x"}"#,
                "xrpc_server_error",
                ErrorClass::Transient,
            ),
            (503, "<html>down</html>", "xrpc_server_error", ErrorClass::Transient),
            (
                400,
                r#"{"error":"ExpiredToken","message":"Token has expired"}"#,
                "session_expired",
                ErrorClass::Transient,
            ),
            (
                401,
                r#"{"error":"InvalidToken"}"#,
                "session_expired",
                ErrorClass::Transient,
            ),
            (
                401,
                r#"{"error":"BadJwtSignature","message":"x"}"#,
                "session_expired",
                ErrorClass::Transient,
            ),
            (
                400,
                r#"{"error":"InvalidRequest","message":"bad"}"#,
                "xrpc_rejected",
                ErrorClass::Permanent,
            ),
            (
                401,
                r#"{"error":"AccountDeactivated"}"#,
                "xrpc_rejected",
                ErrorClass::Permanent,
            ),
            (403, "", "xrpc_rejected", ErrorClass::Permanent),
            (
                404,
                "DID not registered: did:plc:x",
                "xrpc_rejected",
                ErrorClass::Permanent,
            ),
            (429, "{}", "xrpc_rate_limited", ErrorClass::Transient),
        ];
        for (status, body, code, class) in cases {
            let e = classify_status("m".into(), *status, &h, body.as_bytes(), now);
            assert_eq!(e.code().as_str(), *code, "{status} {body}");
            assert_eq!(e.class(), *class, "{status} {body}");
            assert_eq!(e.status(), Some(*status));
        }
        let e = classify_status(
            "m".into(),
            400,
            &h,
            br#"{"error":"InvalidRequest","message":"bad"}"#,
            now,
        );
        assert_eq!(e.error_name(), Some("InvalidRequest"));
        assert_eq!(e.message(), Some("bad"));
        let plc = classify_status(
            "plc.submit".into(),
            400,
            &h,
            br#"{"message":"Operations not correctly ordered"}"#,
            now,
        );
        assert_eq!(plc.error_name(), None);
        assert_eq!(plc.message(), Some("Operations not correctly ordered"));
    }

    #[test]
    fn retry_after_parsing() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            retry_after_from_headers(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after_from_headers(&headers(&[("retry-after", "Thu, 01 Jan 2026 00:01:30 GMT")]), now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after_from_headers(&headers(&[("retry-after", "Wed, 31 Dec 2025 23:00:00 GMT")]), now),
            Some(Duration::ZERO)
        );
        let reset = (now.timestamp() + 42).to_string();
        assert_eq!(
            retry_after_from_headers(&headers(&[("ratelimit-reset", &reset)]), now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            retry_after_from_headers(&headers(&[("ratelimit-reset", "12")]), now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(retry_after_from_headers(&HeaderMap::new(), now), None);
        assert_eq!(
            retry_after_from_headers(&headers(&[("retry-after", "soon")]), now),
            None
        );
    }

    #[test]
    fn transport_rule_https_outside_loopback() {
        let ok = |u: &str, insecure: bool| check_transport(&url::Url::parse(u).unwrap(), insecure);
        assert_eq!(ok("https://pds.example", false), Ok(()));
        assert_eq!(ok("http://localhost:2583", false), Ok(()));
        assert_eq!(ok("http://127.0.0.1:2583", false), Ok(()));
        assert_eq!(ok("http://[::1]:2583", false), Ok(()));
        assert_eq!(ok("http://pds.example", false), Err("pds.example".to_string()));
        assert_eq!(
            ok("http://localhost.evil.example", false),
            Err("localhost.evil.example".to_string())
        );
        assert_eq!(ok("http://10.0.0.5", false), Err("10.0.0.5".to_string()));
        assert_eq!(ok("http://pds:2583", true), Ok(()));
    }

    #[test]
    fn error_body_parsing() {
        assert_eq!(
            parse_error_body(br#"{"error":"X","message":"y"}"#),
            ErrorBody {
                error: Some("X".into()),
                message: Some("y".into())
            }
        );
        assert_eq!(
            parse_error_body(b"plain text"),
            ErrorBody {
                error: None,
                message: Some("plain text".into())
            }
        );
        assert_eq!(parse_error_body(b""), ErrorBody::default());
        let long = "x".repeat(5000);
        assert!(parse_error_body(long.as_bytes()).message.unwrap().chars().count() <= MAX_MESSAGE_CHARS + 1);
    }
}
