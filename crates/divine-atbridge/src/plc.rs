//! Placeholder for the `plc` module; its owner replaces this file.
