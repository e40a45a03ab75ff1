-- Issue 11 §2: ordering keys name what conflicts (event, coordinate, profile, account) instead of the account, so
-- every job now names its account in payload.account (queue::NewJob::for_account). Jobs written before carry their
-- account only as ordering_key (then always the author's pubkey): copy it into the payload. Their ordering keys stay
-- as they are: they drain under the account key, in order among themselves, which is the old (stricter) rule.
UPDATE jobs SET payload = payload || jsonb_build_object('account', ordering_key)
 WHERE jsonb_typeof(payload) = 'object' AND NOT payload ? 'account';

-- The account barrier (queue::running_for_account), account disable (queue::cancel_for_account) and the per-account
-- views read live jobs by account.
CREATE INDEX jobs_live_account ON jobs ((payload ->> 'account'), state) WHERE state IN ('queued', 'running');
