//! did:plc operations and the PLC directory client.
//!
//! Owns: the operation type, its DAG-CBOR bytes (canonical key order comes from `serde_ipld_dagcbor`, so field order
//! here is irrelevant), signing with a rotation key, DID derivation from a signed genesis op, the CID of an op (the
//! next op's `prev`), the 4,000-byte op size limit, and [`PlcClient`] (submit, `/log/last`, `/data`, `/log/audit`)
//! with PLC-specific error classification. Must not: decide the provisioning flow (identity.rs), touch the database,
//! or send an op that is too large.
//!
//! PLC answers errors as `{"message": …}` without XRPC error names, so the one PLC-specific classification —
//! 400 "Operations not correctly ordered" → `plc_ordering` — is made here, at the point of birth, from status + body.

use crate::keys::{decode_did_key, verify_signature, AccountKey, DidKey};
use crate::xrpc::{XrpcClient, XrpcError, XrpcMethod, XrpcRequest};
use base64::Engine;
use cid::multihash::Multihash;
use cid::Cid;
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// PLC refuses operations larger than this (DAG-CBOR bytes of the signed op).
pub const MAX_OP_BYTES: usize = 4000;
/// Multicodec of DAG-CBOR.
const DAG_CBOR: u64 = 0x71;
/// Multihash code of sha2-256.
const SHA2_256: u64 = 0x12;
/// The service id and type of an atproto PDS in a DID document.
pub const ATPROTO_PDS_SERVICE: &str = "atproto_pds";
pub const ATPROTO_PDS_TYPE: &str = "AtprotoPersonalDataServer";
/// The verification method id of the atproto signing key.
pub const ATPROTO_VERIFICATION_METHOD: &str = "atproto";

/// A service entry of a PLC op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlcService {
    #[serde(rename = "type")]
    pub service_type: String,
    pub endpoint: String,
}

/// A `plc_operation` (genesis when `prev` is `None`), signed when `sig` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlcOperation {
    #[serde(rename = "type")]
    pub op_type: String,
    pub rotation_keys: Vec<String>,
    pub verification_methods: BTreeMap<String, String>,
    pub also_known_as: Vec<String>,
    pub services: BTreeMap<String, PlcService>,
    /// CID of the previous op; serialized as `null` for a genesis op (it is part of the signed bytes).
    pub prev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// Errors of PLC ops and the PLC directory.
#[derive(Debug, thiserror::Error)]
pub enum PlcError {
    /// 400 "Operations not correctly ordered": `prev` is not the DID's last op, or the genesis is already registered.
    #[error("PLC: operations not correctly ordered ({message})")]
    Ordering { message: String },
    /// Any other 4xx from PLC (bad signature, invalid op, …).
    #[error("PLC rejected the operation (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// 404 "DID not registered".
    #[error("PLC: DID not registered: {did}")]
    NotFound { did: String },
    /// The op exceeds PLC's size limit; never sent.
    #[error("PLC op is {size} bytes, over the {MAX_OP_BYTES}-byte limit")]
    OpTooLarge { size: usize },
    /// The op could not be encoded, is unsigned where a signed op is needed, or is otherwise malformed locally.
    #[error("PLC op invalid: {0}")]
    InvalidOp(String),
    /// Transport, timeout, 429, 5xx, unreadable 2xx body.
    #[error(transparent)]
    Xrpc(XrpcError),
}

impl Classified for PlcError {
    fn code(&self) -> ErrorCode {
        match self {
            PlcError::Ordering { .. } => ErrorCode::PlcOrdering,
            PlcError::Rejected { .. } => ErrorCode::PlcRejected,
            PlcError::NotFound { .. } => ErrorCode::PlcNotFound,
            PlcError::OpTooLarge { .. } => ErrorCode::PlcOpTooLarge,
            PlcError::InvalidOp(_) => ErrorCode::PlcOpInvalid,
            PlcError::Xrpc(e) => e.code(),
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            // The provisioner resolves ordering by re-reading /log/last; if that cannot, the retry window ends it.
            PlcError::Ordering { .. } => ErrorClass::Transient,
            // Replication lag of a just-registered DID, or a wrong PLC URL; bounded by the retry window.
            PlcError::NotFound { .. } => ErrorClass::Transient,
            PlcError::Rejected { .. } | PlcError::OpTooLarge { .. } | PlcError::InvalidOp(_) => ErrorClass::Permanent,
            PlcError::Xrpc(e) => e.class(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            PlcError::Xrpc(e) => e.retry_after(),
            _ => None,
        }
    }
}

fn dag_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, PlcError> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| PlcError::InvalidOp(format!("DAG-CBOR encoding: {e}")))
}

impl PlcOperation {
    /// An unsigned `plc_operation`.
    pub fn new(
        rotation_keys: Vec<String>,
        verification_methods: BTreeMap<String, String>,
        also_known_as: Vec<String>,
        services: BTreeMap<String, PlcService>,
        prev: Option<String>,
    ) -> PlcOperation {
        PlcOperation {
            op_type: "plc_operation".into(),
            rotation_keys,
            verification_methods,
            also_known_as,
            services,
            prev,
            sig: None,
        }
    }

    /// An unsigned atproto op: one `#atproto` key, `at://handle`, one `atproto_pds` service.
    pub fn atproto(
        rotation_keys: Vec<String>,
        signing_did_key: &str,
        handle: &str,
        pds_endpoint: &str,
        prev: Option<String>,
    ) -> PlcOperation {
        PlcOperation::new(
            rotation_keys,
            BTreeMap::from([(ATPROTO_VERIFICATION_METHOD.to_string(), signing_did_key.to_string())]),
            vec![format!("at://{handle}")],
            BTreeMap::from([(
                ATPROTO_PDS_SERVICE.to_string(),
                PlcService {
                    service_type: ATPROTO_PDS_TYPE.into(),
                    endpoint: pds_endpoint.to_string(),
                },
            )]),
            prev,
        )
    }

    /// DAG-CBOR of the op without `sig` (the bytes that are signed).
    pub fn unsigned_bytes(&self) -> Result<Vec<u8>, PlcError> {
        let mut unsigned = self.clone();
        unsigned.sig = None;
        dag_cbor(&unsigned)
    }

    /// DAG-CBOR of the op as it is (with `sig` if signed).
    pub fn to_dag_cbor(&self) -> Result<Vec<u8>, PlcError> {
        dag_cbor(self)
    }

    /// Signs the op with `rotation_key`: sha256 of the unsigned DAG-CBOR, low-S, base64url without padding.
    pub fn sign(mut self, rotation_key: &AccountKey) -> Result<PlcOperation, PlcError> {
        let bytes = self.unsigned_bytes()?;
        let sig = rotation_key.sign(&bytes);
        self.sig = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig));
        Ok(self)
    }

    /// Checks the signature against `did_key` (a secp256k1 did:key).
    pub fn verify(&self, did_key: &str) -> Result<(), PlcError> {
        let sig = self
            .sig
            .as_deref()
            .ok_or_else(|| PlcError::InvalidOp("op is unsigned".into()))?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|e| PlcError::InvalidOp(format!("sig is not base64url: {e}")))?;
        let key = match decode_did_key(did_key).map_err(|e| PlcError::InvalidOp(e.to_string()))? {
            DidKey::Secp256k1(k) => k,
            DidKey::P256 { .. } => return Err(PlcError::InvalidOp("P-256 verification is not supported".into())),
        };
        verify_signature(&key, &self.unsigned_bytes()?, &sig).map_err(|e| PlcError::InvalidOp(e.to_string()))
    }

    /// Fails with `plc_op_too_large` when the signed op is over [`MAX_OP_BYTES`]; returns its size otherwise.
    pub fn check_size(&self) -> Result<usize, PlcError> {
        let size = self.to_dag_cbor()?.len();
        if size > MAX_OP_BYTES {
            return Err(PlcError::OpTooLarge { size });
        }
        Ok(size)
    }

    /// CIDv1 (dag-cbor, sha2-256), base32 multibase (`bafyrei…`) of the op's DAG-CBOR: the `prev` of the next op.
    pub fn cid(&self) -> Result<String, PlcError> {
        let digest = Sha256::digest(self.to_dag_cbor()?);
        let mh = Multihash::<64>::wrap(SHA2_256, &digest).map_err(|e| PlcError::InvalidOp(e.to_string()))?;
        Ok(Cid::new_v1(DAG_CBOR, mh).to_string())
    }

    /// `did:plc:` + base32-lower(sha256(DAG-CBOR of the SIGNED genesis op)), first 24 chars.
    pub fn genesis_did(&self) -> Result<String, PlcError> {
        if self.sig.is_none() {
            return Err(PlcError::InvalidOp(
                "the DID is derived from the SIGNED genesis op".into(),
            ));
        }
        if self.prev.is_some() {
            return Err(PlcError::InvalidOp("not a genesis op (prev is set)".into()));
        }
        let digest = Sha256::digest(self.to_dag_cbor()?);
        let b32 = data_encoding::BASE32_NOPAD.encode(&digest).to_ascii_lowercase();
        Ok(format!("did:plc:{}", &b32[..24]))
    }

    /// The `atproto_pds` endpoint, if any.
    pub fn pds_endpoint(&self) -> Option<&str> {
        self.services.get(ATPROTO_PDS_SERVICE).map(|s| s.endpoint.as_str())
    }
}

/// `GET {PLC}/{did}/data`: the DID's current state with did:key strings (unlike the mock PLC's legacy DID doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlcData {
    pub did: String,
    pub verification_methods: BTreeMap<String, String>,
    pub rotation_keys: Vec<String>,
    pub also_known_as: Vec<String>,
    pub services: BTreeMap<String, PlcService>,
}

impl PlcData {
    /// The `#atproto` did:key.
    pub fn atproto_key(&self) -> Option<&str> {
        self.verification_methods
            .get(ATPROTO_VERIFICATION_METHOD)
            .map(String::as_str)
    }

    /// The `atproto_pds` endpoint.
    pub fn pds_endpoint(&self) -> Option<&str> {
        self.services.get(ATPROTO_PDS_SERVICE).map(|s| s.endpoint.as_str())
    }
}

/// One entry of `GET {PLC}/{did}/log/audit`. `operation` stays JSON: it may be a tombstone or a legacy `create`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub did: String,
    pub operation: serde_json::Value,
    pub cid: String,
    pub nullified: bool,
    pub created_at: String,
}

/// The PLC directory, via the shared [`XrpcClient`].
#[derive(Clone, Debug)]
pub struct PlcClient {
    xrpc: XrpcClient,
    base: String,
}

impl PlcClient {
    /// `base_url` like `https://plc.directory` (no trailing slash needed).
    pub fn new(xrpc: XrpcClient, base_url: &str) -> PlcClient {
        PlcClient {
            xrpc,
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// The directory URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn map_err(&self, did: &str, e: XrpcError) -> PlcError {
        match &e {
            XrpcError::Rejected { status: 404, .. } => PlcError::NotFound { did: did.to_string() },
            XrpcError::Rejected { status, body, .. } => {
                let message = body.to_string();
                if *status == 400 && message.contains("Operations not correctly ordered") {
                    PlcError::Ordering { message }
                } else {
                    PlcError::Rejected {
                        status: *status,
                        message,
                    }
                }
            }
            // PLC has no sessions; a BadJwt-looking 4xx would still be a refusal.
            XrpcError::SessionExpired { status, body, .. } => PlcError::Rejected {
                status: *status,
                message: body.to_string(),
            },
            _ => PlcError::Xrpc(e),
        }
    }

    /// `POST {PLC}/{did}` with the signed op. Refuses unsigned or oversized ops locally.
    pub async fn submit(&self, did: &str, op: &PlcOperation) -> Result<(), PlcError> {
        if op.sig.is_none() {
            return Err(PlcError::InvalidOp("refusing to submit an unsigned op".into()));
        }
        op.check_size()?;
        let request = XrpcRequest::post(format!("{}/{did}", self.base), XrpcMethod::PlcSubmit)
            .json(op)
            .map_err(PlcError::Xrpc)?;
        self.xrpc.send(request).await.map_err(|e| self.map_err(did, e))?;
        Ok(())
    }

    /// `GET {PLC}/{did}/log/last`: the DID's current (last valid) op.
    pub async fn last_op(&self, did: &str) -> Result<PlcOperation, PlcError> {
        let request = XrpcRequest::get(format!("{}/{did}/log/last", self.base), XrpcMethod::PlcLastOp);
        let response = self.xrpc.send(request).await.map_err(|e| self.map_err(did, e))?;
        response.json().map_err(PlcError::Xrpc)
    }

    /// [`PlcClient::last_op`] where "not registered yet" is an expected answer (provisioning asks before it
    /// registers): `None` on 404, which is then not logged as a failed request.
    pub async fn last_op_if_registered(&self, did: &str) -> Result<Option<PlcOperation>, PlcError> {
        let request =
            XrpcRequest::get(format!("{}/{did}/log/last", self.base), XrpcMethod::PlcLastOp).not_found_expected();
        match self.xrpc.send(request).await.map_err(|e| self.map_err(did, e)) {
            Ok(response) => response.json().map(Some).map_err(PlcError::Xrpc),
            Err(PlcError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET {PLC}/{did}/data`.
    pub async fn data(&self, did: &str) -> Result<PlcData, PlcError> {
        let request = XrpcRequest::get(format!("{}/{did}/data", self.base), XrpcMethod::PlcData);
        let response = self.xrpc.send(request).await.map_err(|e| self.map_err(did, e))?;
        response.json().map_err(PlcError::Xrpc)
    }

    /// `GET {PLC}/{did}/log/audit`.
    pub async fn audit_log(&self, did: &str) -> Result<Vec<AuditEntry>, PlcError> {
        let request = XrpcRequest::get(format!("{}/{did}/log/audit", self.base), XrpcMethod::PlcAuditLog);
        let response = self.xrpc.send(request).await.map_err(|e| self.map_err(did, e))?;
        response.json().map_err(PlcError::Xrpc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produced by tests/fixtures/identity_plc_vectors.mjs with @did-plc/lib 0.0.4 / @atproto/crypto / lex-cbor.
    const VECTORS: &str = include_str!("../tests/fixtures/identity_plc_vectors.json");

    fn vectors() -> serde_json::Value {
        serde_json::from_str(VECTORS).unwrap()
    }

    fn key(v: &serde_json::Value, name: &str) -> AccountKey {
        AccountKey::from_hex(v["keys"][name]["seed_hex"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn keys_match_reference_did_keys() {
        let v = vectors();
        for name in ["recovery", "rotation", "signing", "pds_signing"] {
            assert_eq!(
                key(&v, name).did_key(),
                v["keys"][name]["did_key"].as_str().unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn genesis_bytes_signature_did_and_cid_match_reference() {
        let v = vectors();
        let g = &v["genesis"];
        let rotation = key(&v, "rotation");
        let op = PlcOperation::atproto(
            vec![key(&v, "recovery").did_key(), rotation.did_key()],
            &key(&v, "signing").did_key(),
            "alice.test",
            "http://localhost:2583",
            None,
        );
        // Built by hand == the reference JSON.
        let reference: PlcOperation = serde_json::from_value(g["unsigned"].clone()).unwrap();
        assert_eq!(op, reference);
        assert_eq!(
            hex::encode(op.unsigned_bytes().unwrap()),
            g["unsigned_cbor_hex"].as_str().unwrap()
        );

        let signed = op.sign(&rotation).unwrap();
        // RFC 6979 on both sides: the signature is byte-identical to @atproto/crypto's.
        assert_eq!(signed.sig.as_deref(), g["signed"]["sig"].as_str());
        assert_eq!(
            hex::encode(signed.to_dag_cbor().unwrap()),
            g["signed_cbor_hex"].as_str().unwrap()
        );
        assert_eq!(signed.genesis_did().unwrap(), g["did"].as_str().unwrap());
        assert_eq!(signed.cid().unwrap(), g["cid"].as_str().unwrap());
        signed.verify(&rotation.did_key()).unwrap();
        assert!(signed.verify(&key(&v, "signing").did_key()).is_err());

        // The reference's own signed JSON parses to the same op.
        let reference_signed: PlcOperation = serde_json::from_value(g["signed"].clone()).unwrap();
        assert_eq!(reference_signed, signed);
    }

    #[test]
    fn update_op_prev_and_cid_match_reference() {
        let v = vectors();
        let u = &v["update"];
        let rotation = key(&v, "rotation");
        let reference: PlcOperation = serde_json::from_value(u["unsigned"].clone()).unwrap();
        assert_eq!(reference.prev.as_deref(), v["genesis"]["cid"].as_str());
        let op = PlcOperation::atproto(
            vec![
                key(&v, "recovery").did_key(),
                rotation.did_key(),
                key(&v, "pds_signing").did_key(),
            ],
            &key(&v, "pds_signing").did_key(),
            "alice.test",
            "http://localhost:2583",
            Some(v["genesis"]["cid"].as_str().unwrap().to_string()),
        );
        assert_eq!(op, reference);
        assert_eq!(
            hex::encode(op.unsigned_bytes().unwrap()),
            u["unsigned_cbor_hex"].as_str().unwrap()
        );
        let signed = op.sign(&rotation).unwrap();
        assert_eq!(signed.sig.as_deref(), u["signed"]["sig"].as_str());
        assert_eq!(signed.cid().unwrap(), u["cid"].as_str().unwrap());
        assert!(signed.genesis_did().is_err(), "an update op has no genesis DID");
    }

    #[test]
    fn message_signature_matches_reference() {
        let v = vectors();
        let m = &v["message_signature"];
        let sig = key(&v, "signing").sign(m["message_utf8"].as_str().unwrap().as_bytes());
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
            m["sig_b64url"].as_str().unwrap()
        );
    }

    #[test]
    fn did_needs_signed_genesis_and_size_is_enforced() {
        let k = AccountKey::generate();
        let op = PlcOperation::atproto(vec![k.did_key()], &k.did_key(), "a.test", "https://pds.example", None);
        assert_eq!(op.genesis_did().unwrap_err().code(), ErrorCode::PlcOpInvalid);
        let signed = op.clone().sign(&k).unwrap();
        assert!(signed.check_size().unwrap() < MAX_OP_BYTES);
        let did = signed.genesis_did().unwrap();
        assert!(did.starts_with("did:plc:") && did.len() == 32, "{did}");

        let mut huge = op;
        huge.also_known_as = (0..200)
            .map(|i| format!("at://handle-number-{i}.example.com"))
            .collect();
        let huge = huge.sign(&k).unwrap();
        let err = huge.check_size().unwrap_err();
        assert_eq!(err.code(), ErrorCode::PlcOpTooLarge);
        assert_eq!(err.class(), ErrorClass::Permanent);
    }
}
