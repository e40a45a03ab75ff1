DROP TABLE account_tombstones;
DELETE FROM jobs WHERE kind = 'disconnect_account';
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('provision_account', 'publish_post', 'delete_post', 'sync_profile', 'backfill_author', 'noop'));
DELETE FROM account_audit WHERE action IN ('disconnect', 'release_handle');
ALTER TABLE account_audit DROP CONSTRAINT account_audit_action_check;
ALTER TABLE account_audit ADD CONSTRAINT account_audit_action_check
    CHECK (action IN ('opt_in', 'enable', 'disable', 'suspend', 'unsuspend', 'reprovision'));
UPDATE account_links SET provisioning_state = 'disabled'
    WHERE provisioning_state IN ('disconnecting', 'disconnected');
ALTER TABLE account_links DROP COLUMN disconnected_at;
ALTER TABLE account_links DROP CONSTRAINT account_links_provisioning_state_check;
ALTER TABLE account_links ADD CONSTRAINT account_links_provisioning_state_check
    CHECK (provisioning_state IN ('pending', 'provisioning', 'ready', 'failed', 'disabled', 'suspended'));
