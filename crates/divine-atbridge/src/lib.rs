//! divine-atbridge: the bridge worker. Each module owns one domain concept (indigo style); `main.rs` stays thin.
//!
//! Crates along the dependency arrows: `divine-bridge-core` (error classes, job kinds and states) ← `divine-atproto`
//! (`tid`, `keys`, `jwt`, `xrpc`, `plc`, `pds`) and `divine-nostr` (`nostr`, `translate`, `media`, `spool`), neither
//! of which links Diesel ← this crate, which wires them to the database (`divine-bridge-db`). Dev-only binaries live
//! in `divine-dev-tools`.
//! Identity: `identity` (provisioning flow over `plc` and `pds`).
//! Cross-posting: `ingest` (relays → jobs), `jobs` (publish, delete, profile, backfill, disconnect).
//! Runtime: `worker` (job pool, heartbeat, watchdog), `metrics`, `http` (health/ready/metrics server).
//! Zero-loss: `reconcile` (leader-elected sweep that finds what the live path missed), `slo` (end-to-end lag).

pub mod app;
pub mod cli;
pub mod config;
pub mod failpoint;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod reconcile;
pub mod rekey;
pub mod retention;
pub mod slo;
pub mod worker;

// Protocol modules live in their own crates (no Diesel there); re-exported so `divine_atbridge::keys::...` and
// `crate::keys::...` paths keep working.
pub use divine_atproto::{jwt, keys, pds, plc, tid, xrpc};
pub use divine_nostr::{blob, media, nostr, spool, translate};
