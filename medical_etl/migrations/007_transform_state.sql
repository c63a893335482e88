-- What the last successful full dbt build saw, so a run with nothing new can skip rebuilding the
-- same tables and re-running the same tests on the same rows (medical_etl/transform.py).
CREATE TABLE raw.transform_state (
    id           boolean     PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    inputs       text        NOT NULL,  -- project files' hash, dbt version, raw tables' state
    relations    text        NOT NULL,  -- the warehouse relations (name:oid) the build left
    built_on     date        NOT NULL,  -- dim_dates runs to this day
    freshness    jsonb,                 -- per source: newest load and thresholds (NULL: not checked)
    built_at     timestamptz NOT NULL DEFAULT now()
);
