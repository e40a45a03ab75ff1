//! Key material of bridged accounts: secp256k1 signing/rotation keys, `did:key` encoding, low-S ES256K signatures,
//! the deployment's key-encryption key (KEK) and the AES-256-GCM sealing of every per-account secret, and random PDS
//! passwords.
//!
//! Owns: byte formats (did:key multibase, compact r‖s signatures, the sealed-secret layout). Must not: touch the
//! database, the network, or log secret bytes (every secret type redacts itself in `Debug`).
//!
//! Sealed layout: `version (1 byte = 0x01) ‖ nonce (12 bytes, random) ‖ AES-256-GCM ciphertext+tag`. The GCM
//! associated data is `version ‖ aad`, where `aad` comes from [`secret_aad`] and binds the ciphertext to the account's
//! Nostr pubkey and the secret's purpose, so a ciphertext copied into another account's row or another column fails to
//! open (`key_decrypt_failed`) instead of yielding the wrong key.
//!
//! Rotation (issue 12 §4, `divine-atbridge keys rotate`, docs/runbooks/key-custody.md):
//! 1. A deployment holds a [`KeyRing`]: `KEY_ENCRYPTION_KEY` is a comma-separated list, the FIRST key seals every
//!    new secret, the others only open. Each row names the KEK that sealed it (`kek_id`); opening picks that KEK and
//!    a row naming a KEK the ring does not hold is `key_encryption_key_unknown`.
//! 2. `account_keys.seal_generation` counts re-seals of a row. Generation 0 (every row as provisioned) uses the
//!    original associated data; generation N > 0 appends `|N` ([`sealed_aad`]). A re-seal writes generation N + 1
//!    with a fenced update (`WHERE seal_generation = N`), so a ciphertext copied from an older generation (a backup,
//!    a replayed write) no longer opens in the re-sealed row, and two concurrent re-seals cannot both win.
//! 3. PDS session tokens are re-sealed too (fenced on `updated_at`) but stay at the generation-0 associated data: a
//!    refresh rewrites them constantly, and a replayed old session only yields a token the PDS has already rotated
//!    away (the session manager then logs in again with the password).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};
use k256::elliptic_curve::zeroize::Zeroizing;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Multicodec varint prefix of a compressed secp256k1 public key (`secp256k1-pub`, 0xe7).
const SECP256K1_PUB_PREFIX: [u8; 2] = [0xe7, 0x01];
/// Multicodec varint prefix of a compressed P-256 public key (`p256-pub`, 0x1200).
const P256_PUB_PREFIX: [u8; 2] = [0x80, 0x24];
/// `did:key:` plus the base58btc multibase prefix.
const DID_KEY_PREFIX: &str = "did:key:z";
/// Version byte of the sealed-secret layout.
const SEAL_VERSION: u8 = 0x01;
const NONCE_LEN: usize = 12;

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `KEY_ENCRYPTION_KEY` is not base64 of exactly 32 bytes.
    #[error("key encryption key invalid: {0}")]
    KekInvalid(String),
    /// A sealed secret did not open (wrong KEK, wrong account/purpose, corrupted or unknown layout version).
    #[error("sealed secret does not open: {0}")]
    DecryptFailed(String),
    /// A `did:key` string could not be parsed.
    #[error("invalid did:key {did_key:?}: {reason}")]
    InvalidDidKey { did_key: String, reason: String },
    /// Private key bytes are not a valid secp256k1 scalar.
    #[error("invalid secp256k1 private key: {0}")]
    InvalidSecretKey(String),
    /// A signature is malformed, high-S, or does not verify.
    #[error("signature invalid: {0}")]
    BadSignature(String),
    /// A row was sealed by a KEK that is not in `KEY_ENCRYPTION_KEY` (rotation rule 1).
    #[error("sealed by {kek_id}, which KEY_ENCRYPTION_KEY does not hold (ring: {ring})")]
    KekUnknown { kek_id: String, ring: String },
}

impl Classified for KeyError {
    fn code(&self) -> ErrorCode {
        match self {
            KeyError::KekInvalid(_) => ErrorCode::KeyEncryptionKeyInvalid,
            KeyError::DecryptFailed(_) => ErrorCode::KeyDecryptFailed,
            KeyError::InvalidDidKey { .. } => ErrorCode::DidKeyInvalid,
            KeyError::InvalidSecretKey(_) => ErrorCode::SecretKeyInvalid,
            KeyError::BadSignature(_) => ErrorCode::SignatureInvalid,
            KeyError::KekUnknown { .. } => ErrorCode::KeyEncryptionKeyUnknown,
        }
    }

    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// A secp256k1 private key held by the bridge for one account (the DID's signing key or its rotation key).
#[derive(Clone)]
pub struct AccountKey {
    key: SigningKey,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKey")
            .field("did_key", &self.did_key())
            .finish_non_exhaustive()
    }
}

impl AccountKey {
    /// A fresh random key from the OS RNG.
    pub fn generate() -> AccountKey {
        AccountKey {
            key: SigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    /// Imports a 32-byte big-endian scalar (the format [`AccountKey::to_bytes`] produces).
    pub fn from_bytes(bytes: &[u8]) -> Result<AccountKey, KeyError> {
        if bytes.len() != 32 {
            return Err(KeyError::InvalidSecretKey(format!(
                "expected 32 bytes, got {}",
                bytes.len()
            )));
        }
        SigningKey::from_slice(bytes)
            .map(|key| AccountKey { key })
            .map_err(|e| KeyError::InvalidSecretKey(e.to_string()))
    }

    /// Imports a hex-encoded 32-byte scalar.
    pub fn from_hex(hex_str: &str) -> Result<AccountKey, KeyError> {
        let bytes = Zeroizing::new(hex::decode(hex_str.trim()).map_err(|e| KeyError::InvalidSecretKey(e.to_string()))?);
        AccountKey::from_bytes(&bytes)
    }

    /// The 32-byte scalar, for sealing. Zeroed on drop.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes().into())
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }

    /// `did:key:zQ3s…` of the public key.
    pub fn did_key(&self) -> String {
        encode_did_key(self.key.verifying_key())
    }

    /// ES256K signature of `message`: ECDSA over sha256(message), RFC 6979 nonce, normalized to low-S, as the 64-byte
    /// compact `r ‖ s` that atproto (PLC ops, JWTs) requires.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use k256::ecdsa::signature::Signer;
        let sig: Signature = self.key.sign(message);
        let sig = sig.normalize_s().unwrap_or(sig);
        sig.to_bytes().into()
    }
}

/// `did:key` of a secp256k1 public key: `did:key:z` + base58btc(0xe7 0x01 ‖ 33-byte compressed point).
pub fn encode_did_key(key: &VerifyingKey) -> String {
    let point = key.to_encoded_point(true);
    let mut bytes = Vec::with_capacity(35);
    bytes.extend_from_slice(&SECP256K1_PUB_PREFIX);
    bytes.extend_from_slice(point.as_bytes());
    format!("{DID_KEY_PREFIX}{}", bs58::encode(bytes).into_string())
}

/// A parsed `did:key`. Only secp256k1 keys can verify here; P-256 keys (valid as PLC recovery keys) are checked for
/// shape only (multicodec + 33-byte compressed point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DidKey {
    Secp256k1(VerifyingKey),
    P256 { compressed: [u8; 33] },
}

/// Parses `did:key:z…` (secp256k1 or P-256, compressed points).
pub fn decode_did_key(did_key: &str) -> Result<DidKey, KeyError> {
    let invalid = |reason: &str| KeyError::InvalidDidKey {
        did_key: did_key.to_string(),
        reason: reason.to_string(),
    };
    let encoded = did_key
        .strip_prefix(DID_KEY_PREFIX)
        .ok_or_else(|| invalid("must start with did:key:z"))?;
    let bytes = bs58::decode(encoded)
        .into_vec()
        .map_err(|e| invalid(&format!("base58btc: {e}")))?;
    if bytes.len() != 35 {
        return Err(invalid(&format!(
            "expected 35 bytes (2-byte multicodec + 33-byte point), got {}",
            bytes.len()
        )));
    }
    let (prefix, point) = bytes.split_at(2);
    if prefix == SECP256K1_PUB_PREFIX {
        VerifyingKey::from_sec1_bytes(point)
            .map(DidKey::Secp256k1)
            .map_err(|_| invalid("not a point on secp256k1"))
    } else if prefix == P256_PUB_PREFIX {
        if point[0] != 0x02 && point[0] != 0x03 {
            return Err(invalid("P-256 key is not a compressed point"));
        }
        let mut compressed = [0u8; 33];
        compressed.copy_from_slice(point);
        Ok(DidKey::P256 { compressed })
    } else {
        Err(invalid(
            "unsupported multicodec (expected secp256k1-pub 0xe7 or p256-pub 0x1200)",
        ))
    }
}

/// Verifies a 64-byte compact ES256K signature over sha256(`message`). High-S signatures are rejected, as atproto
/// requires.
pub fn verify_signature(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
    let sig = Signature::from_slice(signature).map_err(|e| KeyError::BadSignature(e.to_string()))?;
    if sig.normalize_s().is_some() {
        return Err(KeyError::BadSignature("high-S signature".into()));
    }
    let digest = Sha256::digest(message);
    key.verify_prehash(&digest, &sig)
        .map_err(|e| KeyError::BadSignature(e.to_string()))
}

/// The deployment's key-encryption key (AES-256-GCM, 32 bytes). Never logged.
#[derive(Clone)]
pub struct KeyEncryptionKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// The key bytes are `Zeroizing`: wiped on drop.
impl zeroize::ZeroizeOnDrop for KeyEncryptionKey {}

/// What a sealed secret is; part of its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretPurpose {
    Signing,
    Rotation,
    Password,
    AccessJwt,
    RefreshJwt,
}

impl SecretPurpose {
    /// Stable name used in the associated data.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretPurpose::Signing => "signing",
            SecretPurpose::Rotation => "rotation",
            SecretPurpose::Password => "password",
            SecretPurpose::AccessJwt => "access_jwt",
            SecretPurpose::RefreshJwt => "refresh_jwt",
        }
    }
}

/// Associated data binding a sealed secret to its account (Nostr pubkey, hex) and purpose.
pub fn secret_aad(nostr_pubkey: &str, purpose: SecretPurpose) -> Vec<u8> {
    format!(
        "divine-bridge/v1|{}|{}",
        nostr_pubkey.trim().to_ascii_lowercase(),
        purpose.as_str()
    )
    .into_bytes()
}

/// Associated data of a secret at `generation` (rotation rule 2): [`secret_aad`] for generation 0, with `|N`
/// appended (and a v2 prefix) for N > 0.
pub fn sealed_aad(nostr_pubkey: &str, purpose: SecretPurpose, generation: i64) -> Vec<u8> {
    if generation == 0 {
        return secret_aad(nostr_pubkey, purpose);
    }
    format!(
        "divine-bridge/v2|{}|{}|{generation}",
        nostr_pubkey.trim().to_ascii_lowercase(),
        purpose.as_str()
    )
    .into_bytes()
}

/// Every KEK the deployment holds; the first one seals (rotation rule 1).
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<KeyEncryptionKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("ids", &self.ids()).finish()
    }
}

impl From<KeyEncryptionKey> for KeyRing {
    fn from(kek: KeyEncryptionKey) -> KeyRing {
        KeyRing { keys: vec![kek] }
    }
}

/// The entries of a `KEY_ENCRYPTION_KEY` value, in order (the one split of that list, for the worker's configuration
/// check and `keys rotate`). Every comma separates two entries, so an empty one (`K1,,K2`, or `K1,` from an unset
/// variable in `$NEW,$OLD` during a rotation) stays in the list and its parse refuses it: dropped, it would start the
/// bridge without the old key, and every secret still sealed by that key would fail to unseal at run time.
pub fn kek_entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
}

impl KeyRing {
    /// `KEY_ENCRYPTION_KEY`: one or more base64 keys, comma-separated, the sealing one first. Every entry must
    /// parse and the ids must differ (a key listed twice is a configuration mistake, not a no-op).
    pub fn from_base64_list(list: &str) -> Result<KeyRing, KeyError> {
        let keys = kek_entries(list)
            .enumerate()
            .map(|(i, part)| {
                KeyEncryptionKey::from_base64(part).map_err(|e| KeyError::KekInvalid(format!("entry {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        KeyRing::from_keys(keys)
    }

    /// A ring of keys parsed already (e.g. by the worker's configuration check), the first one sealing. The ids must
    /// differ and there must be at least one.
    pub fn from_keys(keys: Vec<KeyEncryptionKey>) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::KekInvalid("empty".into()));
        }
        for (i, kek) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.key_id() == kek.key_id()) {
                return Err(KeyError::KekInvalid(format!(
                    "entry {} repeats {}",
                    i + 1,
                    kek.key_id()
                )));
            }
        }
        Ok(KeyRing { keys })
    }

    /// A ring of the given keys, the first one sealing. Panics on an empty list (a programming error).
    pub fn new(keys: Vec<KeyEncryptionKey>) -> KeyRing {
        assert!(!keys.is_empty(), "a key ring holds at least one KEK");
        KeyRing { keys }
    }

    /// The KEK new secrets are sealed with.
    pub fn primary(&self) -> &KeyEncryptionKey {
        &self.keys[0]
    }

    /// The KEK a row names (`kek_id`).
    pub fn get(&self, kek_id: &str) -> Result<&KeyEncryptionKey, KeyError> {
        self.keys
            .iter()
            .find(|k| k.key_id() == kek_id)
            .ok_or_else(|| KeyError::KekUnknown {
                kek_id: kek_id.to_string(),
                ring: self.ids().join(","),
            })
    }

    /// Ids of every KEK, sealing one first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(KeyEncryptionKey::key_id).collect()
    }
}

impl KeyEncryptionKey {
    /// Parses base64 (standard or URL-safe alphabet, padded or not) of exactly 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<KeyEncryptionKey, KeyError> {
        let trimmed = encoded.trim();
        if trimmed.is_empty() {
            return Err(KeyError::KekInvalid("empty".into()));
        }
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let bytes = engines
            .iter()
            .find_map(|engine| engine.decode(trimmed).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| KeyError::KekInvalid("not valid base64".into()))?;
        if bytes.len() != 32 {
            return Err(KeyError::KekInvalid(format!(
                "must decode to exactly 32 bytes, got {}",
                bytes.len()
            )));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        Ok(KeyEncryptionKey { key })
    }

    /// From raw bytes (tests, key rotation tooling).
    pub fn from_bytes(bytes: [u8; 32]) -> KeyEncryptionKey {
        KeyEncryptionKey {
            key: Zeroizing::new(bytes),
        }
    }

    /// A non-secret identifier of this KEK (`kek-` + 16 hex chars of a domain-separated sha256), for
    /// `account_keys.kek_id`, so operators can tell which KEK sealed a row.
    pub fn key_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"divine-bridge kek id v1");
        h.update(self.key.as_slice());
        format!("kek-{}", &hex::encode(h.finalize())[..16])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.key.as_slice()).expect("AES-256 key is 32 bytes")
    }

    /// Seals `plaintext` with a fresh random nonce; `aad` (see [`secret_aad`]) must be presented again to open it.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let full_aad = [&[SEAL_VERSION][..], aad].concat();
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .expect("AES-GCM encryption only fails for plaintexts over 64 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a secret sealed by [`KeyEncryptionKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if sealed.len() < 1 + NONCE_LEN + 16 {
            return Err(KeyError::DecryptFailed(format!(
                "sealed secret too short ({} bytes)",
                sealed.len()
            )));
        }
        if sealed[0] != SEAL_VERSION {
            return Err(KeyError::DecryptFailed(format!(
                "unknown sealed layout version {}",
                sealed[0]
            )));
        }
        let nonce = &sealed[1..1 + NONCE_LEN];
        let full_aad = [&[SEAL_VERSION][..], aad].concat();
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: &full_aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                KeyError::DecryptFailed(
                    "authentication failed (wrong KEK, or sealed for another account/purpose)".into(),
                )
            })
    }

    /// Seals a UTF-8 secret (password, JWT).
    pub fn seal_str(&self, aad: &[u8], plaintext: &str) -> Vec<u8> {
        self.seal(aad, plaintext.as_bytes())
    }

    /// Opens a sealed UTF-8 secret.
    pub fn open_string(&self, aad: &[u8], sealed: &[u8]) -> Result<String, KeyError> {
        let bytes = self.open(aad, sealed)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| KeyError::DecryptFailed("sealed secret is not UTF-8".into()))
    }

    /// Seals an account key's 32-byte scalar.
    pub fn seal_key(&self, aad: &[u8], key: &AccountKey) -> Vec<u8> {
        self.seal(aad, key.to_bytes().as_slice())
    }

    /// Opens a sealed account key.
    pub fn open_key(&self, aad: &[u8], sealed: &[u8]) -> Result<AccountKey, KeyError> {
        let bytes = self.open(aad, sealed)?;
        AccountKey::from_bytes(&bytes).map_err(|e| KeyError::DecryptFailed(format!("opened bytes are not a key: {e}")))
    }
}

/// A random PDS password: 32 random bytes as URL-safe base64 without padding (43 characters).
pub fn random_password() -> String {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut_slice());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::elliptic_curve::ops::Reduce;
    use k256::{Scalar, U256};

    /// W3C did:key secp256k1 test vectors (w3c-ccg/did-method-key test-vectors/secp256k1.json, also used by
    /// @atproto/crypto's did tests and atproto interop-test-files crypto/w3c_didkey_K256.json).
    const W3C_K256: [(&str, &str); 5] = [
        (
            "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
        ),
        (
            "f0f4df55a2b3ff13051ea814a8f24ad00f2e469af73c363ac7e9fb999a9072ed",
            "did:key:zQ3shtxV1FrJfhqE1dvxYRcCknWNjHc3c5X1y3ZSoPDi2aur2",
        ),
        (
            "6b0b91287ae3348f8c2f2552d766f30e3604867e34adc37ccbb74a8e6b893e02",
            "did:key:zQ3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N",
        ),
        (
            "c0a6a7c560d37d7ba81ecee9543721ff48fea3e0fb827d42c1868226540fac15",
            "did:key:zQ3shadCps5JLAHcZiuX5YUtWHHL8ysBJqFLWvjZDKAWUBGzy",
        ),
        (
            "175a232d440be1e0788f25488a73d9416c04b6f924bea6354bf05dd2f1a75133",
            "did:key:zQ3shptjE6JwdkeKN4fcpnYQY3m9Cet3NiHdAfpvSUZBFoKBj",
        ),
    ];

    #[test]
    fn did_key_matches_w3c_vectors_and_round_trips() {
        for (seed, expected) in W3C_K256 {
            let key = AccountKey::from_hex(seed).unwrap();
            assert_eq!(key.did_key(), expected);
            match decode_did_key(expected).unwrap() {
                DidKey::Secp256k1(vk) => assert_eq!(vk, key.verifying_key()),
                other => panic!("decoded as {other:?}"),
            }
        }
        // The first vector's compressed public key, as published alongside it.
        let key = AccountKey::from_hex(W3C_K256[0].0).unwrap();
        assert_eq!(
            hex::encode(key.verifying_key().to_encoded_point(true).as_bytes()),
            "03874c15c7fda20e539c6e5ba573c139884c351188799f5458b4b41f7924f235cd"
        );
    }

    #[test]
    fn decode_did_key_accepts_p256_and_rejects_garbage() {
        // W3C did:key P-256 vector used by @atproto/crypto.
        let p256 = "did:key:zDnaeTiq1PdzvZXUaMdezchcMJQpBdH2VN4pgrrEhMCCbmwSb";
        assert!(matches!(decode_did_key(p256).unwrap(), DidKey::P256 { .. }));
        for bad in [
            "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th", // ed25519
            "did:key:Q3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
            "did:web:example.com",
            "did:key:z0OIl",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBm",
        ] {
            let err = decode_did_key(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::DidKeyInvalid, "{bad}");
        }
    }

    #[test]
    fn signatures_are_always_low_s_and_verify() {
        let half_n = U256::from_be_hex("7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0");
        let key = AccountKey::generate();
        for i in 0..300u32 {
            let msg = format!("message {i}");
            let sig = key.sign(msg.as_bytes());
            let s = U256::from_be_slice(&sig[32..]);
            assert!(s <= half_n, "high-S signature for message {i}");
            verify_signature(&key.verifying_key(), msg.as_bytes(), &sig).unwrap();
            // Another message must not verify.
            assert!(verify_signature(&key.verifying_key(), b"other", &sig).is_err());
        }
    }

    #[test]
    fn high_s_signatures_are_rejected() {
        let key = AccountKey::generate();
        let msg = b"high s";
        let sig = key.sign(msg);
        let r = &sig[..32];
        let s = <Scalar as Reduce<U256>>::reduce(U256::from_be_slice(&sig[32..]));
        let high_s = -s;
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(r);
        forged[32..].copy_from_slice(&high_s.to_bytes());
        let err = verify_signature(&key.verifying_key(), msg, &forged).unwrap_err();
        assert!(err.to_string().contains("high-S"), "{err}");
    }

    #[test]
    fn account_key_bytes_round_trip() {
        let key = AccountKey::generate();
        let again = AccountKey::from_bytes(key.to_bytes().as_slice()).unwrap();
        assert_eq!(key.did_key(), again.did_key());
        assert_eq!(
            AccountKey::from_bytes(&[1u8; 31]).unwrap_err().code(),
            ErrorCode::SecretKeyInvalid
        );
        assert_eq!(
            AccountKey::from_bytes(&[0u8; 32]).unwrap_err().code(),
            ErrorCode::SecretKeyInvalid
        );
        assert!(!format!("{key:?}").contains(&hex::encode(key.to_bytes().as_slice())));
    }

    #[test]
    fn kek_must_be_32_bytes_of_base64() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let kek = KeyEncryptionKey::from_base64(&b64).unwrap();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert_eq!(KeyEncryptionKey::from_base64(&url).unwrap().key_id(), kek.key_id());
        for bad in [
            String::new(),
            "not base64 !!".to_string(),
            base64::engine::general_purpose::STANDARD.encode([7u8; 31]),
            base64::engine::general_purpose::STANDARD.encode([7u8; 33]),
        ] {
            let err = KeyEncryptionKey::from_base64(&bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::KeyEncryptionKeyInvalid, "{bad:?}");
            assert_eq!(err.class(), ErrorClass::Permanent);
        }
        assert!(!format!("{kek:?}").contains(&b64));
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let kek = KeyEncryptionKey::from_bytes([9u8; 32]);
        let alice = "a".repeat(64);
        let bob = "b".repeat(64);
        let aad = secret_aad(&alice, SecretPurpose::Rotation);
        let sealed = kek.seal(&aad, b"top secret");
        assert_eq!(sealed[0], SEAL_VERSION);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 10 + 16);
        assert_eq!(kek.open(&aad, &sealed).unwrap().as_slice(), b"top secret");
        // Fresh nonce every time.
        assert_ne!(kek.seal(&aad, b"top secret"), sealed);

        let fails = |aad: &[u8], sealed: &[u8], kek: &KeyEncryptionKey| {
            let err = kek.open(aad, sealed).unwrap_err();
            assert_eq!(err.code(), ErrorCode::KeyDecryptFailed);
            assert_eq!(err.class(), ErrorClass::Permanent);
        };
        // Moved to another account, or another slot of the same account.
        fails(&secret_aad(&bob, SecretPurpose::Rotation), &sealed, &kek);
        fails(&secret_aad(&alice, SecretPurpose::Signing), &sealed, &kek);
        // Wrong KEK.
        fails(&aad, &sealed, &KeyEncryptionKey::from_bytes([8u8; 32]));
        // Tampering.
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        fails(&aad, &tampered, &kek);
        let mut wrong_version = sealed.clone();
        wrong_version[0] = 2;
        fails(&aad, &wrong_version, &kek);
        fails(&aad, &sealed[..10], &kek);

        let key = AccountKey::generate();
        let sealed_key = kek.seal_key(&secret_aad(&alice, SecretPurpose::Signing), &key);
        let opened = kek
            .open_key(&secret_aad(&alice, SecretPurpose::Signing), &sealed_key)
            .unwrap();
        assert_eq!(opened.did_key(), key.did_key());
        let sealed_pw = kek.seal_str(&secret_aad(&alice, SecretPurpose::Password), "hunter2");
        assert_eq!(
            kek.open_string(&secret_aad(&alice, SecretPurpose::Password), &sealed_pw)
                .unwrap(),
            "hunter2"
        );
    }

    #[test]
    fn secrets_are_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<KeyEncryptionKey>();
        // `identity::ProvisionSecrets` (divine-atbridge) is checked beside its definition.
        wiped::<crate::pds::StoredSession>();
        // k256's SigningKey (inside AccountKey) zeroizes its scalar itself.
        wiped::<SigningKey>();
    }

    #[test]
    fn ring_picks_by_id_and_generation_binds() {
        let (old, new) = (
            KeyEncryptionKey::from_bytes([1u8; 32]),
            KeyEncryptionKey::from_bytes([2u8; 32]),
        );
        let b64 = |b: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(b);
        let ring = KeyRing::from_base64_list(&format!("{}, {}", b64([2u8; 32]), b64([1u8; 32]))).unwrap();
        assert_eq!(ring.primary().key_id(), new.key_id());
        assert_eq!(ring.get(&old.key_id()).unwrap().key_id(), old.key_id());
        assert_eq!(
            ring.get("kek-0000").unwrap_err().code(),
            ErrorCode::KeyEncryptionKeyUnknown
        );
        assert_eq!(
            KeyRing::from_base64_list(&format!("{},{}", b64([1u8; 32]), b64([1u8; 32])))
                .unwrap_err()
                .code(),
            ErrorCode::KeyEncryptionKeyInvalid
        );
        // An empty entry is refused, not dropped (an unset `$OLD` in `$NEW,$OLD`).
        for list in [
            format!("{},", b64([2u8; 32])),
            format!("{},,{}", b64([2u8; 32]), b64([1u8; 32])),
        ] {
            let e = KeyRing::from_base64_list(&list).unwrap_err();
            assert_eq!(e.code(), ErrorCode::KeyEncryptionKeyInvalid);
            assert!(e.to_string().contains("empty"), "{e}");
        }
        // Keys parsed elsewhere (the worker's configuration check) make the same ring without a second parse.
        let parsed = KeyRing::from_keys(vec![new.clone(), old.clone()]).unwrap();
        assert_eq!(parsed.ids(), ring.ids());
        let repeated = KeyRing::from_keys(vec![old.clone(), old.clone()]).unwrap_err();
        assert!(repeated.to_string().contains("entry 2 repeats"), "{repeated}");
        assert!(KeyRing::from_keys(Vec::new()).is_err());
        assert!(!format!("{ring:?}").contains(&b64([2u8; 32])));
        let pk = "c".repeat(64);
        assert_eq!(
            sealed_aad(&pk, SecretPurpose::Password, 0),
            secret_aad(&pk, SecretPurpose::Password)
        );
        let gen1 = new.seal(&sealed_aad(&pk, SecretPurpose::Password, 1), b"pw");
        assert!(new.open(&sealed_aad(&pk, SecretPurpose::Password, 2), &gen1).is_err());
        assert!(new.open(&sealed_aad(&pk, SecretPurpose::Password, 0), &gen1).is_err());
        assert_eq!(
            new.open(&sealed_aad(&pk, SecretPurpose::Password, 1), &gen1)
                .unwrap()
                .as_slice(),
            b"pw"
        );
    }

    #[test]
    fn passwords_are_long_random_and_url_safe() {
        let a = random_password();
        let b = random_password();
        assert_ne!(a, b);
        assert!(a.len() >= 24);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
    }
}
