-- Issue 10 §1, account lifecycle: operator suspension and the audit trail of every operator or user action.

-- `suspended`: like `disabled`, but set by an operator and not liftable by the user (see accounts.rs).
ALTER TABLE account_links DROP CONSTRAINT account_links_provisioning_state_check;
ALTER TABLE account_links ADD CONSTRAINT account_links_provisioning_state_check
    CHECK (provisioning_state IN ('pending', 'provisioning', 'ready', 'failed', 'disabled', 'suspended'));
-- The operator's reason, kept while suspended (cleared on unsuspend; the audit keeps it forever).
ALTER TABLE account_links ADD COLUMN suspended_reason TEXT;

-- One row per operator or user action on an account link. No foreign key: the trail outlives the link.
CREATE TABLE account_audit (
    id            BIGSERIAL PRIMARY KEY,
    nostr_pubkey  TEXT NOT NULL,
    -- `service` (GATEWAY_SERVICE_TOKEN), `nip98:<hex pubkey>` (the user) or `cli:<os user>`.
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL
        CHECK (action IN ('opt_in', 'enable', 'disable', 'suspend', 'unsuspend', 'reprovision')),
    reason        TEXT,
    -- The link's state fields before and after the action (NULL before an opt-in that created it).
    before_state  JSONB,
    after_state   JSONB,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX account_audit_pubkey ON account_audit (nostr_pubkey, id DESC);
