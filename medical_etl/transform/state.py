"""What the last successful whole build saw (``raw.transform_state``), so that a build with nothing new is
skipped: the project's files and dbt's version, each raw table's version, the relations it left, the day.
"""
from __future__ import annotations

import hashlib
import time
from datetime import datetime
from pathlib import Path

from psycopg2.extras import Json

from medical_etl.db import ConnParams, connect
from medical_etl.transform.dbt import PROJECT_DIR, judge_freshness


def project_hash(project_dir: Path) -> str:
    """The dbt project as dbt reads it (models, tests, seeds, macros, settings) and dbt's version."""
    from importlib.metadata import version

    h = hashlib.sha256(version("dbt-core").encode())
    for path in sorted(project_dir.rglob("*")):
        rel = path.relative_to(project_dir)
        if rel.parts[0] in ("target", "logs", "dbt_packages") or not path.is_file():
            continue
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


# Each raw table's version (moved on by any statement that changes it: migrations/014_raw_table_versions.sql)
# and identity (a table dropped and made again is another table).
RAW_STATE = "SELECT concat_ws('|', " + ", ".join(
    f"""(SELECT concat_ws('/', 'raw.{t}'::regclass::oid, version) FROM raw.table_versions WHERE table_name = '{t}')"""
    for t in ("telegram_messages", "catalogue_texts", "product_resolutions", "image_analyses", "image_detections")
) + "), current_date, now()"
RELATIONS = """
SELECT coalesce(string_agg(n.nspname || '.' || c.relname || ':' || c.oid, ',' ORDER BY n.nspname, c.relname), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p') AND n.nspname NOT IN ('raw', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
"""


def read_state(conn, project_dir: Path) -> dict:
    with conn, conn.cursor() as cur:
        cur.execute(RAW_STATE)
        raw, today, now = cur.fetchone()
        cur.execute(RELATIONS)
        relations = cur.fetchone()[0]
        cur.execute("SELECT inputs, relations, built_on, built_at, freshness FROM raw.transform_state")
        prev = cur.fetchone()
        cur.execute("SELECT to_regclass('marts.fct_messages') IS NOT NULL "
                    "AND to_regclass('intermediate.int_post_changes') IS NULL")
        needs_full_refresh = cur.fetchone()[0]
    inputs = f"{project_hash(project_dir)}|{raw}"
    same = prev is not None and prev[:2] == (inputs, relations)
    return {"inputs": inputs, "today": today, "now": now, "unchanged": same and prev[2] == today,
            "new_day": same and prev[2] != today, "built_at": prev[3] if prev else None,
            "freshness": prev[4] if prev else None,
            "needs_full_refresh": needs_full_refresh}


def last_build_times(conn) -> tuple | None:
    """When the last successful whole build started, and its built_at (None: no build recorded yet)."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT started_at, built_through FROM raw.transform_state")
        return cur.fetchone()


def record_state(params: ConnParams, state: dict, freshness_facts: dict | None, started_at: datetime) -> None:
    """After a successful build: the inputs it started from, the relations it left, when it started."""
    conn = connect(params)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(RELATIONS)
            relations = cur.fetchone()[0]
            # the build's built_at: the checkpoint it appended to the change log
            cur.execute("SELECT to_regclass('intermediate.int_post_changes') IS NOT NULL")
            built = None
            if cur.fetchone()[0]:
                cur.execute("SELECT max(built_at) FROM intermediate.int_post_changes")
                built = cur.fetchone()[0]
            cur.execute("""INSERT INTO raw.transform_state (id, inputs, relations, built_on, freshness, started_at,
                                                            built_through)
                           VALUES (true, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT (id) DO UPDATE SET inputs = EXCLUDED.inputs, relations = EXCLUDED.relations,
                           built_on = EXCLUDED.built_on, freshness = EXCLUDED.freshness, built_at = now(),
                           started_at = EXCLUDED.started_at, built_through = EXCLUDED.built_through""",
                        (state["inputs"], relations, state["today"], Json(freshness_facts) if freshness_facts
                         is not None else None, started_at, built))
    finally:
        conn.close()


def note_image_models_built(db: ConnParams, project_dir: str | Path = PROJECT_DIR) -> bool:
    """After a successful build of the detection models and their ancestors (the enrich stage): if the
    rest of the warehouse is as the last whole build left it (same project, same messages, same day,
    same relations), record the new photo rows, so that the next run with nothing new skips its build.
    Returns whether the state was updated."""
    conn = connect(db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT inputs, relations, built_on, freshness FROM raw.transform_state FOR UPDATE")
            prev = cur.fetchone()
            if prev is None:
                return False
            cur.execute(RAW_STATE)
            raw, today, _ = cur.fetchone()
            cur.execute(RELATIONS)
            relations = cur.fetchone()[0]
            inputs = f"{project_hash(Path(project_dir).resolve())}|{raw}"

            def names(rels: str) -> set[str]:
                return {r.rsplit(":", 1)[0] for r in rels.split(",")}

            # inputs: project hash | messages | catalogue texts | resolutions | image analyses | detections
            if inputs.split("|")[:2] != prev[0].split("|")[:2] or prev[2] != today or \
                    names(relations) != names(prev[1]):
                return False
            facts = prev[3]
            for f in (facts or {}).values():  # the photo sources' newest loads moved on
                if f.get("relation") and f.get("loaded_at_field"):
                    cur.execute(f"SELECT max({f['loaded_at_field']}) FROM {f['relation']}")
                    newest = cur.fetchone()[0]
                    f["max_loaded_at"] = newest.isoformat() if newest else None
            cur.execute("UPDATE raw.transform_state SET inputs = %s, relations = %s, freshness = %s",
                        (inputs, relations, Json(facts) if facts is not None else None))
            return True
    finally:
        conn.close()


def skipped_summary(state: dict, check_freshness: bool, t0: float) -> dict:
    """The summary of a build skipped because nothing changed; freshness judged again at this run's time."""
    return {"status": "success", "full_refresh": False, "models_built": 0, "models_failed": 0, "models_skipped": 0,
            "seeds_loaded": 0, "tests_passed": 0, "tests_warned": 0, "tests_failed": 0, "unit_tests_passed": 0,
            "failing_nodes": [], "freshness": judge_freshness(state["freshness"], state["now"]) if check_freshness else {},
            "slowest_models": [], "nodes": [],
            "build_scope": "none",
            "build_skipped": f"nothing changed since the last successful build at "
                             f"{state['built_at'].isoformat(timespec='seconds')}: same project, same raw rows, "
                             f"same day",
            "duration_s": round(time.perf_counter() - t0, 3)}


