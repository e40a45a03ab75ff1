//! Placeholder for the `jwt` module; its owner replaces this file.
