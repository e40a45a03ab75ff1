//! Record builders: a [`PostPlan`]/[`ProfilePlan`] plus uploaded blob refs → atrium record values, and the JSON that
//! is sent (with the top-level `$type`). No validation of blobs happens here: callers fetch with the right
//! `media::MediaKind` (video/mp4, text/vtt, png/jpeg) before uploading.

use super::{FacetFeature, PostPlan, ProfilePlan};
use atrium_api::app::bsky::actor::profile;
use atrium_api::app::bsky::embed::{defs::AspectRatioData, video};
use atrium_api::app::bsky::feed::post;
use atrium_api::app::bsky::richtext::facet;
use atrium_api::com::atproto::label::defs::{SelfLabelData, SelfLabelsData};
use atrium_api::types::string::{Datetime, Language};
use atrium_api::types::{BlobRef, Union};
use std::num::NonZeroU64;

/// NSID of post records.
pub const POST_NSID: &str = "app.bsky.feed.post";
/// NSID of profile records.
pub const PROFILE_NSID: &str = "app.bsky.actor.profile";

fn datetime(s: &str) -> Datetime {
    // Plans always carry `format_created_at` output, which is valid; fall back to the epoch rather than panic.
    s.parse()
        .unwrap_or_else(|_| Datetime::new(chrono::DateTime::UNIX_EPOCH.fixed_offset()))
}

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
        created_at: datetime(&plan.created_at),
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

fn with_type(mut v: serde_json::Value, nsid: &str) -> serde_json::Value {
    if let Some(obj) = v.as_object_mut() {
        obj.insert("$type".into(), serde_json::Value::String(nsid.into()));
    }
    v
}

/// The post record as sent to `putRecord`, guaranteed to carry `"$type": "app.bsky.feed.post"`.
pub fn post_record_json(record: &post::RecordData) -> serde_json::Value {
    with_type(
        serde_json::to_value(record).unwrap_or(serde_json::Value::Null),
        POST_NSID,
    )
}

/// Builds the `app.bsky.actor.profile` record (avatar and banner optional).
pub fn build_profile(plan: &ProfilePlan, avatar: Option<BlobRef>, banner: Option<BlobRef>) -> profile::RecordData {
    profile::RecordData {
        avatar,
        banner,
        created_at: Some(datetime(&plan.created_at)),
        description: plan.description.clone(),
        display_name: plan.display_name.clone(),
        joined_via_starter_pack: None,
        labels: None,
        pinned_post: None,
        pronouns: None,
        website: plan.website.clone(),
    }
}

/// The profile record as sent, guaranteed to carry `"$type": "app.bsky.actor.profile"`.
pub fn profile_record_json(record: &profile::RecordData) -> serde_json::Value {
    with_type(
        serde_json::to_value(record).unwrap_or(serde_json::Value::Null),
        PROFILE_NSID,
    )
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

    #[test]
    fn post_json_has_types_and_fields() {
        let plan = PostPlan {
            text: "héllo #cat https://a.com".into(),
            facets: vec![
                FacetSpan {
                    byte_start: 7,
                    byte_end: 11,
                    feature: FacetFeature::Tag("cat".into()),
                },
                FacetSpan {
                    byte_start: 12,
                    byte_end: 25,
                    feature: FacetFeature::Link("https://a.com".into()),
                },
                FacetSpan {
                    byte_start: 0,
                    byte_end: 1,
                    feature: FacetFeature::Mention("did:plc:ewvi7nxzyoun6zhxrhs64oiz".into()),
                },
                FacetSpan {
                    byte_start: 1,
                    byte_end: 2,
                    feature: FacetFeature::Mention("not a did".into()),
                },
            ],
            langs: vec!["en".into(), "fr".into()],
            tags: vec!["extra".into()],
            created_at: "2025-01-01T00:00:00.000Z".into(),
            video: VideoSource {
                url: "https://a/v.mp4".into(),
                fallbacks: vec![],
                mime: "video/mp4".into(),
                sha256: None,
                size: None,
                aspect_ratio: Some((9, 16)),
                duration: Some(6.5),
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
        let v = post_record_json(&rec);
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
            display_name: Some("Bob".into()),
            description: None,
            avatar_url: None,
            banner_url: None,
            website: Some("https://bob.example/".into()),
            created_at: "2025-01-01T00:00:00.000Z".into(),
        };
        let v = profile_record_json(&build_profile(
            &plan,
            Some(blob(CID, "image/png", 5)),
            Some(blob(CID, "image/jpeg", 7)),
        ));
        assert_eq!(v["$type"], "app.bsky.actor.profile");
        assert_eq!(v["displayName"], "Bob");
        assert_eq!(v["avatar"]["mimeType"], "image/png");
        assert_eq!(v["banner"]["mimeType"], "image/jpeg");
        assert_eq!(v["website"], "https://bob.example/");
        assert!(v.get("description").is_none());
        let v = profile_record_json(&build_profile(&plan, None, None));
        assert!(v.get("avatar").is_none() && v.get("banner").is_none());
    }
}
