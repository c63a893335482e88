"""Stage 3, transform: the catalogue (:mod:`medical_etl.catalogue.stage`: the offers of new post texts and
what their products are, into raw tables), then the dbt project ``medical_warehouse/`` in process
(``dbt build``).

Models and their tests run in DAG order; the results (models built, tests
passed, warned and failed, each node's time) become the stage summary. A
failing model or test fails the stage and is named in the error.

A day with nothing new costs next to nothing: after each successful full build the
inputs it saw (the project's files, dbt's version, the raw tables' rows) and the
relations it left are recorded in ``raw.transform_state``; when all are unchanged and
it is still the same day (``dim_dates`` runs to today) the build is skipped, since
it would rebuild the same tables and test the same rows. Source freshness, which
changes with the clock, is still checked. dbt itself parses partially
(``target/partial_parse.msgpack``).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from psycopg2.extras import Json

from medical_etl import resources
from medical_etl.catalogue.stage import build_catalogue
from medical_etl.db import ConnParams, connect, connect_warehouse, expect_params
from medical_etl.errors import PermanentError

PROJECT_DIR = resources.dbt_project()  # the default; jobs pass the DBT_PROJECT_DIR setting
_ENV_PREFIX = "MEDICAL_ETL_DBT_"


class TransformError(PermanentError):
    """dbt could not run at all (as opposed to a model or test failing)."""


@contextmanager
def _dbt_env(params: ConnParams, threads: int, last_build: tuple | None = None) -> Iterator[None]:
    """Expose the connection to profiles.yml's env_var() for the duration of the run only, and to the data
    tests where their daily scope starts (``last_build``: when the last successful whole build started and
    its built_at; macros/test_scope.sql; None: every row)."""
    since, built = last_build if last_build and all(last_build) else (None, None)
    values = {"HOST": params.host, "PORT": str(params.port), "DBNAME": params.dbname, "USER": params.user,
              "PASSWORD": params.password, "THREADS": str(threads),
              "TESTS_SINCE": since.isoformat() if since else "", "TESTS_BUILT_AFTER": built.isoformat() if built else ""}
    saved = {k: os.environ.get(_ENV_PREFIX + k) for k in values}
    os.environ.update({_ENV_PREFIX + k: v for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(_ENV_PREFIX + k, None)
            else:
                os.environ[_ENV_PREFIX + k] = v


def _invoke(args: list[str]):
    from dbt.cli.main import dbtRunner

    return dbtRunner().invoke(args)


def _status(r) -> str:
    return str(getattr(r.status, "value", r.status)).lower()


def run_dbt_transformations(
    db: ConnParams,
    *,
    project_dir: str | Path = PROJECT_DIR,
    full_refresh: bool = False,
    select: Sequence[str] | None = None,
    threads: int = 2,
    check_freshness: bool = True,
    target_path: str | Path | None = None,
    log_path: str | Path | None = None,
) -> dict:
    """``dbt build`` the warehouse over the raw tables; return a summary dict.

    ``db``: where the warehouse is. ``full_refresh`` rebuilds incremental
    models (the weekly run); ``select`` limits the nodes (dbt selection syntax).
    ``status`` is ``success`` or ``failed`` (then ``failing_nodes`` names them).
    """
    t0, started_at = time.perf_counter(), datetime.now(timezone.utc)
    expect_params(db, "run_dbt_transformations")
    project_dir = Path(project_dir).resolve()
    out = _writable_home(project_dir)
    whole = not select  # only a build of the whole project records (or may skip on) its inputs
    # the text understanding first: the product models are built on what it writes
    catalogue = None if select and set(select) <= set(IMAGE_MODELS) else build_catalogue(db)
    conn = connect_warehouse(db)  # the sources (raw tables) must exist, even before the first load
    try:
        state = _state(conn, project_dir) if whole else None
        last_build = _last_build(conn)
    finally:
        conn.close()
    scope = "all"
    if state and state["needs_full_refresh"] and not full_refresh:
        # marts built before the change log existed: the first build with it rebuilds them whole
        full_refresh, scope = True, "all: first build with the change log (int_post_changes), a full refresh"
    if state and not full_refresh and (state["freshness"] is not None or not check_freshness):
        if state["unchanged"]:
            return {**_skipped(state, check_freshness, t0), "catalogue": catalogue}
        if state["new_day"]:  # only the calendar moved: dim_dates runs to today, and its tests
            select, scope = ["dim_dates+"], "dim_dates+: nothing changed but the day"
    common = ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
              "--target-path", str(target_path or out / "target")]
    # progress goes to dbt.log (and each node into the summary); the console gets warnings and errors,
    # and each node as it runs when LOG_LEVEL=DEBUG (the level this process logs at)
    from medical_etl.logsetup import dbt_log_levels

    console_level, file_level = dbt_log_levels()
    flags = ["--log-path", str(log_path or out / "logs"), "--no-use-colors", "--log-level", console_level,
             "--log-level-file", file_level]
    args = ["build", *common]
    if full_refresh:
        args.append("--full-refresh")
    if select:
        args += ["--select", *select]
    # a daily build's tests check the rows since the last successful whole build; a full one, all
    with _dbt_env(db, threads, None if full_refresh else last_build):
        res = _invoke([*flags, *args])
        if not scope.startswith("all"):  # same rows: the freshness facts recorded are still the facts
            freshness, facts = (_judge(state["freshness"], state["now"]) if check_freshness else {}), state["freshness"]
        else:
            freshness, facts = _freshness(flags, common) if check_freshness and res.success else ({}, None)
    if res.result is None or not hasattr(res.result, "results"):
        raise TransformError(f"dbt build could not run: {res.exception}")

    nodes, counts, failing = [], Counter(), []
    for r in res.result.results:
        node = r.node
        if node.unique_id.startswith("operation."):  # the on-run-end hook (macros/warehouse_version.sql)
            continue
        kind = node.resource_type.value if hasattr(node.resource_type, "value") else str(node.resource_type)
        status = _status(r)
        counts[f"{kind}:{status}"] += 1
        nodes.append({"node": node.unique_id, "type": kind, "status": status,
                      "seconds": round(r.execution_time or 0.0, 3)})
        if status in ("error", "fail"):
            failing.append({"node": node.unique_id, "status": status,
                            "message": (r.message or "")[:500], "failures": r.failures})
    tests = {s: sum(v for k, v in counts.items() if k.split(":")[0] in ("test", "unit_test")
                    and k.split(":")[1] == s) for s in ("pass", "warn", "fail", "error", "skipped")}
    ok = res.success and not failing
    if ok and state:
        _record_state(db, state, facts, started_at)
    summary = {
        "status": "success" if ok else "failed",
        "full_refresh": full_refresh,
        "models_built": counts["model:success"],
        "models_failed": counts["model:error"],
        "models_skipped": counts["model:skipped"],
        "seeds_loaded": counts["seed:success"],
        "tests_passed": tests["pass"],
        "tests_warned": tests["warn"],
        "tests_failed": tests["fail"] + tests["error"],
        "unit_tests_passed": counts["unit_test:pass"],
        "failing_nodes": failing,
        "freshness": freshness,
        "slowest_models": slowest_models(nodes),
        "nodes": nodes,
        "build_skipped": None,
        "build_scope": scope if whole else "selected",
        "catalogue": catalogue,
        "duration_s": round(time.perf_counter() - t0, 3),
    }
    return summary


def slowest_models(nodes: list[dict], n: int = 5) -> list[dict]:
    """The ``n`` models that took longest, slowest first: ``{"model": name, "seconds": s}`` (what the run log
    keeps of a build's nodes, for the monitor's bottleneck view and long-execution alerts)."""
    models = [x for x in nodes if x["type"] == "model"]
    return [{"model": x["node"].rsplit(".", 1)[-1], "seconds": x["seconds"]}
            for x in sorted(models, key=lambda x: -x["seconds"])[:n]]


def _project_hash(project_dir: Path) -> str:
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
_RAW_STATE = "SELECT concat_ws('|', " + ", ".join(
    f"""(SELECT concat_ws('/', 'raw.{t}'::regclass::oid, version) FROM raw.table_versions WHERE table_name = '{t}')"""
    for t in ("telegram_messages", "catalogue_texts", "product_resolutions", "image_analyses", "image_detections")
) + "), current_date, now()"
_RELATIONS = """
SELECT coalesce(string_agg(n.nspname || '.' || c.relname || ':' || c.oid, ',' ORDER BY n.nspname, c.relname), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'p') AND n.nspname NOT IN ('raw', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
"""


def _state(conn, project_dir: Path) -> dict:
    with conn, conn.cursor() as cur:
        cur.execute(_RAW_STATE)
        raw, today, now = cur.fetchone()
        cur.execute(_RELATIONS)
        relations = cur.fetchone()[0]
        cur.execute("SELECT inputs, relations, built_on, built_at, freshness FROM raw.transform_state")
        prev = cur.fetchone()
        cur.execute("SELECT to_regclass('marts.fct_messages') IS NOT NULL "
                    "AND to_regclass('intermediate.int_post_changes') IS NULL")
        needs_full_refresh = cur.fetchone()[0]
    inputs = f"{_project_hash(project_dir)}|{raw}"
    same = prev is not None and prev[:2] == (inputs, relations)
    return {"inputs": inputs, "today": today, "now": now, "unchanged": same and prev[2] == today,
            "new_day": same and prev[2] != today, "built_at": prev[3] if prev else None,
            "freshness": prev[4] if prev else None,
            "needs_full_refresh": needs_full_refresh}


def _last_build(conn) -> tuple | None:
    """When the last successful whole build started, and its built_at (None: no build recorded yet)."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT started_at, built_through FROM raw.transform_state")
        return cur.fetchone()


def _record_state(params: ConnParams, state: dict, freshness_facts: dict | None, started_at: datetime) -> None:
    """After a successful build: the inputs it started from, the relations it left, when it started."""
    conn = connect(params)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(_RELATIONS)
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


def writes_in_place(project_dir: Path) -> bool:
    """Whether dbt may write target/ and logs/ inside the project: not in the copy an installed
    package carries, nor in a folder this user cannot write to."""
    project_dir = Path(project_dir)
    return not project_dir.resolve().is_relative_to(resources.PACKAGED) and os.access(project_dir, os.W_OK)


def _writable_home(project_dir: Path) -> Path:
    """Where dbt writes when the caller does not say: the project, else a folder of this user's in /tmp."""
    return project_dir if writes_in_place(project_dir) else Path(tempfile.gettempdir()) / f"medical_etl-dbt-{os.getuid()}"


IMAGE_MODELS = ("+fct_image_detections+", "+fct_image_categories+")


def build_image_models(db: ConnParams, *, project_dir: str | Path = PROJECT_DIR,
                       target_path: str | Path | None = None, log_path: str | Path | None = None) -> dict:
    """Build and test the detection models and what they depend on (after the enrich stage stored
    new detections); record them as built, so that the next run with nothing new skips its build.
    Returns the short summary (status, counts, failing nodes, duration)."""
    dbt = run_dbt_transformations(db, project_dir=project_dir, select=list(IMAGE_MODELS), check_freshness=False,
                                  target_path=target_path, log_path=log_path)
    if dbt["status"] == "success":
        note_image_models_built(db, project_dir)
    return {k: dbt[k] for k in ("status", "models_built", "tests_passed", "tests_failed", "failing_nodes",
                                "duration_s")}


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
            cur.execute(_RAW_STATE)
            raw, today, _ = cur.fetchone()
            cur.execute(_RELATIONS)
            relations = cur.fetchone()[0]
            inputs = f"{_project_hash(Path(project_dir).resolve())}|{raw}"

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


def _skipped(state: dict, check_freshness: bool, t0: float) -> dict:
    """The summary of a build skipped because nothing changed; freshness judged again at this run's time."""
    return {"status": "success", "full_refresh": False, "models_built": 0, "models_failed": 0, "models_skipped": 0,
            "seeds_loaded": 0, "tests_passed": 0, "tests_warned": 0, "tests_failed": 0, "unit_tests_passed": 0,
            "failing_nodes": [], "freshness": _judge(state["freshness"], state["now"]) if check_freshness else {},
            "slowest_models": [], "nodes": [],
            "build_scope": "none",
            "build_skipped": f"nothing changed since the last successful build at "
                             f"{state['built_at'].isoformat(timespec='seconds')}: same project, same raw rows, "
                             f"same day",
            "duration_s": round(time.perf_counter() - t0, 3)}


def _freshness(flags: list[str], common: list[str]) -> tuple[dict, dict]:
    """Source freshness per table (pass, warn, error); reported, not fatal: staleness is the monitor's call.

    Also returns the facts each status was judged from (newest load, thresholds in seconds), so a
    later run over the same rows can judge them again at its own time without dbt.
    """
    res = _invoke([*flags, "source", "freshness", *common])
    out, facts = {}, {}
    for r in getattr(res.result, "results", None) or []:
        if not r.node.unique_id.startswith("source."):  # the project's on-run-end hook runs here too
            continue
        name = r.node.unique_id.removeprefix("source.medical_warehouse.")
        out[name] = _status(r)
        limits = getattr(r.node, "freshness", None)
        loaded = getattr(r, "max_loaded_at", None)
        facts[name] = {"status": out[name], "max_loaded_at": loaded.isoformat() if loaded else None,
                       "relation": r.node.relation_name, "loaded_at_field": r.node.loaded_at_field,
                       **{k: _seconds(getattr(limits, k, None)) for k in ("warn_after", "error_after")}}
    return out, facts


def _seconds(limit) -> float | None:
    from datetime import timedelta

    if not limit or limit.count is None or limit.period is None:
        return None
    return timedelta(**{limit.period.plural(): limit.count}).total_seconds()


def _judge(facts: dict, now) -> dict:
    """dbt's freshness rule (FreshnessThreshold.status) on recorded facts, at ``now``."""
    out = {}
    for name, f in facts.items():
        if f["max_loaded_at"] is None or f["status"] not in ("pass", "warn", "error"):
            out[name] = f["status"]  # a runtime error on these rows stays one
            continue
        loaded = datetime.fromisoformat(f["max_loaded_at"])
        loaded = loaded if loaded.tzinfo else loaded.replace(tzinfo=timezone.utc)
        age = (now - loaded).total_seconds()
        out[name] = ("error" if f["error_after"] is not None and age > f["error_after"] else
                     "warn" if f["warn_after"] is not None and age > f["warn_after"] else "pass")
    return out
