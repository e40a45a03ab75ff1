//! Prometheus metrics: installs the global recorder once and describes every metric of the fixed contract (names
//! and labels are an operator-facing API: see docs/runbooks/job-queue.md). Other modules emit with the `metrics`
//! macros; this module must not compute values itself. Series whose label values form a closed set (job kinds,
//! outcomes) are created at zero on install, so dashboards and alerts see them before the first event.
//!
//! The exporter crate is built without its HTTP listener: `crate::http` renders [`PrometheusHandle`] on `/metrics`.

use divine_bridge_db::JobKind;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Every metric name of the contract, in the order of the runbook.
pub const METRIC_NAMES: &[&str] = &[
    "bridge_jobs_enqueued_total",
    "bridge_jobs_finished_total",
    "bridge_job_duration_seconds",
    "bridge_jobs",
    "bridge_oldest_queued_job_age_seconds",
    "bridge_expired_leases",
    "bridge_watchdog_reclaimed_total",
    "bridge_jobs_suspected_poison_total",
    "bridge_job_tries_cut_off_total",
    "bridge_relay_connected",
    "bridge_relay_subscriptions_closed_total",
    "bridge_nostr_events_rejected_total",
    "bridge_relay_cursor_lag_seconds",
    "bridge_nostr_fields_dropped_total",
    "bridge_profile_images_skipped_total",
    "bridge_publish_lag_seconds",
    "bridge_publish_phase_seconds",
    "bridge_pds_requests_total",
    "bridge_task_exits_total",
    "bridge_jobs_pruned_total",
    "bridge_e2e_lag_seconds",
    "bridge_reconcile_found_total",
    "bridge_reconcile_sweep_duration_seconds",
    "bridge_reconcile_last_success_timestamp_seconds",
    "bridge_reconcile_leader",
];

/// Values of the `outcome` label of `bridge_jobs_finished_total`.
pub const OUTCOMES: &[&str] = &["succeeded", "failed", "retried", "cancelled", "ineligible"];

/// Values of the `phase` label of `bridge_publish_phase_seconds`, in the order a `publish_post` try runs them (see
/// `jobs::publish::phase`): event check, database gates, translation, media budget wait, media fetch, reservation,
/// uploads, putRecord, marking published.
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
        "bridge_jobs_enqueued_total",
        "Jobs enqueued, by kind (duplicates by unique key are not counted)."
    );
    describe_counter!(
        "bridge_jobs_finished_total",
        "Job tries finished, by kind and outcome (succeeded|failed|retried|cancelled|ineligible)."
    );
    describe_histogram!(
        "bridge_job_duration_seconds",
        Unit::Seconds,
        "Duration of one job try, by kind."
    );
    describe_gauge!(
        "bridge_jobs",
        "Jobs by kind and state (refreshed every 15 s from one GROUP BY query)."
    );
    describe_gauge!(
        "bridge_oldest_queued_job_age_seconds",
        Unit::Seconds,
        "Age of the oldest queued job from its event (backoff included; backfill from enqueue), by kind."
    );
    describe_gauge!(
        "bridge_expired_leases",
        "Running jobs whose lease has expired (awaiting the watchdog)."
    );
    describe_counter!(
        "bridge_watchdog_reclaimed_total",
        "Jobs put back in the queue by the watchdog after their lease expired."
    );
    describe_counter!(
        "bridge_task_exits_total",
        "Supervised background tasks (http, ingest, workers, retention) that ended unexpectedly, by task."
    );
    describe_counter!(
        "bridge_jobs_pruned_total",
        "Finished jobs deleted by retention (older than JOB_RETENTION_SECS)."
    );
    describe_counter!(
        "bridge_jobs_suspected_poison_total",
        "Jobs the watchdog parked as suspected_poison (lease expired RECLAIM_LIMIT times), by kind."
    );
    describe_counter!(
        "bridge_job_tries_cut_off_total",
        "Tries whose handler was dropped (try_timeout, lease_deadline, lease_lost), by kind and reason."
    );
    describe_gauge!("bridge_relay_connected", "1 when the relay connection is up, by relay.");
    describe_counter!(
        "bridge_relay_subscriptions_closed_total",
        "Live subscriptions a relay ended with CLOSED, by relay and NIP-01 reason prefix; each is retried."
    );
    describe_gauge!(
        "bridge_relay_cursor_lag_seconds",
        Unit::Seconds,
        "Now minus the relay's stored cursor position, by relay; negative when the cursor is ahead of now."
    );
    describe_counter!(
        "bridge_nostr_events_rejected_total",
        "Nostr events refused at ingest, by reason."
    );
    describe_counter!(
        "bridge_nostr_fields_dropped_total",
        "Malformed optional imeta/legacy video fields (dim, duration, size) dropped while translating, by field."
    );
    describe_counter!(
        "bridge_profile_images_skipped_total",
        "Profile images (avatar, banner) left out of a synced profile, by field and code."
    );
    describe_histogram!(
        "bridge_publish_lag_seconds",
        Unit::Seconds,
        "From a live event's created_at to its record being written."
    );
    describe_histogram!(
        "bridge_publish_phase_seconds",
        Unit::Seconds,
        "Time a publish_post try spent in each phase (verify, gate, translate, budget_wait, fetch, reserve, upload, \
         put, mark), by phase: where a job's time goes."
    );
    describe_histogram!(
        "bridge_e2e_lag_seconds",
        Unit::Seconds,
        "From the event's created_at (or enqueue) to the job's terminal outcome, by kind and outcome \
         (succeeded|failed|cancelled|ineligible); backfill excluded. The SLO's source."
    );
    describe_counter!(
        "bridge_reconcile_found_total",
        "What the reconciliation sweep enqueued or re-drove because the live path missed it, by reason; 0 when healthy."
    );
    describe_histogram!(
        "bridge_reconcile_sweep_duration_seconds",
        Unit::Seconds,
        "Duration of one reconciliation sweep (leader only)."
    );
    describe_gauge!(
        "bridge_reconcile_last_success_timestamp_seconds",
        Unit::Seconds,
        "UNIX time of the last reconciliation sweep that read every relay and finished (leader only)."
    );
    describe_gauge!(
        "bridge_reconcile_leader",
        "1 on the replica holding the reconciliation leader lock."
    );
    describe_counter!(
        "bridge_pds_requests_total",
        "Requests to the PDS and PLC, by method and HTTP status (or error)."
    );
}

/// Creates the series with closed label sets at zero (counters only ever go up from here; gauges are overwritten
/// by their owners).
fn zero_closed_series() {
    for kind in JobKind::ALL {
        let kind = kind.as_str();
        metrics::counter!("bridge_jobs_enqueued_total", "kind" => kind).increment(0);
        metrics::counter!("bridge_jobs_suspected_poison_total", "kind" => kind).increment(0);
        for reason in CUT_OFF_REASONS {
            metrics::counter!("bridge_job_tries_cut_off_total", "kind" => kind, "reason" => *reason).increment(0);
        }
        for outcome in OUTCOMES {
            metrics::counter!("bridge_jobs_finished_total", "kind" => kind, "outcome" => *outcome).increment(0);
        }
        // Registering a histogram renders its (empty) buckets.
        let _ = metrics::histogram!("bridge_job_duration_seconds", "kind" => kind);
        metrics::gauge!("bridge_oldest_queued_job_age_seconds", "kind" => kind).set(0.0);
        for outcome in crate::slo::TERMINAL_OUTCOMES {
            let _ = metrics::histogram!(crate::slo::E2E_LAG, "kind" => kind, "outcome" => *outcome);
        }
        for state in divine_bridge_db::queue::STATS_STATES {
            metrics::gauge!("bridge_jobs", "kind" => kind, "state" => state.as_str()).set(0.0);
        }
    }
    metrics::gauge!("bridge_expired_leases").set(0.0);
    metrics::counter!("bridge_watchdog_reclaimed_total").increment(0);
    for task in crate::app::TASKS {
        metrics::counter!("bridge_task_exits_total", "task" => task).increment(0);
    }
    metrics::counter!("bridge_jobs_pruned_total").increment(0);
    let _ = metrics::histogram!("bridge_publish_lag_seconds");
    for phase in PUBLISH_PHASES {
        let _ = metrics::histogram!("bridge_publish_phase_seconds", "phase" => *phase);
    }
    for reason in crate::reconcile::reason_labels() {
        metrics::counter!("bridge_reconcile_found_total", "reason" => reason).increment(0);
    }
}

/// The current exposition text.
pub fn render() -> String {
    install().render()
}
