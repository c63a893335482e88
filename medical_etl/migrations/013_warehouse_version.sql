-- When the warehouse's tables last changed: written by dbt's on-run-end hook after any run that built a
-- model or seed (macros/warehouse_version.sql), and announced on the channel medical_etl_warehouse. The
-- API derives its ETag and Last-Modified from it, so a new build changes them and nothing else does.
CREATE TABLE raw.warehouse_version (
    id          boolean     PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    built_at    timestamptz NOT NULL,
    build_id    text        NOT NULL  -- dbt's invocation id
);
