//! The Divine PDS: typed XRPC calls ([`client`]) and per-account sessions ([`session`]).
//!
//! Two halves with different semantics, split so each can be read alone:
//! - [`client`]: [`PdsClient`], stateless. One method per XRPC call the bridge makes against one PDS, all through
//!   `xrpc.rs`; every call takes the token it needs as an argument and keeps nothing between calls. It owns the
//!   PDS-specific classification of XRPC error names ([`PdsError`]) and the `uploadBlob` deadline.
//! - [`session`]: [`SessionManager`], stateful. Hands out a valid access token per DID (cached in memory, loaded
//!   from the [`SessionStore`], refreshed ahead of expiry, or a new `createSession` with the stored password when the
//!   refresh token is no longer accepted), one async mutex per DID so a rotated refresh token is never spent twice,
//!   and persists tokens through the [`SessionStore`] trait (implemented over Postgres by the worker).
//!
//! Must not: touch the database directly (the store is a trait), build records (translate.rs), or log
//! tokens/passwords.
//!
//! Request/response bodies use `atrium_api` types where they exist (`create_account::InputData`, every `OutputData`).
//! Records are passed as `serde_json::Value`, already serialised by the caller from atrium's typed `KnownRecord`
//! (the bridge's one serialisation is `divine_nostr::translate::record_json`), because the XRPC wire format is JSON
//! and a JSON → `Unknown` → JSON round trip buys nothing.

pub mod client;
pub mod session;

pub use client::{upload_timeout, PdsClient, PdsError, PutRecord, UPLOAD_MIN_BYTES_PER_SEC, UPLOAD_TIMEOUT_BASE};
#[cfg(any(test, feature = "testutil"))]
pub use session::MemorySessionStore;
pub use session::{SessionError, SessionManager, SessionStore, StoreError, StoredSession, REFRESH_MARGIN};
