//! `provision_account`: turns an opted-in Nostr pubkey into a did:plc with an active account on our PDS. The keys
//! are generated and sealed before any external call and inserted once (a retry always continues with the first
//! try's keys); the protocol steps and their resumability live in `identity::Provisioner`, checkpointed into
//! `account_keys.provision_state`. This module owns the account-link state changes around that run
//! (pending → provisioning → ready | failed) and must not perform protocol calls itself.

use super::store::{save_session, DbCheckpoint};
use super::{upstream, JobError};
use crate::config::IdentityConfig;
use crate::identity::{ProvisionRequest, ProvisionSecrets, ProvisionState, Provisioner};
use crate::keys::KeyRing;
use crate::xrpc::XrpcClient;
use chrono::Utc;
use diesel::prelude::*;
use divine_bridge_db::accounts;
use divine_bridge_db::job_args::{BackfillAuthorArgs, BackfillRun};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::records;
use divine_bridge_db::schema::account_links;
use divine_bridge_db::{Classified, Db, DbError, ErrorClass, ErrorCode, ProvisioningState};

/// What the handler needs.
pub struct ProvisionDeps<'a> {
    pub db: &'a Db,
    pub xrpc: &'a XrpcClient,
    pub kek: &'a KeyRing,
    pub identity: &'a IdentityConfig,
}

/// The PDS needs an email; ours are synthetic and unique per account.
pub fn account_email(pubkey: &str, domain: &str) -> String {
    format!("{}@{}", &pubkey[..pubkey.len().min(20)], domain)
}

/// Runs (or resumes) provisioning for `pubkey`; returns the DID.
pub async fn provision(deps: &ProvisionDeps<'_>, pubkey: &str) -> Result<String, JobError> {
    let pk = pubkey.to_string();
    let link: Option<(String, Option<String>, String)> = deps
        .db
        .run(move |c| {
            Ok::<_, DbError>(
                account_links::table
                    .find(&pk)
                    .select((
                        account_links::handle,
                        account_links::did,
                        account_links::provisioning_state,
                    ))
                    .first(c)
                    .optional()?,
            )
        })
        .await?;
    let Some((handle, did, state)) = link else {
        return Err(JobError::ineligible(
            ErrorCode::AccountNotFound,
            "no account link for this pubkey",
        ));
    };
    let state: ProvisioningState = state.parse().map_err(DbError::from)?;
    if state.is_paused() && did.is_none() {
        return Err(JobError::ineligible(
            ErrorCode::AccountDisabled,
            "disabled or suspended before provisioning finished",
        ));
    }

    // 1. Keys: generated and sealed BEFORE any external call, inserted once.
    let pk = pubkey.to_string();
    let stored = deps.db.run(move |c| records::get_keys(c, &pk)).await?;
    let stored = match stored {
        Some(k) => k,
        None => {
            let row = ProvisionSecrets::generate().keys_row(deps.kek.primary(), pubkey);
            deps.db.run(move |c| records::insert_keys_once(c, &row)).await?
        }
    };
    let secrets = ProvisionSecrets::open_row(deps.kek, &stored).map_err(upstream)?;
    let progress = match &stored.provision_state {
        Some(v) => ProvisionState::from_json(v).map_err(upstream)?,
        None => ProvisionState::new(),
    };

    let pk = pubkey.to_string();
    deps.db.run(move |c| accounts::mark_provisioning(c, &pk)).await?;

    // 2-6. The protocol run, checkpointed after every step.
    let request = ProvisionRequest {
        handle: handle.clone(),
        email: account_email(pubkey, &deps.identity.email_domain),
        pds_url: deps.identity.pds_url.clone(),
        plc_url: deps.identity.plc_url.clone(),
        recovery_keys: deps.identity.recovery_keys.clone(),
        pds_admin: crate::identity::PdsAdminPassword(deps.identity.pds_admin_password.clone()),
    };
    let checkpoint = DbCheckpoint {
        db: deps.db.clone(),
        pubkey: pubkey.to_string(),
    };
    let result = match Provisioner::new(deps.xrpc.clone(), request, secrets, checkpoint) {
        Ok(p) => p.run(progress).await,
        Err(e) => Err(e),
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            if e.class() == ErrorClass::Permanent {
                let (pk, code, detail) = (pubkey.to_string(), e.code(), e.to_string());
                deps.db
                    .run(move |c| accounts::mark_failed(c, &pk, code, &detail))
                    .await?;
            }
            return Err(upstream(e));
        }
    };

    // 7. Session, DID, ready; then import history.
    let pk = pubkey.to_string();
    let did = outcome.did.clone();
    deps.db
        .run(move |c| {
            diesel::update(account_links::table.find(&pk))
                .set((account_links::did.eq(&did), account_links::updated_at.eq(Utc::now())))
                .execute(c)?;
            Ok::<_, DbError>(())
        })
        .await?;
    if let Some(session) = &outcome.session {
        save_session(deps.db, deps.kek, pubkey, &outcome.did, session).await?;
    }
    let pk = pubkey.to_string();
    deps.db
        .run(move |c| {
            c.transaction(|c| {
                accounts::set_state(c, &pk, ProvisioningState::Ready, None)?;
                let backfill = BackfillAuthorArgs {
                    nostr_pubkey: pk.clone(),
                    run: BackfillRun::Initial,
                };
                queue::enqueue(c, &NewJob::of(&backfill)?)?;
                Ok::<_, DbError>(())
            })
        })
        .await?;
    Ok(outcome.did)
}
