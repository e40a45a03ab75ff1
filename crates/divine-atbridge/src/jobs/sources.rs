//! Production [`PostSource`] / [`ProfileSource`]: translation (`translate`) of the parsed event the job hands over
//! plus the SSRF-safe media fetch (`media`). Owns only the glue between those modules and the job policy: which media
//! is fetched with which [`MediaKind`], that blob refs are computed locally ([`crate::blob`], so a retry builds the
//! same record), and how their errors become job outcomes (permanent translation/fetch errors → `ineligible` with the
//! error's code,
//! transient ones → retry), which mentioned pubkeys are bridged (read from `account_links`, handed to the pure
//! translator as a map), and the counters of what the translation left out (`bridge_nostr_fields_dropped_total`,
//! `bridge_profile_images_skipped_total`). It must not upload or write anything.

use super::profile::{PreparedProfile, ProfileSource};
use super::publish::{PostSource, PreparedPost};
use super::{JobError, UpstreamError};
use crate::blob::{local_blob_ref, MediaBody, PreparedMedia};
use crate::config::CrosspostConfig;
use crate::media::{MediaError, MediaFetchConfig, MediaFetcher, MediaKind};
use crate::metrics::phase;
use crate::nostr::{ProfileMeta, VideoEvent};
use crate::spool::Spool;
use crate::translate::{self, BridgedUser, PostContext, UrlTemplate};
use atrium_api::types::BlobRef;
use divine_bridge_db::{accounts, Classified, Db, ErrorClass, ErrorCode, ProvisioningState};
use futures::future::BoxFuture;
use std::collections::HashMap;

/// Media fetch settings derived from the cross-posting config.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub allowed_hosts: Vec<String>,
    pub allow_loopback: bool,
    pub require_video_hash: bool,
    pub timeout: std::time::Duration,
}

pub fn media_config(c: &CrosspostConfig) -> MediaSettings {
    MediaSettings {
        allowed_hosts: c.media_allowed_hosts.clone(),
        allow_loopback: c.media_allow_loopback,
        require_video_hash: c.media_require_video_hash,
        timeout: c.media_timeout,
    }
}

fn fetcher(media: &MediaSettings) -> MediaFetcher {
    let mut config = MediaFetchConfig::new(media.allowed_hosts.clone(), media.allow_loopback);
    config.timeout = media.timeout;
    config.require_video_hash = media.require_video_hash;
    config.max_bytes = translate::MAX_VIDEO_BYTES;
    MediaFetcher::new(config)
}

/// Permanent fetch errors make the event ineligible (the same URL will never work); transient ones retry.
fn media_err(e: MediaError) -> JobError {
    match e.class() {
        ErrorClass::Permanent => JobError::ineligible(e.code(), e.to_string()),
        ErrorClass::Transient => JobError::Upstream(UpstreamError::of(&e)),
    }
}

/// The pubkeys mentioned in `text` (`nostr:npub…`/`nostr:nprofile…`) that have a ready bridged account (with a DID),
/// for mention facets. A link that is pending, failed or disabled is not mentioned by DID (its Bluesky account may
/// not exist or be active); it gets the Divine profile link instead.
pub async fn bridged_users(db: &Db, text: &str) -> Result<HashMap<String, BridgedUser>, JobError> {
    let mut pubkeys: Vec<String> = translate::links::find_mentions(text)
        .into_iter()
        .map(|m| m.pubkey)
        .collect();
    pubkeys.sort();
    pubkeys.dedup();
    if pubkeys.is_empty() {
        return Ok(HashMap::new());
    }
    let found = db
        .run(move |c| {
            let mut found = HashMap::new();
            for pk in pubkeys {
                let Some(link) = accounts::get(c, &pk)? else { continue };
                if let (Some(did), ProvisioningState::Ready) = (link.did.clone(), link.state()?) {
                    found.insert(
                        pk,
                        BridgedUser {
                            did,
                            handle: link.handle,
                        },
                    );
                }
            }
            Ok::<_, divine_bridge_db::DbError>(found)
        })
        .await?;
    Ok(found)
}

pub struct TranslatedPosts {
    fetcher: MediaFetcher,
    spool: Spool,
    db: Db,
    post_url: Option<UrlTemplate>,
    profile_url: Option<UrlTemplate>,
}

impl TranslatedPosts {
    /// Videos are fetched into `spool` under its byte budget ([`crate::spool`]).
    pub fn new(db: Db, crosspost: &CrosspostConfig, spool: Spool) -> TranslatedPosts {
        TranslatedPosts {
            fetcher: fetcher(&media_config(crosspost)),
            spool,
            db,
            post_url: crosspost.post_url_template.clone(),
            profile_url: crosspost.profile_url_template.clone(),
        }
    }

    async fn prepare_video(&self, ev: &VideoEvent) -> Result<PreparedPost, JobError> {
        let t = std::time::Instant::now();
        for field in &ev.dropped_fields {
            // Counted per translation try (a retried job counts again); the value is gone from the post either way.
            metrics::counter!(crate::metrics::NOSTR_FIELDS_DROPPED, "field" => field.as_str()).increment(1);
            tracing::info!(event = %ev.id, field = field.as_str(), "malformed optional imeta field dropped");
        }
        // Mentions are looked for in title and content, as `plan_post` composes them.
        let mentionable = format!("{}\n{}", ev.title.as_deref().unwrap_or(""), ev.content);
        let ctx = PostContext {
            post_url: self.post_url.clone(),
            profile_url: self.profile_url.clone(),
            bridged: bridged_users(&self.db, &mentionable).await?,
        };
        let plan = translate::plan_post(ev, &ctx)?;
        let urls: Vec<String> = std::iter::once(plan.video.url.clone())
            .chain(plan.video.fallbacks.iter().cloned())
            .collect();
        // Budget first, outside the fetch deadline, weighted by the declared size until the body is spooled
        // (spool rule 4).
        let weight = plan
            .video
            .size
            .unwrap_or(translate::MAX_VIDEO_BYTES)
            .min(translate::MAX_VIDEO_BYTES);
        let t = phase("translate", t);
        let mut permit = self.spool.budget().acquire(weight).await;
        let t = phase("budget_wait", t);
        let video = self
            .fetcher
            .fetch_any_to_spool(&urls, plan.video.sha256.as_deref(), MediaKind::Video, &self.spool)
            .await
            .map_err(media_err)?;
        // Spooled: from here on the body holds its observed size, not the declared or capped weight (spool rule 4).
        permit.shrink_to(video.file.size());
        let video = PreparedMedia {
            body: MediaBody::Spooled {
                file: video.file,
                budget: Some(std::sync::Arc::new(permit)),
            },
            mime: translate::VIDEO_MIME.to_string(),
        };
        let video_ref = video.local_blob_ref();
        let mut media = vec![video];
        let mut captions = Vec::new();
        for c in &plan.captions {
            match self.fetcher.fetch(&c.url, None, MediaKind::Caption).await {
                Ok(f) => {
                    captions.push((c.lang.clone(), local_blob_ref(&f.bytes, "text/vtt")));
                    media.push(PreparedMedia::in_memory(f.bytes, "text/vtt"));
                }
                // A caption that can never be fetched is left out; the video is still worth posting.
                Err(e) if e.class() == ErrorClass::Permanent => {
                    tracing::warn!(url = %c.url, code = %e.code(), "caption skipped")
                }
                Err(e) => return Err(media_err(e)),
            }
        }
        let record = translate::build_post(&plan, video_ref, captions).into();
        phase("fetch", t);
        Ok(PreparedPost { record, media })
    }
}

impl PostSource for TranslatedPosts {
    fn prepare<'a>(&'a self, video: &'a VideoEvent) -> BoxFuture<'a, Result<PreparedPost, JobError>> {
        Box::pin(self.prepare_video(video))
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

    /// Fetches one profile image. A permanent failure leaves the image out (name, description and the other image
    /// still sync) but never silently: it is logged at warn with its code and counted in
    /// `bridge_profile_images_skipped_total{field,code}`; a wrong format or size gets its own stable code
    /// ([`ProfileImageRefusal`]). Transient failures retry the job.
    async fn fetch_image(
        &self,
        field: ImageField,
        url: &str,
        media: &mut Vec<PreparedMedia>,
    ) -> Result<Option<BlobRef>, JobError> {
        // The banner has the avatar's limits (png/jpeg, ≤ 1,000,000 bytes), so both fetch as `MediaKind::Avatar`.
        match self.fetcher.fetch(url, None, MediaKind::Avatar).await {
            Ok(f) => {
                let blob = local_blob_ref(&f.bytes, &f.mime);
                media.push(PreparedMedia::in_memory(f.bytes, f.mime));
                Ok(Some(blob))
            }
            Err(e) if e.class() == ErrorClass::Permanent => {
                let code = match ProfileImageRefusal::from_media(field, &e) {
                    Some(refusal) => {
                        tracing::warn!(url = %url, code = %refusal.code(), error = %refusal, "profile image refused");
                        refusal.code()
                    }
                    None => {
                        tracing::warn!(url = %url, field = field.as_str(), code = %e.code(), error = %e, "profile image skipped");
                        e.code()
                    }
                };
                metrics::counter!(crate::metrics::PROFILE_IMAGES_SKIPPED, "field" => field.as_str(), "code" => code.as_str())
                    .increment(1);
                Ok(None)
            }
            Err(e) => Err(media_err(e)),
        }
    }

    async fn prepare_profile(&self, meta: &ProfileMeta) -> Result<PreparedProfile, JobError> {
        let plan = translate::plan_profile(meta)?;
        let mut media = Vec::new();
        let mut avatar = None;
        if let Some(url) = &plan.avatar_url {
            avatar = self.fetch_image(ImageField::Avatar, url, &mut media).await?;
        }
        let mut banner = None;
        if let Some(url) = &plan.banner_url {
            banner = self.fetch_image(ImageField::Banner, url, &mut media).await?;
        }
        let record = translate::build_profile(&plan, avatar, banner).into();
        Ok(PreparedProfile { record, media })
    }
}

impl ProfileSource for TranslatedProfiles {
    fn prepare<'a>(&'a self, meta: &'a ProfileMeta) -> BoxFuture<'a, Result<PreparedProfile, JobError>> {
        Box::pin(self.prepare_profile(meta))
    }
}

/// Which profile image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageField {
    Avatar,
    Banner,
}

impl ImageField {
    pub const ALL: [ImageField; 2] = [ImageField::Avatar, ImageField::Banner];

    /// Every `code` label `bridge_profile_images_skipped_total` can carry for this field: its two refusals and every
    /// permanent media code (the ones [`ProfileImageRefusal::from_media`] turns into a refusal stay at 0).
    pub fn skipped_codes(self) -> Vec<ErrorCode> {
        let refusals = [
            ProfileImageRefusal::UnsupportedFormat {
                field: self,
                found: String::new(),
            },
            ProfileImageRefusal::TooLarge { field: self, limit: 0 },
        ];
        refusals
            .iter()
            .map(Classified::code)
            .chain(MediaError::PERMANENT_CODES.iter().copied())
            .collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageField::Avatar => "avatar",
            ImageField::Banner => "banner",
        }
    }
}

impl std::fmt::Display for ImageField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile image the bridge cannot use as it is. Bluesky takes only png/jpeg up to 1,000,000 bytes for both the
/// avatar and the banner; re-encoding (webp → jpeg, downscaling) would need an image codec crate, which the bridge
/// does not depend on, so such an image is refused with one of these stable codes (logged, counted, in the runbook)
/// and the rest of the profile still syncs. Permanent: the same image never becomes acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileImageRefusal {
    #[error("{field} image is {found}; Bluesky accepts png or jpeg and the bridge does not re-encode")]
    UnsupportedFormat { field: ImageField, found: String },
    #[error("{field} image exceeds {limit} bytes; the bridge does not downscale")]
    TooLarge { field: ImageField, limit: u64 },
}

impl ProfileImageRefusal {
    /// The refusal a media error stands for, if it is a format or size problem.
    pub fn from_media(field: ImageField, e: &MediaError) -> Option<ProfileImageRefusal> {
        match e {
            MediaError::UnsupportedType { found, .. } => Some(ProfileImageRefusal::UnsupportedFormat {
                field,
                found: found.clone(),
            }),
            MediaError::TooLarge { limit } => Some(ProfileImageRefusal::TooLarge { field, limit: *limit }),
            _ => None,
        }
    }
}

impl Classified for ProfileImageRefusal {
    fn code(&self) -> ErrorCode {
        match self {
            ProfileImageRefusal::UnsupportedFormat {
                field: ImageField::Avatar,
                ..
            } => ErrorCode::AvatarUnsupportedFormat,
            ProfileImageRefusal::UnsupportedFormat {
                field: ImageField::Banner,
                ..
            } => ErrorCode::BannerUnsupportedFormat,
            ProfileImageRefusal::TooLarge {
                field: ImageField::Avatar,
                ..
            } => ErrorCode::AvatarTooLarge,
            ProfileImageRefusal::TooLarge {
                field: ImageField::Banner,
                ..
            } => ErrorCode::BannerTooLarge,
        }
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refusals_have_stable_codes_and_other_errors_keep_theirs() {
        let wrong = MediaError::UnsupportedType {
            expected: "image/png|image/jpeg",
            found: "image/webp".into(),
        };
        let big = MediaError::TooLarge { limit: 1_000_000 };
        let code = |f, e: &MediaError| ProfileImageRefusal::from_media(f, e).map(|r| (r.code(), r.class()));
        assert_eq!(
            code(ImageField::Avatar, &wrong),
            Some((ErrorCode::AvatarUnsupportedFormat, ErrorClass::Permanent))
        );
        assert_eq!(
            code(ImageField::Avatar, &big),
            Some((ErrorCode::AvatarTooLarge, ErrorClass::Permanent))
        );
        assert_eq!(
            code(ImageField::Banner, &wrong),
            Some((ErrorCode::BannerUnsupportedFormat, ErrorClass::Permanent))
        );
        assert_eq!(
            code(ImageField::Banner, &big),
            Some((ErrorCode::BannerTooLarge, ErrorClass::Permanent))
        );
        assert_eq!(code(ImageField::Avatar, &MediaError::Timeout), None);
    }
}
