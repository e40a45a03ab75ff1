-- Issue 11 §3 (lease cost independent of blocked work) and §2 (fair dispatch across priority classes). The design and
-- its reasons are in crates/divine-bridge-db/src/queue.rs ("Key heads") and docs/runbooks/job-queue.md.
--
-- job_heads: one row per ordering key with live (queued or running) work, naming the key's head — its first live job
-- in key order (priority, source_created_at, id) — with the head's run_at and dispatch class. The lease reads heads
-- only (index job_heads_dispatch: runnable heads of one class, oldest run_at first), so the jobs queued behind a
-- head (in backoff or running) cost it nothing, however many they are.
--
-- The table is maintained by statement-level triggers on jobs, in the transaction of every job change, so it cannot
-- drift from jobs whatever path writes them (queue.rs, the watchdog, an operator's psql). A lease (queued → running)
-- does not change a key's head (the head stays the first live job), so the trigger skips it and a lease never locks
-- a head row: a lease and an enqueue of the same key do not wait on each other.

-- Dispatch class of a priority (the SQL twin of states::DispatchClass::of): 0 account (priority < 0), 1 live
-- (0 ≤ priority < 10), 2 backfill (priority ≥ 10).
CREATE FUNCTION job_dispatch_class(priority SMALLINT) RETURNS SMALLINT
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN priority < 0 THEN 0 WHEN priority < 10 THEN 1 ELSE 2 END;

CREATE TABLE job_heads (
    ordering_key TEXT PRIMARY KEY,
    head_id      BIGINT NOT NULL,
    class        SMALLINT NOT NULL CHECK (class IN (0, 1, 2)),
    run_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX job_heads_dispatch ON job_heads (class, run_at, head_id);

-- Recomputes the heads of `keys`. Locks each key's row first (creating it when missing), in key order so two
-- refreshes never deadlock; the recomputation is a later statement of this VOLATILE function, so in READ COMMITTED
-- it reads a fresh snapshot that includes every transaction that changed one of these keys and committed before the
-- lock was granted. Whoever takes a key's lock last therefore computes its head from all committed changes plus its
-- own. Notifies `bridge_jobs` when a refreshed head is queued: due now (an idle worker can lease it) or later (an
-- idle worker re-reads when the next head is due, queue::next_due, and sleeps until then).
CREATE FUNCTION job_heads_refresh(keys TEXT[]) RETURNS VOID
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    wake BOOLEAN;
BEGIN
    IF keys IS NULL OR cardinality(keys) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO job_heads (ordering_key, head_id, class, run_at)
        SELECT k, 0, 1, 'infinity' FROM (SELECT DISTINCT unnest(keys) AS k) d ORDER BY k
        ON CONFLICT (ordering_key) DO UPDATE SET head_id = job_heads.head_id;
    WITH h AS (
        SELECT d.k, x.id, x.priority, x.run_at, x.state
          FROM (SELECT DISTINCT unnest(keys) AS k) d
          LEFT JOIN LATERAL (
              SELECT j.id, j.priority, j.run_at, j.state FROM jobs j
               WHERE j.ordering_key = d.k AND j.state IN ('queued', 'running')
               ORDER BY j.priority, j.source_created_at, j.id LIMIT 1) x ON TRUE),
    upd AS (
        UPDATE job_heads t SET head_id = h.id, class = job_dispatch_class(h.priority), run_at = h.run_at
          FROM h WHERE t.ordering_key = h.k AND h.id IS NOT NULL
             AND (t.head_id, t.class, t.run_at) IS DISTINCT FROM (h.id, job_dispatch_class(h.priority), h.run_at)),
    del AS (
        DELETE FROM job_heads t USING h WHERE t.ordering_key = h.k AND h.id IS NULL)
    SELECT coalesce(bool_or(h.state = 'queued'), FALSE) INTO wake FROM h;
    IF wake THEN
        PERFORM pg_notify('bridge_jobs', '');
    END IF;
END $$;

CREATE FUNCTION job_heads_after_insert() RETURNS TRIGGER
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM job_heads_refresh(ARRAY(
        SELECT DISTINCT ordering_key FROM new_jobs WHERE state IN ('queued', 'running')));
    RETURN NULL;
END $$;

-- Only changes that can move a key's head: a job entering or leaving the live states, or a live job's key, order
-- or run_at changing. queued → running is neither (a lease), nor is a heartbeat: for those the key list is empty
-- and nothing is locked or written.
CREATE FUNCTION job_heads_after_update() RETURNS TRIGGER
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM job_heads_refresh(ARRAY(
        SELECT DISTINCT k FROM old_jobs o JOIN new_jobs n ON n.id = o.id,
               LATERAL (VALUES (o.ordering_key), (n.ordering_key)) AS v(k)
         WHERE (o.state IN ('queued', 'running')) IS DISTINCT FROM (n.state IN ('queued', 'running'))
            OR (n.state IN ('queued', 'running')
                AND (o.ordering_key, o.priority, o.source_created_at, o.run_at)
                    IS DISTINCT FROM (n.ordering_key, n.priority, n.source_created_at, n.run_at))));
    RETURN NULL;
END $$;

CREATE FUNCTION job_heads_after_delete() RETURNS TRIGGER
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM job_heads_refresh(ARRAY(
        SELECT DISTINCT ordering_key FROM old_jobs WHERE state IN ('queued', 'running')));
    RETURN NULL;
END $$;

CREATE FUNCTION job_heads_after_truncate() RETURNS TRIGGER
    LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE job_heads;
    RETURN NULL;
END $$;

CREATE TRIGGER job_heads_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION job_heads_after_insert();
-- No column list (Postgres refuses one with transition tables): job_heads_after_update filters the rows itself.
CREATE TRIGGER job_heads_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION job_heads_after_update();
CREATE TRIGGER job_heads_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_jobs FOR EACH STATEMENT EXECUTE FUNCTION job_heads_after_delete();
CREATE TRIGGER job_heads_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION job_heads_after_truncate();

-- Backfill: the heads of the live work already queued.
INSERT INTO job_heads (ordering_key, head_id, class, run_at)
SELECT DISTINCT ON (ordering_key) ordering_key, id, job_dispatch_class(priority), run_at
  FROM jobs WHERE state IN ('queued', 'running')
 ORDER BY ordering_key, priority, source_created_at, id;
