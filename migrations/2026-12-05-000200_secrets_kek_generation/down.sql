-- Only before any `divine-atbridge keys rotate`: rows re-sealed at a generation above 0 do not open with the old code.
ALTER TABLE account_sessions DROP COLUMN kek_id;
ALTER TABLE account_keys DROP COLUMN seal_generation;
