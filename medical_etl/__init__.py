"""medical_etl: Ethiopian medical Telegram channels to a tested PostgreSQL warehouse.

The public API, in one place (stages are imported on first use, so ``import medical_etl`` stays fast):

- Configuration and plumbing: ``load_settings``, ``Settings``, ``ConfigError``, ``connect``,
  ``test_connection``, ``RunLog``, ``track_run``.
- The four stages: ``scrape_telegram_data``, ``load_raw_to_postgres``, ``run_dbt_transformations``,
  ``run_yolo_enrichment``; plus ``import_telegram_export`` (Telegram Desktop exports) and
  ``StandInClient`` (serves recorded posts through Telethon's types).
- Jobs: ``run_job`` (``"pipeline"``, ``"weekly"``, ``"scrape-load"``, ``"transform"``, ``"enrich"``).
- Monitoring: ``run_monitor``.
"""
from importlib import import_module

__version__ = "0.1.0"

_API = {
    "ConfigError": "config", "Settings": "config", "load_settings": "config",
    "connect": "db", "test_connection": "db",
    "RunLog": "runlog", "track_run": "runlog",
    "scrape_telegram_data": "scrape", "import_telegram_export": "scrape",
    "load_raw_to_postgres": "load",
    "run_dbt_transformations": "transform",
    "run_yolo_enrichment": "enrich",
    "StandInClient": "standin",
    "run_job": "jobs",
    "run_monitor": "monitoring.run",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medical_etl' has no attribute {name!r}")
