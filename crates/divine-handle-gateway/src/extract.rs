//! Request extractors whose rejections are always [`ApiError`] problems (never axum's plain-text 4xx/5xx):
//! [`JsonBody`] (content type, 64 KiB limit, JSON syntax and shape), [`RawBody`] (size limit only, for bodies that
//! are hashed but not read), and [`PubkeyParam`] (the `{pubkey}` path segment, normalised to hex).
//!
//! Owns input decoding only; it must not authenticate or touch the database.

use crate::handle::normalize_pubkey;
use crate::problem::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::InvalidJson(format!("could not read the body: {rejection}"))
        }
    })
}

/// A JSON body: `Content-Type: application/json` (parameters allowed) or 415; at most [`MAX_BODY_BYTES`] or 413;
/// valid JSON of the expected shape or 400 `invalid_json`. Keeps the raw bytes for NIP-98 payload hashing.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let essence = content_type
            .as_deref()
            .map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        if essence.as_deref() != Some("application/json") {
            return Err(ApiError::UnsupportedMediaType(
                content_type.unwrap_or_else(|| "(none)".into()),
            ));
        }
        let raw = read_body(req, state).await?;
        let value = serde_json::from_slice(&raw).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        Ok(JsonBody { value, raw })
    }
}

/// Any body up to [`MAX_BODY_BYTES`] (413 beyond), unparsed.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_body(req, state).await.map(RawBody)
    }
}

/// The `{pubkey}` path segment as 64 lower-case hex (hex or npub accepted), else 400 `invalid_pubkey`.
#[derive(Debug, Clone)]
pub struct PubkeyParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PubkeyParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidPubkey(e.body_text()))?;
        normalize_pubkey(&raw).map(PubkeyParam)
    }
}
