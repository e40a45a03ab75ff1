//! Placeholder for the `http` module; its owner replaces this file.
