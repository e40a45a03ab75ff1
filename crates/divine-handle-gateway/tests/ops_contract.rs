//! What an operator reads from the gateway (issue 14 §3–4): access-log lines carry the problem `code` of an error
//! answer and, for a 401, why the credential was refused; the opt-in line carries the request id the client got;
//! `docs/runbooks/metrics.md` documents exactly the exported names (`metrics::METRIC_NAMES`), and the closed label
//! sets and build info exist from startup. Logs are captured as the JSON a `LOG_FORMAT=json` process writes.

mod common;

use axum::body::Body;
use axum::http::{Method, Request};
use common::*;
use divine_bridge_db::testutil::logs::{self, Capture};
use divine_handle_gateway::metrics::{self, METRIC_NAMES};
use std::collections::BTreeSet;

fn capture() -> &'static Capture {
    logs::capture("info")
}

/// Captured lines whose fields carry `request_id`.
fn lines_of(request_id: &str) -> Vec<serde_json::Value> {
    capture()
        .lines()
        .into_iter()
        .filter(|l| l["fields"]["request_id"] == request_id)
        .collect()
}

fn with_id(mut req: Request<Body>, id: &str) -> Request<Body> {
    req.headers_mut().insert("x-request-id", id.parse().unwrap());
    req
}

#[tokio::test]
async fn request_lines_carry_the_problem_code_the_401_reason_and_the_request_id() {
    capture();
    let gw = Gw::new("gw_access_log");

    // 401: wrong service token.
    let mut req = bearer(
        Method::GET,
        &format!("/api/account-links/{}/status", new_pubkey()),
        None,
    );
    req.headers_mut()
        .insert("authorization", "Bearer not-the-service-token".parse().unwrap());
    let r = gw.send(with_id(req, "req-401")).await;
    r.problem(401, "unauthorized");
    let lines = lines_of("req-401");
    let request = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request")
        .expect("a request line");
    assert_eq!(request["fields"]["status"], 401, "{request}");
    assert_eq!(request["fields"]["code"], "unauthorized", "{request}");
    assert_eq!(request["fields"]["auth_reason"], "bad_token", "{request}");

    // 404 problem: the code, no auth reason.
    let r = gw
        .send(with_id(
            bearer(
                Method::GET,
                &format!("/api/account-links/{}/status", new_pubkey()),
                None,
            ),
            "req-404",
        ))
        .await;
    r.problem(404, "account_not_found");
    let lines = lines_of("req-404");
    let request = lines.iter().find(|l| l["fields"]["message"] == "request").unwrap();
    assert_eq!(request["fields"]["code"], "account_not_found", "{request}");
    assert!(request["fields"].get("auth_reason").is_none(), "{request}");

    // The opt-in line names the request the client saw.
    let pk = new_pubkey();
    let body = serde_json::json!({"nostr_pubkey": pk, "handle": format!("logged.{DOMAIN}")});
    let r = gw
        .send(with_id(
            bearer(Method::POST, "/api/account-links/opt-in", Some(body)),
            "req-optin",
        ))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let lines = lines_of("req-optin");
    let opt_in = lines
        .iter()
        .find(|l| l["fields"]["message"] == "opt-in")
        .expect("an opt-in line");
    assert_eq!(opt_in["fields"]["pubkey"], pk.as_str(), "{opt_in}");
    assert_eq!(opt_in["fields"]["outcome"], "created", "{opt_in}");
}

#[tokio::test]
async fn metrics_md_matches_the_exported_names_and_closed_sets_start_at_zero() {
    let handle = metrics::prometheus();
    let text = metrics::render(&handle);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/runbooks/metrics.md")).unwrap();
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### `")?.strip_suffix('`'))
        .filter(|n| n.starts_with("gateway_"))
        .collect();
    let exported: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
    assert_eq!(documented, exported, "metrics.md sections vs METRIC_NAMES");
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split_whitespace().next().unwrap();
        assert!(exported.contains(name), "{name} is exported but not in METRIC_NAMES");
    }
    // Every counter metrics.md lists exists right after startup, before its first event (before: the auth failures
    // appeared only after a first 401, so `grep gateway_auth_failures_total` found nothing on a healthy replica).
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Except the request counter: route × the status answered, created by the first response (a probe).
    let missing: Vec<&&str> = documented
        .iter()
        .filter(|n| n.ends_with("_total") && **n != metrics::HTTP_REQUESTS && !families.contains(*n))
        .collect();
    assert!(missing.is_empty(), "not exported at startup: {missing:?}\n{text}");
    // Each reason's series, whatever its value (another test of this binary may have counted a 401 already).
    for reason in divine_handle_gateway::problem::AuthReason::ALL {
        let series = format!("{}{{reason=\"{}\"}} ", metrics::AUTH_FAILURES, reason.as_str());
        assert!(
            text.lines().any(|l| l.starts_with(&series)),
            "missing {series}:\n{text}"
        );
    }
    for outcome in metrics::OPT_IN_OUTCOMES {
        let series = format!("{}{{outcome=\"{outcome}\"}} 0", metrics::OPT_INS);
        assert!(text.contains(&series), "missing {series}:\n{text}");
    }
    let build = format!(
        "{}{{version=\"{}\",git_sha=\"{}\"}} 1",
        metrics::BUILD_INFO,
        metrics::VERSION,
        metrics::GIT_SHA
    );
    assert!(text.contains(&build), "missing {build}:\n{text}");
}
