DROP INDEX IF EXISTS jobs_live_kind_state;
DROP INDEX IF EXISTS jobs_finished_at;
-- Back to one tombstone per target: keep the newest deletion of each target.
DELETE FROM nostr_tombstones t USING nostr_tombstones u
 WHERE t.target = u.target AND (t.deleted_at, t.nostr_pubkey) < (u.deleted_at, u.nostr_pubkey);
ALTER TABLE nostr_tombstones DROP CONSTRAINT nostr_tombstones_pkey;
ALTER TABLE nostr_tombstones ADD PRIMARY KEY (target);
