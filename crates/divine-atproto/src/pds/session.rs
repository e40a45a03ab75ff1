//! Per-account PDS sessions: [`SessionManager`] hands out a valid access token per DID and keeps it valid.
//!
//! Semantics: a token comes from the in-memory cache, else from the [`SessionStore`], else from `refreshSession`
//! with the refresh token, else from `createSession` with the account's stored password (only when the refresh token
//! is refused or missing; a transient refresh failure is returned, the password is not a retry loop). A token that
//! expires within [`REFRESH_MARGIN`] counts as expired. Every renewal of one DID happens under that DID's async
//! mutex, so concurrent users of one account never race a refresh (a rotated refresh token would otherwise be spent
//! twice), and N concurrent `session_expired` failures cause one renewal ([`SessionManager::renew_after_expiry`]).
//! Every renewed session is saved through the store before it is handed out.
//!
//! The calls themselves go through the stateless [`PdsClient`](super::PdsClient). Tokens are sealed for storage
//! ([`StoredSession::seal`]), redacted in `Debug` and wiped on drop; never logged.

use super::client::{PdsClient, PdsError};
use crate::jwt;
use crate::keys::{secret_aad, KeyEncryptionKey, KeyError, SecretPurpose};
use atrium_api::com::atproto::server;
use chrono::{DateTime, Utc};
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Refresh the access token when it expires within this margin.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

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
