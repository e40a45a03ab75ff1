//! Changing this process's environment, for the test binaries that test configuration read from it
//! (`worker_config`, `translate_config`: `*::from_env` reads through clap, which reads the process environment).
//!
//! Edition 2024 makes `std::env::set_var`/`remove_var` unsafe: another thread reading the environment at the same
//! moment is undefined behaviour on most platforms. Every test of those binaries holds [`lock`] for its whole run, so
//! no two of its threads touch the environment at once, and nothing else in them reads it concurrently (no async
//! runtime, no logging). This is the one place in the workspace that needs `unsafe`, hence `unsafe_code = "deny"`
//! (not `forbid`) in the workspace lints. Tests that run a binary pass variables with `Command::env` instead.
#![allow(unsafe_code)]

use std::sync::{Mutex, MutexGuard};

/// Exclusive use of the process environment for one test.
pub struct Env(#[allow(dead_code)] MutexGuard<'static, ()>);

/// Waits until no other test of this binary uses the environment.
pub fn lock() -> Env {
    static LOCK: Mutex<()> = Mutex::new(());
    Env(LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

impl Env {
    pub fn set(&self, var: &str, value: &str) {
        // SAFETY: see the module comment: this test holds the lock, no other thread reads the environment.
        unsafe { std::env::set_var(var, value) }
    }

    pub fn remove(&self, var: &str) {
        // SAFETY: as for `set`.
        unsafe { std::env::remove_var(var) }
    }
}
