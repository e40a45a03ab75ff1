//! Placeholder: record_mappings, tombstones, cursors and session stores; its owner replaces this file.
