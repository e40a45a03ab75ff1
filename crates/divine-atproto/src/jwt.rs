//! JWTs: minting ES256K service-auth tokens (signed by a DID's `#atproto` key; used for `createAccount` with our own
//! DID) and reading the unverified `exp` of PDS session tokens to refresh them ahead of expiry.
//!
//! Owns: the JWT byte format (base64url header.payload.signature, 64-byte low-S r‖s). Must not: trust decoded
//! session tokens for anything but scheduling a refresh, or log tokens.

use crate::keys::{verify_signature, AccountKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use k256::ecdsa::VerifyingKey;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Errors of JWT handling.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or a part is not the expected JSON.
    #[error("malformed JWT: {0}")]
    Malformed(String),
    /// Wrong algorithm, bad signature, or high-S.
    #[error("JWT signature invalid: {0}")]
    BadSignature(String),
}

impl Classified for JwtError {
    fn code(&self) -> ErrorCode {
        match self {
            JwtError::Malformed(_) => ErrorCode::JwtMalformed,
            JwtError::BadSignature(_) => ErrorCode::JwtSignatureInvalid,
        }
    }

    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// JOSE header of an ES256K token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtHeader {
    pub typ: String,
    pub alg: String,
}

/// Claims of an atproto service-auth token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAuthClaims {
    /// The DID making the request (its `#atproto` key signs).
    pub iss: String,
    /// The service DID of the receiver (e.g. the PDS's `describeServer.did`).
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    /// The lexicon method this token is good for, e.g. `com.atproto.server.createAccount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lxm: Option<String>,
    /// Random nonce.
    pub jti: String,
}

/// Mints a service-auth JWT: header `{"typ":"JWT","alg":"ES256K"}`, claims `{iss, aud, exp = now + ttl, iat = now,
/// lxm, jti}`, signed with `signing_key` (the DID's `#atproto` key, NOT the rotation key).
pub fn mint_service_auth(signing_key: &AccountKey, iss: &str, aud: &str, lxm: Option<&str>, ttl: Duration) -> String {
    let iat = Utc::now().timestamp();
    let mut jti = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut jti);
    let claims = ServiceAuthClaims {
        iss: iss.to_string(),
        aud: aud.to_string(),
        exp: iat + ttl.as_secs().max(1) as i64,
        iat,
        lxm: lxm.map(str::to_string),
        jti: hex::encode(jti),
    };
    sign_es256k(signing_key, &claims)
}

/// Signs arbitrary claims as an ES256K JWT.
pub fn sign_es256k<T: Serialize>(signing_key: &AccountKey, claims: &T) -> String {
    let header = JwtHeader {
        typ: "JWT".into(),
        alg: "ES256K".into(),
    };
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let sig = signing_key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn split(token: &str) -> Result<(&str, &str, &str), JwtError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => Ok((h, p, s)),
        _ => Err(JwtError::Malformed("expected three dot-separated parts".into())),
    }
}

fn decode_part<T: DeserializeOwned>(part: &str, what: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| JwtError::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| JwtError::Malformed(format!("{what} JSON: {e}")))
}

/// Decodes the payload WITHOUT verifying the signature (session tokens are signed by the PDS with its own secret).
pub fn decode_unverified<T: DeserializeOwned>(token: &str) -> Result<T, JwtError> {
    let (_, payload, _) = split(token)?;
    decode_part(payload, "payload")
}

/// The unverified `exp` of a token, for refresh scheduling.
pub fn decode_exp(token: &str) -> Result<DateTime<Utc>, JwtError> {
    #[derive(Deserialize)]
    struct Exp {
        exp: i64,
    }
    let Exp { exp } = decode_unverified(token)?;
    DateTime::from_timestamp(exp, 0).ok_or_else(|| JwtError::Malformed(format!("exp {exp} out of range")))
}

/// Verifies an ES256K JWT against `key` (alg must be ES256K, signature low-S) and returns its claims. Expiry is not
/// checked here.
pub fn verify_es256k<T: DeserializeOwned>(token: &str, key: &VerifyingKey) -> Result<T, JwtError> {
    let (header_b64, payload_b64, sig_b64) = split(token)?;
    let header: JwtHeader = decode_part(header_b64, "header")?;
    if header.alg != "ES256K" {
        return Err(JwtError::BadSignature(format!("alg {} is not ES256K", header.alg)));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|e| JwtError::Malformed(format!("signature: {e}")))?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    verify_signature(key, signing_input.as_bytes(), &sig).map_err(|e| JwtError::BadSignature(e.to_string()))?;
    decode_part(payload_b64, "payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_auth_shape_and_signature() {
        let key = AccountKey::generate();
        let token = mint_service_auth(
            &key,
            "did:plc:abc",
            "did:web:localhost",
            Some("com.atproto.server.createAccount"),
            Duration::from_secs(60),
        );
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"typ": "JWT", "alg": "ES256K"}));
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
        assert!(!token.contains('='), "base64url without padding");

        let claims: ServiceAuthClaims = verify_es256k(&token, &key.verifying_key()).unwrap();
        assert_eq!(claims.iss, "did:plc:abc");
        assert_eq!(claims.aud, "did:web:localhost");
        assert_eq!(claims.lxm.as_deref(), Some("com.atproto.server.createAccount"));
        assert_eq!(claims.exp - claims.iat, 60);
        assert!((claims.iat - Utc::now().timestamp()).abs() <= 2);
        assert_eq!(claims.jti.len(), 32);
        assert_eq!(decode_exp(&token).unwrap().timestamp(), claims.exp);

        // Another key does not verify it; a tampered payload does not verify.
        let other = AccountKey::generate();
        assert_eq!(
            verify_es256k::<ServiceAuthClaims>(&token, &other.verifying_key())
                .unwrap_err()
                .code(),
            ErrorCode::JwtSignatureInvalid
        );
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&ServiceAuthClaims {
                aud: "did:web:evil".into(),
                ..claims.clone()
            })
            .unwrap(),
        );
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(verify_es256k::<ServiceAuthClaims>(&forged, &key.verifying_key()).is_err());
        // Fresh jti every time.
        let again = mint_service_auth(&key, "did:plc:abc", "did:web:localhost", None, Duration::from_secs(60));
        let again: ServiceAuthClaims = decode_unverified(&again).unwrap();
        assert_ne!(again.jti, claims.jti);
        assert_eq!(again.lxm, None);
    }

    #[test]
    fn decode_exp_of_foreign_tokens() {
        // An HS256 session token as the PDS issues them (signature irrelevant for exp).
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"at+jwt","alg":"HS256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"scope":"com.atproto.access","sub":"did:plc:x","exp":1900000000}"#);
        let token = format!("{header}.{payload}.c2ln");
        assert_eq!(decode_exp(&token).unwrap().timestamp(), 1_900_000_000);
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!", &format!("{header}.{header}.x")] {
            assert_eq!(decode_exp(bad).unwrap_err().code(), ErrorCode::JwtMalformed, "{bad:?}");
        }
    }
}
