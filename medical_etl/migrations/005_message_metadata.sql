-- What Telegram (and a Telegram Desktop export) says about a post beyond its text: whether its media
-- file was saved (or which export left it out), and where a forwarded post came from. An imported
-- channel and a scraped one fill the same columns.
ALTER TABLE raw.telegram_messages
    ADD COLUMN media_status      text,    -- saved | not_included | missing | refused | not_saved; NULL: no media
    ADD COLUMN forward_from_id   bigint,  -- origin channel/user id of a forwarded post, when known
    ADD COLUMN forward_from_name text;    -- origin name (a Desktop export gives only this)
