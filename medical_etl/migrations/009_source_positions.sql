-- Where each stored row came from inside its lake file, so a (channel, message_id) found in two
-- places is resolved the same way by an incremental load and a clean one, and the loser is
-- recorded in raw.load_rejects with its own position.
ALTER TABLE raw.telegram_messages ADD COLUMN source_position integer;
