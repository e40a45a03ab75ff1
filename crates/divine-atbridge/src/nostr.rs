//! Placeholder for the `nostr` module; its owner replaces this file.
