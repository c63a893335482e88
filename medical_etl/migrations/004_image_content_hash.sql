-- Identical photos (reposts, albums shared across posts) are analysed once per model: the content
-- hash finds an earlier analysis whose results can be copied.
ALTER TABLE raw.image_analyses ADD COLUMN content_sha256 text;
CREATE INDEX image_analyses_model_sha_idx ON raw.image_analyses (model, content_sha256);
