//! ATProto for the Divine bridge, with no database (dependency arrows: this crate → `divine-bridge-core` only):
//! `tid` (record keys), `keys` (key material, did:key, sealing), `jwt` (service auth), `xrpc` (the one HTTP path to
//! PDS/PLC), `plc` (did:plc operations and directory client), `pds` (typed PDS calls, sessions).
//!
//! Stores the protocol needs (sessions) are traits implemented by the caller over Postgres (`divine-atbridge`);
//! in-memory doubles (`pds::MemorySessionStore`, `tid::TidGenerator`) exist only with the `testutil` feature.

pub mod jwt;
pub mod keys;
pub mod pds;
pub mod plc;
pub mod tid;
pub mod xrpc;
