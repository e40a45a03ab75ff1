//! Placeholder for the `tid` module; its owner replaces this file.
