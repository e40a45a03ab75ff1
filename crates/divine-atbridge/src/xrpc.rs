//! Placeholder for the `xrpc` module; its owner replaces this file.
