//! Placeholder for the `translate` module; its owner replaces this file.
