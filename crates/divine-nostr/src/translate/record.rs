//! Record builders: a [`PostPlan`]/[`ProfilePlan`] plus uploaded blob refs → atrium record values, and the one
//! serialisation of a record ([`record_json`]). No validation of blobs happens here: callers fetch with the right
//! `media::MediaKind` (video/mp4, text/vtt, png/jpeg) before uploading.
//!
//! Records stay typed (atrium's [`KnownRecord`], whose variant gives the top-level `$type`) from the builder to
//! [`record_json`], which the publish and profile jobs call once per write, right before `putRecord` (and for the
//! reservation row that must equal what is written). Blob refs are atrium's [`BlobRef`]; the upload step swaps one
//! for the PDS's through [`record_blobs_mut`] instead of walking JSON. Decision: atrium-api was already a dependency
//! of this crate (the builders used its record types), so using `KnownRecord`/`BlobRef` costs no build time.

use super::{FacetFeature, PostPlan, ProfilePlan, TranslateError};
use atrium_api::app::bsky::actor::profile;
use atrium_api::app::bsky::embed::{defs::AspectRatioData, video};
use atrium_api::app::bsky::feed::post;
use atrium_api::app::bsky::richtext::facet;
use atrium_api::com::atproto::label::defs::{SelfLabelData, SelfLabelsData};
pub use atrium_api::record::KnownRecord;
use atrium_api::types::string::Language;
use atrium_api::types::{BlobRef, Union};
use std::num::NonZeroU64;

/// NSID of post records.
pub const POST_NSID: &str = "app.bsky.feed.post";
/// NSID of profile records.
pub const PROFILE_NSID: &str = "app.bsky.actor.profile";

/// Builds the `app.bsky.feed.post` record with an `app.bsky.embed.video` embed. Captions whose language tag does
/// not parse are skipped.
pub fn build_post(plan: &PostPlan, video_blob: BlobRef, captions: Vec<(String, BlobRef)>) -> post::RecordData {
    let facets: Vec<facet::Main> = plan
        .facets
        .iter()
        .filter_map(|f| {
            let feature = match &f.feature {
                FacetFeature::Tag(tag) => {
                    facet::MainFeaturesItem::Tag(Box::new(facet::TagData { tag: tag.clone() }.into()))
                }
                FacetFeature::Link(uri) => {
                    facet::MainFeaturesItem::Link(Box::new(facet::LinkData { uri: uri.clone() }.into()))
                }
                FacetFeature::Mention(did) => match did.parse() {
                    Ok(did) => facet::MainFeaturesItem::Mention(Box::new(facet::MentionData { did }.into())),
                    // The DID comes from account_links (written by provisioning); one that does not parse is
                    // dropped rather than sent as an invalid record.
                    Err(_) => return None,
                },
            };
            Some(
                facet::MainData {
                    features: vec![Union::Refs(feature)],
                    index: facet::ByteSliceData {
                        byte_start: f.byte_start,
                        byte_end: f.byte_end,
                    }
                    .into(),
                }
                .into(),
            )
        })
        .collect();
    let langs: Vec<Language> = plan
        .langs
        .iter()
        .filter_map(|l| Language::new(l.clone()).ok())
        .collect();
    let captions: Vec<video::Caption> = captions
        .into_iter()
        .filter_map(|(lang, file)| {
            Language::new(lang)
                .ok()
                .map(|lang| video::CaptionData { file, lang }.into())
        })
        .collect();
    let aspect_ratio = plan.video.aspect_ratio.and_then(|(w, h)| {
        Some(
            AspectRatioData {
                width: NonZeroU64::new(w)?,
                height: NonZeroU64::new(h)?,
            }
            .into(),
        )
    });
    let embed = video::MainData {
        alt: plan.alt.clone(),
        aspect_ratio,
        captions: (!captions.is_empty()).then_some(captions),
        presentation: None,
        video: video_blob,
    };
    post::RecordData {
        created_at: plan.created_at.clone(),
        embed: Some(Union::Refs(post::RecordEmbedRefs::AppBskyEmbedVideoMain(Box::new(
            embed.into(),
        )))),
        entities: None,
        facets: (!facets.is_empty()).then_some(facets),
        labels: self_labels(&plan.self_labels),
        langs: (!langs.is_empty()).then_some(langs),
        reply: None,
        tags: (!plan.tags.is_empty()).then(|| plan.tags.clone()),
        text: plan.text.clone(),
    }
}

/// `com.atproto.label.defs#selfLabels` for the plan's self-label values, `None` when there are none.
fn self_labels(values: &[String]) -> Option<Union<post::RecordLabelsRefs>> {
    if values.is_empty() {
        return None;
    }
    let values = values.iter().map(|v| SelfLabelData { val: v.clone() }.into()).collect();
    Some(Union::Refs(post::RecordLabelsRefs::ComAtprotoLabelDefsSelfLabels(
        Box::new(SelfLabelsData { values }.into()),
    )))
}

/// The record as sent to `putRecord` and kept in the reservation: JSON with the top-level `$type` of its
/// [`KnownRecord`] variant (`app.bsky.feed.post`, `app.bsky.actor.profile`). A record serde cannot write is
/// [`TranslateError::Unserializable`] (`record_unserializable`, permanent), never a `null` record.
pub fn record_json(record: &KnownRecord) -> Result<serde_json::Value, TranslateError> {
    serde_json::to_value(record).map_err(|e| TranslateError::Unserializable { reason: e.to_string() })
}

/// Every blob ref of a record: a post's video and caption files, a profile's avatar and banner (other records carry
/// none the bridge writes). The upload step replaces a locally computed ref with the one the PDS returned.
pub fn record_blobs_mut(record: &mut KnownRecord) -> Vec<&mut BlobRef> {
    match record {
        KnownRecord::AppBskyFeedPost(post) => match post.embed.as_mut() {
            Some(Union::Refs(post::RecordEmbedRefs::AppBskyEmbedVideoMain(video))) => {
                let video = &mut video.data;
                let mut blobs = vec![&mut video.video];
                if let Some(captions) = video.captions.as_mut() {
                    blobs.extend(captions.iter_mut().map(|c| &mut c.data.file));
                }
                blobs
            }
            _ => Vec::new(),
        },
        KnownRecord::AppBskyActorProfile(profile) => {
            let profile = &mut profile.data;
            profile.avatar.iter_mut().chain(profile.banner.iter_mut()).collect()
        }
        _ => Vec::new(),
    }
}

/// Builds the `app.bsky.actor.profile` record (avatar and banner optional).
pub fn build_profile(plan: &ProfilePlan, avatar: Option<BlobRef>, banner: Option<BlobRef>) -> profile::RecordData {
    profile::RecordData {
        avatar,
        banner,
        created_at: Some(plan.created_at.clone()),
        description: plan.description.clone(),
        display_name: plan.display_name.clone(),
        joined_via_starter_pack: None,
        labels: None,
        pinned_post: None,
        pronouns: None,
        website: plan.website.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CaptionSource, FacetSpan, VideoSource};
    use super::*;

    fn blob(cid: &str, mime: &str, size: usize) -> BlobRef {
        serde_json::from_value(serde_json::json!({
            "$type": "blob", "ref": {"$link": cid}, "mimeType": mime, "size": size
        }))
        .unwrap()
    }

    const CID: &str = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy";

    fn mp4() -> VideoSource {
        VideoSource {
            url: "https://a/v.mp4".into(),
            fallbacks: vec![],
            mime: "video/mp4".into(),
            sha256: None,
            size: None,
            aspect_ratio: None,
            duration: None,
        }
    }

    fn bob() -> ProfilePlan {
        ProfilePlan {
            display_name: Some("Bob".into()),
            description: None,
            avatar_url: None,
            banner_url: None,
            website: None,
            created_at: "2025-01-01T00:00:00.000Z".parse().unwrap(),
        }
    }

    fn span(byte_start: usize, byte_end: usize, feature: FacetFeature) -> FacetSpan {
        FacetSpan {
            byte_start,
            byte_end,
            feature,
        }
    }

    #[test]
    fn post_json_has_types_and_fields() {
        let plan = PostPlan {
            text: "héllo #cat https://a.com".into(),
            facets: vec![
                span(7, 11, FacetFeature::Tag("cat".into())),
                span(12, 25, FacetFeature::Link("https://a.com".into())),
                span(0, 1, FacetFeature::Mention("did:plc:ewvi7nxzyoun6zhxrhs64oiz".into())),
                span(1, 2, FacetFeature::Mention("not a did".into())),
            ],
            langs: vec!["en".into(), "fr".into()],
            tags: vec!["extra".into()],
            created_at: "2025-01-01T00:00:00.000Z".parse().unwrap(),
            video: VideoSource {
                aspect_ratio: Some((9, 16)),
                duration: Some(6.5),
                ..mp4()
            },
            alt: Some("a cat".into()),
            captions: vec![CaptionSource {
                lang: "en".into(),
                url: "https://a/en.vtt".into(),
            }],
            self_labels: vec!["sexual".into(), "graphic-media".into()],
        };
        let rec = build_post(
            &plan,
            blob(CID, "video/mp4", 1234),
            vec![
                ("en".into(), blob(CID, "text/vtt", 10)),
                ("not a lang!".into(), blob(CID, "text/vtt", 1)),
            ],
        );
        let v = record_json(&rec.clone().into()).unwrap();
        assert_eq!(v["$type"], "app.bsky.feed.post");
        assert_eq!(v["createdAt"], "2025-01-01T00:00:00.000Z");
        assert_eq!(v["text"], "héllo #cat https://a.com");
        assert_eq!(v["langs"], serde_json::json!(["en", "fr"]));
        assert_eq!(v["tags"], serde_json::json!(["extra"]));
        assert_eq!(v["embed"]["$type"], "app.bsky.embed.video");
        assert_eq!(v["embed"]["alt"], "a cat");
        assert_eq!(v["embed"]["aspectRatio"], serde_json::json!({"width": 9, "height": 16}));
        assert_eq!(v["embed"]["video"]["$type"], "blob");
        assert_eq!(v["embed"]["video"]["ref"]["$link"], CID);
        assert_eq!(v["embed"]["video"]["mimeType"], "video/mp4");
        assert_eq!(v["embed"]["video"]["size"], 1234);
        assert_eq!(v["embed"]["captions"].as_array().unwrap().len(), 1);
        assert_eq!(v["embed"]["captions"][0]["lang"], "en");
        assert_eq!(v["embed"]["captions"][0]["file"]["mimeType"], "text/vtt");
        assert_eq!(
            v["facets"][0]["index"],
            serde_json::json!({"byteStart": 7, "byteEnd": 11})
        );
        assert_eq!(v["facets"][0]["features"][0]["$type"], "app.bsky.richtext.facet#tag");
        assert_eq!(v["facets"][0]["features"][0]["tag"], "cat");
        assert_eq!(v["facets"][1]["features"][0]["$type"], "app.bsky.richtext.facet#link");
        assert_eq!(v["facets"][1]["features"][0]["uri"], "https://a.com");
        assert_eq!(
            v["facets"][2]["features"][0]["$type"],
            "app.bsky.richtext.facet#mention"
        );
        assert_eq!(v["facets"][2]["features"][0]["did"], "did:plc:ewvi7nxzyoun6zhxrhs64oiz");
        assert_eq!(v["facets"].as_array().unwrap().len(), 3, "an unparsable DID is dropped");
        assert_eq!(
            v["labels"],
            serde_json::json!({
                "$type": "com.atproto.label.defs#selfLabels",
                "values": [{"val": "sexual"}, {"val": "graphic-media"}]
            })
        );
        assert!(v.get("reply").is_none() && v.get("entities").is_none());
        // Round-trips through atrium's own type.
        let back: post::RecordData = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn profile_json() {
        let plan = ProfilePlan {
            website: Some("https://bob.example/".into()),
            ..bob()
        };
        let v = record_json(
            &build_profile(&plan, Some(blob(CID, "image/png", 5)), Some(blob(CID, "image/jpeg", 7))).into(),
        )
        .unwrap();
        assert_eq!(v["$type"], "app.bsky.actor.profile");
        assert_eq!(v["displayName"], "Bob");
        assert_eq!(v["avatar"]["mimeType"], "image/png");
        assert_eq!(v["banner"]["mimeType"], "image/jpeg");
        assert_eq!(v["website"], "https://bob.example/");
        assert!(v.get("description").is_none());
        let v = record_json(&build_profile(&plan, None, None).into()).unwrap();
        assert!(v.get("avatar").is_none() && v.get("banner").is_none());
    }

    #[test]
    fn a_record_that_cannot_serialise_is_a_classified_error_not_null() {
        use divine_bridge_core::{Classified, ErrorClass};
        let plan = bob();
        // Extra data that is not a map cannot be flattened into the record object: serde refuses it.
        let broken = KnownRecord::AppBskyActorProfile(Box::new(atrium_api::types::Object {
            data: build_profile(&plan, None, None),
            extra_data: ipld_core::ipld::Ipld::Bool(true),
        }));
        let e = record_json(&broken).unwrap_err();
        assert_eq!(e.code(), divine_bridge_core::ErrorCode::RecordUnserializable);
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert!(record_json(&build_profile(&plan, None, None).into())
            .unwrap()
            .is_object());
    }

    #[test]
    fn record_blobs_are_the_video_captions_avatar_and_banner() {
        let plan = ProfilePlan {
            display_name: None,
            ..bob()
        };
        let mut profile: KnownRecord =
            build_profile(&plan, Some(blob(CID, "image/png", 5)), Some(blob(CID, "image/jpeg", 7))).into();
        for b in record_blobs_mut(&mut profile) {
            *b = blob(CID, "image/webp", 9);
        }
        let v = record_json(&profile).unwrap();
        assert_eq!(
            (v["avatar"]["mimeType"].as_str(), v["banner"]["size"].as_u64()),
            (Some("image/webp"), Some(9))
        );
        let mut post_plan_record: KnownRecord = build_post(
            &PostPlan {
                text: String::new(),
                facets: vec![],
                langs: vec![],
                tags: vec![],
                created_at: plan.created_at.clone(),
                video: mp4(),
                alt: None,
                captions: vec![],
                self_labels: vec![],
            },
            blob(CID, "video/mp4", 1),
            vec![
                ("en".into(), blob(CID, "text/vtt", 2)),
                ("fr".into(), blob(CID, "text/vtt", 3)),
            ],
        )
        .into();
        let sizes: Vec<usize> = record_blobs_mut(&mut post_plan_record)
            .into_iter()
            .map(|b| match b {
                BlobRef::Typed(atrium_api::types::TypedBlobRef::Blob(b)) => b.size,
                BlobRef::Untyped(_) => 0,
            })
            .collect();
        assert_eq!(sizes, vec![1, 2, 3]);
    }
}
