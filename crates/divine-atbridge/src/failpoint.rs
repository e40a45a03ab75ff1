//! Crash points for tests. `BRIDGE_FAILPOINTS=name1,name2` makes the process die abruptly (like SIGKILL: no
//! destructors, no lease release, no final writes) when execution reaches a named point. Used by the end-to-end
//! tests to stop a worker between two side effects, e.g. after the PLC genesis but before createAccount. Unset in
//! production; reading the variable once keeps the cost to one atomic load per point.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<String>> = OnceLock::new();

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
pub fn hit(name: &str) {
    if armed().iter().any(|a| a == name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}
