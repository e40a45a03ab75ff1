//! Placeholder for the `worker` module; its owner replaces this file.
