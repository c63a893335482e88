"""dbt's plumbing, in one place: where dbt writes, the variables that aim ``profiles.yml`` at a database,
running dbt in process, and reading its source freshness.

Used by the transform stage, by ``medical-etl dbt`` and ``medical-etl env`` (plain dbt and psql on the
project's database) and by log housekeeping (:func:`dbt_paths`).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from medical_etl import resources
from medical_etl.db import ConnParams
from medical_etl.errors import PermanentError

PROJECT_DIR = resources.dbt_project()  # the default; jobs pass the DBT_PROJECT_DIR setting
ENV_PREFIX = "MEDICAL_ETL_DBT_"  # what profiles.yml reads (env_var), before DB_*
APPNAME_VAR = ENV_PREFIX + "APPNAME"  # the application_name of dbt's sessions (a job names them after its run)


class TransformError(PermanentError):
    """dbt could not run at all (as opposed to a model or test failing)."""


def writes_in_place(project_dir: Path) -> bool:
    """Whether dbt may write target/ and logs/ inside the project: not in the copy an installed
    package carries, nor in a folder this user cannot write to."""
    project_dir = Path(project_dir)
    return not project_dir.resolve().is_relative_to(resources.PACKAGED) and os.access(project_dir, os.W_OK)


def dbt_paths(project_dir: Path, logs_path: Path | None = None) -> dict:
    """The dbt project and where dbt writes (``target_path``, ``log_path``): its own target/ and logs/
    when it may write there (a checkout); else ``logs_path``/dbt (LOGS_PATH, for the copy an installed
    package carries); else, with no ``logs_path`` (a library call), a folder of this user's in /tmp."""
    project = Path(project_dir)
    if writes_in_place(project):
        out = project
    elif logs_path is not None:
        out = Path(logs_path) / "dbt"
    else:
        out = Path(tempfile.gettempdir()) / f"medical_etl-dbt-{os.getuid()}"
    return {"project_dir": project, "target_path": out / "target", "log_path": out / "logs"}


def shell_env(params: ConnParams, paths: dict) -> dict[str, str]:
    """The variables that aim a shell's dbt (profiles.yml) and psql at ``params`` and the project in
    ``paths`` (:func:`dbt_paths`); the password is left to the caller."""
    project = str(paths["project_dir"])
    return {ENV_PREFIX + "HOST": params.host, ENV_PREFIX + "PORT": str(params.port),
            ENV_PREFIX + "DBNAME": params.dbname, ENV_PREFIX + "USER": params.user,
            "DBT_PROFILES_DIR": project, "DBT_PROJECT_DIR": project,
            "DBT_TARGET_PATH": str(paths["target_path"]), "DBT_LOG_PATH": str(paths["log_path"]),
            "PGHOST": params.host, "PGPORT": str(params.port), "PGDATABASE": params.dbname, "PGUSER": params.user}


@contextmanager
def dbt_environment(params: ConnParams, threads: int, last_build: tuple | None = None) -> Iterator[None]:
    """Expose the connection to profiles.yml's env_var() for the duration of the run only, and to the data
    tests where their daily scope starts (``last_build``: when the last successful whole build started and
    its built_at; macros/test_scope.sql; None: every row)."""
    since, built = last_build if last_build and all(last_build) else (None, None)
    values = {"HOST": params.host, "PORT": str(params.port), "DBNAME": params.dbname, "USER": params.user,
              "PASSWORD": params.password, "THREADS": str(threads),
              "TESTS_SINCE": since.isoformat() if since else "", "TESTS_BUILT_AFTER": built.isoformat() if built else ""}
    saved = {k: os.environ.get(ENV_PREFIX + k) for k in values}
    os.environ.update({ENV_PREFIX + k: v for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(ENV_PREFIX + k, None)
            else:
                os.environ[ENV_PREFIX + k] = v


def invoke(args: list[str]):
    from dbt.cli.main import dbtRunner

    return dbtRunner().invoke(args)


def node_status(r) -> str:
    return str(getattr(r.status, "value", r.status)).lower()


def source_freshness(flags: list[str], common: list[str]) -> tuple[dict, dict]:
    """Source freshness per table (pass, warn, error); reported, not fatal: staleness is the monitor's call.

    Also returns the facts each status was judged from (newest load, thresholds in seconds), so a
    later run over the same rows can judge them again at its own time without dbt.
    """
    res = invoke([*flags, "source", "freshness", *common])
    out, facts = {}, {}
    for r in getattr(res.result, "results", None) or []:
        if not r.node.unique_id.startswith("source."):  # the project's on-run-end hook runs here too
            continue
        name = r.node.unique_id.removeprefix("source.medical_warehouse.")
        out[name] = node_status(r)
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


def judge_freshness(facts: dict, now) -> dict:
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
