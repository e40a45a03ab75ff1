DROP TABLE account_audit;
UPDATE account_links SET provisioning_state = 'disabled' WHERE provisioning_state = 'suspended';
ALTER TABLE account_links DROP COLUMN suspended_reason;
ALTER TABLE account_links DROP CONSTRAINT account_links_provisioning_state_check;
ALTER TABLE account_links ADD CONSTRAINT account_links_provisioning_state_check
    CHECK (provisioning_state IN ('pending', 'provisioning', 'ready', 'failed', 'disabled'));
