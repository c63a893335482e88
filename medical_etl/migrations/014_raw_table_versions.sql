-- A version per raw table that stage 3 builds from, moved on by every statement that changes the table
-- (triggers; a transaction's bumps commit or roll back with its rows). The transform stage compares
-- them with the versions its last build saw to skip a build when nothing changed: reading five rows,
-- where counting and summing a million rows' xmin took most of a second.
CREATE TABLE raw.table_versions (
    table_name  text        PRIMARY KEY,
    version     bigint      NOT NULL DEFAULT 0,
    changed_at  timestamptz
);

CREATE FUNCTION raw.bump_table_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO raw.table_versions AS v (table_name, version, changed_at) VALUES (TG_TABLE_NAME, 1, now())
    ON CONFLICT (table_name) DO UPDATE SET version = v.version + 1, changed_at = now();
    RETURN NULL;
END $$;

-- An update or delete that matched no row leaves the version (its transition table is empty).
CREATE FUNCTION raw.bump_table_version_if_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed_rows) THEN
        INSERT INTO raw.table_versions AS v (table_name, version, changed_at) VALUES (TG_TABLE_NAME, 1, now())
        ON CONFLICT (table_name) DO UPDATE SET version = v.version + 1, changed_at = now();
    END IF;
    RETURN NULL;
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['telegram_messages', 'catalogue_texts', 'product_resolutions', 'image_analyses',
                             'image_detections'] LOOP
        INSERT INTO raw.table_versions (table_name) VALUES (t) ON CONFLICT DO NOTHING;
        EXECUTE format('CREATE TRIGGER version_on_insert AFTER INSERT ON raw.%I
                        FOR EACH STATEMENT EXECUTE FUNCTION raw.bump_table_version()', t);
        EXECUTE format('CREATE TRIGGER version_on_update AFTER UPDATE ON raw.%I REFERENCING NEW TABLE AS changed_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION raw.bump_table_version_if_rows()', t);
        EXECUTE format('CREATE TRIGGER version_on_delete AFTER DELETE ON raw.%I REFERENCING OLD TABLE AS changed_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION raw.bump_table_version_if_rows()', t);
        EXECUTE format('CREATE TRIGGER version_on_truncate AFTER TRUNCATE ON raw.%I
                        FOR EACH STATEMENT EXECUTE FUNCTION raw.bump_table_version()', t);
    END LOOP;
END $$;
