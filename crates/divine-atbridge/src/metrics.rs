//! Placeholder for the `metrics` module; its owner replaces this file.
