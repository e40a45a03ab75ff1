-- Issue 9 §3/§4: per-lease fencing tokens and a panic counter.
--
-- lease_token: a fresh value per lease, drawn from jobs_lease_token_seq (never repeats, unlike a random value it
-- cannot collide). Heartbeat, finish, complete and release match on (id, lease_token), so a try whose lease was
-- reclaimed can never write, even when the same process leased the job again.
-- panic_count: handler panics of this job; at PANIC_LIMIT the job fails permanently with `handler_panicked`.
CREATE SEQUENCE jobs_lease_token_seq AS BIGINT;
ALTER TABLE jobs
    ADD COLUMN lease_token BIGINT,
    ADD COLUMN panic_count INTEGER NOT NULL DEFAULT 0 CHECK (panic_count >= 0);
-- Leases taken before this migration get a token, so the invariant below holds for every row. Their holders (old
-- code) cannot present it: their writes are refused and the watchdog reclaims the jobs after lease expiry.
UPDATE jobs SET lease_token = nextval('jobs_lease_token_seq') WHERE state = 'running';
ALTER TABLE jobs ADD CONSTRAINT jobs_token_matches_state CHECK ((state = 'running') = (lease_token IS NOT NULL));
