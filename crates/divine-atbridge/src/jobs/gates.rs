//! Account gates: whether a job may write to an account's repo now, decided from `account_links` alone (no side
//! effects). [`account_gate`] admits NEW posts (`publish_post`); [`upkeep_gate`] admits keeping the repo in step
//! with Nostr (deletes, profile changes), which a paused account still gets. The verdicts are the jobs' `ineligible`
//! codes (or a retry while provisioning); the policy that uses them lives in `publish` and `profile`.

use super::JobError;
use diesel::prelude::*;
use divine_bridge_db::schema::account_links;
use divine_bridge_db::ProvisioningState;

/// The account's DID if its repo may still be kept in step with Nostr — deletes and profile changes — now: any
/// account that has a DID, paused or not (a user who pauses cross-posting and then deletes a video or changes their
/// name must not keep the old copy on Bluesky; divine_bridge_db::accounts rule 1). No link or no DID → ineligible
/// `account_disabled` (there is nothing on the PDS to keep in step); disconnecting or disconnected → ineligible
/// `account_disconnected`.
pub fn upkeep_gate(conn: &mut PgConnection, pubkey: &str) -> Result<String, JobError> {
    let row: Option<(Option<String>, String)> = account_links::table
        .find(pubkey)
        .select((account_links::did, account_links::provisioning_state))
        .first(conn)
        .optional()
        .map_err(divine_bridge_db::DbError::from)?;
    let Some((did, state)) = row else {
        return Err(JobError::ineligible(
            divine_bridge_db::accounts::DISABLE_CODE,
            "no bridged account for this pubkey",
        ));
    };
    let state: ProvisioningState = state.parse().map_err(divine_bridge_db::DbError::from)?;
    if state.is_leaving() {
        // The disconnect job deletes everything; nothing may be written to a repo that is being let go.
        return Err(JobError::ineligible(
            divine_bridge_db::accounts::DISCONNECT_CODE,
            "account is disconnecting or disconnected",
        ));
    }
    did.ok_or_else(|| {
        JobError::ineligible(
            divine_bridge_db::accounts::DISABLE_CODE,
            "no bridged account for this pubkey",
        )
    })
}

/// The account's DID if bridging NEW posts is allowed now: disabled → ineligible `account_disabled` (re-queued on
/// enable); provisioning failed → ineligible; still provisioning → retry (it runs before the account's posts, so
/// this is rare).
pub fn account_gate(conn: &mut PgConnection, pubkey: &str) -> Result<String, JobError> {
    let row: Option<(Option<String>, bool, String)> = account_links::table
        .find(pubkey)
        .select((
            account_links::did,
            account_links::crosspost_enabled,
            account_links::provisioning_state,
        ))
        .first(conn)
        .optional()
        .map_err(divine_bridge_db::DbError::from)?;
    let Some((did, enabled, state)) = row else {
        return Err(JobError::ineligible(
            divine_bridge_db::ErrorCode::AccountDisabled,
            "no account link for this pubkey",
        ));
    };
    let state: ProvisioningState = state.parse().map_err(divine_bridge_db::DbError::from)?;
    match (state, did) {
        (s, _) if s.is_leaving() => Err(JobError::ineligible(
            divine_bridge_db::accounts::DISCONNECT_CODE,
            "account is disconnecting or disconnected",
        )),
        (s, _) if s.is_paused() => Err(JobError::ineligible(
            divine_bridge_db::accounts::DISABLE_CODE,
            "account is disabled or suspended",
        )),
        _ if !enabled => Err(JobError::ineligible(
            divine_bridge_db::ErrorCode::AccountDisabled,
            "cross-posting is turned off",
        )),
        (ProvisioningState::Ready, Some(did)) => Ok(did),
        (ProvisioningState::Failed, _) => Err(JobError::ineligible(
            divine_bridge_db::ErrorCode::AccountNotReady,
            "account provisioning failed; re-drive it first",
        )),
        (other, _) => Err(JobError::AccountNotReady {
            state: other.to_string(),
        }),
    }
}
