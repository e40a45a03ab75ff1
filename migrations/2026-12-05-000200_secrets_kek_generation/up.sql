-- Issue 12 §4: several KEKs at once and resumable re-sealing (crates/divine-atbridge/src/keys.rs, rotation rules).
-- account_keys.seal_generation counts re-seals of the row and is part of the sealing AAD from generation 1 on, so a
-- ciphertext copied from an older generation no longer opens; re-seals are fenced on it (WHERE seal_generation = N).
ALTER TABLE account_keys ADD COLUMN seal_generation BIGINT NOT NULL DEFAULT 0;
-- Sessions name the KEK that sealed them, like account_keys. Until now one KEK sealed everything, so an existing
-- session was sealed by the KEK of its account's keys row.
ALTER TABLE account_sessions ADD COLUMN kek_id TEXT NOT NULL DEFAULT '';
UPDATE account_sessions s SET kek_id = k.kek_id FROM account_keys k WHERE k.nostr_pubkey = s.nostr_pubkey;
ALTER TABLE account_sessions ALTER COLUMN kek_id DROP DEFAULT;
