-- Issue 12 §1, abuse of opt-in (crates/divine-bridge-db/src/abuse.rs).

-- Pubkeys the Divine login service pre-registered for NIP-98 opt-in under OPT_IN_POLICY=allowlist.
CREATE TABLE opt_in_allowlist (
    nostr_pubkey TEXT PRIMARY KEY CHECK (nostr_pubkey ~ '^[0-9a-f]{64}$'),
    added_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The provisioning budget counts links created in the last hour; the unfinished-provisioning release pass looks
-- for old links that never got a DID.
CREATE INDEX account_links_created_at ON account_links (created_at);
