//! The names of the metrics this crate records, in one place. `divine-atbridge::metrics` re-exports them, describes
//! them and lists them with its own (`METRIC_NAMES`, checked against `docs/runbooks/metrics.md`).

/// Media fetch duration by kind and outcome (`media`).
pub const MEDIA_FETCH_DURATION: &str = "bridge_media_fetch_duration_seconds";
/// Bytes of a successful media fetch by kind (`media`).
pub const MEDIA_FETCH_BYTES: &str = "bridge_media_fetch_bytes";
