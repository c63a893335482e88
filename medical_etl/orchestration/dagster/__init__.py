"""Dagster over the same jobs: the ``dagster`` extra (``pip install '.[dagster]'``); Make and cron stay the default.

- :mod:`.repository`: :func:`build_definitions`, the assets (one per stage, the dbt models with their tests
  as asset checks), a job per line of the Makefile's job table, the crontab's schedules in UTC;
- :mod:`.job_run`: a Dagster run is a job run: the job lock, the run-log records, the monitor afterwards;
- :mod:`.steps`: each step runs its stage as run_job does; only transient failures are retried;
- :mod:`.partitions`: ``enrichment_by_day``, the enrich job over daily partitions (UTC), for backfills;
- :mod:`.defs`: what ``dagster dev`` loads; ``python -m medical_etl.orchestration.dagster`` (``make dagster``)
  starts it on 127.0.0.1:3000.
"""
from medical_etl.orchestration.dagster.repository import DAGSTER_JOBS, build_definitions

__all__ = ["build_definitions", "DAGSTER_JOBS"]
