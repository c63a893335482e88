-- The asset view (medical-etl status, the API's /api/pipeline/status) counts unreadable photos on
-- every read; a partial index keeps that count proportional to the unreadable photos, not all photos.
CREATE INDEX IF NOT EXISTS image_analyses_unreadable_idx ON raw.image_analyses (channel, message_id)
    WHERE status = 'unreadable';
