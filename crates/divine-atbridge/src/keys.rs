//! Placeholder for the `keys` module; its owner replaces this file.
