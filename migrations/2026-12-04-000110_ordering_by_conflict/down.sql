DROP INDEX IF EXISTS jobs_live_account;
-- Back to per-account ordering: live jobs return to their account's key. At most one may be running per key
-- (jobs_one_running_per_key), so a running job keeps its key; the rest queue behind it.
UPDATE jobs SET ordering_key = payload ->> 'account'
 WHERE state = 'queued' AND payload ? 'account';
UPDATE jobs SET payload = payload - 'account' WHERE payload ? 'account';
