//! Crash points for tests. `BRIDGE_FAILPOINTS=name1,name2` makes the process die abruptly (like SIGKILL: no
//! destructors, no lease release, no final writes) when execution reaches a named point. Used by the end-to-end
//! tests to stop a worker between two side effects, e.g. after the PLC genesis but before createAccount. Reading
//! the variable once keeps the cost to one atomic load per point.
//!
//! Compiled only with the `failpoints` cargo feature (issue 12 §4), which only test builds enable (the crate's
//! dev-dependency on itself): in a production build [`hit`] is an empty inline function, so no environment variable
//! can make a production worker abort. [`ENABLED`] says which build this is; scripts/test.d/25-failpoints.sh checks
//! that the normal (non-dev) build graph never turns the feature on.

/// Whether this build has crash points.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Dies here if `name` is armed (test builds only).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;

#[cfg(feature = "failpoints")]
static ARMED: OnceLock<Vec<String>> = OnceLock::new();

#[cfg(feature = "failpoints")]
fn armed() -> &'static [String] {
    ARMED.get_or_init(|| {
        std::env::var("BRIDGE_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Dies here if `name` is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if armed().iter().any(|a| a == name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    /// The crate's dev-dependency on itself turns the feature on for every test build, so the crash tests (which
    /// spawn the binaries of the same build) really have their crash points.
    #[test]
    fn test_builds_have_crash_points() {
        const { assert!(super::ENABLED) };
        // And an unarmed point is a no-op (BRIDGE_FAILPOINTS is unset in unit tests).
        super::hit("never_armed");
    }
}
