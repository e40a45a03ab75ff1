//! Production [`PostSource`] / [`ProfileSource`]: NIP-71 / kind 0 parsing and translation (`translate`) plus the
//! SSRF-safe media fetch (`media`). Owns only the glue between those modules and the job policy: which media is
//! fetched with which [`MediaKind`], how blob refs are computed locally (so a retry builds the same record), and how
//! their errors become job outcomes (permanent translation/fetch errors → `ineligible` with the error's code,
//! transient ones → retry). It must not upload or write anything.

use super::profile::{PreparedProfile, ProfileSource};
use super::publish::{local_blob_ref, PostSource, PreparedMedia, PreparedPost};
use super::{JobError, UpstreamError};
use crate::config::CrosspostConfig;
use crate::media::{MediaError, MediaFetchConfig, MediaFetcher, MediaKind};
use crate::nostr::{BridgeEvent, ProfileMeta, VideoEvent};
use crate::translate::{self, TranslateError};
use atrium_api::types::BlobRef;
use divine_bridge_db::{Classified, ErrorClass};
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

fn fetcher(media: &MediaSettings) -> MediaFetcher {
    let mut config = MediaFetchConfig::new(media.allowed_hosts.clone(), media.allow_loopback);
    config.timeout = media.timeout;
    config.max_bytes = translate::MAX_VIDEO_BYTES;
    MediaFetcher::new(config)
}

fn translate_err(e: TranslateError) -> JobError {
    JobError::ineligible(e.code(), e.to_string())
}

/// Permanent fetch errors make the event ineligible (the same URL will never work); transient ones retry.
fn media_err(e: MediaError) -> JobError {
    match e.class() {
        ErrorClass::Permanent => JobError::ineligible(e.code(), e.to_string()),
        ErrorClass::Transient => JobError::Upstream(UpstreamError::of(&e)),
    }
}

fn blob_ref(bytes: &[u8], mime: &str) -> Result<BlobRef, JobError> {
    serde_json::from_value(local_blob_ref(bytes, mime)).map_err(|e| JobError::BadPayload(format!("blob ref: {e}")))
}

pub struct TranslatedPosts {
    fetcher: MediaFetcher,
}

impl TranslatedPosts {
    pub fn new(media: MediaSettings) -> TranslatedPosts {
        TranslatedPosts {
            fetcher: fetcher(&media),
        }
    }

    async fn prepare_video(&self, ev: &VideoEvent) -> Result<PreparedPost, JobError> {
        let plan = translate::plan_post(ev).map_err(translate_err)?;
        let urls: Vec<String> = std::iter::once(plan.video.url.clone())
            .chain(plan.video.fallbacks.iter().cloned())
            .collect();
        let video = self
            .fetcher
            .fetch_any(&urls, plan.video.sha256.as_deref(), MediaKind::Video)
            .await
            .map_err(media_err)?;
        let mime = translate::VIDEO_MIME.to_string();
        let video_ref = blob_ref(&video.bytes, &mime)?;
        let mut media = vec![PreparedMedia {
            bytes: video.bytes,
            mime,
        }];
        let mut captions = Vec::new();
        for c in &plan.captions {
            match self.fetcher.fetch(&c.url, None, MediaKind::Caption).await {
                Ok(f) => {
                    captions.push((c.lang.clone(), blob_ref(&f.bytes, "text/vtt")?));
                    media.push(PreparedMedia {
                        bytes: f.bytes,
                        mime: "text/vtt".into(),
                    });
                }
                // A caption that can never be fetched is left out; the video is still worth posting.
                Err(e) if e.class() == ErrorClass::Permanent => {
                    tracing::warn!(url = %c.url, code = e.code(), "caption skipped")
                }
                Err(e) => return Err(media_err(e)),
            }
        }
        let record = translate::post_record_json(&translate::build_post(&plan, video_ref, captions));
        Ok(PreparedPost { record, media })
    }
}

impl PostSource for TranslatedPosts {
    fn prepare<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<PreparedPost, JobError>> {
        Box::pin(async move {
            match crate::nostr::parse_event(event).map_err(translate_err)? {
                BridgeEvent::Video(ev) => self.prepare_video(&ev).await,
                _ => Err(translate_err(TranslateError::UnsupportedKind(event.kind.as_u16()))),
            }
        })
    }
}

pub struct TranslatedProfiles {
    fetcher: MediaFetcher,
}

impl TranslatedProfiles {
    pub fn new(media: MediaSettings) -> TranslatedProfiles {
        TranslatedProfiles {
            fetcher: fetcher(&media),
        }
    }

    async fn prepare_profile(&self, meta: &ProfileMeta) -> Result<PreparedProfile, JobError> {
        let plan = translate::plan_profile(meta).map_err(translate_err)?;
        let mut media = Vec::new();
        let mut avatar = None;
        if let Some(url) = &plan.avatar_url {
            match self.fetcher.fetch(url, None, MediaKind::Avatar).await {
                Ok(f) => {
                    avatar = Some(blob_ref(&f.bytes, &f.mime)?);
                    media.push(PreparedMedia {
                        bytes: f.bytes,
                        mime: f.mime,
                    });
                }
                // An unusable picture leaves the avatar out; name and description still sync.
                Err(e) if e.class() == ErrorClass::Permanent => {
                    tracing::warn!(url = %url, code = e.code(), "avatar skipped")
                }
                Err(e) => return Err(media_err(e)),
            }
        }
        let record = translate::profile_record_json(&translate::build_profile(&plan, avatar));
        Ok(PreparedProfile { record, media })
    }
}

impl ProfileSource for TranslatedProfiles {
    fn prepare<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<PreparedProfile, JobError>> {
        Box::pin(async move {
            match crate::nostr::parse_event(event).map_err(translate_err)? {
                BridgeEvent::Profile(meta) => self.prepare_profile(&meta).await,
                _ => Err(translate_err(TranslateError::UnsupportedKind(event.kind.as_u16()))),
            }
        })
    }
}
