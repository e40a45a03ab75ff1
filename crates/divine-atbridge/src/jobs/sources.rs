//! Production [`PostSource`] / [`ProfileSource`]: NIP-71 / kind 0 parsing and translation (`translate`) plus the
//! SSRF-safe media fetch (`media`). Owns only the glue between those modules and the job policy.
//!
//! TEMPORARY: translation is being written in `translate`/`media`; until it lands these sources refuse every event
//! with `translation_unavailable` (transient, so the jobs wait instead of failing).

use super::profile::{PreparedProfile, ProfileSource};
use super::publish::{PostSource, PreparedPost};
use super::{JobError, UpstreamError};
use crate::config::CrosspostConfig;
use divine_bridge_db::ErrorClass;
use futures::future::BoxFuture;
use nostr::Event;

/// Media fetch settings derived from the cross-posting config.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub allowed_hosts: Vec<String>,
    pub allow_loopback: bool,
    pub timeout: std::time::Duration,
}

pub fn media_config(c: &CrosspostConfig) -> MediaSettings {
    MediaSettings {
        allowed_hosts: c.media_allowed_hosts.clone(),
        allow_loopback: c.media_allow_loopback,
        timeout: c.media_timeout,
    }
}

fn unavailable() -> JobError {
    JobError::Upstream(UpstreamError {
        code: "translation_unavailable",
        class: ErrorClass::Transient,
        retry_after: None,
        message: "translation is not available in this build".into(),
    })
}

pub struct TranslatedPosts {
    _media: MediaSettings,
}

impl TranslatedPosts {
    pub fn new(media: MediaSettings) -> TranslatedPosts {
        TranslatedPosts { _media: media }
    }
}

impl PostSource for TranslatedPosts {
    fn prepare<'a>(&'a self, _event: &'a Event) -> BoxFuture<'a, Result<PreparedPost, JobError>> {
        Box::pin(async move { Err(unavailable()) })
    }
}

pub struct TranslatedProfiles {
    _media: MediaSettings,
}

impl TranslatedProfiles {
    pub fn new(media: MediaSettings) -> TranslatedProfiles {
        TranslatedProfiles { _media: media }
    }
}

impl ProfileSource for TranslatedProfiles {
    fn prepare<'a>(&'a self, _event: &'a Event) -> BoxFuture<'a, Result<PreparedProfile, JobError>> {
        Box::pin(async move { Err(unavailable()) })
    }
}
