"""``medical-etl doctor``: the configuration, the database and each stage's tools (dbt, the YOLO
weights, the Telegram session), and the installed schedule."""
from __future__ import annotations

from pathlib import Path

from medical_etl.config import Settings


def _dbt(settings: Settings):
    try:
        from importlib.metadata import version

        v = version("dbt-core")
    except Exception as exc:  # noqa: BLE001
        return ("dbt", False, True, f"dbt-core not installed: {exc}")
    project = settings.dbt_project_dir
    ok = (project / "dbt_project.yml").is_file()
    return ("dbt", ok, True, f"dbt-core {v}, project {project}" if ok else f"no dbt project at {project} (DBT_PROJECT_DIR)")


def _yolo(settings: Settings):
    """Required: the daily pipeline ends with the enrich stage, which needs loadable weights."""
    from medical_etl.jobs.preflight import check_weights

    problem = check_weights(settings.yolo_model, settings.yolo_offline)
    if problem is None:
        path = Path(settings.yolo_model)
        size = f" ({path.stat().st_size:,} bytes)" if path.is_file() else " (downloaded on first use)"
        return ("yolo", True, True, f"YOLO_MODEL={settings.yolo_model}{size} loads")
    return ("yolo", False, True, f"YOLO_MODEL: {problem}")


def _cron(settings: Settings):
    from medical_etl.ops import cron

    ok, detail = cron.check()
    return ("cron", ok, False, detail)


def _telegram(settings: Settings):
    if settings.telegram_source != "api":
        return ("telegram", True, False, f"TELEGRAM_SOURCE={settings.telegram_source} (no API needed)")
    if not settings.telegram_api_id or not settings.telegram_api_hash:
        return ("telegram", False, False, "TELEGRAM_API_ID / TELEGRAM_API_HASH not set")
    if settings.telegram_string_session:
        from medical_etl.scrape.telegram import string_session_problem

        problem = string_session_problem(settings.telegram_string_session.reveal())
        return ("telegram", problem is None, False, f"TELEGRAM_STRING_SESSION: {problem or 'configured'}")
    session = Path(str(settings.telegram_session).removesuffix(".session") + ".session")
    if not session.exists():
        return ("telegram", False, False, f"no session file {session}: run `make telegram-login`")
    mode = session.stat().st_mode & 0o777
    return ("telegram", mode == 0o600, False, f"session {session} (mode {mode:o})")


def _config(settings: Settings):
    return ("config", True, True, f"raw={settings.raw_data_path} logs={settings.logs_path} "
                                  f"db={'embedded' if settings.embedded else settings.db_host}")


def _database(settings: Settings):
    from medical_etl.db import test_connection

    db = test_connection(settings)
    detail = (f"PostgreSQL {db['server_version']} at {db['target']} in {db['latency_ms']} ms"
              if db["ok"] else db["error"])
    return ("database", db["ok"], True, detail)


def checks(settings: Settings):
    """(name, ok, required, detail) per check; a check that crashes is a failed check."""
    for check in (_config, _database, _dbt, _yolo, _telegram, _cron):
        try:
            yield check(settings)
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check
            yield (check.__name__.strip("_"), False, False, f"{type(exc).__name__}: {exc}")
