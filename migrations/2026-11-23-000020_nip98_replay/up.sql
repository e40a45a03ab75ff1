-- NIP-98 replay protection shared by every gateway replica: an HTTP-auth event id may be used once. The gateway
-- inserts with ON CONFLICT DO NOTHING (a conflict is a replay) and prunes rows older than 10 minutes
-- opportunistically; events are only accepted within ±60 s of their created_at, so 10 minutes is ample.
CREATE TABLE nip98_seen (
    event_id   TEXT PRIMARY KEY CHECK (event_id ~ '^[0-9a-f]{64}$'),
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX nip98_seen_seen_at ON nip98_seen (seen_at);
