//! Placeholder for the `pds` module; its owner replaces this file.
