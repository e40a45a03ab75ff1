-- Issue 11 §4: relay × shard subscriptions divided among live replicas.
--
-- ingest_replicas: one row per running ingest loop (owner id), kept alive by heartbeats; the number of live rows
-- decides each replica's fair share of shards.
-- ingest_shards: the lease on one (relay, shard). A shard is free when owner IS NULL or expires_at <= now(); each
-- lease gets a fresh token from ingest_shard_token_seq, and heartbeat, release and cursor writes match on it, so a
-- replica that lost a shard (paused past expiry, taken over) can no longer move that shard's cursor.
-- relay_shard_cursors: the resume point of one shard of a relay when NOSTR_INGEST_SHARDS > 1 (with one shard the
-- relay's row in relay_cursors is the shard's cursor). A shard without a row starts from the relay_cursors row,
-- which is how the per-relay cursor seeds the per-shard ones.
CREATE SEQUENCE ingest_shard_token_seq AS BIGINT;

CREATE TABLE ingest_replicas (
    owner TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE ingest_shards (
    relay_url TEXT NOT NULL,
    shard INTEGER NOT NULL CHECK (shard >= 0),
    owner TEXT,
    token BIGINT,
    expires_at TIMESTAMPTZ,
    PRIMARY KEY (relay_url, shard),
    CONSTRAINT ingest_shards_lease_complete CHECK ((owner IS NULL) = (token IS NULL) AND (owner IS NULL) = (expires_at IS NULL))
);

CREATE TABLE relay_shard_cursors (
    relay_url TEXT NOT NULL,
    shards INTEGER NOT NULL CHECK (shards > 1),
    shard INTEGER NOT NULL CHECK (shard >= 0 AND shard < shards),
    last_created_at TIMESTAMPTZ NOT NULL,
    last_event_id TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (relay_url, shards, shard)
);
