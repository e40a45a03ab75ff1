//! The zero-loss SLO as metrics: what I post on Divine appears on Bluesky, what I delete disappears — 95 % within
//! 5 minutes, 99 % within 30 minutes, nothing lost. Owns the end-to-end lag histogram
//! `bridge_e2e_lag_seconds{kind,outcome}` and the definition of the lag; it must not decide outcomes (the worker
//! does) or read the database. The loss half of the SLO is measured by the reconciliation sweep
//! (`bridge_reconcile_found_total`, see [`crate::reconcile`]).
//!
//! Semantics:
//! 1. The lag of a job is `now − source_created_at` at the moment its try ends in a TERMINAL outcome (succeeded,
//!    failed, cancelled, ineligible): the event's `created_at` for event jobs (the moment the user posted), the
//!    enqueue time for jobs without a source event. A `retried` try is not an end and is not observed; a job that
//!    ends after days of retries is observed once, with days of lag.
//! 2. Every terminal outcome is observed, not only successes, so the recording rules can count a failed or cancelled
//!    job as a miss of the objective (deploy/k8s/alerts.yaml, group `divine-bridge.slo`).
//! 3. Future-dated events (accepted up to `MAX_FUTURE_SKEW_SECS` ahead) are clamped to 0 s.
//! 4. History imported at backfill priority is not observed: a post from last year imported on opt-in is not late.
//!    Events the reconciliation sweep finds are enqueued at live priority, so their (large) lag IS observed.

use divine_bridge_db::queue::LeasedJob;
use divine_bridge_db::states::priority;

/// Name of the end-to-end lag histogram.
pub const E2E_LAG: &str = crate::metrics::E2E_LAG;

/// The bucket bounds the SLO needs (seconds): the objectives (300, 1800) and the points around them. The shared
/// `metrics::BUCKETS` must contain every one of them (checked by a unit test).
pub const REQUIRED_BUCKETS: &[f64] = &[1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];

/// The `outcome` labels of `bridge_jobs_finished_total` that end a job (semantics 1).
pub const TERMINAL_OUTCOMES: &[&str] = &["succeeded", "failed", "cancelled", "ineligible"];

/// The lag of a job ending at `now`: `now − source_created_at` in seconds, clamped at 0 (semantics 1, 3).
pub fn e2e_lag_secs(source_created_at: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> f64 {
    ((now - source_created_at).num_milliseconds() as f64 / 1000.0).max(0.0)
}

/// Observes the end of `job` with `outcome` (a `bridge_jobs_finished_total` outcome label) in
/// `bridge_e2e_lag_seconds{kind,outcome}`; does nothing for a non-terminal outcome or a backfill-priority job.
pub fn observe_end(job: &LeasedJob, outcome: &'static str) {
    if !TERMINAL_OUTCOMES.contains(&outcome) || job.priority >= priority::BACKFILL {
        return;
    }
    let lag = e2e_lag_secs(job.source_created_at, chrono::Utc::now());
    metrics::histogram!(E2E_LAG, "kind" => job.kind.as_str(), "outcome" => outcome).record(lag);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    #[test]
    fn lag_is_from_the_event_and_never_negative() {
        let now = Utc::now();
        assert_eq!(e2e_lag_secs(now - Duration::seconds(90), now), 90.0);
        assert_eq!(
            e2e_lag_secs(now + Duration::seconds(500), now),
            0.0,
            "future-dated clamps to 0"
        );
    }

    #[test]
    fn the_shared_buckets_contain_the_slo_bounds() {
        for b in REQUIRED_BUCKETS {
            assert!(
                crate::metrics::BUCKETS.contains(b),
                "bucket {b} missing from metrics::BUCKETS"
            );
        }
    }
}
