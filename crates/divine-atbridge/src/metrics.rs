//! Prometheus metrics: installs the global recorder once and describes every metric of the fixed contract (names
//! and labels are an operator-facing API: see docs/runbooks/metrics.md). Other modules emit with the `metrics`
//! macros; this module must not compute values itself.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets (seconds) for job durations and publish lag.
const BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Installs the recorder (idempotent) and returns the handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // In tests another recorder may already be installed; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            describe();
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
    describe_gauge!("bridge_jobs", "Jobs by kind and state.");
    describe_gauge!(
        "bridge_oldest_queued_job_age_seconds",
        Unit::Seconds,
        "Age of the oldest runnable queued job, by kind."
    );
    describe_gauge!(
        "bridge_expired_leases",
        "Running jobs whose lease has expired (awaiting the watchdog)."
    );
    describe_counter!(
        "bridge_watchdog_reclaimed_total",
        "Jobs put back in the queue by the watchdog after their lease expired."
    );
    describe_gauge!("bridge_relay_connected", "1 when the relay connection is up, by relay.");
    describe_counter!(
        "bridge_nostr_events_rejected_total",
        "Nostr events refused at ingest, by reason."
    );
    describe_histogram!(
        "bridge_publish_lag_seconds",
        Unit::Seconds,
        "From a live event's created_at to its record being written."
    );
    describe_counter!(
        "bridge_pds_requests_total",
        "Requests to the PDS and PLC, by method and HTTP status (or error)."
    );
}

/// The current exposition text.
pub fn render() -> String {
    install().render()
}
