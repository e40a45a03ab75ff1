//! The gateway's Prometheus metrics: the process-wide recorder (installed once, rendered by `GET /metrics`) and
//! the metric names. Owns naming and rendering only; the `edge` middleware and `problem` record the values.
//!
//! Metrics: `gateway_http_requests_total{route,status}` (route is the matched route TEMPLATE such as
//! `/api/account-links/{pubkey}/status`, `unmatched` for unknown paths — never the raw path, so cardinality stays
//! bounded), `gateway_http_request_duration_seconds{route}`, `gateway_auth_failures_total{reason}`,
//! `gateway_opt_ins_total{outcome}`, `gateway_rate_limited_total{scope}`, `gateway_provisioning_budget_exhausted_total`,
//! `gateway_provisioning_budget_used`, `gateway_well_known_lookups_total{result}`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Requests answered, by route template and status code.
pub const HTTP_REQUESTS: &str = "gateway_http_requests_total";
/// Request latency by route template.
pub const HTTP_DURATION: &str = "gateway_http_request_duration_seconds";
/// Rejected credentials by reason (`missing`, `bad_token`, `bad_signature`, `wrong_url`, `replay`, …).
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
/// Opt-ins by outcome (`created`, `existing`, `reenabled`).
pub const OPT_INS: &str = "gateway_opt_ins_total";
/// Always 1, labelled with the build (`version`, `git_sha`).
pub const BUILD_INFO: &str = "gateway_build_info";

/// Every metric name of the gateway, in the order of docs/runbooks/metrics.md.
pub const METRIC_NAMES: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_DURATION,
    AUTH_FAILURES,
    OPT_INS,
    BUILD_INFO,
    RATE_LIMITED,
    PROVISIONING_BUDGET_EXHAUSTED,
    PROVISIONING_BUDGET_USED,
    WELL_KNOWN_LOOKUPS,
];

/// The values of the `outcome` label of [`OPT_INS`], created at zero on install.
pub const OPT_IN_OUTCOMES: [&str; 3] = ["created", "existing", "reenabled"];

/// The `version` label of [`BUILD_INFO`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The `git_sha` label of [`BUILD_INFO`]: `GIT_SHA` in the build environment, `unknown` without it.
pub const GIT_SHA: &str = match option_env!("GIT_SHA") {
    Some(sha) if !sha.is_empty() => sha,
    _ => "unknown",
};

/// Requests refused by a rate limit, by scope (`client`, `global`, `toggle`).
pub const RATE_LIMITED: &str = "gateway_rate_limited_total";
/// New opt-ins refused because `PROVISIONING_BUDGET_PER_HOUR` was used up (alert `DivineGatewayProvisioningBudgetExhausted`).
pub const PROVISIONING_BUDGET_EXHAUSTED: &str = "gateway_provisioning_budget_exhausted_total";
/// Links created in the last hour, as last counted by this replica for a new opt-in.
pub const PROVISIONING_BUDGET_USED: &str = "gateway_provisioning_budget_used";
/// `/.well-known/atproto-did` lookups by `result` (`hit`: answered from the cache, `miss`: queried).
pub const WELL_KNOWN_LOOKUPS: &str = "gateway_well_known_lookups_total";

/// The `scope` label of [`RATE_LIMITED`]: which limit refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitScope {
    /// The per-client-IP bucket.
    Client,
    /// The replica-wide bucket.
    Global,
    /// The per-account enable/disable limit.
    Toggle,
}

impl RateLimitScope {
    pub const ALL: [RateLimitScope; 3] = [RateLimitScope::Client, RateLimitScope::Global, RateLimitScope::Toggle];

    pub const fn as_str(self) -> &'static str {
        match self {
            RateLimitScope::Client => "client",
            RateLimitScope::Global => "global",
            RateLimitScope::Toggle => "toggle",
        }
    }
}

/// The `result` label of [`WELL_KNOWN_LOOKUPS`].
pub const WELL_KNOWN_RESULTS: [&str; 2] = [WELL_KNOWN_HIT, WELL_KNOWN_MISS];
/// A lookup answered from the cache.
pub const WELL_KNOWN_HIT: &str = "hit";
/// A lookup that queried the database.
pub const WELL_KNOWN_MISS: &str = "miss";

/// Latency buckets (seconds) of [`HTTP_DURATION`]: real buckets, not a summary, so replicas aggregate with
/// `histogram_quantile(…, sum by (le) (rate(…_bucket[5m])))`. From a cached well-known lookup (1 ms) to a slow
/// database (5 s and beyond).
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_string()), DURATION_BUCKETS)
        .expect("non-empty buckets")
}

/// The process-wide Prometheus handle. The first call installs the global recorder; if another recorder is
/// already installed (embedding process), a detached recorder is used so `/metrics` still answers.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = match builder().install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; gateway metrics detached");
                    builder().build_recorder().handle()
                }
            };
            metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route template and status");
            metrics::describe_histogram!(
                HTTP_DURATION,
                metrics::Unit::Seconds,
                "HTTP request latency by route template"
            );
            metrics::describe_counter!(AUTH_FAILURES, "rejected credentials by reason");
            metrics::describe_counter!(OPT_INS, "opt-in requests by outcome");
            metrics::describe_counter!(RATE_LIMITED, "requests refused by a rate limit, by scope");
            metrics::describe_counter!(
                PROVISIONING_BUDGET_EXHAUSTED,
                "new opt-ins refused because the hourly provisioning budget was used up"
            );
            metrics::describe_gauge!(PROVISIONING_BUDGET_USED, "account links created in the last hour");
            metrics::describe_counter!(WELL_KNOWN_LOOKUPS, "well-known handle lookups by cache result");
            metrics::describe_gauge!(
                BUILD_INFO,
                "always 1; the labels say which build runs (version, git_sha)"
            );
            // Every counter with a closed label set exists at 0 from startup, so a grep or an alert finds it on a
            // replica that has not counted anything yet. `gateway_http_requests_total` is the exception: its
            // `status` is whatever a route answers, and the first probe (seconds after startup) creates it.
            for outcome in OPT_IN_OUTCOMES {
                metrics::counter!(OPT_INS, "outcome" => outcome).increment(0);
            }
            for reason in crate::problem::AuthReason::ALL {
                metrics::counter!(AUTH_FAILURES, "reason" => reason.as_str()).increment(0);
            }
            for scope in RateLimitScope::ALL {
                metrics::counter!(RATE_LIMITED, "scope" => scope.as_str()).increment(0);
            }
            for result in WELL_KNOWN_RESULTS {
                metrics::counter!(WELL_KNOWN_LOOKUPS, "result" => result).increment(0);
            }
            metrics::counter!(PROVISIONING_BUDGET_EXHAUSTED).increment(0);
            metrics::gauge!(BUILD_INFO, "version" => VERSION, "git_sha" => GIT_SHA).set(1.0);
            handle
        })
        .clone()
}

/// Prometheus text exposition of every metric.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}
