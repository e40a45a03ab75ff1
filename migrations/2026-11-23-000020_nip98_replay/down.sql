DROP TABLE nip98_seen;
