//! divine-atbridge: the bridge worker. Each module owns one domain concept (indigo style); `main.rs` stays thin.
//!
//! Identity: `keys` (key material, did:key, sealing), `plc` (did:plc ops and directory client), `jwt` (service
//! auth), `xrpc` (the one HTTP path to PDS/PLC), `pds` (typed PDS calls, sessions), `identity` (provisioning flow).
//! Cross-posting: `nostr` (event checks, NIP-71 parsing), `tid`, `translate`, `media`.
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
pub mod jwt;
pub mod keys;
pub mod media;
pub mod metrics;
pub mod nostr;
pub mod pds;
pub mod plc;
pub mod reconcile;
pub mod rekey;
pub mod retention;
pub mod slo;
pub mod spool;
pub mod tid;
pub mod translate;
pub mod worker;
pub mod xrpc;
