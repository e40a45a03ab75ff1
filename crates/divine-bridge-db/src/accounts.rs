//! Placeholder: the account_links store (owned by the gateway work); its owner replaces this file.
