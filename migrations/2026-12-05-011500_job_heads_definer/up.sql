-- The job_heads triggers fire for whoever changes `jobs`, including the gateway's least-privilege role (it enqueues
-- and cancels jobs), which has no privilege on job_heads and must not get one: a role that could rewrite heads could
-- stall dispatch. So the one function that writes job_heads runs as its owner (the schema owner that migrated it),
-- with a fixed search_path so a caller's objects cannot stand in for ours.
ALTER FUNCTION job_heads_refresh(TEXT[]) SECURITY DEFINER SET search_path = public, pg_temp;
