//! Resumable provisioning of one bridged account: a did:plc we control, an active account on the Divine PDS that
//! holds the DID's signing key, and an initial profile.
//!
//! Owns: the step machine ([`ProvisionStep`]), the serializable checkpoint ([`ProvisionState`]) and the rules that
//! make every step safe to repeat after a crash or an ambiguous failure. Must not: generate or store secrets (the
//! caller generates and seals them BEFORE any external call and passes them in), touch the database (checkpoints go
//! through the [`Checkpoint`] trait), or ever mint a second DID for an account (the genesis op is built once, stored
//! in the state, and only then sent).
//!
//! Steps (the state names the last step completed):
//! `keys_ready` → POST genesis → `plc_registered` → createAccount → `account_created` → PLC update installing the
//! PDS's keys → `plc_updated` → activateAccount + checkAccountStatus → `activated` → putRecord profile/self →
//! `profile_written` → `ready`.

use crate::failpoint;
use crate::jwt;
use crate::keys::{
    decode_did_key, random_password, sealed_aad, AccountKey, KeyEncryptionKey, KeyError, KeyRing, SecretPurpose,
};
use crate::pds::{PdsClient, PdsError, PutRecord, StoreError, StoredSession};
use crate::plc::{PlcClient, PlcError, PlcOperation, PlcService, ATPROTO_PDS_SERVICE, ATPROTO_VERIFICATION_METHOD};
use crate::xrpc::XrpcClient;
use divine_bridge_db::records::{AccountKeys, Resealed};
use divine_bridge_db::{Classified, ErrorClass, ErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// PLC allows at most this many rotation keys.
pub const MAX_ROTATION_KEYS: usize = 5;
/// Lifetime of the createAccount service-auth token.
const SERVICE_AUTH_TTL: Duration = Duration::from_secs(60);
const CREATE_ACCOUNT_LXM: &str = "com.atproto.server.createAccount";
const PROFILE_COLLECTION: &str = "app.bsky.actor.profile";

/// The last completed provisioning step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionStep {
    /// Secrets generated and stored by the caller; nothing external done (the genesis op may be built and stored).
    KeysReady,
    /// The genesis op is registered on PLC.
    PlcRegistered,
    /// The (deactivated) account exists on the PDS.
    AccountCreated,
    /// PLC points at the PDS's signing key and includes its rotation key.
    PlcUpdated,
    /// The account is active (checked with checkAccountStatus).
    Activated,
    /// The initial `app.bsky.actor.profile/self` is written.
    ProfileWritten,
    /// Done.
    Ready,
}

impl ProvisionStep {
    /// The stable snake_case name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisionStep::KeysReady => "keys_ready",
            ProvisionStep::PlcRegistered => "plc_registered",
            ProvisionStep::AccountCreated => "account_created",
            ProvisionStep::PlcUpdated => "plc_updated",
            ProvisionStep::Activated => "activated",
            ProvisionStep::ProfileWritten => "profile_written",
            ProvisionStep::Ready => "ready",
        }
    }
}

/// The provisioning checkpoint, stored as JSON (`account_keys.provision_state`) after every step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionState {
    pub step: ProvisionStep,
    /// The account's DID, known as soon as the genesis op is built (before it is sent).
    #[serde(default)]
    pub did: Option<String>,
    /// The signed genesis op, stored before it is POSTed so a retry re-sends the SAME op.
    #[serde(default)]
    pub genesis_op: Option<PlcOperation>,
    /// The signed update op installing the PDS keys, stored before it is POSTed.
    #[serde(default)]
    pub update_op: Option<PlcOperation>,
    /// CID of the DID's last op we know PLC accepted.
    #[serde(default)]
    pub last_op_cid: Option<String>,
    /// The PDS's service DID (`describeServer.did`), the `aud` of service auth.
    #[serde(default)]
    pub pds_did: Option<String>,
}

impl Default for ProvisionState {
    fn default() -> Self {
        ProvisionState::new()
    }
}

impl ProvisionState {
    /// The state of an account whose secrets were just stored.
    pub fn new() -> ProvisionState {
        ProvisionState {
            step: ProvisionStep::KeysReady,
            did: None,
            genesis_op: None,
            update_op: None,
            last_op_cid: None,
            pds_did: None,
        }
    }

    /// As JSON for the database.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("ProvisionState serializes")
    }

    /// From the database JSON.
    pub fn from_json(value: &serde_json::Value) -> Result<ProvisionState, ProvisionError> {
        serde_json::from_value(value.clone())
            .map_err(|e| ProvisionError::InvalidRequest(format!("stored provision_state is unreadable: {e}")))
    }
}

/// Where checkpoints go (the worker implements it over `account_keys.provision_state`).
pub trait Checkpoint: Send + Sync {
    /// Persists `state`; provisioning stops if this fails.
    fn save(&self, state: &ProvisionState) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(any(test, feature = "testutil"))]
/// In-memory [`Checkpoint`] recording every saved state (tests, tools).
#[derive(Default)]
pub struct MemoryCheckpoint {
    saved: std::sync::Mutex<Vec<ProvisionState>>,
}

#[cfg(any(test, feature = "testutil"))]
impl MemoryCheckpoint {
    /// An empty recorder.
    pub fn new() -> MemoryCheckpoint {
        MemoryCheckpoint::default()
    }

    /// Every state saved so far, in order.
    pub fn states(&self) -> Vec<ProvisionState> {
        self.saved.lock().unwrap().clone()
    }

    /// The last saved state.
    pub fn last(&self) -> Option<ProvisionState> {
        self.saved.lock().unwrap().last().cloned()
    }
}

#[cfg(any(test, feature = "testutil"))]
impl Checkpoint for MemoryCheckpoint {
    async fn save(&self, state: &ProvisionState) -> Result<(), StoreError> {
        self.saved.lock().unwrap().push(state.clone());
        Ok(())
    }
}

impl<C: Checkpoint> Checkpoint for &C {
    fn save(&self, state: &ProvisionState) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).save(state)
    }
}

/// The account's secrets, generated and stored (sealed) by the caller before provisioning starts.
#[derive(Clone)]
pub struct ProvisionSecrets {
    /// The DID's initial `#atproto` key; signs the createAccount service-auth token.
    pub signing_key: AccountKey,
    /// The bridge's rotation key for the DID; signs every PLC op.
    pub rotation_key: AccountKey,
    /// The PDS account password.
    pub password: String,
}

/// The password is wiped from memory on drop (the keys wipe themselves: `SigningKey` zeroizes its scalar).
impl Drop for ProvisionSecrets {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl zeroize::ZeroizeOnDrop for ProvisionSecrets {}

impl std::fmt::Debug for ProvisionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionSecrets")
            .field("signing_key", &self.signing_key)
            .field("rotation_key", &self.rotation_key)
            .finish_non_exhaustive()
    }
}

impl ProvisionSecrets {
    /// Fresh signing key, rotation key and PDS password.
    pub fn generate() -> ProvisionSecrets {
        ProvisionSecrets {
            signing_key: AccountKey::generate(),
            rotation_key: AccountKey::generate(),
            password: random_password(),
        }
    }

    /// The `account_keys` row of these secrets for `nostr_pubkey`: every secret sealed under `kek` at generation 0
    /// ([`ProvisionSecrets::seal_at`]), the public halves in clear for diagnosis, provisioning not started yet.
    pub fn keys_row(&self, kek: &KeyEncryptionKey, nostr_pubkey: &str) -> AccountKeys {
        let sealed = self.seal_at(kek, nostr_pubkey, 0);
        let now = chrono::Utc::now();
        AccountKeys {
            nostr_pubkey: nostr_pubkey.to_string(),
            kek_id: sealed.kek_id,
            signing_key_sealed: sealed.signing_key_sealed,
            rotation_key_sealed: sealed.rotation_key_sealed,
            password_sealed: sealed.password_sealed,
            signing_did_key: self.signing_key.did_key(),
            rotation_did_key: self.rotation_key.did_key(),
            provision_state: Some(ProvisionState::new().to_json()),
            created_at: now,
            updated_at: now,
            seal_generation: 0,
        }
    }

    /// The sealed secrets at a re-seal `generation` (keys.rs rotation rule 2), bound to `nostr_pubkey`, each
    /// secret's purpose and `generation` (see keys.rs for the layout and associated data).
    pub fn seal_at(&self, kek: &KeyEncryptionKey, nostr_pubkey: &str, generation: i64) -> Resealed {
        let aad = |purpose| sealed_aad(nostr_pubkey, purpose, generation);
        Resealed {
            kek_id: kek.key_id(),
            signing_key_sealed: kek.seal_key(&aad(SecretPurpose::Signing), &self.signing_key),
            rotation_key_sealed: kek.seal_key(&aad(SecretPurpose::Rotation), &self.rotation_key),
            password_sealed: kek.seal_str(&aad(SecretPurpose::Password), &self.password),
        }
    }

    /// Opens a stored `account_keys` row with the KEK it names, at its generation (`key_encryption_key_unknown`
    /// when the ring lacks that KEK, `key_decrypt_failed` when a ciphertext does not belong there).
    pub fn open_row(ring: &KeyRing, row: &AccountKeys) -> Result<ProvisionSecrets, KeyError> {
        ProvisionSecrets::open_at(
            ring.get(&row.kek_id)?,
            &row.nostr_pubkey,
            row.seal_generation,
            &row.signing_key_sealed,
            &row.rotation_key_sealed,
            &row.password_sealed,
        )
    }

    /// Opens secrets sealed by [`ProvisionSecrets::seal`] for the same `nostr_pubkey` (`key_decrypt_failed`
    /// otherwise).
    pub fn open(
        kek: &KeyEncryptionKey,
        nostr_pubkey: &str,
        signing_key_sealed: &[u8],
        rotation_key_sealed: &[u8],
        password_sealed: &[u8],
    ) -> Result<ProvisionSecrets, KeyError> {
        ProvisionSecrets::open_at(
            kek,
            nostr_pubkey,
            0,
            signing_key_sealed,
            rotation_key_sealed,
            password_sealed,
        )
    }

    /// [`ProvisionSecrets::open`] at a re-seal `generation`.
    pub fn open_at(
        kek: &KeyEncryptionKey,
        nostr_pubkey: &str,
        generation: i64,
        signing_key_sealed: &[u8],
        rotation_key_sealed: &[u8],
        password_sealed: &[u8],
    ) -> Result<ProvisionSecrets, KeyError> {
        let aad = |purpose| sealed_aad(nostr_pubkey, purpose, generation);
        Ok(ProvisionSecrets {
            signing_key: kek.open_key(&aad(SecretPurpose::Signing), signing_key_sealed)?,
            rotation_key: kek.open_key(&aad(SecretPurpose::Rotation), rotation_key_sealed)?,
            password: kek.open_string(&aad(SecretPurpose::Password), password_sealed)?,
        })
    }
}

/// What to provision, and where.
#[derive(Clone, Debug)]
pub struct ProvisionRequest {
    /// Full handle, e.g. `alice.divine.video` (the PDS must serve its domain).
    pub handle: String,
    pub email: String,
    /// The PDS public URL; must equal the PDS's own idea of its URL byte for byte.
    pub pds_url: String,
    pub plc_url: String,
    /// Offline recovery did:keys, placed FIRST in rotationKeys (highest priority).
    pub recovery_keys: Vec<String>,
    /// `PDS_ADMIN_PASSWORD`: mints the invite code each createAccount spends.
    pub pds_admin: PdsAdminPassword,
}

/// The PDS admin password; `Debug` never shows it.
#[derive(Clone)]
pub struct PdsAdminPassword(pub String);

impl std::fmt::Debug for PdsAdminPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PdsAdminPassword(<redacted>)")
    }
}

/// The result of a run that reached `ready`.
#[derive(Clone, Debug)]
pub struct ProvisionOutcome {
    pub did: String,
    pub handle: String,
    /// The final checkpoint (step `ready`).
    pub state: ProvisionState,
    /// The session obtained during this run, for the caller to store through its `SessionStore`; `None` when the
    /// run had nothing to do (the state was already `ready`).
    pub session: Option<StoredSession>,
}

/// Errors of provisioning.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Plc(#[from] PlcError),
    #[error(transparent)]
    Pds(#[from] PdsError),
    /// The checkpoint could not be saved.
    #[error("checkpoint: {0}")]
    Checkpoint(StoreError),
    /// createAccount said AlreadyExists (or the handle is taken) but logging in with our password did not prove the
    /// account is ours.
    #[error("the PDS already has this account but it could not be verified with the stored password: {0}")]
    AccountUnverified(PdsError),
    /// The stored state does not belong to the supplied secrets/request.
    #[error("provision state does not match the account's keys or request: {0}")]
    StateMismatch(String),
    /// PLC's log for the DID holds an op this bridge did not write (a recovery-key override, or a lost checkpoint).
    #[error("PLC log conflict for {did}: {detail}")]
    PlcConflict { did: String, detail: String },
    /// The PDS recommends an `atproto_pds` endpoint different from `PDS_URL`; activation would fail.
    #[error("the PDS calls itself {recommended:?} but PDS_URL is {configured:?}; they must be equal byte for byte")]
    EndpointMismatch { configured: String, recommended: String },
    /// checkAccountStatus did not report activated + validDid after activateAccount.
    #[error("account not active after activation (activated={activated}, validDid={valid_did})")]
    AccountNotActive { activated: bool, valid_did: bool },
    /// Bad input (recovery key, too many rotation keys, handle, unreadable state).
    #[error("invalid provisioning request: {0}")]
    InvalidRequest(String),
}

impl Classified for ProvisionError {
    fn code(&self) -> ErrorCode {
        match self {
            ProvisionError::Plc(e) => e.code(),
            ProvisionError::Pds(e) => e.code(),
            ProvisionError::Checkpoint(e) => e.code(),
            ProvisionError::AccountUnverified(_) => ErrorCode::AccountExistsUnverified,
            ProvisionError::StateMismatch(_) => ErrorCode::ProvisionStateMismatch,
            ProvisionError::PlcConflict { .. } => ErrorCode::PlcConflict,
            ProvisionError::EndpointMismatch { .. } => ErrorCode::PdsEndpointMismatch,
            ProvisionError::AccountNotActive { .. } => ErrorCode::AccountNotActive,
            ProvisionError::InvalidRequest(_) => ErrorCode::ProvisionRequestInvalid,
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            ProvisionError::Plc(e) => e.class(),
            ProvisionError::Pds(e) => e.class(),
            ProvisionError::Checkpoint(e) => e.class(),
            // Transient failures while verifying stay transient (e.g. the PDS was briefly down).
            ProvisionError::AccountUnverified(e) => e.class(),
            // PDS DID cache / PLC lag: retried until the retry window ends.
            ProvisionError::AccountNotActive { .. } => ErrorClass::Transient,
            ProvisionError::StateMismatch(_)
            | ProvisionError::PlcConflict { .. }
            | ProvisionError::EndpointMismatch { .. }
            | ProvisionError::InvalidRequest(_) => ErrorClass::Permanent,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProvisionError::Plc(e) => e.retry_after(),
            ProvisionError::Pds(e) | ProvisionError::AccountUnverified(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// The display name of a new profile: the handle's first label.
pub fn display_name_for(handle: &str) -> String {
    handle.split('.').next().unwrap_or(handle).to_string()
}

/// Runs the provisioning steps for one account.
pub struct Provisioner<C> {
    plc: PlcClient,
    pds: PdsClient,
    secrets: ProvisionSecrets,
    request: ProvisionRequest,
    checkpoint: C,
}

/// Per-run mutable data that is not checkpointed (tokens are the caller's to store).
struct Run {
    state: ProvisionState,
    session: Option<StoredSession>,
    did: String,
}

impl<C: Checkpoint> Provisioner<C> {
    /// A provisioner using `xrpc` for PLC and PDS calls.
    pub fn new(
        xrpc: XrpcClient,
        request: ProvisionRequest,
        secrets: ProvisionSecrets,
        checkpoint: C,
    ) -> Result<Provisioner<C>, ProvisionError> {
        for key in &request.recovery_keys {
            decode_did_key(key).map_err(|e| ProvisionError::InvalidRequest(format!("recovery key: {e}")))?;
        }
        // Genesis holds recovery + ours; the update adds at least the PDS's rotation key.
        if request.recovery_keys.len() + 2 > MAX_ROTATION_KEYS {
            return Err(ProvisionError::InvalidRequest(format!(
                "{} recovery keys leave no room for the bridge's and the PDS's rotation keys (PLC allows {MAX_ROTATION_KEYS})",
                request.recovery_keys.len()
            )));
        }
        atrium_api::types::string::Handle::new(request.handle.clone())
            .map_err(|e| ProvisionError::InvalidRequest(format!("handle {:?}: {e}", request.handle)))?;
        Ok(Provisioner {
            plc: PlcClient::new(xrpc.clone(), &request.plc_url),
            pds: PdsClient::new(xrpc, &request.pds_url),
            secrets,
            request,
            checkpoint,
        })
    }

    /// The PLC client in use.
    pub fn plc(&self) -> &PlcClient {
        &self.plc
    }

    /// The PDS client in use.
    pub fn pds(&self) -> &PdsClient {
        &self.pds
    }

    /// Advances from `state` (whatever step it is in) to `ready`, checkpointing after every step.
    pub async fn run(&self, state: ProvisionState) -> Result<ProvisionOutcome, ProvisionError> {
        if state.step == ProvisionStep::Ready {
            let did = state
                .did
                .clone()
                .ok_or_else(|| ProvisionError::StateMismatch("state is ready but has no DID".into()))?;
            return Ok(ProvisionOutcome {
                did,
                handle: self.request.handle.clone(),
                state,
                session: None,
            });
        }
        let mut run = Run {
            did: String::new(),
            state,
            session: None,
        };
        self.ensure_genesis(&mut run).await?;
        crate::worker::note_did(&run.did);
        loop {
            match run.state.step {
                ProvisionStep::KeysReady => self.register_genesis(&mut run).await?,
                ProvisionStep::PlcRegistered => self.create_account(&mut run).await?,
                ProvisionStep::AccountCreated => self.update_plc(&mut run).await?,
                ProvisionStep::PlcUpdated => self.activate(&mut run).await?,
                ProvisionStep::Activated => self.write_profile(&mut run).await?,
                ProvisionStep::ProfileWritten => self.advance(&mut run, ProvisionStep::Ready).await?,
                ProvisionStep::Ready => break,
            }
        }
        Ok(ProvisionOutcome {
            did: run.did,
            handle: self.request.handle.clone(),
            state: run.state,
            session: run.session,
        })
    }

    async fn save(&self, state: &ProvisionState) -> Result<(), ProvisionError> {
        self.checkpoint.save(state).await.map_err(ProvisionError::Checkpoint)
    }

    async fn advance(&self, run: &mut Run, step: ProvisionStep) -> Result<(), ProvisionError> {
        run.state.step = step;
        self.save(&run.state).await?;
        tracing::info!(did = %run.did, step = step.as_str(), "provisioning step done");
        failpoint::hit(&format!("provision_after_{}", step.as_str()));
        Ok(())
    }

    /// Builds, signs and checkpoints the genesis op once; on resume checks that the stored op is ours.
    async fn ensure_genesis(&self, run: &mut Run) -> Result<(), ProvisionError> {
        let rotation = self.secrets.rotation_key.did_key();
        let signing = self.secrets.signing_key.did_key();
        if let Some(genesis) = &run.state.genesis_op {
            let did = genesis.genesis_did()?;
            if run.state.did.as_deref() != Some(did.as_str()) {
                return Err(ProvisionError::StateMismatch(format!(
                    "stored DID {:?} is not the stored genesis op's DID {did}",
                    run.state.did
                )));
            }
            if !genesis.rotation_keys.contains(&rotation)
                || genesis.verification_methods.get(ATPROTO_VERIFICATION_METHOD) != Some(&signing)
            {
                return Err(ProvisionError::StateMismatch(
                    "the stored genesis op was built with other keys than the ones supplied".into(),
                ));
            }
            run.did = did;
            return Ok(());
        }
        if run.state.step != ProvisionStep::KeysReady {
            return Err(ProvisionError::StateMismatch(format!(
                "step {} but no genesis op stored",
                run.state.step.as_str()
            )));
        }
        let mut rotation_keys = self.request.recovery_keys.clone();
        rotation_keys.push(rotation);
        let genesis = PlcOperation::atproto(
            rotation_keys,
            &signing,
            &self.request.handle,
            &self.request.pds_url,
            None,
        )
        .sign(&self.secrets.rotation_key)?;
        genesis.check_size()?;
        let did = genesis.genesis_did()?;
        run.state.did = Some(did.clone());
        run.state.genesis_op = Some(genesis);
        run.did = did;
        // Stored BEFORE it is sent: a crash after the POST resumes with this very op and DID.
        self.save(&run.state).await?;
        failpoint::hit("provision_genesis_stored");
        Ok(())
    }

    /// Whether PLC's last op for the DID is exactly `op`.
    async fn last_op_is(&self, did: &str, op: &PlcOperation) -> Result<bool, PlcError> {
        Ok(self.plc.last_op_if_registered(did).await?.as_ref() == Some(op))
    }

    /// Submits `op`; an ambiguous failure (ordering, timeout, 5xx) counts as success when PLC's last op is `op`.
    async fn submit_checked(&self, did: &str, op: &PlcOperation) -> Result<(), ProvisionError> {
        match self.plc.submit(did, op).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(e, PlcError::Ordering { .. }) || e.class() == ErrorClass::Transient => {
                match self.last_op_is(did, op).await {
                    Ok(true) => {
                        tracing::info!(
                            did,
                            code = %e.code(),
                            "PLC already has this op; treating the submit as done"
                        );
                        Ok(())
                    }
                    _ => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn register_genesis(&self, run: &mut Run) -> Result<(), ProvisionError> {
        let genesis = run.state.genesis_op.clone().expect("ensure_genesis stored it");
        let did = run.did.clone();
        // A previous attempt may have registered it already (lost response, crash after POST).
        let already = match self.plc.last_op_if_registered(&did).await? {
            Some(last) if last == genesis => true,
            Some(_) => {
                // Later ops exist: only possible if PLC holds our update op (then the checkpoint was lost) or
                // someone else's op.
                let audit = self.plc.audit_log(&did).await?;
                let first_cid = audit.first().map(|a| a.cid.clone());
                if first_cid.as_deref() == Some(genesis.cid()?.as_str()) {
                    true
                } else {
                    return Err(ProvisionError::PlcConflict {
                        did,
                        detail: "the DID's first op is not our genesis".into(),
                    });
                }
            }
            None => false,
        };
        if !already {
            self.submit_checked(&did, &genesis).await?;
        }
        run.state.last_op_cid = Some(genesis.cid()?);
        self.advance(run, ProvisionStep::PlcRegistered).await
    }

    async fn create_account(&self, run: &mut Run) -> Result<(), ProvisionError> {
        let did = run.did.clone();
        let pds_did = match run.state.pds_did.clone() {
            Some(d) => d,
            None => {
                let d = self.pds.describe_server().await?.did.to_string();
                run.state.pds_did = Some(d.clone());
                d
            }
        };
        let token = jwt::mint_service_auth(
            &self.secrets.signing_key,
            &did,
            &pds_did,
            Some(CREATE_ACCOUNT_LXM),
            SERVICE_AUTH_TTL,
        );
        // One single-use invite per attempt (the PDS refuses sign-up without one). A code minted for an attempt that
        // then failed is never seen by anyone but this process and expires unused.
        let invite = self.pds.create_invite_code(&self.request.pds_admin.0).await?;
        let input = PdsClient::create_account_input(
            &did,
            &self.request.handle,
            &self.request.email,
            &self.secrets.password,
            &invite,
        )?;
        match self.pds.create_account(&token, &input).await {
            Ok(out) => {
                if out.did.as_str() != did {
                    return Err(ProvisionError::StateMismatch(format!(
                        "createAccount returned {} for {did}",
                        out.did.as_str()
                    )));
                }
                run.session = Some(out.into());
            }
            // A retry after a lost response: prove the account is ours by logging in with our password.
            Err(PdsError::AlreadyExists { .. }) => {
                self.adopt_existing(run, &did, "account already existed on the PDS")
                    .await?
            }
            // The handle may be "taken" by this very account (same retry case on a PDS that checks handles first).
            Err(e @ PdsError::HandleUnavailable { .. }) => match self.verify_existing(&did).await {
                Ok(session) => {
                    tracing::info!(did, "handle is held by this account already; continuing");
                    run.session = Some(session);
                }
                Err(_) => return Err(e.into()),
            },
            // The reference PDS reports a handle held by an ACTIVE account as a bare `InvalidRequest` (no error
            // name). Classify it with a structured probe instead of the message text: who holds the handle?
            Err(e @ PdsError::Rejected { status: 400, .. }) => {
                match self.pds.resolve_handle(&self.request.handle).await {
                    Ok(Some(owner)) if owner == did => {
                        self.adopt_existing(run, &did, "account already exists and is active")
                            .await?
                    }
                    Ok(Some(owner)) => {
                        return Err(PdsError::HandleUnavailable {
                            error: "HandleTaken".into(),
                            message: format!("{} is held by {owner} ({e})", self.request.handle),
                        }
                        .into())
                    }
                    _ => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.advance(run, ProvisionStep::AccountCreated).await
    }

    /// An account for `did` already exists on the PDS (`why`): it is ours only if the stored password opens a session
    /// for it (`account_exists_unverified` otherwise), and that session is the run's from here on.
    async fn adopt_existing(&self, run: &mut Run, did: &str, why: &str) -> Result<(), ProvisionError> {
        let session = self
            .verify_existing(did)
            .await
            .map_err(ProvisionError::AccountUnverified)?;
        run.session = Some(session);
        tracing::info!(did, "{why}; verified with the stored password");
        Ok(())
    }

    /// createSession with the stored password; the session's DID must be ours.
    async fn verify_existing(&self, did: &str) -> Result<StoredSession, PdsError> {
        let out = self.pds.create_session(did, &self.secrets.password).await?;
        if out.did.as_str() != did {
            return Err(PdsError::Rejected {
                method: "com.atproto.server.createSession".into(),
                status: 200,
                error: "DidMismatch".into(),
                message: format!("session is for {}", out.did.as_str()),
            });
        }
        Ok(out.into())
    }

    /// A session for this run: the one from createAccount, else createSession with the password.
    async fn session(&self, run: &mut Run) -> Result<String, PdsError> {
        if let Some(s) = &run.session {
            return Ok(s.access_jwt.clone());
        }
        let session = StoredSession::from(self.pds.create_session(&run.did, &self.secrets.password).await?);
        let token = session.access_jwt.clone();
        run.session = Some(session);
        Ok(token)
    }

    /// Runs an authenticated call, renewing the run's session once on `session_expired`.
    async fn authed<T, F, Fut>(&self, run: &mut Run, f: F) -> Result<T, PdsError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, PdsError>>,
    {
        let token = self.session(run).await?;
        match f(token).await {
            Err(e) if e.is_session_expired() => {
                run.session = None;
                let token = self.session(run).await?;
                f(token).await
            }
            other => other,
        }
    }

    async fn update_plc(&self, run: &mut Run) -> Result<(), ProvisionError> {
        let did = run.did.clone();
        let pds = &self.pds;
        let rec = self
            .authed(run, |t| async move { pds.get_recommended_did_credentials(&t).await })
            .await?;
        let recommended = Recommended::from_atrium(rec)?;
        match recommended.services.get(ATPROTO_PDS_SERVICE) {
            Some(s) if s.endpoint == self.request.pds_url => {}
            other => {
                return Err(ProvisionError::EndpointMismatch {
                    configured: self.request.pds_url.clone(),
                    recommended: other.map(|s| s.endpoint.clone()).unwrap_or_default(),
                })
            }
        }
        if recommended.rotation_keys.is_empty() || !recommended.verification_methods.contains_key("atproto") {
            return Err(ProvisionError::Pds(PdsError::Rejected {
                method: "com.atproto.identity.getRecommendedDidCredentials".into(),
                status: 200,
                error: "IncompleteCredentials".into(),
                message: "no rotation keys or no atproto verification method recommended".into(),
            }));
        }

        // Already done (the update landed but the checkpoint did not)?
        let data = self.plc.data(&did).await?;
        let done = data.verification_methods == recommended.verification_methods
            && data.services == recommended.services
            && data.rotation_keys.contains(&self.secrets.rotation_key.did_key())
            && recommended.rotation_keys.iter().all(|k| data.rotation_keys.contains(k));
        if done {
            let last = self.plc.last_op(&did).await?;
            run.state.last_op_cid = Some(last.cid()?);
            tracing::info!(did, "PLC already shows the PDS keys; skipping the update");
            return self.advance(run, ProvisionStep::PlcUpdated).await;
        }

        let last = self.plc.last_op(&did).await?;
        let last_cid = last.cid()?;
        if let Some(update) = run.state.update_op.clone() {
            if last == update {
                run.state.last_op_cid = Some(last_cid);
                return self.advance(run, ProvisionStep::PlcUpdated).await;
            }
        }
        if run.state.last_op_cid.as_deref() != Some(last_cid.as_str()) {
            return Err(ProvisionError::PlcConflict {
                did,
                detail: format!(
                    "PLC's last op is {last_cid}, but the last op this bridge wrote is {:?}",
                    run.state.last_op_cid
                ),
            });
        }
        let update = match run.state.update_op.clone() {
            // Re-send the stored op if it still builds on PLC's last op (e.g. the PDS recommended the same keys).
            Some(u) if u.prev.as_deref() == Some(last_cid.as_str()) && recommended.matches(&u) => u,
            _ => {
                let mut rotation_keys = self.request.recovery_keys.clone();
                rotation_keys.push(self.secrets.rotation_key.did_key());
                for key in &recommended.rotation_keys {
                    if !rotation_keys.contains(key) {
                        rotation_keys.push(key.clone());
                    }
                }
                if rotation_keys.len() > MAX_ROTATION_KEYS {
                    return Err(ProvisionError::InvalidRequest(format!(
                        "rotationKeys would have {} entries (PLC allows {MAX_ROTATION_KEYS})",
                        rotation_keys.len()
                    )));
                }
                let op = PlcOperation::new(
                    rotation_keys,
                    recommended.verification_methods.clone(),
                    recommended.also_known_as.clone(),
                    recommended.services.clone(),
                    Some(last_cid.clone()),
                )
                .sign(&self.secrets.rotation_key)?;
                op.check_size()?;
                run.state.update_op = Some(op.clone());
                self.save(&run.state).await?;
                failpoint::hit("provision_update_stored");
                op
            }
        };
        self.submit_checked(&did, &update).await?;
        run.state.last_op_cid = Some(update.cid()?);
        self.advance(run, ProvisionStep::PlcUpdated).await
    }

    async fn activate(&self, run: &mut Run) -> Result<(), ProvisionError> {
        let pds = &self.pds;
        self.authed(run, |t| async move { pds.activate_account(&t).await })
            .await?;
        let status = self
            .authed(run, |t| async move { pds.check_account_status(&t).await })
            .await?;
        if !(status.activated && status.valid_did) {
            return Err(ProvisionError::AccountNotActive {
                activated: status.activated,
                valid_did: status.valid_did,
            });
        }
        self.advance(run, ProvisionStep::Activated).await
    }

    async fn write_profile(&self, run: &mut Run) -> Result<(), ProvisionError> {
        // atrium's typed profile (its `$type` from `KnownRecord`), serialised by the one record serialisation the
        // jobs use too; only the display name is set (`{"$type": "app.bsky.actor.profile", "displayName": …}`).
        let profile = atrium_api::app::bsky::actor::profile::RecordData {
            avatar: None,
            banner: None,
            created_at: None,
            description: None,
            display_name: Some(display_name_for(&self.request.handle)),
            joined_via_starter_pack: None,
            labels: None,
            pinned_post: None,
            pronouns: None,
            website: None,
        };
        let record = crate::translate::record_json(&profile.into()).map_err(|e| PdsError::InvalidInput {
            what: "record",
            detail: e.to_string(),
        })?;
        let input = PutRecord {
            repo: run.did.clone(),
            collection: PROFILE_COLLECTION.into(),
            rkey: "self".into(),
            record,
            validate: None,
            swap_record: None,
        };
        let pds = &self.pds;
        let input = &input;
        self.authed(run, |t| async move { pds.put_record(&t, input).await })
            .await?;
        self.advance(run, ProvisionStep::ProfileWritten).await
    }
}

/// The PDS's recommended DID credentials in PLC shapes.
struct Recommended {
    rotation_keys: Vec<String>,
    verification_methods: BTreeMap<String, String>,
    also_known_as: Vec<String>,
    services: BTreeMap<String, PlcService>,
}

impl Recommended {
    fn from_atrium(
        out: atrium_api::com::atproto::identity::get_recommended_did_credentials::OutputData,
    ) -> Result<Recommended, ProvisionError> {
        let bad = |what: &str, e: String| {
            ProvisionError::Pds(PdsError::Rejected {
                method: "com.atproto.identity.getRecommendedDidCredentials".into(),
                status: 200,
                error: "UnexpectedCredentials".into(),
                message: format!("{what}: {e}"),
            })
        };
        let convert =
            |what: &str, v: Option<atrium_api::types::Unknown>| -> Result<serde_json::Value, ProvisionError> {
                match v {
                    Some(u) => serde_json::to_value(u).map_err(|e| bad(what, e.to_string())),
                    None => Ok(serde_json::json!({})),
                }
            };
        let verification_methods = serde_json::from_value(convert("verificationMethods", out.verification_methods)?)
            .map_err(|e| bad("verificationMethods", e.to_string()))?;
        let services =
            serde_json::from_value(convert("services", out.services)?).map_err(|e| bad("services", e.to_string()))?;
        Ok(Recommended {
            rotation_keys: out.rotation_keys.unwrap_or_default(),
            verification_methods,
            also_known_as: out.also_known_as.unwrap_or_default(),
            services,
        })
    }

    fn matches(&self, op: &PlcOperation) -> bool {
        op.verification_methods == self.verification_methods
            && op.services == self.services
            && op.also_known_as == self.also_known_as
            && self.rotation_keys.iter().all(|k| op.rotation_keys.contains(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provision_secrets_are_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<ProvisionSecrets>();
    }

    #[test]
    fn state_serializes_with_snake_case_steps_and_round_trips() {
        let k = AccountKey::generate();
        let genesis = PlcOperation::atproto(vec![k.did_key()], &k.did_key(), "alice.test", "http://pds", None)
            .sign(&k)
            .unwrap();
        let state = ProvisionState {
            step: ProvisionStep::AccountCreated,
            did: Some(genesis.genesis_did().unwrap()),
            last_op_cid: Some(genesis.cid().unwrap()),
            genesis_op: Some(genesis),
            update_op: None,
            pds_did: Some("did:web:localhost".into()),
        };
        let json = state.to_json();
        assert_eq!(json["step"], "account_created");
        assert_eq!(ProvisionState::from_json(&json).unwrap(), state);
        // An old/minimal checkpoint still reads.
        let minimal = ProvisionState::from_json(&serde_json::json!({"step": "keys_ready"})).unwrap();
        assert_eq!(minimal, ProvisionState::new());
        assert_eq!(
            ProvisionState::from_json(&serde_json::json!({"step": "nope"}))
                .unwrap_err()
                .code(),
            ErrorCode::ProvisionRequestInvalid
        );
        let steps = [
            ProvisionStep::KeysReady,
            ProvisionStep::PlcRegistered,
            ProvisionStep::AccountCreated,
            ProvisionStep::PlcUpdated,
            ProvisionStep::Activated,
            ProvisionStep::ProfileWritten,
            ProvisionStep::Ready,
        ];
        for pair in steps.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        for s in steps {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn secrets_seal_and_open_per_account() {
        let kek = KeyEncryptionKey::from_bytes([3u8; 32]);
        let secrets = ProvisionSecrets::generate();
        assert!(secrets.password.len() >= 24);
        let alice = "a1".repeat(32);
        let sealed = secrets.keys_row(&kek, &alice);
        assert_eq!(sealed.kek_id, kek.key_id());
        assert_eq!(sealed.seal_generation, 0);
        assert_eq!(sealed.signing_did_key, secrets.signing_key.did_key());
        assert_eq!(sealed.rotation_did_key, secrets.rotation_key.did_key());
        assert_eq!(sealed.nostr_pubkey, alice);
        assert_eq!(sealed.provision_state, Some(ProvisionState::new().to_json()));
        let opened = ProvisionSecrets::open(
            &kek,
            &alice,
            &sealed.signing_key_sealed,
            &sealed.rotation_key_sealed,
            &sealed.password_sealed,
        )
        .unwrap();
        assert_eq!(opened.signing_key.did_key(), secrets.signing_key.did_key());
        assert_eq!(opened.rotation_key.did_key(), secrets.rotation_key.did_key());
        assert_eq!(opened.password, secrets.password);
        // Columns swapped, or the row moved to another account: refuses to open.
        let swapped = ProvisionSecrets::open(
            &kek,
            &alice,
            &sealed.rotation_key_sealed,
            &sealed.signing_key_sealed,
            &sealed.password_sealed,
        );
        assert_eq!(swapped.unwrap_err().code(), ErrorCode::KeyDecryptFailed);
        let moved = ProvisionSecrets::open(
            &kek,
            &"b2".repeat(32),
            &sealed.signing_key_sealed,
            &sealed.rotation_key_sealed,
            &sealed.password_sealed,
        );
        assert_eq!(moved.unwrap_err().code(), ErrorCode::KeyDecryptFailed);
    }

    #[test]
    fn display_name_is_first_label() {
        assert_eq!(display_name_for("alice.divine.video"), "alice");
        assert_eq!(display_name_for("bob"), "bob");
    }

    #[test]
    fn provisioner_rejects_bad_requests() {
        let xrpc = XrpcClient::new(&Default::default()).unwrap();
        let secrets = ProvisionSecrets {
            signing_key: AccountKey::generate(),
            rotation_key: AccountKey::generate(),
            password: "pw".into(),
        };
        let base = ProvisionRequest {
            handle: "alice.test".into(),
            email: "a@example.com".into(),
            pds_url: "http://localhost:1".into(),
            plc_url: "http://localhost:2".into(),
            recovery_keys: vec![],
            pds_admin: PdsAdminPassword("admin-pass".into()),
        };
        let cp = MemoryCheckpoint::new();
        let err = |r: ProvisionRequest| {
            Provisioner::new(xrpc.clone(), r, secrets.clone(), &cp)
                .err()
                .expect("must be rejected")
        };
        let e = err(ProvisionRequest {
            recovery_keys: vec!["did:key:zbad".into()],
            ..base.clone()
        });
        assert_eq!(e.code(), ErrorCode::ProvisionRequestInvalid);
        let four: Vec<String> = (0..4).map(|_| AccountKey::generate().did_key()).collect();
        let e = err(ProvisionRequest {
            recovery_keys: four,
            ..base.clone()
        });
        assert_eq!(e.code(), ErrorCode::ProvisionRequestInvalid);
        let e = err(ProvisionRequest {
            handle: "not a handle".into(),
            ..base.clone()
        });
        assert_eq!(e.code(), ErrorCode::ProvisionRequestInvalid);
        assert!(Provisioner::new(xrpc.clone(), base, secrets.clone(), &cp).is_ok());
    }
}
