//! The Nostr side of the Divine bridge, with no database (dependency arrows: this crate → `divine-bridge-core`
//! only): `nostr` (event checks, NIP-71 parsing), `translate` (Nostr event → Bluesky record), `media` (bounded,
//! SSRF-safe media fetch; IP classification in `media::ip`) and `spool` (the disk spool media is fetched into).

pub mod media;
pub mod nostr;
pub mod spool;
pub mod translate;
