-- Long posts (Amharic is 3 bytes a character) are TOASTed; lz4 compresses several times faster
-- than the default pglz. Servers built without lz4 keep pglz.
DO $$
BEGIN
    ALTER TABLE raw.telegram_messages ALTER COLUMN message_text SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 not available on this server: message_text keeps the default compression';
END $$;
