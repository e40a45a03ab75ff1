//! `DIVINE_POST_URL_TEMPLATE` / `DIVINE_PROFILE_URL_TEMPLATE` in `CrosspostConfig::from_env`: Divine's URLs by
//! default, empty turns the feature off, a bad template fails startup with `config_invalid`. Alone in its test binary
//! because it changes process environment variables.

mod process_env;

use divine_atbridge::config::CrosspostConfig;
use divine_bridge_db::Classified;
use divine_bridge_db::ErrorCode;

#[test]
fn link_templates_default_turn_off_when_empty_and_are_validated() {
    let env = process_env::lock();
    for v in [
        "DIVINE_POST_URL_TEMPLATE",
        "DIVINE_PROFILE_URL_TEMPLATE",
        "NOSTR_RELAYS",
    ] {
        env.remove(v);
    }
    let c = CrosspostConfig::from_env().unwrap();
    let post = c.post_url_template.expect("on by default");
    assert_eq!(post.render(&[("id", "abc")]), "https://divine.video/video/abc");
    let profile = c.profile_url_template.expect("on by default");
    assert_eq!(
        profile.render(&[("npub", "npub1x")]),
        "https://divine.video/profile/npub1x"
    );

    env.set("DIVINE_POST_URL_TEMPLATE", "");
    env.set("DIVINE_PROFILE_URL_TEMPLATE", "  ");
    let c = CrosspostConfig::from_env().unwrap();
    assert!(
        c.post_url_template.is_none() && c.profile_url_template.is_none(),
        "empty = off"
    );

    env.set("DIVINE_POST_URL_TEMPLATE", "https://staging.divine.video/v/{d}");
    let c = CrosspostConfig::from_env().unwrap();
    assert_eq!(
        c.post_url_template.unwrap().render(&[("d", "clip 1")]),
        "https://staging.divine.video/v/clip%201"
    );

    for (var, bad) in [
        ("DIVINE_POST_URL_TEMPLATE", "https://divine.video/video/{event}"),
        ("DIVINE_POST_URL_TEMPLATE", "https://divine.video/video/"),
        ("DIVINE_POST_URL_TEMPLATE", "divine.video/video/{id}"),
        ("DIVINE_PROFILE_URL_TEMPLATE", "https://divine.video/profile/{id}"),
    ] {
        env.remove("DIVINE_POST_URL_TEMPLATE");
        env.remove("DIVINE_PROFILE_URL_TEMPLATE");
        env.set(var, bad);
        let e = CrosspostConfig::from_env().unwrap_err();
        assert_eq!(e.code(), ErrorCode::ConfigInvalid, "{var}={bad}");
        assert!(e.to_string().contains(var), "{e}");
    }
}
