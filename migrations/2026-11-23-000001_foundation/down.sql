DROP TABLE relay_cursors;
DROP TABLE profile_sync;
DROP TABLE nostr_tombstones;
DROP TABLE record_mappings;
DROP TABLE jobs;
DROP TABLE account_sessions;
DROP TABLE account_keys;
DROP TABLE account_links;
