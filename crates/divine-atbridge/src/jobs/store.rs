//! Postgres-backed adapters for the identity layer: the [`SessionStore`] the `pds::SessionManager` persists sessions
//! through (sealed under the KEK), the provisioning [`Checkpoint`], and the [`RepoWriter`] that performs repo writes
//! with each account's own session. Owns the mapping between those traits and the stores in divine-bridge-db; no
//! policy lives here.

use super::{RepoWriter, UpstreamError};
use crate::blob::MediaBody;
use crate::identity::{Checkpoint, ProvisionState};
use crate::keys::{sealed_aad, KeyRing, SecretPurpose};
use crate::pds::{PdsError, PutRecord, SessionManager, SessionStore, StoreError, StoredSession};
use atrium_api::types::BlobRef;
use chrono::Utc;
use diesel::prelude::*;
use divine_bridge_db::records::{self, AccountSession};
use divine_bridge_db::schema::{account_keys, account_links};
use divine_bridge_db::{Classified, Db, DbError, ErrorClass, ErrorCode};
use futures::future::BoxFuture;
use std::sync::Arc;

fn store_err(e: &DbError) -> StoreError {
    StoreError::from_classified(e)
}

/// Sessions and passwords in `account_sessions` / `account_keys`, sealed under the KEK.
#[derive(Clone)]
pub struct DbSessionStore {
    pub db: Db,
    pub kek: Arc<KeyRing>,
}

impl DbSessionStore {
    async fn pubkey_for(&self, did: &str) -> Result<String, StoreError> {
        let did = did.to_string();
        let found = self
            .db
            .run(move |c| {
                Ok(account_links::table
                    .filter(account_links::did.eq(&did))
                    .select(account_links::nostr_pubkey)
                    .first::<String>(c)
                    .optional()?)
            })
            .await
            .map_err(|e| store_err(&e))?;
        found.ok_or_else(|| {
            StoreError::new(
                ErrorCode::AccountNotFound,
                ErrorClass::Permanent,
                "no account link for this DID",
            )
        })
    }
}

impl SessionStore for DbSessionStore {
    async fn load(&self, did: &str) -> Result<Option<StoredSession>, StoreError> {
        let d = did.to_string();
        let row = self
            .db
            .run(move |c| records::get_session(c, &d))
            .await
            .map_err(|e| store_err(&e))?;
        match row {
            None => Ok(None),
            Some(r) => self
                .kek
                .get(&r.kek_id)
                .and_then(|kek| StoredSession::open(kek, &r.nostr_pubkey, &r.access_jwt_sealed, &r.refresh_jwt_sealed))
                .map(Some)
                .map_err(|e| StoreError::from_classified(&e)),
        }
    }

    async fn save(&self, did: &str, session: &StoredSession) -> Result<(), StoreError> {
        let pubkey = self.pubkey_for(did).await?;
        save_session(&self.db, &self.kek, &pubkey, did, session)
            .await
            .map_err(|e| store_err(&e))
    }

    async fn password(&self, did: &str) -> Result<String, StoreError> {
        let pubkey = self.pubkey_for(did).await?;
        let pk = pubkey.clone();
        let (kek_id, generation, sealed): (String, i64, Vec<u8>) = self
            .db
            .run(move |c| {
                Ok(account_keys::table
                    .find(&pk)
                    .select((
                        account_keys::kek_id,
                        account_keys::seal_generation,
                        account_keys::password_sealed,
                    ))
                    .first(c)?)
            })
            .await
            .map_err(|e| store_err(&e))?;
        self.kek
            .get(&kek_id)
            .and_then(|kek| kek.open_string(&sealed_aad(&pubkey, SecretPurpose::Password, generation), &sealed))
            .map_err(|e| StoreError::from_classified(&e))
    }
}

/// Seals and upserts a session for `did` (owned by `pubkey`).
pub async fn save_session(
    db: &Db,
    kek: &KeyRing,
    pubkey: &str,
    did: &str,
    session: &StoredSession,
) -> Result<(), DbError> {
    let kek = kek.primary();
    let (access, refresh) = session.seal(kek, pubkey);
    let row = AccountSession {
        did: did.to_string(),
        nostr_pubkey: pubkey.to_string(),
        access_jwt_sealed: access,
        refresh_jwt_sealed: refresh,
        access_expires_at: session.access_expires_at(),
        refresh_expires_at: session.refresh_expires_at(),
        updated_at: Utc::now(),
        kek_id: kek.key_id(),
    };
    db.run(move |c| records::save_session(c, &row)).await
}

/// Provisioning progress in `account_keys.provision_state`.
pub struct DbCheckpoint {
    pub db: Db,
    pub pubkey: String,
}

impl Checkpoint for DbCheckpoint {
    async fn save(&self, state: &ProvisionState) -> Result<(), StoreError> {
        let (pk, json) = (self.pubkey.clone(), state.to_json());
        self.db
            .run(move |c| records::save_provision_state(c, &pk, &json))
            .await
            .map_err(|e| store_err(&e))
    }
}

/// Repo writes through the account's own session (refreshed or re-created as needed by the `SessionManager`).
pub struct PdsRepo {
    pub sessions: Arc<SessionManager<DbSessionStore>>,
}

fn up(e: PdsError) -> UpstreamError {
    UpstreamError::of(&e)
}

impl RepoWriter for PdsRepo {
    fn upload_blob<'a>(
        &'a self,
        did: &'a str,
        body: &'a MediaBody,
        mime: &'a str,
    ) -> BoxFuture<'a, Result<BlobRef, UpstreamError>> {
        Box::pin(async move {
            let pds = self.sessions.pds();
            let size = body.size();
            let out = self
                .sessions
                .with_session(did, |token| {
                    // A fresh stream of the spool file (or a handle to small in-memory bytes) per try.
                    let request_body = body.request_body();
                    async move { pds.upload_blob_sized(&token, mime, request_body, size).await }
                })
                .await
                .map_err(up)?;
            Ok(out.blob)
        })
    }

    fn put_record<'a>(
        &'a self,
        did: &'a str,
        collection: &'a str,
        rkey: &'a str,
        record: serde_json::Value,
    ) -> BoxFuture<'a, Result<(String, String), UpstreamError>> {
        Box::pin(async move {
            let pds = self.sessions.pds();
            let input = PutRecord {
                repo: did.to_string(),
                collection: collection.to_string(),
                rkey: rkey.to_string(),
                record,
                validate: None,
                swap_record: None,
            };
            let out = self
                .sessions
                .with_session(did, |token| {
                    let input = input.clone();
                    async move { pds.put_record(&token, &input).await }
                })
                .await
                .map_err(up)?;
            Ok((out.uri.to_string(), out.cid.as_ref().to_string()))
        })
    }

    fn delete_record<'a>(
        &'a self,
        did: &'a str,
        collection: &'a str,
        rkey: &'a str,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let pds = self.sessions.pds();
            self.sessions
                .with_session(did, |token| async move {
                    pds.delete_record(&token, did, collection, rkey).await
                })
                .await
                .map_err(up)
        })
    }
}

impl super::disconnect::AccountCloser for PdsRepo {
    fn repo_active<'a>(&'a self, did: &'a str) -> BoxFuture<'a, Result<Option<bool>, UpstreamError>> {
        Box::pin(async move {
            match self.sessions.pds().get_repo_status(did).await {
                Ok(status) => Ok(Some(status.active)),
                Err(PdsError::Rejected { error, .. }) if error == "RepoNotFound" => Ok(None),
                Err(e) => Err(up(e)),
            }
        })
    }

    fn deactivate<'a>(&'a self, did: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let pds = self.sessions.pds();
            self.sessions
                .with_session(did, |token| async move { pds.deactivate_account(&token).await })
                .await
                .map_err(up)
        })
    }

    fn forget<'a>(&'a self, did: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.sessions.forget(did))
    }
}

/// Wraps any classified error for the job layer.
pub fn upstream<E: Classified>(e: E) -> super::JobError {
    super::JobError::Upstream(UpstreamError::of(&e))
}
