-- Issue 10 §1, disconnect / delete: an account leaves the bridge for good (crates/divine-bridge-db/src/accounts.rs,
-- "Disconnect semantics").

-- `disconnecting`: the disconnect_account job is deleting the repo's records, deactivating the PDS account and
-- destroying keys and sessions; `disconnected`: it finished. The link row stays (holding the handle) until the
-- grace period is over, then the release pass deletes it and only the tombstone below remains.
ALTER TABLE account_links DROP CONSTRAINT account_links_provisioning_state_check;
ALTER TABLE account_links ADD CONSTRAINT account_links_provisioning_state_check
    CHECK (provisioning_state IN ('pending', 'provisioning', 'ready', 'failed', 'disabled', 'suspended',
                                  'disconnecting', 'disconnected'));
-- When the disconnect was requested (kept on repeats); the handle grace period counts from here.
ALTER TABLE account_links ADD COLUMN disconnected_at TIMESTAMPTZ;

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('provision_account', 'publish_post', 'delete_post', 'sync_profile', 'backfill_author', 'noop',
                    'disconnect_account'));

ALTER TABLE account_audit DROP CONSTRAINT account_audit_action_check;
ALTER TABLE account_audit ADD CONSTRAINT account_audit_action_check
    CHECK (action IN ('opt_in', 'enable', 'disable', 'suspend', 'unsuspend', 'reprovision', 'disconnect',
                      'release_handle'));

-- The audited pubkey -> DID link of a disconnected account, one row per disconnect (a pubkey that opts in again
-- after its handle was released and disconnects again gets a second row). No foreign key: it outlives the link
-- row. Holds no key material (the keys and sessions were deleted: crypto-shred, docs/key-custody.md).
CREATE TABLE account_tombstones (
    id                  BIGSERIAL PRIMARY KEY,
    nostr_pubkey        TEXT NOT NULL CHECK (nostr_pubkey ~ '^[0-9a-f]{64}$'),
    did                 TEXT,
    handle              TEXT NOT NULL,
    disconnected_at     TIMESTAMPTZ NOT NULL,
    -- Set when the disconnect job finished (records deleted, account deactivated, keys destroyed).
    completed_at        TIMESTAMPTZ,
    -- Set when the release pass freed the handle (deleted the link row).
    handle_released_at  TIMESTAMPTZ
);
-- At most one open (handle not yet released) tombstone per pubkey: a repeated disconnect request reuses it.
CREATE UNIQUE INDEX account_tombstones_open ON account_tombstones (nostr_pubkey) WHERE handle_released_at IS NULL;
