DROP INDEX account_links_created_at;
DROP TABLE opt_in_allowlist;
