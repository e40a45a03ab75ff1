DROP TABLE relay_shard_cursors;
DROP TABLE ingest_shards;
DROP TABLE ingest_replicas;
DROP SEQUENCE ingest_shard_token_seq;
