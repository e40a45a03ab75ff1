//! ATProto timestamp identifiers (TIDs): the record keys of bridged posts.
//!
//! A TID is a 64-bit integer rendered as 13 characters of base32-sortable (`234567abcdefghijklmnopqrstuvwxyz`):
//! top bit 0, then 53 bits of microseconds since the UNIX epoch, then a 10-bit clock id. This module owns encoding,
//! parsing/validation, deterministic TIDs for a given time ([`tid_for`], [`tid_for_event`]) and a per-process
//! generator that is strictly monotonic ([`TidGenerator`]). It must not know about records, repos or the database.

use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
#[cfg(any(test, feature = "testutil"))]
use std::sync::Mutex;

/// The base32-sortable alphabet: ASCII order equals numeric order.
pub const ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";
/// Length of every TID string.
pub const TID_LEN: usize = 13;
/// Largest representable timestamp (53 bits of microseconds).
pub const MAX_MICROS: u64 = (1 << 53) - 1;
/// Largest clock id (10 bits).
pub const MAX_CLOCK_ID: u16 = (1 << 10) - 1;

/// Why a TID could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TidError {
    /// The string is not 13 base32-sortable characters with the top bit clear.
    #[error("invalid TID syntax: {0:?}")]
    Syntax(String),
    /// Timestamp or clock id does not fit in its field.
    #[error("TID field out of range: micros={micros} clock_id={clock_id}")]
    OutOfRange { micros: u64, clock_id: u16 },
}

impl Classified for TidError {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidTid
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// A validated TID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tid(u64);

impl Tid {
    /// Builds a TID from its fields; fails if `micros` needs more than 53 bits or `clock_id` more than 10.
    pub fn from_parts(micros: u64, clock_id: u16) -> Result<Tid, TidError> {
        if micros > MAX_MICROS || clock_id > MAX_CLOCK_ID {
            return Err(TidError::OutOfRange { micros, clock_id });
        }
        Ok(Tid((micros << 10) | u64::from(clock_id)))
    }

    /// Microseconds since the UNIX epoch.
    pub fn micros(self) -> u64 {
        self.0 >> 10
    }

    /// The 10-bit clock id.
    pub fn clock_id(self) -> u16 {
        (self.0 & u64::from(MAX_CLOCK_ID)) as u16
    }

    /// The raw 64-bit value.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; TID_LEN];
        let mut v = self.0;
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(v & 31) as usize];
            v >>= 5;
        }
        // ALPHABET is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Tid {
    type Err = TidError;
    fn from_str(s: &str) -> Result<Tid, TidError> {
        parse(s)
    }
}

impl serde::Serialize for Tid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses and validates a TID string with the spec's syntax rules: exactly 13 chars, alphabet only, case-sensitive,
/// first char in `234567abcdefghij` (the value fits in 64 bits). TIDs built here always have the top bit clear
/// (their first char is at most `b`).
pub fn parse(s: &str) -> Result<Tid, TidError> {
    let bytes = s.as_bytes();
    if bytes.len() != TID_LEN {
        return Err(TidError::Syntax(s.to_string()));
    }
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        let Some(idx) = ALPHABET.iter().position(|c| c == b) else {
            return Err(TidError::Syntax(s.to_string()));
        };
        // 13 chars carry 65 bits; the first char holds the top 5 and may only use its low 4.
        if i == 0 && idx >= 16 {
            return Err(TidError::Syntax(s.to_string()));
        }
        v = (v << 5) | idx as u64;
    }
    Ok(Tid(v))
}

/// True when `s` is a syntactically valid TID.
pub fn validate(s: &str) -> bool {
    parse(s).is_ok()
}

/// The TID for an explicit time and clock id (deterministic).
pub fn tid_for(created_at_micros: u64, clock_id: u16) -> Result<Tid, TidError> {
    Tid::from_parts(created_at_micros, clock_id)
}

/// A deterministic TID for a Nostr event: the event's second plus a sub-second offset and clock id derived from the
/// SHA-256 of its id, so a retry always reserves the same rkey and two events of one author in the same second
/// (almost surely) differ. Sorts with `created_at` at one-second resolution.
pub fn tid_for_event(created_at_secs: u64, event_id_hex: &str) -> Result<Tid, TidError> {
    let h = Sha256::digest(event_id_hex.to_ascii_lowercase().as_bytes());
    let sub = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]])) % 1_000_000;
    let clock = u16::from_be_bytes([h[4], h[5]]) & MAX_CLOCK_ID;
    let micros = created_at_secs
        .checked_mul(1_000_000)
        .and_then(|m| m.checked_add(sub))
        .ok_or(TidError::OutOfRange {
            micros: u64::MAX,
            clock_id: clock,
        })?;
    Tid::from_parts(micros, clock)
}

#[cfg(any(test, feature = "testutil"))]
/// Generates TIDs from the wall clock, strictly increasing within the process even if the clock stalls or steps
/// back (the next value is then the previous timestamp + 1µs).
#[derive(Debug)]
pub struct TidGenerator {
    clock_id: u16,
    last_micros: Mutex<u64>,
}

#[cfg(any(test, feature = "testutil"))]
impl TidGenerator {
    /// A generator with a fixed clock id (`clock_id` is masked to 10 bits).
    pub fn new(clock_id: u16) -> TidGenerator {
        TidGenerator {
            clock_id: clock_id & MAX_CLOCK_ID,
            last_micros: Mutex::new(0),
        }
    }

    /// A generator with a random clock id.
    pub fn with_random_clock_id() -> TidGenerator {
        TidGenerator::new(rand::random::<u16>())
    }

    /// The next TID, using `now_micros` as the current time (exposed for tests).
    pub fn next_at(&self, now_micros: u64) -> Tid {
        let mut last = self.last_micros.lock().unwrap_or_else(|p| p.into_inner());
        let micros = now_micros.max(last.saturating_add(1)).min(MAX_MICROS);
        *last = micros;
        Tid((micros << 10) | u64::from(self.clock_id))
    }

    /// The next TID from the system clock.
    pub fn next_tid(&self) -> Tid {
        let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
        self.next_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // atproto interop-test-files syntax/tid_syntax_valid.txt and tid_syntax_invalid.txt
    const VALID: &[&str] = &["3jzfcijpj2z2a", "7777777777777", "3zzzzzzzzzzzz", "2222222222222"];
    const INVALID: &[&str] = &[
        "3jzfcijpj2z21",
        "0000000000000",
        "3JZFCIJPJ2Z2A",
        "3jzfcijpj2z2aa",
        "3jzfcijpj2z2",
        "222",
        "3jzf-cij-pj2z-2a",
        "zzzzzzzzzzzzz",
        "kjzfcijpj2z2a",
        "",
    ];

    #[test]
    fn interop_valid_and_invalid() {
        for s in VALID {
            let t = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(t.to_string(), *s, "round trip");
        }
        for s in INVALID {
            assert!(!validate(s), "{s} must be invalid");
            let err = parse(s).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidTid);
            assert_eq!(err.class(), ErrorClass::Permanent);
        }
    }

    #[test]
    fn known_vectors() {
        // Published by other implementations: 3jt6walwmos2y = 1681321002683032µs, clock 30.
        let t = parse("3jt6walwmos2y").unwrap();
        assert_eq!(t.micros(), 1_681_321_002_683_032);
        assert_eq!(t.clock_id(), 30);
        assert_eq!(tid_for(1_681_321_002_683_032, 30).unwrap().to_string(), "3jt6walwmos2y");
        assert_eq!(
            tid_for(1_785_308_213_234_023, 1000).unwrap().to_string(),
            "3mrrduxumfbzc"
        );
        assert_eq!(tid_for(0, 0).unwrap().to_string(), "2222222222222");
        assert_eq!(tid_for(MAX_MICROS, MAX_CLOCK_ID).unwrap().to_string(), "bzzzzzzzzzzzz");
        // The spec regex allows a first char up to 'j' (index 15); 'k' (index 16) would need a 65th bit.
        assert!(validate("jzzzzzzzzzzzz"));
        assert!(!validate("kzzzzzzzzzzzz"));
    }

    #[test]
    fn out_of_range_fields() {
        assert!(matches!(tid_for(MAX_MICROS + 1, 0), Err(TidError::OutOfRange { .. })));
        assert!(matches!(tid_for(0, 1024), Err(TidError::OutOfRange { .. })));
    }

    #[test]
    fn ordering_matches_string_ordering() {
        let a = tid_for(1_700_000_000_000_000, 5).unwrap();
        let b = tid_for(1_700_000_000_000_001, 0).unwrap();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn generator_strictly_monotonic_even_when_clock_stalls_or_steps_back() {
        let g = TidGenerator::new(7);
        let t1 = g.next_at(1_000);
        let t2 = g.next_at(1_000);
        let t3 = g.next_at(500);
        let t4 = g.next_at(5_000);
        assert_eq!(t1.micros(), 1_000);
        assert_eq!(t2.micros(), 1_001);
        assert_eq!(t3.micros(), 1_002);
        assert_eq!(t4.micros(), 5_000);
        for t in [t1, t2, t3, t4] {
            assert_eq!(t.clock_id(), 7);
            assert!(validate(&t.to_string()));
        }
        let mut prev = String::new();
        for _ in 0..10_000 {
            let s = g.next_tid().to_string();
            assert_eq!(s.len(), TID_LEN);
            assert!(s > prev, "{s} must sort after {prev}");
            prev = s;
        }
    }

    #[test]
    fn generator_monotonic_across_threads() {
        let g = std::sync::Arc::new(TidGenerator::with_random_clock_id());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..2_000).map(|_| g.next_tid()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<Tid> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "no duplicates across threads");
    }

    #[test]
    fn event_tids_are_deterministic_and_distinct() {
        let id_a = "a".repeat(64);
        let id_b = "b".repeat(64);
        let a1 = tid_for_event(1_735_689_600, &id_a).unwrap();
        let a2 = tid_for_event(1_735_689_600, &id_a.to_uppercase()).unwrap();
        let b = tid_for_event(1_735_689_600, &id_b).unwrap();
        assert_eq!(a1, a2);
        assert_ne!(a1, b);
        assert_eq!(a1.micros() / 1_000_000, 1_735_689_600);
        assert_eq!(b.micros() / 1_000_000, 1_735_689_600);
        assert!(tid_for_event(u64::MAX, &id_a).is_err());
    }
}
