//! Placeholder for the `identity` module; its owner replaces this file.
