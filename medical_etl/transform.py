"""Stage 3, transform: run the dbt project ``medical_warehouse/`` in process (``dbt build``).

Models and their tests run in DAG order; the results (models built, tests
passed, warned and failed, each node's time) become the stage summary. A
failing model or test fails the stage and is named in the error.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .db import ConnParams, conn_params, connect
from .migrate import migrate

PROJECT_DIR = Path(__file__).resolve().parents[1] / "medical_warehouse"
_ENV_PREFIX = "MEDICAL_ETL_DBT_"


class TransformError(RuntimeError):
    pass


@contextmanager
def _dbt_env(params: ConnParams, threads: int) -> Iterator[None]:
    """Expose the connection to profiles.yml's env_var() for the duration of the run only."""
    values = {"HOST": params.host, "PORT": str(params.port), "DBNAME": params.dbname, "USER": params.user,
              "PASSWORD": params.password, "THREADS": str(threads)}
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
    db,
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

    ``db`` is Settings or ConnParams. ``full_refresh`` rebuilds incremental
    models (the weekly run); ``select`` limits the nodes (dbt selection syntax).
    ``status`` is ``success`` or ``failed`` (then ``failing_nodes`` names them).
    """
    t0 = time.perf_counter()
    params = db if isinstance(db, ConnParams) else conn_params(db)
    conn = connect(params)
    try:
        migrate(conn)  # the sources (raw tables) must exist, even before the first load
    finally:
        conn.close()
    project_dir = Path(project_dir).resolve()
    common = ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
              "--target-path", str(target_path or project_dir / "target")]
    # progress goes to dbt.log (and each node into the summary); the console gets warnings and errors
    flags = ["--log-path", str(log_path or project_dir / "logs"), "--no-use-colors", "--log-level", "warn",
             "--log-level-file", "info"]
    args = ["build", *common]
    if full_refresh:
        args.append("--full-refresh")
    if select:
        args += ["--select", *select]
    with _dbt_env(params, threads):
        res = _invoke([*flags, *args])
        freshness = _freshness(flags, common) if check_freshness and res.success else {}
    if res.result is None or not hasattr(res.result, "results"):
        raise TransformError(f"dbt build could not run: {res.exception}")

    nodes, counts, failing = [], Counter(), []
    for r in res.result.results:
        node = r.node
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
    summary = {
        "status": "success" if res.success and not failing else "failed",
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
        "slowest_nodes": sorted(nodes, key=lambda n: -n["seconds"])[:5],
        "nodes": nodes,
        "duration_s": round(time.perf_counter() - t0, 3),
    }
    return summary


def _freshness(flags: list[str], common: list[str]) -> dict:
    """Source freshness per table (pass, warn, error); reported, not fatal: staleness is the monitor's call."""
    res = _invoke([*flags, "source", "freshness", *common])
    out = {}
    for r in getattr(res.result, "results", None) or []:
        out[r.node.unique_id.removeprefix("source.medical_warehouse.")] = _status(r)
    return out
