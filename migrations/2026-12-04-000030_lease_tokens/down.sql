ALTER TABLE jobs DROP CONSTRAINT jobs_token_matches_state;
ALTER TABLE jobs DROP COLUMN panic_count, DROP COLUMN lease_token;
DROP SEQUENCE jobs_lease_token_seq;
