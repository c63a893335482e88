-- Stage 3 at scale. The deduplication re-ranks only the posts with a new or changed row, all of their
-- rows (every case of the username): found by this expression (stg_telegram_messages.dedup_key), not a scan.
CREATE INDEX telegram_messages_dedup_key_idx ON raw.telegram_messages ((lower(trim(channel)) || '/' || message_id::text));
-- When the last successful whole build started, and its time in the rows it built (built_at): a daily
-- build's data tests check the raw rows loaded since the one and the rows built after the other
-- (medical_warehouse/macros/test_scope.sql), the weekly full refresh every row.
ALTER TABLE raw.transform_state ADD COLUMN started_at timestamptz, ADD COLUMN built_through timestamptz;
-- The detection models recompute the posts with a new analysis (by its time) or a changed post (by this key).
CREATE INDEX image_analyses_analysed_at_idx ON raw.image_analyses (analysed_at);
CREATE INDEX image_analyses_dedup_key_idx ON raw.image_analyses ((lower(trim(channel)) || '/' || message_id::text));
CREATE INDEX image_detections_dedup_key_idx ON raw.image_detections ((lower(trim(channel)) || '/' || message_id::text));
