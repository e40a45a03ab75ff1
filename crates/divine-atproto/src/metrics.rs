//! The names of the metrics this crate records, in one place. `divine-atbridge::metrics` re-exports them, describes
//! them and lists them with its own (`METRIC_NAMES`, checked against `docs/runbooks/metrics.md`).

/// XRPC calls to the PDS/PLC by method and status (`xrpc`).
pub const PDS_REQUESTS: &str = "bridge_pds_requests_total";
/// XRPC call latency by method (`xrpc`).
pub const PDS_REQUEST_DURATION: &str = "bridge_pds_request_duration_seconds";
