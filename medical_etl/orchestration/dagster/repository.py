"""The Dagster definitions: the assets, a job per line of the Makefile's job table, the crontab's schedules.

The jobs are :func:`medical_etl.jobs.definitions.jobs` (the Makefile's ``JOB.<job> := ...`` lines), each an asset job
over its stages' assets, under the original design's names (:data:`DAGSTER_JOBS`); the schedules are
the ``crontab`` file's lines for those jobs (02:00 daily, Sunday 03:00 weekly), in UTC as the file
states them. Beside them, ``enrichment_by_day`` (:mod:`.partitions`): the enrich job over daily
partitions. Every run uses the in-process executor and the run-scoped resource of :mod:`.job_run`, so
one process holds the job lock and writes the job's run-log record for the whole run.
"""
from __future__ import annotations

import re

from dagster import (
    AssetSelection,
    Definitions,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
    resource,
)

from medical_etl import resources
from medical_etl.config import Settings, load_settings
from medical_etl.jobs.definitions import STAGES, jobs
from medical_etl.orchestration.dagster.assets import IMAGE_ENRICHMENT, TELEGRAM_DATA, stage_assets
from medical_etl.orchestration.dagster.dbt_assets import (
    RAW_DATABASE,
    WAREHOUSE_OP,
    parse_manifest,
    warehouse_assets,
)
from medical_etl.orchestration.dagster.job_run import job_run, stages_of
from medical_etl.orchestration.dagster.partitions import PARTITION_OP, PARTITION_TAG, enrichment_by_day
from medical_etl.orchestration.dagster.steps import RUN_RESOURCE

DAGSTER_JOBS = {"pipeline": "ethiopian_medical_pipeline", "scrape-load": "scrape_and_load_pipeline",
                "transform": "transformation_pipeline", "enrich": "enrichment_pipeline",
                "weekly": "weekly_pipeline"}
JOB_TAG = "medical_etl/job"
_CRON_LINE = re.compile(r"(\S+\s+\S+\s+\S+\s+\S+\s+\S+)\s+\S*cron_run\.sh\s+(\S+)\s*")


def dagster_job_name(job: str) -> str:
    return DAGSTER_JOBS.get(job) or job.replace("-", "_") + "_pipeline"


def crontab_schedules() -> list[tuple[str, str]]:
    """``(cron expression, job)`` of the crontab file's lines that run a job of the Makefile (not the backup)."""
    out = []
    for line in resources.crontab_template().read_text(encoding="utf-8").splitlines():
        m = _CRON_LINE.fullmatch(line.strip())
        if m and m.group(2) in jobs():
            out.append((" ".join(m.group(1).split()), m.group(2)))
    return out


def run_resource(settings: Settings, stage_of: dict[str, str], client=None, monitor: bool = True):
    """The run-scoped resource: :func:`.job_run.job_run` around the whole run. ``stage_of`` maps each
    step (op name) and stage asset to its stage (any other asset is a dbt model); ``client`` goes to the scrape stage (a stand-in in tests)."""

    @resource(description="the job lock and the job's run-log record, held for the whole run")
    def medical_etl_run(init_context):
        dagster_run = init_context.run
        selected = None  # the stages of the run's selection; None: the whole job
        if dagster_run.asset_selection:  # (empty: none)
            selected = {stage_of.get(k.to_user_string(), "transform") for k in dagster_run.asset_selection}
        if dagster_run.step_keys_to_execute is not None:  # a re-execution of some steps
            steps = {stage_of[k] for k in dagster_run.step_keys_to_execute if k in stage_of}
            selected = steps if selected is None else selected & steps
        job = dagster_run.tags.get(JOB_TAG)
        job, stages = stages_of(job, selected if selected is not None or job else set(STAGES))
        with job_run(settings, job, stages, client=client, dagster_run_id=dagster_run.run_id,
                     partition=dagster_run.tags.get(PARTITION_TAG), monitor=monitor) as run:
            yield run

    return medical_etl_run


def build_definitions(settings: Settings | None = None, *, client=None, monitor: bool = True,
                      partitions_start: str | None = None) -> Definitions:
    """The Definitions over ``settings`` (default: the environment and .env, as the CLI reads them).

    ``client`` is injected into the scrape stage (a TelegramClient or a stand-in); ``monitor``: run the
    monitor after each run, as cron does; ``partitions_start``: the first day of ``enrichment_by_day``
    (default: ENRICH_PARTITIONS_START, else 2020-01-01)."""
    settings = settings or load_settings()
    warehouse = warehouse_assets(settings, parse_manifest(settings))
    telegram_data, raw_database, image_enrichment = stage_assets(settings, warehouse)
    by_stage = {"scrape": AssetSelection.assets(telegram_data), "load": AssetSelection.assets(raw_database),
                "transform": AssetSelection.assets(warehouse), "enrich": AssetSelection.assets(image_enrichment)}
    stage_of = {TELEGRAM_DATA: "scrape", RAW_DATABASE: "load", WAREHOUSE_OP: "transform",
                IMAGE_ENRICHMENT: "enrich", PARTITION_OP: "enrich"}
    asset_jobs = []
    for job, stages in jobs().items():
        selection = by_stage[stages[0]]
        for stage in stages[1:]:
            selection = selection | by_stage[stage]
        asset_jobs.append(define_asset_job(
            dagster_job_name(job), selection=selection, executor_def=in_process_executor, tags={JOB_TAG: job},
            description=f"The job {job} of the Makefile (make {job}): {' '.join(stages)}."))
    schedules = [ScheduleDefinition(name=f"{dagster_job_name(job)}_schedule", cron_schedule=cron,
                                    job_name=dagster_job_name(job), execution_timezone="UTC",
                                    description=f"the crontab's line for {job}: {cron} (UTC)")
                 for cron, job in crontab_schedules()]
    asset_jobs.append(enrichment_by_day(settings, {JOB_TAG: "enrich"}, partitions_start))
    return Definitions(assets=[telegram_data, raw_database, warehouse, image_enrichment], jobs=asset_jobs,
                       schedules=schedules, executor=in_process_executor,
                       resources={RUN_RESOURCE: run_resource(settings, stage_of, client, monitor)})
