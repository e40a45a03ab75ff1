//! The Nostr side of the Divine bridge, with no database (dependency arrows: this crate → `divine-bridge-core`
//! only): `nostr` (event checks, NIP-71 parsing into typed events), `translate` (typed event → Bluesky record),
//! `blob` (media bodies to upload and their locally computed blob refs), `media` (bounded,
//! SSRF-safe media fetch; IP classification in `media::ip`) and `spool` (the disk spool media is fetched into).

pub mod blob;
pub mod media;
pub mod metrics;
pub mod nostr;
pub mod spool;
pub mod translate;
