//! Stateless typed calls against one PDS: [`PdsClient`] has one method per XRPC call the bridge makes, all through
//! `xrpc.rs` (timeouts, error classification, response limits). Every call takes the token it needs (an access
//! token, a refresh token, a service-auth JWT or the admin password) as an argument; the client holds no session
//! and no per-account state, so one client serves every account. Which token is valid for which account is the
//! session manager's business (`session.rs`).
//!
//! Owns the PDS-specific classification of failures ([`PdsError`], decided from the HTTP status, the XRPC error
//! name and which kind of call failed) and the deadline of an `uploadBlob` ([`upload_timeout`]). Records are passed
//! as `serde_json::Value`, already serialised by the caller from atrium's typed `KnownRecord` (which carries `$type`;
//! the bridge's one serialisation is `divine_nostr::translate::record_json`), because the XRPC wire format is JSON
//! and a JSON → `Unknown` → JSON round trip buys nothing.

use super::session::StoreError;
use crate::xrpc::{xrpc_url, XrpcClient, XrpcError, XrpcMethod, XrpcRequest};
use atrium_api::com::atproto::{identity, repo, server, sync};
use atrium_api::types::Object;
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Errors of PDS calls, classified from the HTTP status and XRPC error name.
#[derive(Debug, thiserror::Error)]
pub enum PdsError {
    /// `HandleNotAvailable`, `InvalidHandle` or `UnsupportedDomain` on createAccount.
    #[error("handle unavailable ({error}): {message}")]
    HandleUnavailable { error: String, message: String },
    /// `AlreadyExists` on createAccount: the DID already has a repo here (a retry after a lost response).
    #[error("account already exists: {message}")]
    AlreadyExists { message: String },
    /// The service-auth JWT was refused (`BadJwt*`, `InvalidToken`): wrong signing key, audience or lxm.
    #[error("service auth refused ({error}): {message}")]
    ServiceAuthRejected { error: String, message: String },
    /// 401 `JwtExpired` on createAccount: the JWT we minted a moment ago is already past its `exp` for the PDS, so
    /// our clock is behind the PDS's by more than the token's lifetime. Transient: every try mints a fresh token, so
    /// provisioning resumes by itself once the clocks agree (NTP); it never marks the account failed on its own.
    #[error("service auth expired on arrival (clock skew: this host is behind the PDS): {message}")]
    ServiceAuthExpired { message: String },
    /// `InvalidRequest` on a record write: lexicon validation failed.
    #[error("{method}: record failed validation: {message}")]
    Validation { method: String, message: String },
    /// `AccountDeactivated`.
    #[error("{method}: account deactivated: {message}")]
    AccountDeactivated { method: String, message: String },
    /// `AccountTakedown`.
    #[error("{method}: account taken down: {message}")]
    AccountTakedown { method: String, message: String },
    /// Any other refusal.
    #[error("{method}: PDS rejected (HTTP {status}, {error}): {message}")]
    Rejected {
        method: String,
        status: u16,
        error: String,
        message: String,
    },
    /// A local argument is not a valid DID/handle/NSID/record key.
    #[error("invalid {what}: {detail}")]
    InvalidInput { what: &'static str, detail: String },
    /// Transport, timeout, 429, 5xx, session expired, unreadable body.
    #[error(transparent)]
    Xrpc(XrpcError),
    /// The session store failed while a session was being obtained (keeps the store's code and class).
    #[error("session store: {0}")]
    Store(StoreError),
}

impl Classified for PdsError {
    fn code(&self) -> ErrorCode {
        match self {
            PdsError::HandleUnavailable { .. } => ErrorCode::HandleUnavailable,
            PdsError::AlreadyExists { .. } => ErrorCode::AccountAlreadyExists,
            PdsError::ServiceAuthRejected { .. } => ErrorCode::ServiceAuthRejected,
            PdsError::ServiceAuthExpired { .. } => ErrorCode::ServiceAuthExpired,
            PdsError::Validation { .. } => ErrorCode::PdsValidation,
            PdsError::AccountDeactivated { .. } => ErrorCode::AccountDeactivated,
            PdsError::AccountTakedown { .. } => ErrorCode::AccountTakedown,
            PdsError::Rejected { .. } => ErrorCode::PdsRejected,
            PdsError::InvalidInput { .. } => ErrorCode::PdsRequestInvalid,
            PdsError::Xrpc(e) => e.code(),
            PdsError::Store(e) => e.code(),
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            PdsError::Xrpc(e) => e.class(),
            PdsError::Store(e) => e.class(),
            PdsError::ServiceAuthExpired { .. } => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            PdsError::Xrpc(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl PdsError {
    /// Whether this is the "session expired, refresh and retry" signal.
    pub fn is_session_expired(&self) -> bool {
        matches!(self, PdsError::Xrpc(XrpcError::SessionExpired { .. }))
    }
}

/// Which kind of call failed; decides how XRPC error names map.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    CreateAccount,
    RecordWrite,
    Other,
}

fn map_error(call: Call, e: XrpcError) -> PdsError {
    let (method, status, name, message) = match &e {
        XrpcError::Rejected { method, status, body } => (
            method.clone(),
            *status,
            body.error.clone().unwrap_or_default(),
            body.message.clone().unwrap_or_default(),
        ),
        // createAccount runs on service auth, not a session: nothing to refresh.
        XrpcError::SessionExpired { body, .. } if call == Call::CreateAccount => {
            return PdsError::ServiceAuthRejected {
                error: body.error.clone().unwrap_or_default(),
                message: body.message.clone().unwrap_or_default(),
            }
        }
        _ => return PdsError::Xrpc(e),
    };
    match (call, name.as_str()) {
        (_, "AccountDeactivated") => PdsError::AccountDeactivated { method, message },
        (_, "AccountTakedown") => PdsError::AccountTakedown { method, message },
        (Call::CreateAccount, "HandleNotAvailable" | "InvalidHandle" | "UnsupportedDomain") => {
            PdsError::HandleUnavailable { error: name, message }
        }
        (Call::CreateAccount, "AlreadyExists") => PdsError::AlreadyExists { message },
        (Call::CreateAccount, "JwtExpired") => PdsError::ServiceAuthExpired { message },
        (Call::RecordWrite, "InvalidRequest") => PdsError::Validation { method, message },
        _ => PdsError::Rejected {
            method,
            status,
            error: if name.is_empty() { "-".into() } else { name },
            message,
        },
    }
}

/// `com.atproto.repo.putRecord` input (the record as JSON; see the module docs).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PutRecord {
    pub repo: String,
    pub collection: String,
    pub rkey: String,
    pub record: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_record: Option<String>,
}

/// The PDS, via the shared [`XrpcClient`].
#[derive(Clone, Debug)]
pub struct PdsClient {
    xrpc: XrpcClient,
    base: String,
}

fn check<T>(what: &'static str, r: Result<T, &'static str>) -> Result<T, PdsError> {
    r.map_err(|e| PdsError::InvalidInput {
        what,
        detail: e.to_string(),
    })
}

impl PdsClient {
    /// `base_url` is the PDS public URL (must equal the DID document's `atproto_pds` endpoint byte for byte).
    pub fn new(xrpc: XrpcClient, base_url: &str) -> PdsClient {
        PdsClient {
            xrpc,
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// The PDS URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn get(&self, method: XrpcMethod) -> XrpcRequest {
        XrpcRequest::get(xrpc_url(&self.base, method.as_str()), method)
    }

    fn post(&self, method: XrpcMethod) -> XrpcRequest {
        XrpcRequest::post(xrpc_url(&self.base, method.as_str()), method)
    }

    async fn call<T: DeserializeOwned>(&self, call: Call, request: XrpcRequest) -> Result<T, PdsError> {
        let response = self.xrpc.send(request).await.map_err(|e| map_error(call, e))?;
        response.json::<T>().map_err(PdsError::Xrpc)
    }

    async fn call_empty(&self, call: Call, request: XrpcRequest) -> Result<(), PdsError> {
        self.xrpc.send(request).await.map_err(|e| map_error(call, e))?;
        Ok(())
    }

    /// `com.atproto.server.describeServer` (its `did` is the `aud` of service-auth tokens).
    pub async fn describe_server(&self) -> Result<server::describe_server::OutputData, PdsError> {
        let out: Object<_> = self.call(Call::Other, self.get(XrpcMethod::DescribeServer)).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.createAccount` with a service-auth JWT (required when bringing our own DID).
    pub async fn create_account(
        &self,
        service_auth: &str,
        input: &server::create_account::InputData,
    ) -> Result<server::create_account::OutputData, PdsError> {
        let request = self
            .post(XrpcMethod::CreateAccount)
            .bearer(service_auth)
            .json(input)
            .map_err(PdsError::Xrpc)?;
        let out: Object<_> = self.call(Call::CreateAccount, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.createInviteCode` through the PDS admin API (basic auth `admin:<PDS_ADMIN_PASSWORD>`): one
    /// single-use code. The bridge's PDS requires invites (no open sign-up, issue 12 §4), so every account the bridge
    /// creates spends a code it minted for it.
    pub async fn create_invite_code(&self, admin_password: &str) -> Result<String, PdsError> {
        let input = server::create_invite_code::InputData {
            for_account: None,
            use_count: 1,
        };
        let request = self
            .post(XrpcMethod::CreateInviteCode)
            .basic("admin", admin_password)
            .json(&input)
            .map_err(PdsError::Xrpc)?;
        let out: Object<server::create_invite_code::OutputData> = self.call(Call::Other, request).await?;
        Ok(out.data.code)
    }

    /// Builds the createAccount input for our own DID, spending `invite_code`.
    pub fn create_account_input(
        did: &str,
        handle: &str,
        email: &str,
        password: &str,
        invite_code: &str,
    ) -> Result<server::create_account::InputData, PdsError> {
        Ok(server::create_account::InputData {
            did: Some(check("did", atrium_api::types::string::Did::new(did.to_string()))?),
            email: Some(email.to_string()),
            handle: check("handle", atrium_api::types::string::Handle::new(handle.to_string()))?,
            invite_code: Some(invite_code.to_string()),
            password: Some(password.to_string()),
            plc_op: None,
            recovery_key: None,
            verification_code: None,
            verification_phone: None,
        })
    }

    /// `com.atproto.server.createSession` (identifier: DID or handle).
    pub async fn create_session(
        &self,
        identifier: &str,
        password: &str,
    ) -> Result<server::create_session::OutputData, PdsError> {
        let input = server::create_session::InputData {
            allow_takendown: None,
            auth_factor_token: None,
            identifier: identifier.to_string(),
            password: password.to_string(),
        };
        let request = self
            .post(XrpcMethod::CreateSession)
            .json(&input)
            .map_err(PdsError::Xrpc)?;
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.refreshSession` (Bearer = refresh JWT).
    pub async fn refresh_session(&self, refresh_jwt: &str) -> Result<server::refresh_session::OutputData, PdsError> {
        let request = self.post(XrpcMethod::RefreshSession).bearer(refresh_jwt);
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.getSession`.
    pub async fn get_session(&self, access_jwt: &str) -> Result<server::get_session::OutputData, PdsError> {
        let out: Object<_> = self
            .call(Call::Other, self.get(XrpcMethod::GetSession).bearer(access_jwt))
            .await?;
        Ok(out.data)
    }

    /// `com.atproto.identity.getRecommendedDidCredentials` (allowed while deactivated).
    pub async fn get_recommended_did_credentials(
        &self,
        access_jwt: &str,
    ) -> Result<identity::get_recommended_did_credentials::OutputData, PdsError> {
        let request = self.get(XrpcMethod::GetRecommendedDidCredentials).bearer(access_jwt);
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.activateAccount` (idempotent).
    pub async fn activate_account(&self, access_jwt: &str) -> Result<(), PdsError> {
        self.call_empty(Call::Other, self.post(XrpcMethod::ActivateAccount).bearer(access_jwt))
            .await
    }

    /// `com.atproto.server.deactivateAccount` (idempotent: deactivating a deactivated account succeeds). No
    /// `deleteAfter`: the repo is kept deactivated, never scheduled for deletion by the PDS (the bridge's disconnect
    /// has already deleted every bridged record; the DID must keep resolving for the audit tombstone).
    pub async fn deactivate_account(&self, access_jwt: &str) -> Result<(), PdsError> {
        let request = self
            .post(XrpcMethod::DeactivateAccount)
            .bearer(access_jwt)
            .json(&serde_json::json!({}))
            .map_err(PdsError::Xrpc)?;
        self.call_empty(Call::Other, request).await
    }

    /// `com.atproto.server.checkAccountStatus`.
    pub async fn check_account_status(
        &self,
        access_jwt: &str,
    ) -> Result<server::check_account_status::OutputData, PdsError> {
        let request = self.get(XrpcMethod::CheckAccountStatus).bearer(access_jwt);
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.repo.putRecord` (the idempotent upsert: identical content is a no-op).
    pub async fn put_record(
        &self,
        access_jwt: &str,
        input: &PutRecord,
    ) -> Result<repo::put_record::OutputData, PdsError> {
        check(
            "collection",
            atrium_api::types::string::Nsid::new(input.collection.clone()),
        )?;
        check("rkey", atrium_api::types::string::RecordKey::new(input.rkey.clone()))?;
        let request = self
            .post(XrpcMethod::PutRecord)
            .bearer(access_jwt)
            .json(input)
            .map_err(PdsError::Xrpc)?;
        let out: Object<_> = self.call(Call::RecordWrite, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.repo.getRecord`; `None` when the record does not exist.
    pub async fn get_record(
        &self,
        repo_id: &str,
        collection: &str,
        rkey: &str,
    ) -> Result<Option<repo::get_record::OutputData>, PdsError> {
        let request = self
            .get(XrpcMethod::GetRecord)
            .query("repo", repo_id)
            .query("collection", collection)
            .query("rkey", rkey);
        match self
            .call::<Object<repo::get_record::OutputData>>(Call::Other, request)
            .await
        {
            Ok(out) => Ok(Some(out.data)),
            Err(PdsError::Rejected { error, .. }) if error == "RecordNotFound" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `com.atproto.repo.deleteRecord` (deleting a missing record succeeds).
    pub async fn delete_record(
        &self,
        access_jwt: &str,
        repo_id: &str,
        collection: &str,
        rkey: &str,
    ) -> Result<(), PdsError> {
        let input = serde_json::json!({"repo": repo_id, "collection": collection, "rkey": rkey});
        let request = self
            .post(XrpcMethod::DeleteRecord)
            .bearer(access_jwt)
            .json(&input)
            .map_err(PdsError::Xrpc)?;
        self.call_empty(Call::RecordWrite, request).await
    }

    /// `com.atproto.repo.uploadBlob` with raw bytes or a stream (`reqwest::Body::wrap_stream`).
    pub async fn upload_blob(
        &self,
        access_jwt: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<repo::upload_blob::OutputData, PdsError> {
        let request = self
            .post(XrpcMethod::UploadBlob)
            .bearer(access_jwt)
            .raw(content_type, body);
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `uploadBlob` of a body of known `size` (typically a stream of a spool file): sent with `Content-Length`, under
    /// a deadline scaled with the size ([`upload_timeout`]) instead of the client's fixed request timeout.
    pub async fn upload_blob_sized(
        &self,
        access_jwt: &str,
        content_type: &str,
        body: reqwest::Body,
        size: u64,
    ) -> Result<repo::upload_blob::OutputData, PdsError> {
        let request = self
            .post(XrpcMethod::UploadBlob)
            .bearer(access_jwt)
            .raw_sized(content_type, body, size)
            .timeout(upload_timeout(size));
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.identity.resolveHandle`: the DID holding `handle`, or `None` when the PDS cannot resolve it
    /// (any 400: the reference PDS answers `InvalidRequest "Unable to resolve handle"` for a free handle).
    pub async fn resolve_handle(&self, handle: &str) -> Result<Option<String>, PdsError> {
        let request = self.get(XrpcMethod::ResolveHandle).query("handle", handle);
        match self
            .call::<Object<identity::resolve_handle::OutputData>>(Call::Other, request)
            .await
        {
            Ok(out) => Ok(Some(out.data.did.to_string())),
            Err(PdsError::Rejected { status: 400, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `com.atproto.sync.getRepoStatus` (public).
    pub async fn get_repo_status(&self, did: &str) -> Result<sync::get_repo_status::OutputData, PdsError> {
        let out: Object<_> = self
            .call(Call::Other, self.get(XrpcMethod::GetRepoStatus).query("did", did))
            .await?;
        Ok(out.data)
    }

    /// `com.atproto.repo.describeRepo` (public).
    pub async fn describe_repo(&self, repo_id: &str) -> Result<repo::describe_repo::OutputData, PdsError> {
        let out: Object<_> = self
            .call(Call::Other, self.get(XrpcMethod::DescribeRepo).query("repo", repo_id))
            .await?;
        Ok(out.data)
    }
}

/// Fixed part of an upload deadline (connection, PDS processing), as the client's request timeout.
pub const UPLOAD_TIMEOUT_BASE: Duration = Duration::from_secs(30);
/// Slowest upload rate tolerated: 512 KiB/s (≈ 4 Mbit/s). A 100 MB video gets ≈ 30 s + 191 s.
pub const UPLOAD_MIN_BYTES_PER_SEC: u64 = 512 * 1024;

/// The deadline of one `uploadBlob` of `size` bytes: [`UPLOAD_TIMEOUT_BASE`] plus the time the body takes at
/// [`UPLOAD_MIN_BYTES_PER_SEC`]. A fixed deadline either cuts off large videos on a normal link or lets a stuck
/// small upload hang for as long as the largest one may take.
pub fn upload_timeout(size: u64) -> Duration {
    UPLOAD_TIMEOUT_BASE + Duration::from_millis(size.saturating_mul(1000) / UPLOAD_MIN_BYTES_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xrpc::ErrorBody;

    #[test]
    fn upload_timeout_scales_with_size() {
        assert_eq!(upload_timeout(0), UPLOAD_TIMEOUT_BASE);
        assert_eq!(
            upload_timeout(512 * 1024 * 60),
            UPLOAD_TIMEOUT_BASE + Duration::from_secs(60)
        );
        assert!(upload_timeout(100_000_000) > Duration::from_secs(200));
        assert!(upload_timeout(100_000) < Duration::from_secs(31));
    }

    fn rejected(status: u16, error: &str) -> XrpcError {
        XrpcError::Rejected {
            method: "m".into(),
            status,
            body: ErrorBody {
                error: Some(error.into()),
                message: Some("msg".into()),
            },
        }
    }

    #[test]
    fn error_mapping_by_call_and_name() {
        let cases = [
            (Call::CreateAccount, 400, "HandleNotAvailable", "handle_unavailable"),
            (Call::CreateAccount, 400, "InvalidHandle", "handle_unavailable"),
            (Call::CreateAccount, 400, "UnsupportedDomain", "handle_unavailable"),
            (Call::CreateAccount, 400, "AlreadyExists", "account_already_exists"),
            (Call::CreateAccount, 400, "InvalidRequest", "pds_rejected"),
            (Call::RecordWrite, 400, "InvalidRequest", "pds_validation"),
            (Call::RecordWrite, 400, "InvalidSwap", "pds_rejected"),
            (Call::Other, 400, "InvalidRequest", "pds_rejected"),
            (Call::RecordWrite, 401, "AccountDeactivated", "account_deactivated"),
            (Call::Other, 401, "AccountTakedown", "account_takedown"),
            (Call::Other, 400, "HandleNotAvailable", "pds_rejected"),
        ];
        for (call, status, name, code) in cases {
            let e = map_error(call, rejected(status, name));
            assert_eq!(e.code().as_str(), code, "{name}");
            assert_eq!(e.class(), ErrorClass::Permanent, "{name}");
        }
        let expired = XrpcError::SessionExpired {
            method: "m".into(),
            status: 401,
            body: ErrorBody {
                error: Some("BadJwtSignature".into()),
                message: None,
            },
        };
        assert_eq!(
            map_error(Call::CreateAccount, expired).code(),
            ErrorCode::ServiceAuthRejected
        );
        // Clock skew: the PDS finds our fresh service-auth JWT expired. Retried, never terminal by itself.
        let skew = map_error(Call::CreateAccount, rejected(401, "JwtExpired"));
        assert_eq!(skew.code(), ErrorCode::ServiceAuthExpired);
        assert_eq!(skew.class(), ErrorClass::Transient);
        assert_eq!(
            map_error(Call::Other, rejected(401, "JwtExpired")).code(),
            ErrorCode::PdsRejected
        );
        let expired = XrpcError::SessionExpired {
            method: "m".into(),
            status: 400,
            body: ErrorBody {
                error: Some("ExpiredToken".into()),
                message: None,
            },
        };
        let e = map_error(Call::RecordWrite, expired);
        assert_eq!(e.code(), ErrorCode::SessionExpired);
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.is_session_expired());
        let server = XrpcError::ServerError {
            method: "m".into(),
            status: 502,
            body: ErrorBody::default(),
        };
        assert_eq!(map_error(Call::CreateAccount, server).class(), ErrorClass::Transient);
    }
}
