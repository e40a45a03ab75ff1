-- Issue 9 §5: a tombstone belongs to the author of the kind 5 that wrote it. Keyed by target alone, another user's
-- kind 5 naming my event id claimed the row first and my own later delete (an ON CONFLICT update of that row) never
-- counted for me. Keyed by (target, author), every author's deletion is remembered separately; only the event's own
-- author's tombstone is consulted (records::is_tombstoned).
ALTER TABLE nostr_tombstones DROP CONSTRAINT nostr_tombstones_pkey;
ALTER TABLE nostr_tombstones ADD PRIMARY KEY (target, nostr_pubkey);

-- Issue 9 §6: retention of terminal jobs. The prune (queue::prune_finished) walks terminal rows oldest first by
-- finished_at; this partial index keeps each batch bounded without touching live rows.
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- The gauges (queue::stats) count live rows only, from this partial index (an index-only scan whose size follows the
-- backlog, not the history).
CREATE INDEX jobs_live_kind_state ON jobs (kind, state, run_at) WHERE state IN ('queued', 'running');
