//! Media prepared for upload: its body ([`MediaBody`]: small ones in memory, videos in the [`crate::spool`]) and the
//! blob ref the PDS will return for it, computed locally ([`local_blob_ref`]) so a retry after a crash builds the
//! same record before anything is uploaded.
//!
//! The blob address is a CIDv1 with the `raw` codec (0x55) over a sha2-256 multihash (0x12) of the body, as the PDS
//! computes it; it is built with the `cid` crate (the one atrium's `CidLink` wraps) and carried as atrium's typed
//! [`BlobRef`] (`{"$type": "blob", "ref": {"$link": …}, "mimeType", "size"}` once serialised). It must not upload,
//! fetch or translate anything.

use atrium_api::types::{Blob, BlobRef, CidLink, TypedBlobRef};
use cid::multihash::Multihash;
use cid::Cid;
use sha2::Digest;

/// Multicodec `raw`: a blob's bytes as they are.
const RAW_CODEC: u64 = 0x55;
/// Multihash code of sha2-256.
const SHA2_256: u64 = 0x12;

/// A media body: small ones in memory, videos in the spool, never a whole video in memory. Cloning is cheap
/// (reference counted); an upload try reads the body afresh, it never copies it.
#[derive(Debug, Clone)]
pub enum MediaBody {
    Memory(bytes::Bytes),
    /// A spooled file and the media budget it holds (released when the last clone is dropped, after the upload).
    Spooled {
        file: crate::spool::SpoolFile,
        budget: Option<std::sync::Arc<crate::spool::BudgetPermit>>,
    },
}

impl MediaBody {
    pub fn size(&self) -> u64 {
        match self {
            MediaBody::Memory(b) => b.len() as u64,
            MediaBody::Spooled { file, .. } => file.size(),
        }
    }

    /// SHA-256 of the body (computed while spooling for spooled bodies).
    pub fn sha256(&self) -> [u8; 32] {
        match self {
            MediaBody::Memory(b) => sha2::Sha256::digest(b).into(),
            MediaBody::Spooled { file, .. } => file.sha256(),
        }
    }

    /// A request body for one upload try: the bytes (a reference-counted handle) or a fresh stream of the file.
    pub fn request_body(&self) -> reqwest::Body {
        match self {
            MediaBody::Memory(b) => reqwest::Body::from(b.clone()),
            MediaBody::Spooled { file, .. } => reqwest::Body::wrap_stream(file.stream()),
        }
    }

    /// The whole body (tests; small bodies).
    pub async fn to_vec(&self) -> Result<Vec<u8>, crate::spool::SpoolError> {
        match self {
            MediaBody::Memory(b) => Ok(b.to_vec()),
            MediaBody::Spooled { file, .. } => file.read_all().await,
        }
    }
}

/// Media to upload for a record; its blob ref (computed locally from the body's digest) is already in the record.
#[derive(Debug, Clone)]
pub struct PreparedMedia {
    pub body: MediaBody,
    pub mime: String,
}

impl PreparedMedia {
    /// Small media held in memory (captions, profile images).
    pub fn in_memory(bytes: impl Into<bytes::Bytes>, mime: impl Into<String>) -> PreparedMedia {
        PreparedMedia {
            body: MediaBody::Memory(bytes.into()),
            mime: mime.into(),
        }
    }

    /// The blob ref the PDS will return for this body.
    pub fn local_blob_ref(&self) -> BlobRef {
        blob_ref_of(&self.body.sha256(), self.body.size(), &self.mime)
    }
}

/// CIDv1 (raw, sha2-256) of a body with this SHA-256 digest: the PDS's blob address. Displayed as base32 multibase
/// (`bafkrei…`).
pub fn cid_of_digest(sha256: &[u8; 32]) -> Cid {
    let hash = Multihash::<64>::wrap(SHA2_256, sha256).expect("a 32-byte digest fits a 64-byte multihash");
    Cid::new_v1(RAW_CODEC, hash)
}

/// CIDv1 (raw, sha2-256) of `bytes`.
pub fn blob_cid(bytes: &[u8]) -> Cid {
    cid_of_digest(&sha2::Sha256::digest(bytes).into())
}

/// The blob ref the PDS will return for `bytes` uploaded as `mime`.
pub fn local_blob_ref(bytes: &[u8], mime: &str) -> BlobRef {
    blob_ref_of(&sha2::Sha256::digest(bytes).into(), bytes.len() as u64, mime)
}

/// The blob ref of a body with this digest and size uploaded as `mime`.
pub fn blob_ref_of(sha256: &[u8; 32], size: u64, mime: &str) -> BlobRef {
    BlobRef::Typed(TypedBlobRef::Blob(Blob {
        r#ref: CidLink(cid_of_digest(sha256)),
        mime_type: mime.to_string(),
        // atrium's `size` is a usize; a body larger than the address space could not have been read.
        size: usize::try_from(size).unwrap_or(usize::MAX),
    }))
}

/// The CID a blob ref points at (`None` for the legacy untyped form, which the bridge never writes).
pub fn blob_ref_cid(blob: &BlobRef) -> Option<&Cid> {
    match blob {
        BlobRef::Typed(TypedBlobRef::Blob(b)) => Some(&b.r#ref.0),
        BlobRef::Untyped(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ref_matches_the_pds_form() {
        // The well-known CIDv1 (raw leaves, sha2-256) of "hello world", as `ipfs add --cid-version 1` prints it.
        let cid = blob_cid(b"hello world");
        assert_eq!(
            cid.to_string(),
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
        );
        let json = serde_json::to_value(local_blob_ref(b"hello world", "text/plain")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "$type": "blob",
                "ref": {"$link": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"},
                "mimeType": "text/plain",
                "size": 11
            })
        );
        assert_eq!(blob_ref_cid(&local_blob_ref(b"hello world", "text/plain")), Some(&cid));
    }
}
