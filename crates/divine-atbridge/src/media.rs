//! Placeholder for the `media` module; its owner replaces this file.
