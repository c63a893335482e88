"""The dbt project ``medical_warehouse/`` as Dagster assets, built by the transform stage itself.

dagster-dbt reads the project's manifest (:func:`parse_manifest`: ``dbt parse``, in process): each model
and seed is an asset, each dbt test on one of them an asset check, and the dbt sources (the raw tables)
are the asset ``raw_database``. The step runs the transform stage (:func:`.steps.run_step`), exactly as
the ``transform`` job does: the catalogue first, then ``dbt build`` with the same profile, target schemas
and skip-when-unchanged state; then it reports each model the build left and each test's result from
the stage summary. A failed test is a failed check and fails the step, never retried.
"""
from __future__ import annotations

import json
from graphlib import TopologicalSorter
from pathlib import Path

from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey, AssetsDefinition, MaterializeResult
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, dbt_assets
from dagster_dbt.asset_utils import DAGSTER_DBT_UNIQUE_ID_METADATA_KEY

from medical_etl.config import Settings
from medical_etl.jobs.stages import settings_dbt_paths
from medical_etl.orchestration.dagster.steps import (
    RUN_RESOURCE,
    end_step,
    retry_policy,
    run_step,
    summary_metadata,
)
from medical_etl.transform import TransformError

RAW_DATABASE = "raw_database"
WAREHOUSE_OP = "medical_warehouse"
_TOTALS = ("status", "full_refresh", "build_scope", "build_skipped", "models_built", "tests_passed",
           "tests_failed", "tests_warned", "duration_s")


def parse_manifest(settings: Settings) -> Path:
    """``dbt parse`` the project the transform stage builds (DBT_PROJECT_DIR) into LOGS_PATH/dagster/dbt
    (never the stage's own target folder); return the manifest's path. Nothing connects to the database."""
    from dbt.cli.main import dbtRunner

    project = Path(settings_dbt_paths(settings)["project_dir"]).resolve()
    out = Path(settings.logs_path).resolve() / "dagster" / "dbt"
    res = dbtRunner().invoke(["--log-path", str(out / "logs"), "--no-use-colors", "--quiet", "parse",
                              "--project-dir", str(project), "--profiles-dir", str(project),
                              "--target-path", str(out / "target")])
    if not res.success:
        raise TransformError(f"dbt parse of {project} failed: {res.exception}")
    return out / "target" / "manifest.json"


class WarehouseTranslator(DagsterDbtTranslator):
    """dagster-dbt's names, except that every dbt source (a raw table) is the load stage's asset."""

    def __init__(self):
        super().__init__(DagsterDbtTranslatorSettings(enable_duplicate_source_asset_keys=True))

    def get_asset_key(self, dbt_resource_props) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return AssetKey(RAW_DATABASE)
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props) -> str:
        return "warehouse"


def unique_ids(warehouse: AssetsDefinition) -> dict:
    """``{asset key or check key: dbt unique_id}`` of the dbt assets and their checks, as dagster-dbt made them."""
    return {**{spec.key: spec.metadata[DAGSTER_DBT_UNIQUE_ID_METADATA_KEY] for spec in warehouse.specs},
            **{spec.key: spec.metadata[DAGSTER_DBT_UNIQUE_ID_METADATA_KEY] for spec in warehouse.check_specs}}


def warehouse_assets(settings: Settings, manifest_path: Path):
    """The dbt models and seeds as one multi-asset (op ``medical_warehouse``), the tests as its checks."""
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    keys: dict = {}  # filled from the definition below

    @dbt_assets(manifest=manifest, dagster_dbt_translator=WarehouseTranslator(), name=WAREHOUSE_OP,
                required_resource_keys={RUN_RESOURCE}, retry_policy=retry_policy(settings))
    def medical_warehouse(context):
        run = getattr(context.resources, RUN_RESOURCE)
        if run.skipped:
            context.log.warning(f"not run: {run.skipped}")
            return
        selected = set(context.selected_asset_keys)
        every = {k for k in keys if isinstance(k, AssetKey)}
        names = sorted(manifest["nodes"][keys[k]]["name"] for k in selected if k in keys)
        opts = {"select": names} if selected < every else {}  # a selection in the UI: those models only
        summary, failure = run_step(context, run, "transform", **opts)
        yield from _results(context, manifest, keys, summary, built_only=failure is not None)
        end_step(run, "transform", failure)

    keys.update(unique_ids(medical_warehouse))
    return medical_warehouse


def _results(context, manifest: dict, keys: dict, summary: dict, built_only: bool):
    """A materialization per selected model (with its dbt status and the build's totals) and a check
    result per test the build ran. ``built_only``: the build failed, so only the models it built are
    reported; after a success the models it did not need to rebuild (nothing changed) are reported
    unchanged, so the assets downstream run, as the job's next stage does."""
    ran = {n["node"]: n for n in summary.get("nodes") or ()}
    totals = summary_metadata({k: summary.get(k) for k in _TOTALS})
    position = {uid: n for n, uid in enumerate(TopologicalSorter(manifest["parent_map"]).static_order())}
    for key in sorted(context.selected_asset_keys, key=lambda k: position.get(keys.get(k), -1)):  # parents first
        uid = keys.get(key)
        node = ran.get(uid)
        if (node is None and built_only) or (node is not None and node["status"] != "success"):
            continue
        status = node["status"] if node else f"unchanged (build scope: {summary.get('build_scope')})"
        yield MaterializeResult(asset_key=key, metadata={
            "dbt_status": status, "dbt_seconds": node["seconds"] if node else 0.0, "unique_id": uid or "",
            **totals})
    for check in context.selected_asset_check_keys:
        node = ran.get(keys.get(check))
        if node is None or node["status"] not in ("pass", "warn", "fail", "error"):
            continue  # not run: nothing changed since it last passed, or dbt skipped it after a failure
        yield AssetCheckResult(
            asset_key=check.asset_key, check_name=check.name, passed=node["status"] == "pass",
            severity=AssetCheckSeverity.WARN if node["status"] == "warn" else AssetCheckSeverity.ERROR,
            metadata={"dbt_status": node["status"], "dbt_seconds": node["seconds"], "unique_id": node["node"]})
