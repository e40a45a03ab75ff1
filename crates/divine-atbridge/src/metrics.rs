//! Prometheus metrics: installs the global recorder once and describes every metric of the fixed contract (names
//! and labels are an operator-facing API: see docs/runbooks/job-queue.md). Other modules emit with the `metrics`
//! macros; this module must not compute values itself. Series whose label values form a closed set (job kinds,
//! outcomes) are created at zero on install, so dashboards and alerts see them before the first event.
//!
//! The exporter crate is built without its HTTP listener: `crate::http` renders [`PrometheusHandle`] on `/metrics`.

use divine_bridge_db::JobKind;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

// Metric names: the one place they are spelled (every emitter uses these constants; `docs/runbooks/metrics.md`
// documents each one, checked by `tests/metrics_contract.rs`).

/// Jobs enqueued, by kind (emitted by the db crate's queue).
pub const JOBS_ENQUEUED: &str = divine_bridge_db::queue::JOBS_ENQUEUED_METRIC;
pub const JOBS_FINISHED: &str = "bridge_jobs_finished_total";
pub const JOB_DURATION: &str = "bridge_job_duration_seconds";
pub const JOBS: &str = "bridge_jobs";
pub const OLDEST_QUEUED_JOB_AGE: &str = "bridge_oldest_queued_job_age_seconds";
pub const EXPIRED_LEASES: &str = "bridge_expired_leases";
pub const WATCHDOG_RECLAIMED: &str = "bridge_watchdog_reclaimed_total";
pub const JOBS_SUSPECTED_POISON: &str = "bridge_jobs_suspected_poison_total";
pub const JOB_TRIES_CUT_OFF: &str = "bridge_job_tries_cut_off_total";
pub const LEASE_CONFLICTS: &str = "bridge_lease_conflicts_total";
pub const RELAY_CONNECTED: &str = "bridge_relay_connected";
pub const RELAY_SUBSCRIPTIONS_CLOSED: &str = "bridge_relay_subscriptions_closed_total";
pub const NOSTR_EVENTS_REJECTED: &str = "bridge_nostr_events_rejected_total";
pub const RELAY_CURSOR_LAG: &str = "bridge_relay_cursor_lag_seconds";
pub const INGEST_SHARDS_HELD: &str = "bridge_ingest_shards_held";
pub const INGEST_SHARD_SUBSCRIPTIONS: &str = "bridge_ingest_shard_subscriptions_total";
pub const NOSTR_FIELDS_DROPPED: &str = "bridge_nostr_fields_dropped_total";
pub const PROFILE_IMAGES_SKIPPED: &str = "bridge_profile_images_skipped_total";
pub const PUBLISH_LAG: &str = "bridge_publish_lag_seconds";
pub const PUBLISH_PHASE: &str = "bridge_publish_phase_seconds";
pub use divine_atproto::metrics::{PDS_REQUESTS, PDS_REQUEST_DURATION};
pub use divine_nostr::metrics::{MEDIA_FETCH_BYTES, MEDIA_FETCH_DURATION};
pub const TASK_EXITS: &str = "bridge_task_exits_total";
pub const JOBS_PRUNED: &str = "bridge_jobs_pruned_total";
pub const HANDLES_RELEASED: &str = "bridge_handles_released_total";
pub const ACCOUNTS_DISCONNECTED: &str = "bridge_accounts_disconnected_total";
pub const E2E_LAG: &str = "bridge_e2e_lag_seconds";
pub const RECONCILE_FOUND: &str = "bridge_reconcile_found_total";
pub const RECONCILE_SWEEP_DURATION: &str = "bridge_reconcile_sweep_duration_seconds";
pub const RECONCILE_LAST_SUCCESS: &str = "bridge_reconcile_last_success_timestamp_seconds";
pub const RECONCILE_LEADER: &str = "bridge_reconcile_leader";
pub const BUILD_INFO: &str = "bridge_build_info";

/// Every metric name of the contract, in the order of the runbook.
pub const METRIC_NAMES: &[&str] = &[
    JOBS_ENQUEUED,
    JOBS_FINISHED,
    JOB_DURATION,
    JOBS,
    OLDEST_QUEUED_JOB_AGE,
    EXPIRED_LEASES,
    WATCHDOG_RECLAIMED,
    JOBS_SUSPECTED_POISON,
    JOB_TRIES_CUT_OFF,
    LEASE_CONFLICTS,
    RELAY_CONNECTED,
    RELAY_SUBSCRIPTIONS_CLOSED,
    NOSTR_EVENTS_REJECTED,
    RELAY_CURSOR_LAG,
    INGEST_SHARDS_HELD,
    INGEST_SHARD_SUBSCRIPTIONS,
    NOSTR_FIELDS_DROPPED,
    PROFILE_IMAGES_SKIPPED,
    PUBLISH_LAG,
    PUBLISH_PHASE,
    PDS_REQUESTS,
    PDS_REQUEST_DURATION,
    MEDIA_FETCH_DURATION,
    MEDIA_FETCH_BYTES,
    TASK_EXITS,
    JOBS_PRUNED,
    HANDLES_RELEASED,
    ACCOUNTS_DISCONNECTED,
    E2E_LAG,
    RECONCILE_FOUND,
    RECONCILE_SWEEP_DURATION,
    RECONCILE_LAST_SUCCESS,
    RECONCILE_LEADER,
    BUILD_INFO,
];

/// The version label of [`BUILD_INFO`]: the crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The `git_sha` label of [`BUILD_INFO`]: `GIT_SHA` in the build environment (the Dockerfile passes it as a build
/// argument), `unknown` for a build without it.
pub const GIT_SHA: &str = match option_env!("GIT_SHA") {
    Some(sha) if !sha.is_empty() => sha,
    _ => "unknown",
};

/// Buckets (bytes) of [`MEDIA_FETCH_BYTES`]: from a small caption (1 kB) to the largest accepted video (1 GB).
pub const BYTE_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9];

/// Values of the `outcome` label of `bridge_jobs_finished_total`.
pub const OUTCOMES: &[&str] = &["succeeded", "failed", "retried", "cancelled", "ineligible"];

/// Values of the `phase` label of `bridge_publish_phase_seconds`, in the order a `publish_post` try runs them (see
/// [`phase`]): event check and the one parse, database gates, translation, media budget wait, media fetch,
/// reservation, uploads, putRecord, marking published.
pub const PUBLISH_PHASES: &[&str] = &[
    "verify",
    "gate",
    "translate",
    "budget_wait",
    "fetch",
    "reserve",
    "upload",
    "put",
    "mark",
];

/// Values of the `reason` label of `bridge_job_tries_cut_off_total` (see `worker`, semantics 2).
pub const CUT_OFF_REASONS: &[&str] = &["try_timeout", "lease_deadline", "lease_lost"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets (seconds) for every `*_seconds` histogram (job durations, publish and end-to-end lag, sweep duration):
/// from a fast no-op try (5 ms) to a video upload or a backfilled post (an hour). Includes every bound of the SLO
/// (`slo::REQUIRED_BUCKETS`: 300 s and 1800 s are the objectives).
pub const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// Installs the recorder as the process-global one (idempotent: later calls return the same handle) and returns the
/// handle `/metrics` renders. Tests call it freely and parse [`render`]'s text.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("valid buckets")
                .set_buckets_for_metric(Matcher::Full(MEDIA_FETCH_BYTES.into()), BYTE_BUCKETS)
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will not see this process's metrics");
            }
            describe();
            zero_closed_series();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        JOBS_ENQUEUED,
        "Jobs enqueued, by kind (duplicates by unique key are not counted)."
    );
    describe_counter!(
        JOBS_FINISHED,
        "Job tries finished, by kind and outcome (succeeded|failed|retried|cancelled|ineligible)."
    );
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Duration of one job try, by kind.");
    describe_gauge!(
        JOBS,
        "Jobs by kind and state (refreshed every 15 s from one GROUP BY query)."
    );
    describe_gauge!(
        OLDEST_QUEUED_JOB_AGE,
        Unit::Seconds,
        "Age of the oldest queued job from its event (backoff included; backfill from enqueue), by kind."
    );
    describe_gauge!(
        EXPIRED_LEASES,
        "Running jobs whose lease has expired (awaiting the watchdog)."
    );
    describe_counter!(
        WATCHDOG_RECLAIMED,
        "Jobs put back in the queue by the watchdog after their lease expired."
    );
    describe_counter!(
        TASK_EXITS,
        "Supervised background tasks (http, ingest, workers, retention) that ended unexpectedly, by task."
    );
    describe_counter!(
        JOBS_PRUNED,
        "Finished jobs deleted by retention (older than JOB_RETENTION_SECS)."
    );
    describe_counter!(
        JOBS_SUSPECTED_POISON,
        "Jobs the watchdog parked as suspected_poison (lease expired RECLAIM_LIMIT times), by kind."
    );
    describe_counter!(
        JOB_TRIES_CUT_OFF,
        "Tries whose handler was dropped (try_timeout, lease_deadline, lease_lost), by kind and reason."
    );
    describe_gauge!(RELAY_CONNECTED, "1 when the relay connection is up, by relay.");
    describe_counter!(
        RELAY_SUBSCRIPTIONS_CLOSED,
        "Live subscriptions a relay ended with CLOSED, by relay and NIP-01 reason prefix; each is retried."
    );
    describe_gauge!(
        RELAY_CURSOR_LAG,
        Unit::Seconds,
        "Now minus the relay's stored cursor position, by relay; negative when the cursor is ahead of now."
    );
    describe_counter!(NOSTR_EVENTS_REJECTED, "Nostr events refused at ingest, by reason.");
    describe_counter!(
        NOSTR_FIELDS_DROPPED,
        "Malformed optional imeta/legacy video fields (dim, duration, size) dropped while translating, by field."
    );
    describe_counter!(
        PROFILE_IMAGES_SKIPPED,
        "Profile images (avatar, banner) left out of a synced profile, by field and code."
    );
    describe_histogram!(
        PUBLISH_LAG,
        Unit::Seconds,
        "From a live event's created_at to its record being written."
    );
    describe_histogram!(
        PUBLISH_PHASE,
        Unit::Seconds,
        "Time a publish_post try spent in each phase (verify, gate, translate, budget_wait, fetch, reserve, upload, \
         put, mark), by phase: where a job's time goes."
    );
    describe_histogram!(
        E2E_LAG,
        Unit::Seconds,
        "From the event's created_at (or enqueue) to the job's terminal outcome, by kind and outcome \
         (succeeded|failed|cancelled|ineligible); backfill excluded. The SLO's source."
    );
    describe_counter!(
        RECONCILE_FOUND,
        "What the reconciliation sweep enqueued or re-drove because the live path missed it, by reason; 0 when healthy."
    );
    describe_histogram!(
        RECONCILE_SWEEP_DURATION,
        Unit::Seconds,
        "Duration of one reconciliation sweep (leader only)."
    );
    describe_gauge!(
        RECONCILE_LAST_SUCCESS,
        Unit::Seconds,
        "UNIX time of the last reconciliation sweep that read every relay and finished (leader only)."
    );
    describe_gauge!(
        RECONCILE_LEADER,
        "1 on the replica holding the reconciliation leader lock."
    );
    describe_counter!(
        LEASE_CONFLICTS,
        "Leases of this process that came back empty because they raced an enqueue for the same key (jobs_one_running_per_key)."
    );
    describe_histogram!(
        PDS_REQUEST_DURATION,
        Unit::Seconds,
        "Latency of requests to the PDS and PLC, by method (the NSID, or plc.<op>), errors included."
    );
    describe_histogram!(
        MEDIA_FETCH_DURATION,
        Unit::Seconds,
        "Duration of one media fetch (DNS, redirects, body), by kind (video|caption|avatar|any) and outcome (ok or the media_* code)."
    );
    describe_histogram!(
        MEDIA_FETCH_BYTES,
        Unit::Bytes,
        "Size of each media body fetched successfully, by kind."
    );
    describe_gauge!(
        INGEST_SHARDS_HELD,
        "Ingest shards of a relay this replica holds the lease of, by relay."
    );
    describe_counter!(
        INGEST_SHARD_SUBSCRIPTIONS,
        "Shard subscriptions opened (first subscribe and every resubscribe), by relay."
    );
    describe_counter!(
        HANDLES_RELEASED,
        "Handles of disconnected accounts released by retention after HANDLE_RELEASE_GRACE_SECS."
    );
    describe_counter!(
        ACCOUNTS_DISCONNECTED,
        "Accounts whose disconnect job finished (records deleted, PDS account deactivated)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels say which build runs (version, git_sha)."
    );
    describe_counter!(
        PDS_REQUESTS,
        "Requests to the PDS and PLC, by method and HTTP status (or error)."
    );
}

/// Creates the series with closed label sets at zero (counters only ever go up from here; gauges are overwritten
/// by their owners).
fn zero_closed_series() {
    for kind in JobKind::ALL {
        let kind = kind.as_str();
        metrics::counter!(JOBS_ENQUEUED, "kind" => kind).increment(0);
        metrics::counter!(JOBS_SUSPECTED_POISON, "kind" => kind).increment(0);
        for reason in CUT_OFF_REASONS {
            metrics::counter!(JOB_TRIES_CUT_OFF, "kind" => kind, "reason" => *reason).increment(0);
        }
        for outcome in OUTCOMES {
            metrics::counter!(JOBS_FINISHED, "kind" => kind, "outcome" => *outcome).increment(0);
        }
        // Registering a histogram renders its (empty) buckets.
        let _ = metrics::histogram!(JOB_DURATION, "kind" => kind);
        metrics::gauge!(OLDEST_QUEUED_JOB_AGE, "kind" => kind).set(0.0);
        for outcome in crate::slo::TERMINAL_OUTCOMES {
            let _ = metrics::histogram!(crate::slo::E2E_LAG, "kind" => kind, "outcome" => *outcome);
        }
        for state in divine_bridge_db::queue::STATS_STATES {
            metrics::gauge!(JOBS, "kind" => kind, "state" => state.as_str()).set(0.0);
        }
    }
    metrics::gauge!(EXPIRED_LEASES).set(0.0);
    metrics::counter!(LEASE_CONFLICTS).increment(0);
    for reason in crate::ingest::Refusal::REASONS {
        metrics::counter!(NOSTR_EVENTS_REJECTED, "reason" => reason).increment(0);
    }
    metrics::counter!(HANDLES_RELEASED).increment(0);
    metrics::counter!(ACCOUNTS_DISCONNECTED).increment(0);
    metrics::gauge!(RECONCILE_LEADER).set(0.0);
    metrics::gauge!(RECONCILE_LAST_SUCCESS).set(0.0);
    let _ = metrics::histogram!(RECONCILE_SWEEP_DURATION);
    metrics::gauge!(BUILD_INFO, "version" => VERSION, "git_sha" => GIT_SHA).set(1.0);
    for kind in crate::media::MediaKind::ALL {
        let _ = metrics::histogram!(MEDIA_FETCH_DURATION, "kind" => kind.label(), "outcome" => "ok");
        let _ = metrics::histogram!(MEDIA_FETCH_BYTES, "kind" => kind.label());
    }
    metrics::counter!(WATCHDOG_RECLAIMED).increment(0);
    for method in divine_atproto::xrpc::XrpcMethod::ALL {
        for status in divine_atproto::xrpc::STATUS_LABELS {
            metrics::counter!(PDS_REQUESTS, "method" => method.as_str(), "status" => status).increment(0);
        }
    }
    for field in crate::nostr::OptionalField::ALL {
        metrics::counter!(NOSTR_FIELDS_DROPPED, "field" => field.as_str()).increment(0);
    }
    for field in crate::jobs::sources::ImageField::ALL {
        for code in field.skipped_codes() {
            metrics::counter!(PROFILE_IMAGES_SKIPPED, "field" => field.as_str(), "code" => code.as_str()).increment(0);
        }
    }
    for task in crate::app::TASKS {
        metrics::counter!(TASK_EXITS, "task" => task).increment(0);
    }
    metrics::counter!(JOBS_PRUNED).increment(0);
    let _ = metrics::histogram!(PUBLISH_LAG);
    for phase in PUBLISH_PHASES {
        let _ = metrics::histogram!(PUBLISH_PHASE, "phase" => *phase);
    }
    for reason in crate::reconcile::reason_labels() {
        metrics::counter!(RECONCILE_FOUND, "reason" => reason).increment(0);
    }
}

/// Creates the per-relay series at zero for the configured relays (`NOSTR_RELAYS`), so the counters the runbooks
/// grep (`bridge_relay_subscriptions_closed_total` by every NIP-01 reason prefix) exist before the first `CLOSED`.
pub fn register_relays(relays: &[String]) {
    for relay in relays {
        metrics::gauge!(RELAY_CONNECTED, "relay" => relay.clone()).set(0.0);
        metrics::gauge!(INGEST_SHARDS_HELD, "relay" => relay.clone()).set(0.0);
        metrics::counter!(INGEST_SHARD_SUBSCRIPTIONS, "relay" => relay.clone()).increment(0);
        for reason in crate::ingest::CLOSED_REASONS {
            metrics::counter!(RELAY_SUBSCRIPTIONS_CLOSED, "relay" => relay.clone(), "reason" => reason).increment(0);
        }
    }
}

/// The current exposition text.
pub fn render() -> String {
    install().render()
}

/// Records the time since `since` as one phase of a `publish_post` try (`bridge_publish_phase_seconds{phase}`, phases
/// in [`PUBLISH_PHASES`]) and returns now, the start of the next phase. Measurement only.
pub fn phase(name: &'static str, since: std::time::Instant) -> std::time::Instant {
    debug_assert!(PUBLISH_PHASES.contains(&name));
    let now = std::time::Instant::now();
    metrics::histogram!(PUBLISH_PHASE, "phase" => name).record((now - since).as_secs_f64());
    now
}
