"""medical_etl: Ethiopian medical Telegram channels to a tested PostgreSQL warehouse.

The four stages take explicit inputs and return a summary dict:

- ``scrape_telegram_data(client, channels, lake_dir)``: Telegram (any Telethon-like client) to the
  JSON data lake; ``import_telegram_export(export_dir, lake_dir)`` for Telegram Desktop exports;
  ``StandInClient`` serves recorded posts through Telethon's types.
- ``load_raw_to_postgres(db, lake_dir)``: the lake to the ``raw`` tables, validated, idempotent.
- ``run_dbt_transformations(db)``: dbt build of the star schema (models and tests).
- ``run_yolo_enrichment(db, lake_dir, model=...)``: YOLO object detection on new photos; then
  ``build_image_models(db)`` builds and tests the detection models (the jobs do both).

``db`` is a :class:`~medical_etl.db.ConnParams` (``conn_params(load_settings())`` makes one from the
environment, starting the embedded PostgreSQL when ``DB_HOST`` is empty).

Jobs: ``run_job("pipeline", settings)`` runs the stages in order under the job lock, each in its own
process with a time limit and retries (``"weekly"``, ``"scrape-load"``, ``"transform"``,
``"enrich"``: ``make jobs`` lists them); ``run_stage`` runs one stage with its run-log record.
Monitoring: ``run_monitor``. Errors: ``EtlError``, split into ``TransientError`` (worth retrying)
and ``PermanentError`` (``ConfigError`` among them); ``StageFailed`` and ``JobError`` carry the failed
stage's transient reason, or None.

Stages are imported on first use, so ``import medical_etl`` stays fast; ``help(medical_etl)`` and
``dir(medical_etl)`` show them all.
"""
from importlib import import_module

__version__ = "0.1.0"

_API = {
    "Settings": "config", "load_settings": "config",
    "ConnParams": "db", "conn_params": "db", "connect": "db", "test_connection": "db",
    "EtlError": "errors", "TransientError": "errors", "PermanentError": "errors", "ConfigError": "errors",
    "StageFailed": "errors", "JobError": "errors",
    "RunLog": "runlog", "track_run": "runlog",
    "scrape_telegram_data": "scrape.stage", "import_telegram_export": "scrape.stage",
    "StandInClient": "scrape.standin",
    "load_raw_to_postgres": "load",
    "run_dbt_transformations": "transform", "build_image_models": "transform",
    "run_yolo_enrichment": "enrich.stage",
    "run_job": "jobs.job", "run_stage": "jobs.stages",
    "run_monitor": "monitor.evaluate",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medical_etl' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public API, loaded or not; the lazy-import machinery itself stays out of help()
    return sorted({*globals(), *_API} - {"__getattr__", "__dir__", "import_module", "_API"})
