//! The vocabulary every Divine bridge crate shares, with no I/O and no heavy dependency: how an error is classified
//! ([`Classified`], [`ErrorClass`]), every stable error code ([`ErrorCode`]), and the closed sets of job kinds and
//! states stored in Postgres ([`states`]).
//!
//! Why a crate of its own: the protocol crates (`divine-atproto`, `divine-nostr`) classify their errors with these
//! types, and they must not link Diesel and libpq to do it. `divine-bridge-db` re-exports `class` and `states`, so
//! `divine_bridge_db::{Classified, JobState, ...}` keeps working.

pub mod class;
pub mod code;
pub mod states;

pub use class::{Classified, ErrorClass};
pub use code::{ErrorCode, ReasonLabel};
pub use states::{AuditAction, JobKind, JobState, ProvisioningState, RecordState, UnknownValue};
