-- Where each stored row came from inside its lake file, so a (channel, message_id) found in two
-- places is resolved the same way by an incremental load and a clean one, and the loser is
-- recorded in raw.load_rejects with its own position and key.
ALTER TABLE raw.telegram_messages ADD COLUMN source_position integer;
ALTER TABLE raw.load_rejects ADD COLUMN channel text, ADD COLUMN message_id bigint;
CREATE INDEX load_rejects_key_idx ON raw.load_rejects (channel, message_id) WHERE channel IS NOT NULL;
-- Read every file once more: rows get their positions, and anything stored before today's checks
-- (future dates, paths outside the lake, duplicates) is quarantined like a fresh load would.
UPDATE raw.loaded_files SET size_bytes = -1, sha256 = '';
