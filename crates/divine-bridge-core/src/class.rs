//! Error classification shared by every crate.
//!
//! Owns the contract between code that *produces* errors (PLC/PDS clients, translation, media fetch) and the job
//! queue that *acts* on them. An error is classified where it is born (HTTP status + XRPC error name, validation
//! rule) and never later by matching message text. This module must not know about any concrete error type.

use crate::ErrorCode;
use std::time::Duration;

/// Whether retrying the same work can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Network faults, timeouts, 5xx, 429, lock contention: retry with backoff (never terminal by count alone).
    Transient,
    /// Validation failures, non-retryable 4xx, bad input: retrying cannot help.
    Permanent,
}

/// Implemented by every error enum that can end a job or reach an operator.
///
/// `code()` is a variant of the one [`ErrorCode`] enum, never a free string: a code with no variant (and hence no
/// entry in `docs/runbooks/troubleshooting.md`, which `code.rs`'s unit test checks) does not compile. Its wire
/// spelling (stored `last_error_code`, logs, metric labels, the gateway's problem `code`) is [`ErrorCode::as_str`].
pub trait Classified: std::error::Error {
    /// Stable machine-readable code, e.g. [`ErrorCode::PlcRejected`] (`plc_rejected`).
    fn code(&self) -> ErrorCode;
    /// Transient or permanent, decided where the error was born.
    fn class(&self) -> ErrorClass;
    /// Server-provided retry hint (HTTP `Retry-After` / rate-limit reset), if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}
