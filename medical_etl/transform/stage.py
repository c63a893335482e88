"""Stage 3, transform: the catalogue (:mod:`medical_etl.transform.catalogue.stage`: the offers of new post texts and
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

import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from medical_etl.db import ConnParams, connect_warehouse, expect_params
from medical_etl.transform.catalogue.stage import build_catalogue
from medical_etl.transform.dbt import (
    PROJECT_DIR,
    TransformError,
    dbt_environment,
    dbt_paths,
    invoke,
    judge_freshness,
    node_status,
    source_freshness,
)
from medical_etl.transform.state import (
    last_build_times,
    note_image_models_built,
    read_state,
    record_state,
    skipped_summary,
)


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
    default = dbt_paths(project_dir)  # where dbt writes when the caller does not say
    whole = not select  # only a build of the whole project records (or may skip on) its inputs
    # the text understanding first: the product models are built on what it writes
    catalogue = None if select and set(select) <= set(IMAGE_MODELS) else build_catalogue(db)
    conn = connect_warehouse(db)  # the sources (raw tables) must exist, even before the first load
    try:
        state = read_state(conn, project_dir) if whole else None
        last_build = last_build_times(conn)
    finally:
        conn.close()
    scope = "all"
    if state and state["needs_full_refresh"] and not full_refresh:
        # marts built before the change log existed: the first build with it rebuilds them whole
        full_refresh, scope = True, "all: first build with the change log (int_post_changes), a full refresh"
    if state and not full_refresh and (state["freshness"] is not None or not check_freshness):
        if state["unchanged"]:
            return {**skipped_summary(state, check_freshness, t0), "catalogue": catalogue}
        if state["new_day"]:  # only the calendar moved: dim_dates runs to today, and its tests
            select, scope = ["dim_dates+"], "dim_dates+: nothing changed but the day"
    common = ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
              "--target-path", str(target_path or default["target_path"])]
    # progress goes to dbt.log (and each node into the summary); the console gets warnings and errors,
    # and each node as it runs when LOG_LEVEL=DEBUG (the level this process logs at)
    from medical_etl.logsetup import dbt_log_levels

    console_level, file_level = dbt_log_levels()
    flags = ["--log-path", str(log_path or default["log_path"]), "--no-use-colors", "--log-level", console_level,
             "--log-level-file", file_level]
    args = ["build", *common]
    if full_refresh:
        args.append("--full-refresh")
    if select:
        args += ["--select", *select]
    # a daily build's tests check the rows since the last successful whole build; a full one, all
    with dbt_environment(db, threads, None if full_refresh else last_build):
        res = invoke([*flags, *args])
        if not scope.startswith("all"):  # same rows: the freshness facts recorded are still the facts
            freshness, facts = (judge_freshness(state["freshness"], state["now"]) if check_freshness else {}), state["freshness"]
        else:
            freshness, facts = source_freshness(flags, common) if check_freshness and res.success else ({}, None)
    if res.result is None or not hasattr(res.result, "results"):
        raise TransformError(f"dbt build could not run: {res.exception}")

    nodes, counts, failing = [], Counter(), []
    for r in res.result.results:
        node = r.node
        if node.unique_id.startswith("operation."):  # the on-run-end hook (macros/warehouse_version.sql)
            continue
        kind = node.resource_type.value if hasattr(node.resource_type, "value") else str(node.resource_type)
        status = node_status(r)
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
        record_state(db, state, facts, started_at)
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


