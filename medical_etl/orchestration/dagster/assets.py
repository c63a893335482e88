"""The pipeline's assets, one per stage, each materialised by its stage (:func:`.steps.run_step`):
``telegram_data`` (scrape: the data lake), ``raw_database`` (load: the raw tables), the dbt models
(:mod:`.dbt_assets`) and ``image_enrichment`` (enrich: YOLO detections, then the detection models).

Each materialisation carries the stage summary as metadata. In a run that found the job lock taken
the steps do nothing: they yield no output, so the steps after them are skipped.
"""
from __future__ import annotations

from dagster import AssetsDefinition, MaterializeResult, asset

from medical_etl.config import Settings
from medical_etl.orchestration.dagster.dbt_assets import RAW_DATABASE
from medical_etl.orchestration.dagster.steps import (
    RUN_RESOURCE,
    end_step,
    retry_policy,
    run_step,
    summary_metadata,
)

TELEGRAM_DATA = "telegram_data"
IMAGE_ENRICHMENT = "image_enrichment"


def _stage_asset(name: str, stage: str, settings: Settings, deps, description: str, group: str):
    @asset(name=name, deps=deps, description=description, group_name=group, output_required=False,
           required_resource_keys={RUN_RESOURCE}, retry_policy=retry_policy(settings),
           kinds={"python"}, tags={"medical_etl/stage": stage})
    def stage_asset(context):
        run = getattr(context.resources, RUN_RESOURCE)
        if run.skipped:
            context.log.warning(f"not run: {run.skipped}")
            return
        summary, failure = run_step(context, run, stage)
        if failure is None:  # done (or done for some channels: the job goes on)
            yield MaterializeResult(metadata={"run_id": run.run_id, "attempt": context.retry_number + 1,
                                              **summary_metadata(summary)})
        end_step(run, stage, failure)

    return stage_asset


def stage_assets(settings: Settings, warehouse: AssetsDefinition) -> list[AssetsDefinition]:
    """telegram_data, raw_database and image_enrichment; the dbt assets (``warehouse``) read raw_database
    and image_enrichment runs after them (the stage builds the detection models on what they built)."""
    return [
        _stage_asset(TELEGRAM_DATA, "scrape", settings, [], "Stage 1: new posts and photos of the Telegram "
                     "channels, in the data lake (RAW_DATA_PATH), by channel and day.", "ingestion"),
        _stage_asset(RAW_DATABASE, "load", settings, [TELEGRAM_DATA], "Stage 2: the lake's new files in the "
                     "raw tables (raw.telegram_messages; rejects in raw.load_rejects).", "ingestion"),
        _stage_asset(IMAGE_ENRICHMENT, "enrich", settings, [warehouse], "Stage 4: YOLO detections of the "
                     "photos not yet analysed with YOLO_MODEL (raw.image_analyses, raw.image_detections), "
                     "then the detection models (fct_image_detections, fct_image_categories).", "enrichment"),
    ]
