//! Typed calls to the Divine PDS and per-account session management.
//!
//! Owns: [`PdsClient`] (one method per XRPC call the bridge makes, all through xrpc.rs), the PDS-specific error
//! classification from XRPC error names ([`PdsError`]), and [`SessionManager`], which hands out a valid access token
//! per DID (one async mutex per DID, refresh ahead of expiry, `createSession` with the stored password when the
//! refresh token is no longer accepted) and persists tokens through the [`SessionStore`] trait. Must not: touch the
//! database directly (the store is a trait), build records (translate.rs), or log tokens/passwords.
//!
//! Request/response bodies use `atrium_api` types where they exist (`create_account::InputData`, every `OutputData`).
//! Records are passed as `serde_json::Value` (build them from atrium record types with [`record_json`], which adds
//! `$type`), because the XRPC wire format is JSON and a JSON → `Unknown` → JSON round trip buys nothing.

use crate::jwt;
use crate::keys::{secret_aad, KeyEncryptionKey, KeyError, SecretPurpose};
use crate::xrpc::{xrpc_url, XrpcClient, XrpcError, XrpcRequest};
use atrium_api::com::atproto::{identity, repo, server, sync};
use atrium_api::types::Object;
use chrono::{DateTime, Utc};
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Refresh the access token when it expires within this margin.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

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

/// A JSON record with `$type` set to `collection`, from any serializable record type (e.g.
/// `atrium_api::app::bsky::feed::post::RecordData`).
pub fn record_json<T: Serialize>(collection: &str, record: &T) -> Result<serde_json::Value, PdsError> {
    let mut value = serde_json::to_value(record).map_err(|e| PdsError::InvalidInput {
        what: "record",
        detail: e.to_string(),
    })?;
    match value.as_object_mut() {
        Some(map) => {
            map.insert("$type".into(), serde_json::Value::String(collection.to_string()));
            Ok(value)
        }
        None => Err(PdsError::InvalidInput {
            what: "record",
            detail: "a record must be a JSON object".into(),
        }),
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

    fn get(&self, nsid: &str) -> XrpcRequest {
        XrpcRequest::get(xrpc_url(&self.base, nsid), nsid)
    }

    fn post(&self, nsid: &str) -> XrpcRequest {
        XrpcRequest::post(xrpc_url(&self.base, nsid), nsid)
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
        let out: Object<_> = self.call(Call::Other, self.get(server::describe_server::NSID)).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.createAccount` with a service-auth JWT (required when bringing our own DID).
    pub async fn create_account(
        &self,
        service_auth: &str,
        input: &server::create_account::InputData,
    ) -> Result<server::create_account::OutputData, PdsError> {
        let request = self
            .post(server::create_account::NSID)
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
            .post(server::create_invite_code::NSID)
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
            .post(server::create_session::NSID)
            .json(&input)
            .map_err(PdsError::Xrpc)?;
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.refreshSession` (Bearer = refresh JWT).
    pub async fn refresh_session(&self, refresh_jwt: &str) -> Result<server::refresh_session::OutputData, PdsError> {
        let request = self.post(server::refresh_session::NSID).bearer(refresh_jwt);
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.getSession`.
    pub async fn get_session(&self, access_jwt: &str) -> Result<server::get_session::OutputData, PdsError> {
        let out: Object<_> = self
            .call(Call::Other, self.get(server::get_session::NSID).bearer(access_jwt))
            .await?;
        Ok(out.data)
    }

    /// `com.atproto.identity.getRecommendedDidCredentials` (allowed while deactivated).
    pub async fn get_recommended_did_credentials(
        &self,
        access_jwt: &str,
    ) -> Result<identity::get_recommended_did_credentials::OutputData, PdsError> {
        let request = self
            .get(identity::get_recommended_did_credentials::NSID)
            .bearer(access_jwt);
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.server.activateAccount` (idempotent).
    pub async fn activate_account(&self, access_jwt: &str) -> Result<(), PdsError> {
        self.call_empty(
            Call::Other,
            self.post(server::activate_account::NSID).bearer(access_jwt),
        )
        .await
    }

    /// `com.atproto.server.deactivateAccount` (idempotent: deactivating a deactivated account succeeds). No
    /// `deleteAfter`: the repo is kept deactivated, never scheduled for deletion by the PDS (the bridge's disconnect
    /// has already deleted every bridged record; the DID must keep resolving for the audit tombstone).
    pub async fn deactivate_account(&self, access_jwt: &str) -> Result<(), PdsError> {
        let request = self
            .post(server::deactivate_account::NSID)
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
        let request = self.get(server::check_account_status::NSID).bearer(access_jwt);
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
            .post(repo::put_record::NSID)
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
            .get(repo::get_record::NSID)
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
            .post(repo::delete_record::NSID)
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
            .post(repo::upload_blob::NSID)
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
            .post(repo::upload_blob::NSID)
            .bearer(access_jwt)
            .raw_sized(content_type, body, size)
            .timeout(upload_timeout(size));
        let out: Object<_> = self.call(Call::Other, request).await?;
        Ok(out.data)
    }

    /// `com.atproto.identity.resolveHandle`: the DID holding `handle`, or `None` when the PDS cannot resolve it
    /// (any 400: the reference PDS answers `InvalidRequest "Unable to resolve handle"` for a free handle).
    pub async fn resolve_handle(&self, handle: &str) -> Result<Option<String>, PdsError> {
        let request = self.get(identity::resolve_handle::NSID).query("handle", handle);
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
            .call(Call::Other, self.get(sync::get_repo_status::NSID).query("did", did))
            .await?;
        Ok(out.data)
    }

    /// `com.atproto.repo.describeRepo` (public).
    pub async fn describe_repo(&self, repo_id: &str) -> Result<repo::describe_repo::OutputData, PdsError> {
        let out: Object<_> = self
            .call(Call::Other, self.get(repo::describe_repo::NSID).query("repo", repo_id))
            .await?;
        Ok(out.data)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------------------------

/// An account's PDS session tokens. `Debug` redacts them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    pub access_jwt: String,
    pub refresh_jwt: String,
}

/// The tokens are wiped from memory when the session is dropped.
impl Drop for StoredSession {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.access_jwt.zeroize();
        self.refresh_jwt.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for StoredSession {}

impl std::fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSession")
            .field("access_expires_at", &self.access_expires_at())
            .field("refresh_expires_at", &self.refresh_expires_at())
            .finish_non_exhaustive()
    }
}

impl StoredSession {
    /// Unverified `exp` of the access token (`None` if it cannot be decoded).
    pub fn access_expires_at(&self) -> Option<DateTime<Utc>> {
        jwt::decode_exp(&self.access_jwt).ok()
    }

    /// Unverified `exp` of the refresh token.
    pub fn refresh_expires_at(&self) -> Option<DateTime<Utc>> {
        jwt::decode_exp(&self.refresh_jwt).ok()
    }

    /// Whether the access token is still good for at least `margin`. Undecodable tokens count as expiring.
    pub fn access_valid_for(&self, margin: Duration) -> bool {
        expires_after(self.access_expires_at(), margin)
    }

    fn refresh_usable(&self) -> bool {
        // An undecodable refresh token is still worth one try; the PDS decides.
        self.refresh_expires_at().is_none_or(|exp| exp > Utc::now())
    }
}

fn expires_after(exp: Option<DateTime<Utc>>, margin: Duration) -> bool {
    let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
    exp.is_some_and(|exp| exp - margin > Utc::now())
}

impl StoredSession {
    /// Seals both tokens for `account_sessions` (bound to the account's Nostr pubkey and each token's purpose):
    /// `(access_jwt_sealed, refresh_jwt_sealed)`.
    pub fn seal(&self, kek: &KeyEncryptionKey, nostr_pubkey: &str) -> (Vec<u8>, Vec<u8>) {
        (
            kek.seal_str(&secret_aad(nostr_pubkey, SecretPurpose::AccessJwt), &self.access_jwt),
            kek.seal_str(&secret_aad(nostr_pubkey, SecretPurpose::RefreshJwt), &self.refresh_jwt),
        )
    }

    /// Opens tokens sealed by [`StoredSession::seal`].
    pub fn open(
        kek: &KeyEncryptionKey,
        nostr_pubkey: &str,
        access_jwt_sealed: &[u8],
        refresh_jwt_sealed: &[u8],
    ) -> Result<StoredSession, KeyError> {
        Ok(StoredSession {
            access_jwt: kek.open_string(&secret_aad(nostr_pubkey, SecretPurpose::AccessJwt), access_jwt_sealed)?,
            refresh_jwt: kek.open_string(&secret_aad(nostr_pubkey, SecretPurpose::RefreshJwt), refresh_jwt_sealed)?,
        })
    }
}

impl From<server::create_session::OutputData> for StoredSession {
    fn from(o: server::create_session::OutputData) -> Self {
        StoredSession {
            access_jwt: o.access_jwt,
            refresh_jwt: o.refresh_jwt,
        }
    }
}

impl From<server::refresh_session::OutputData> for StoredSession {
    fn from(o: server::refresh_session::OutputData) -> Self {
        StoredSession {
            access_jwt: o.access_jwt,
            refresh_jwt: o.refresh_jwt,
        }
    }
}

impl From<server::create_account::OutputData> for StoredSession {
    fn from(o: server::create_account::OutputData) -> Self {
        StoredSession {
            access_jwt: o.access_jwt,
            refresh_jwt: o.refresh_jwt,
        }
    }
}

/// An error from a storage trait implemented outside this module (Postgres stores, checkpoints). The implementor
/// classifies it where it is born, e.g. with [`StoreError::from_classified`] over a `DbError`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StoreError {
    pub code: ErrorCode,
    pub class: ErrorClass,
    pub message: String,
}

impl StoreError {
    /// A store error with an explicit code and class.
    pub fn new(code: ErrorCode, class: ErrorClass, message: impl Into<String>) -> StoreError {
        StoreError {
            code,
            class,
            message: message.into(),
        }
    }

    /// Carries over another error's code and class.
    pub fn from_classified<E: Classified + ?Sized>(e: &E) -> StoreError {
        StoreError {
            code: e.code(),
            class: e.class(),
            message: e.to_string(),
        }
    }
}

impl Classified for StoreError {
    fn code(&self) -> ErrorCode {
        self.code
    }

    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// Persistence of sessions and access to the account password (implemented over Postgres by the worker).
pub trait SessionStore: Send + Sync {
    /// The stored session of `did`, if any.
    fn load(&self, did: &str) -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send;
    /// Stores (upserts) the session of `did`.
    fn save(&self, did: &str, session: &StoredSession) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The account's PDS password, for `createSession` when the refresh token is no longer accepted.
    fn password(&self, did: &str) -> impl Future<Output = Result<String, StoreError>> + Send;
}

#[cfg(any(test, feature = "testutil"))]
/// In-memory [`SessionStore`] for tests and tools.
#[derive(Default)]
pub struct MemorySessionStore {
    sessions: std::sync::Mutex<HashMap<String, StoredSession>>,
    passwords: std::sync::Mutex<HashMap<String, String>>,
    saves: std::sync::atomic::AtomicUsize,
}

#[cfg(any(test, feature = "testutil"))]
impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> MemorySessionStore {
        MemorySessionStore::default()
    }

    /// Sets the password of `did`.
    pub fn set_password(&self, did: &str, password: &str) {
        self.passwords
            .lock()
            .unwrap()
            .insert(did.to_string(), password.to_string());
    }

    /// Sets the session of `did` directly.
    pub fn set_session(&self, did: &str, session: StoredSession) {
        self.sessions.lock().unwrap().insert(did.to_string(), session);
    }

    /// The session of `did`.
    pub fn get(&self, did: &str) -> Option<StoredSession> {
        self.sessions.lock().unwrap().get(did).cloned()
    }

    /// How many times `save` was called.
    pub fn save_count(&self) -> usize {
        self.saves.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(any(test, feature = "testutil"))]
impl SessionStore for MemorySessionStore {
    async fn load(&self, did: &str) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.get(did))
    }

    async fn save(&self, did: &str, session: &StoredSession) -> Result<(), StoreError> {
        self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.set_session(did, session.clone());
        Ok(())
    }

    async fn password(&self, did: &str) -> Result<String, StoreError> {
        self.passwords.lock().unwrap().get(did).cloned().ok_or_else(|| {
            StoreError::new(
                ErrorCode::SessionPasswordMissing,
                ErrorClass::Permanent,
                format!("no password for {did}"),
            )
        })
    }
}

impl<S: SessionStore> SessionStore for Arc<S> {
    fn load(&self, did: &str) -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send {
        (**self).load(did)
    }

    fn save(&self, did: &str, session: &StoredSession) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).save(did, session)
    }

    fn password(&self, did: &str) -> impl Future<Output = Result<String, StoreError>> + Send {
        (**self).password(did)
    }
}

/// Errors of [`SessionManager`].
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Pds(#[from] PdsError),
    #[error("session store: {0}")]
    Store(#[from] StoreError),
}

impl Classified for SessionError {
    fn code(&self) -> ErrorCode {
        match self {
            SessionError::Pds(e) => e.code(),
            SessionError::Store(e) => e.code(),
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            SessionError::Pds(e) => e.class(),
            SessionError::Store(e) => e.class(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            SessionError::Pds(e) => e.retry_after(),
            SessionError::Store(_) => None,
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<StoredSession>>>;

/// Hands out valid access tokens per DID. Every refresh of one DID happens under that DID's async mutex, so
/// concurrent users of one account never race a refresh (a rotated refresh token would otherwise be spent twice).
pub struct SessionManager<S> {
    pds: PdsClient,
    store: S,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    margin: Duration,
}

impl<S: SessionStore> SessionManager<S> {
    /// A manager refreshing [`REFRESH_MARGIN`] before expiry.
    pub fn new(pds: PdsClient, store: S) -> SessionManager<S> {
        SessionManager {
            pds,
            store,
            slots: std::sync::Mutex::new(HashMap::new()),
            margin: REFRESH_MARGIN,
        }
    }

    /// The PDS client.
    pub fn pds(&self) -> &PdsClient {
        &self.pds
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn slot(&self, did: &str) -> Slot {
        self.slots.lock().unwrap().entry(did.to_string()).or_default().clone()
    }

    /// Drops the cached session of `did` (after its stored session was destroyed by a disconnect), so no token of
    /// it stays in this process.
    pub async fn forget(&self, did: &str) {
        let slot = self.slots.lock().unwrap().remove(did);
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }

    /// A valid access token for `did`: cached, else stored, else refreshed, else a new session from the password.
    pub async fn access_token(&self, did: &str) -> Result<String, SessionError> {
        let slot = self.slot(did);
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| s.access_valid_for(self.margin)) {
            return Ok(s.access_jwt.clone());
        }
        let stored = self.store.load(did).await?;
        if let Some(s) = stored.as_ref().filter(|s| s.access_valid_for(self.margin)) {
            *guard = Some(s.clone());
            return Ok(s.access_jwt.clone());
        }
        let fresh = self.renew_locked(did, stored.or_else(|| guard.clone())).await?;
        let token = fresh.access_jwt.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// Called after the PDS answered `session_expired` to `rejected_access`: renews unless another task already
    /// replaced that token (then its replacement is returned), so N concurrent failures cause one refresh.
    pub async fn renew_after_expiry(&self, did: &str, rejected_access: &str) -> Result<String, SessionError> {
        let slot = self.slot(did);
        let mut guard = slot.lock().await;
        let current = match guard.clone() {
            Some(s) => Some(s),
            None => self.store.load(did).await?,
        };
        if let Some(s) = current
            .as_ref()
            .filter(|s| s.access_jwt != rejected_access && s.access_valid_for(self.margin))
        {
            let token = s.access_jwt.clone();
            *guard = current;
            return Ok(token);
        }
        let fresh = self.renew_locked(did, current).await?;
        let token = fresh.access_jwt.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// Refresh with the refresh token; if that is refused (or there is none), `createSession` with the password.
    /// Transient refresh failures (5xx, timeouts) are returned as they are: the password is not a retry loop.
    async fn renew_locked(&self, did: &str, current: Option<StoredSession>) -> Result<StoredSession, SessionError> {
        if let Some(current) = current.filter(StoredSession::refresh_usable) {
            match self.pds.refresh_session(&current.refresh_jwt).await {
                Ok(out) => {
                    let fresh = StoredSession::from(out);
                    self.store.save(did, &fresh).await?;
                    tracing::debug!(did, "session refreshed");
                    return Ok(fresh);
                }
                Err(e) if e.is_session_expired() || e.class() == ErrorClass::Permanent => {
                    tracing::info!(did, code = %e.code(), "refresh token refused; creating a new session");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let password = self.store.password(did).await?;
        let fresh = StoredSession::from(self.pds.create_session(did, &password).await?);
        self.store.save(did, &fresh).await?;
        Ok(fresh)
    }

    /// Runs `f` with a valid access token; if `f` fails with `session_expired`, renews once and runs it again.
    pub async fn with_session<T, E, F, Fut>(&self, did: &str, mut f: F) -> Result<T, E>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classified + From<SessionError>,
    {
        let token = self.access_token(did).await?;
        match f(token.clone()).await {
            Err(e) if e.code() == ErrorCode::SessionExpired => {
                let fresh = self.renew_after_expiry(did, &token).await?;
                f(fresh).await
            }
            other => other,
        }
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

impl From<SessionError> for PdsError {
    /// Lets `with_session` closures return `PdsError` directly; store failures keep their code and class.
    fn from(e: SessionError) -> PdsError {
        match e {
            SessionError::Pds(p) => p,
            SessionError::Store(s) => PdsError::Store(s),
        }
    }
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

    #[test]
    fn record_json_sets_type() {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Profile {
            display_name: String,
        }
        let v = record_json(
            "app.bsky.actor.profile",
            &Profile {
                display_name: "alice".into(),
            },
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"$type": "app.bsky.actor.profile", "displayName": "alice"})
        );
        assert_eq!(
            record_json("x.y.z", &5).unwrap_err().code(),
            ErrorCode::PdsRequestInvalid
        );
    }

    #[test]
    fn session_expiry_checks() {
        use base64::Engine;
        let token = |exp: i64| {
            let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            format!("{}.{}.sig", b(r#"{"alg":"HS256"}"#), b(&format!(r#"{{"exp":{exp}}}"#)))
        };
        let now = Utc::now().timestamp();
        let s = StoredSession {
            access_jwt: token(now + 3600),
            refresh_jwt: token(now + 86400),
        };
        assert!(s.access_valid_for(REFRESH_MARGIN));
        let s = StoredSession {
            access_jwt: token(now + 30),
            refresh_jwt: token(now + 86400),
        };
        assert!(
            !s.access_valid_for(REFRESH_MARGIN),
            "expiring within the margin counts as expired"
        );
        assert!(s.refresh_usable());
        let s = StoredSession {
            access_jwt: "garbage".into(),
            refresh_jwt: token(now - 5),
        };
        assert!(!s.access_valid_for(REFRESH_MARGIN));
        assert!(!s.refresh_usable());
        assert!(!format!("{s:?}").contains("garbage"));

        let kek = KeyEncryptionKey::from_bytes([5u8; 32]);
        let (access, refresh) = s.seal(&kek, "ab");
        assert_eq!(StoredSession::open(&kek, "ab", &access, &refresh).unwrap(), s);
        assert!(
            StoredSession::open(&kek, "ab", &refresh, &access).is_err(),
            "columns swapped"
        );
        assert!(StoredSession::open(&kek, "cd", &access, &refresh).is_err());
    }
}
