"""``enrichment_by_day``: the enrich stage over daily partitions (UTC days of the posts' dates).

A partition is a day: its run is the ``enrich`` job (same lock, run-log records as job ``enrich``,
retry policy, detection models built afterwards) with ``day`` set, so the stage analyses only the
photos of that day's posts not yet analysed with YOLO_MODEL. Like the stage, a partition's run is
idempotent (analysed photos are skipped, rows are inserted ``ON CONFLICT DO NOTHING``): a repeated or
retried day analyses nothing twice. Backfilling a range of days spreads the photos over the runs, so
several workers (or GPUs) can each take days.

The daily pipeline still enriches every photo not yet analysed; the partitions are for backfills and
for sharing the work out. A partition's run that finds the job lock taken fails, rather than doing
nothing as the other jobs do, so that the day stays to be done instead of looking done.
"""
from __future__ import annotations

import os
from datetime import date

from dagster import AssetMaterialization, DailyPartitionsDefinition, Failure, in_process_executor, job, op

from medical_etl.config import Settings
from medical_etl.orchestration.dagster.assets import IMAGE_ENRICHMENT
from medical_etl.orchestration.dagster.steps import (
    RUN_RESOURCE,
    end_step,
    retry_policy,
    run_step,
    summary_metadata,
)

PARTITIONED_JOB = "enrichment_by_day"
PARTITION_OP = "image_enrichment_by_day"
PARTITIONS_START = "2020-01-01"  # before the sample's first post (2022-09-05); ENRICH_PARTITIONS_START moves it
PARTITION_TAG = "dagster/partition"


def daily_partitions(start: str | None = None) -> DailyPartitionsDefinition:
    """A partition per UTC day, from ``start`` (default: ENRICH_PARTITIONS_START, else 2020-01-01) to
    yesterday: a day is offered once it is over."""
    return DailyPartitionsDefinition(start_date=start or os.environ.get("ENRICH_PARTITIONS_START")
                                     or PARTITIONS_START, timezone="UTC")


def enrichment_by_day(settings: Settings, tags: dict[str, str], start: str | None = None):
    """The partitioned job (run tags ``tags``): one step, the enrich stage for the partition's day, then the
    detection models (as the ``enrich`` job: ``build_models`` True). It reports ``image_enrichment``, with the day."""

    @op(name=PARTITION_OP, out={}, required_resource_keys={RUN_RESOURCE}, retry_policy=retry_policy(settings),
        tags={"medical_etl/stage": "enrich"})
    def enrich_day(context):
        run = getattr(context.resources, RUN_RESOURCE)
        if run.skipped:
            raise Failure(description=f"day {context.partition_key} not enriched: {run.skipped}; run it again",
                          allow_retries=False)
        day = date.fromisoformat(context.partition_key)
        summary, failure = run_step(context, run, "enrich", day=day)
        if failure is None:
            yield AssetMaterialization(asset_key=IMAGE_ENRICHMENT, description=f"the photos of {day}",
                                       metadata={"run_id": run.run_id, "attempt": context.retry_number + 1,
                                                 **summary_metadata(summary)})
        end_step(run, "enrich", failure)

    @job(name=PARTITIONED_JOB, partitions_def=daily_partitions(start), executor_def=in_process_executor,
         tags=tags, description="The enrich job for one UTC day of posts (a partition): "
         "only that day's photos not yet analysed, then the detection models. Backfill a range of days "
         "from the UI; a repeated day analyses nothing twice.")
    def enrichment_by_day_job():
        enrich_day()

    return enrichment_by_day_job
