-- The incremental marts select what the catalogue read or resolved since their last run: by time.
CREATE INDEX catalogue_texts_read_at_idx ON raw.catalogue_texts (read_at);
CREATE INDEX product_resolutions_resolved_at_idx ON raw.product_resolutions (resolved_at);
