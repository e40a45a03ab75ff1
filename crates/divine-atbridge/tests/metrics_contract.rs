//! The metrics contract of `divine-atbridge` against its documentation (issue 14 §4): `docs/runbooks/metrics.md` has
//! exactly one section per exported name (`metrics::METRIC_NAMES`, the constants every emitter uses), everything the
//! process exports right after startup is in that list, and every `bridge_*_total` counter a runbook names exists at 0
//! from startup — before its first event — with every value of its (closed) label set.

use divine_atbridge::metrics::{self, METRIC_NAMES};
use std::collections::BTreeSet;
use std::path::Path;

fn docs() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/runbooks"))
}

/// Names of the `### \`name\`` sections of metrics.md starting with `prefix`.
fn documented(prefix: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(docs().join("metrics.md")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("### `")?.strip_suffix('`'))
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Every `bridge_…_total` name mentioned in any runbook.
fn counters_in_runbooks() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(docs()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("bridge_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let preceded_by_word = at > 0 && rest.as_bytes()[at - 1].is_ascii_alphanumeric();
            if name.ends_with("_total") && !preceded_by_word {
                names.insert(name.to_string());
            }
            rest = &tail[end..];
        }
    }
    names
}

fn startup_exposition() -> String {
    metrics::install();
    metrics::register_relays(&["wss://relay.example".to_string()]);
    metrics::render()
}

fn exported_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_md_has_one_section_per_exported_name() {
    let exported: BTreeSet<String> = METRIC_NAMES.iter().map(|s| s.to_string()).collect();
    assert_eq!(exported.len(), METRIC_NAMES.len(), "a name is listed twice");
    let documented = documented("bridge_");
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "metrics.md is out of date: not documented {undocumented:?}, documented but not exported {stale:?}"
    );
    let text = startup_exposition();
    let unknown: Vec<_> = exported_families(&text)
        .into_iter()
        .filter(|f| !exported.contains(f))
        .collect();
    assert!(unknown.is_empty(), "exported but not in METRIC_NAMES: {unknown:?}");
}

#[test]
fn every_counter_the_runbooks_name_exists_at_zero_from_startup() {
    let text = startup_exposition();
    let families = exported_families(&text);
    let counters = counters_in_runbooks();
    assert!(
        counters.contains(metrics::NOSTR_EVENTS_REJECTED) && counters.contains(metrics::RELAY_SUBSCRIPTIONS_CLOSED),
        "{counters:?}"
    );
    for name in &counters {
        assert!(
            METRIC_NAMES.contains(&name.as_str()),
            "a runbook names {name}, which is not exported"
        );
        assert!(
            families.contains(name),
            "{name} is not exported before its first event:\n{text}"
        );
    }
    for reason in divine_atbridge::ingest::Refusal::REASONS {
        let series = format!("{}{{reason=\"{reason}\"}} 0", metrics::NOSTR_EVENTS_REJECTED);
        assert!(text.contains(&series), "missing {series}");
    }
    for reason in divine_atbridge::ingest::CLOSED_REASONS {
        let series = format!(
            "{}{{relay=\"wss://relay.example\",reason=\"{reason}\"}} 0",
            metrics::RELAY_SUBSCRIPTIONS_CLOSED
        );
        assert!(text.contains(&series), "missing {series}");
    }
    // Every counter of metrics.md, not only those a runbook names (before: the PDS requests, dropped fields and
    // skipped profile images appeared only after their first event).
    let missing: Vec<&&str> = METRIC_NAMES
        .iter()
        .filter(|n| n.ends_with("_total") && !families.contains(**n))
        .collect();
    assert!(missing.is_empty(), "not exported at startup: {missing:?}");
    for method in divine_atbridge::xrpc::XrpcMethod::ALL {
        for status in divine_atbridge::xrpc::STATUS_LABELS {
            let series = format!("{}{{method=\"{method}\",status=\"{status}\"}} 0", metrics::PDS_REQUESTS);
            assert!(text.contains(&series), "missing {series}");
        }
    }
    for field in divine_atbridge::nostr::OptionalField::ALL {
        let series = format!("{}{{field=\"{}\"}} 0", metrics::NOSTR_FIELDS_DROPPED, field.as_str());
        assert!(text.contains(&series), "missing {series}");
    }
    for (field, code) in [
        ("avatar", "avatar_too_large"),
        ("banner", "banner_unsupported_format"),
        ("avatar", "media_http_status"),
        ("banner", "media_host_not_allowed"),
    ] {
        let series = format!(
            "{}{{field=\"{field}\",code=\"{code}\"}} 0",
            metrics::PROFILE_IMAGES_SKIPPED
        );
        assert!(text.contains(&series), "missing {series}");
    }
    assert!(text.contains(&format!("{} 0", metrics::LEASE_CONFLICTS)), "{text}");
    let build = format!(
        "{}{{version=\"{}\",git_sha=\"{}\"}} 1",
        metrics::BUILD_INFO,
        metrics::VERSION,
        metrics::GIT_SHA
    );
    assert!(text.contains(&build), "missing {build}");
}
