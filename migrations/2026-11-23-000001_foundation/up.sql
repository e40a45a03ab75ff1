-- Foundation schema for the Divine ATProto bridge.
-- Every state column is CHECK-constrained; the Rust enums in divine-bridge-db name the same states.

CREATE TABLE account_links (
    nostr_pubkey         TEXT PRIMARY KEY CHECK (nostr_pubkey ~ '^[0-9a-f]{64}$'),
    handle               TEXT NOT NULL UNIQUE CHECK (handle = lower(handle)),
    did                  TEXT UNIQUE,
    crosspost_enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    provisioning_state   TEXT NOT NULL DEFAULT 'pending'
        CHECK (provisioning_state IN ('pending', 'provisioning', 'ready', 'failed', 'disabled')),
    provisioning_error   TEXT,
    provisioning_error_detail TEXT,
    disabled_at          TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX account_links_did_idx ON account_links (did) WHERE did IS NOT NULL;

-- Secret key material, sealed with AES-256-GCM under KEY_ENCRYPTION_KEY; the associated data binds each secret to
-- its account and purpose. Public halves are kept in clear for diagnosis.
CREATE TABLE account_keys (
    nostr_pubkey         TEXT PRIMARY KEY REFERENCES account_links (nostr_pubkey) ON DELETE CASCADE,
    kek_id               TEXT NOT NULL,
    signing_key_sealed   BYTEA NOT NULL,
    rotation_key_sealed  BYTEA NOT NULL,
    password_sealed      BYTEA NOT NULL,
    signing_did_key      TEXT NOT NULL,
    rotation_did_key     TEXT NOT NULL,
    -- Resumable provisioning progress (serialized identity::ProvisionState), written after every step.
    provision_state      JSONB,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- PDS session tokens per account (sealed), refreshed before expiry.
CREATE TABLE account_sessions (
    did                  TEXT PRIMARY KEY,
    nostr_pubkey         TEXT NOT NULL REFERENCES account_links (nostr_pubkey) ON DELETE CASCADE,
    access_jwt_sealed    BYTEA NOT NULL,
    refresh_jwt_sealed   BYTEA NOT NULL,
    access_expires_at    TIMESTAMPTZ,
    refresh_expires_at   TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id                   BIGSERIAL PRIMARY KEY,
    kind                 TEXT NOT NULL
        CHECK (kind IN ('provision_account', 'publish_post', 'delete_post', 'sync_profile', 'backfill_author', 'noop')),
    ordering_key         TEXT NOT NULL,
    unique_key           TEXT UNIQUE,
    payload              JSONB NOT NULL DEFAULT '{}'::jsonb,
    state                TEXT NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'ineligible')),
    priority             SMALLINT NOT NULL DEFAULT 0,
    run_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempt              INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    lease_owner          TEXT,
    lease_expires_at     TIMESTAMPTZ,
    cancel_requested_at  TIMESTAMPTZ,
    reclaim_count        INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    last_error_code      TEXT,
    source_created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at          TIMESTAMPTZ,
    -- A running job always has a lease; no other state does.
    CONSTRAINT jobs_lease_matches_state CHECK (
        (state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- Terminal states carry finished_at; live states do not.
    CONSTRAINT jobs_finished_matches_state CHECK (
        (state IN ('succeeded', 'failed', 'cancelled', 'ineligible')) = (finished_at IS NOT NULL))
);
-- At most one running job per ordering key (one writer per repo), enforced by the database.
CREATE UNIQUE INDEX jobs_one_running_per_key ON jobs (ordering_key) WHERE state = 'running';
-- Lease scan: runnable jobs in dispatch order.
CREATE INDEX jobs_lease_order ON jobs (priority, source_created_at, id) WHERE state = 'queued';
-- Per-key head check: earlier live jobs of the same key.
CREATE INDEX jobs_key_order ON jobs (ordering_key, priority, source_created_at, id) WHERE state IN ('queued', 'running');
-- Watchdog: expired leases.
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- Operator views and gauges.
CREATE INDEX jobs_kind_state ON jobs (kind, state);

-- Nostr event -> ATProto record. The row is written (state 'reserved', rkey + prepared record) BEFORE any side effect,
-- so a retry after a crash re-puts the same record at the same rkey (putRecord of identical content is a no-op).
CREATE TABLE record_mappings (
    nostr_event_id       TEXT PRIMARY KEY CHECK (nostr_event_id ~ '^[0-9a-f]{64}$'),
    nostr_pubkey         TEXT NOT NULL,
    did                  TEXT NOT NULL,
    collection           TEXT NOT NULL,
    rkey                 TEXT NOT NULL,
    event_kind           INTEGER NOT NULL,
    -- `<kind>:<pubkey>:<d>` for addressable events (34235/34236), else NULL.
    coordinate           TEXT,
    event_created_at     TIMESTAMPTZ NOT NULL,
    state                TEXT NOT NULL DEFAULT 'reserved'
        CHECK (state IN ('reserved', 'published', 'deleted', 'superseded')),
    record               JSONB,
    at_uri               TEXT,
    cid                  TEXT,
    published_at         TIMESTAMPTZ,
    deleted_at           TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (did, collection, rkey)
);
CREATE INDEX record_mappings_coordinate ON record_mappings (coordinate, event_created_at DESC) WHERE coordinate IS NOT NULL;
CREATE INDEX record_mappings_pubkey ON record_mappings (nostr_pubkey);

-- Nostr deletions (kind 5) remembered so a delete seen before its target still wins.
CREATE TABLE nostr_tombstones (
    target               TEXT PRIMARY KEY, -- event id (hex) or coordinate `<kind>:<pubkey>:<d>`
    nostr_pubkey         TEXT NOT NULL,
    delete_event_id      TEXT NOT NULL,
    deleted_at           TIMESTAMPTZ NOT NULL, -- created_at of the kind 5 event
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Newest kind 0 seen per account (newest wins).
CREATE TABLE profile_sync (
    nostr_pubkey         TEXT PRIMARY KEY REFERENCES account_links (nostr_pubkey) ON DELETE CASCADE,
    event_id             TEXT NOT NULL,
    event_created_at     TIMESTAMPTZ NOT NULL,
    synced_at            TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Lossless resume point per relay: the newest (created_at, event id) processed.
CREATE TABLE relay_cursors (
    relay_url            TEXT PRIMARY KEY,
    last_created_at      TIMESTAMPTZ NOT NULL,
    last_event_id        TEXT NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
