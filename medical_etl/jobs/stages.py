"""The edge between settings and stages: each stage run with explicit inputs, recorded in the run log.

The CLI, the scripts and the jobs all go through :func:`run_stage` (``import-export`` records its
own run), so a stage always appends exactly one run-log record, whoever started it. Here the settings
become each stage's inputs: a lake folder, connection parameters, the dbt project's paths, and a
client (through :mod:`medical_etl.scrape.source`, which reads the Telegram settings).
"""
from __future__ import annotations

import contextlib
import os
import sys

from medical_etl import tracing
from medical_etl.config import Settings
from medical_etl.db import conn_params
from medical_etl.errors import StageFailed
from medical_etl.jobs import retry
from medical_etl.runlog import track_run
from medical_etl.secrets import mask


def settings_dbt_paths(settings: Settings) -> dict:
    """The settings' dbt project and where dbt writes (:func:`medical_etl.transform.dbt.dbt_paths`)."""
    from medical_etl.transform.dbt import dbt_paths

    return dbt_paths(settings.dbt_project_dir, settings.logs_path)


def scrape_from_settings(settings: Settings, run_id: str, client=None, channels=None, **opts) -> dict:
    """Scrape from ``client`` if given, else from TELEGRAM_SOURCE: ``api``, ``sample`` or an export folder."""
    from medical_etl.progress import Progress, combine
    from medical_etl.scrape.source import open_source
    from medical_etl.scrape.stage import scrape_telegram_data

    opts.setdefault("refresh_days", settings.refresh_days)
    opts.setdefault("flood_wait_cap_s", settings.flood_wait_cap_s)
    opts["on_channel"] = combine(Progress("scrape").channel, opts.get("on_channel"))
    with open_source(settings, client, channels) as source:
        summary = scrape_telegram_data(tracing.traced_client(source.client), source.channels, settings.raw_data_path,
                                       run_id=run_id, **opts)
    return {**summary, **source.about}


def _check_scrape(summary: dict) -> str | None:
    if summary["status"] != "success":
        errs = "; ".join(f"{n}: {c['error']}" for n, c in summary["channels"].items() if c["error"])
        return f"{summary['status']}: {errs}"
    return None


def load_from_settings(settings: Settings, run_id: str, **opts) -> dict:
    from medical_etl.load import load_raw_to_postgres
    from medical_etl.progress import Progress, combine, debug_batches

    opts.setdefault("batch_rows", settings.load_batch_rows)
    opts["on_batch"] = combine(Progress("load").batch, debug_batches("load"), opts.get("on_batch"))
    return load_raw_to_postgres(conn_params(settings), settings.raw_data_path, run_id=run_id, **opts)


def transform_from_settings(settings: Settings, run_id: str, **opts) -> dict:
    from medical_etl.transform import run_dbt_transformations

    summary = run_dbt_transformations(conn_params(settings), **settings_dbt_paths(settings), **opts)
    if opts.get("select") and not summary.get("nodes"):
        summary["selected_nothing"] = list(opts["select"])
    return summary


def _check_transform(summary: dict) -> str | None:
    if summary.get("selected_nothing"):
        return (f"dbt selected no node with --select {' '.join(summary['selected_nothing'])}: "
                "nothing was built; name models as dbt does (e.g. fct_messages, staging.*)")
    if summary["status"] != "success":
        names = ", ".join(f"{n['node']} ({n['status']})" for n in summary["failing_nodes"]) or "see dbt log"
        return f"dbt build failed: {names}"
    return None


def enrich_from_settings(settings: Settings, run_id: str, build_models: bool | str = True, **opts) -> dict:
    """Stage 4, then stage 3's detection models: ``build_models`` True, False, or ``"if_new"`` (only
    when photos were analysed: a job whose transform stage has just built them)."""
    from medical_etl.enrich.stage import run_yolo_enrichment
    from medical_etl.progress import combine, debug_batches
    from medical_etl.transform import build_image_models

    params = conn_params(settings)
    opts["on_batch"] = combine(debug_batches("enrich"), opts.get("on_batch"))  # its terminal lines: its own
    summary = run_yolo_enrichment(
        params, settings.raw_data_path, model=settings.yolo_model, conf=settings.yolo_conf,
        iou=settings.yolo_iou, imgsz=settings.yolo_imgsz, batch=settings.yolo_batch,
        device=settings.yolo_device, workers=settings.yolo_workers or None,
        offline=settings.yolo_offline, **opts)
    if build_models is True or (build_models == "if_new" and summary["photos_analysed"]):
        summary["dbt"] = build_image_models(params, **settings_dbt_paths(settings))
        summary["duration_s"] = round(summary["duration_s"] + summary["dbt"]["duration_s"], 3)
    return summary


def _check_enrich(summary: dict) -> str | None:
    dbt = summary.get("dbt")
    if dbt and dbt["status"] != "success":
        names = ", ".join(f"{n['node']} ({n['status']})" for n in dbt["failing_nodes"]) or "see dbt log"
        return f"dbt build of the detection models failed: {names}"
    return None


RUNNERS = {
    "scrape": (scrape_from_settings, _check_scrape),
    "load": (load_from_settings, None),
    "transform": (transform_from_settings, _check_transform),
    "enrich": (enrich_from_settings, _check_enrich),
}


def run_stage(stage: str, settings: Settings, *, job: str | None = None, run_id: str | None = None,
              attempt: int | None = None, **opts) -> dict:
    """Run one stage, append its run-log record, return its summary.

    Raises :class:`StageFailed` (recorded as ``failed``, with the summary in the
    metrics) when the stage ran but did not fully succeed. A failure with a transient
    cause (see :mod:`medical_etl.jobs.retry`) is recorded with reason ``transient: ...``;
    ``attempt`` (a job's retry count, from 1) goes into the record.
    """
    func, check = RUNNERS[stage]
    with track_run(settings.logs_path, job=job or stage, stage=stage, run_id=run_id, attempt=attempt) as rec:
        # stdout is for results: what a library prints meanwhile (dbt's console lines) goes to stderr
        with contextlib.redirect_stdout(sys.stderr), _watched(stage, settings, rec):
            try:
                summary = func(settings, rec.run_id, **opts)
            except Exception as exc:
                why = retry.transient_reason(exc, stage)
                rec.reason = f"transient: {why}" if why else None
                raise
        rec.metrics.update(_metrics(summary))
        problem = check(summary) if check else None
        if problem:
            why = retry.summary_reason(stage, summary)
            rec.reason = f"transient: {why}" if why else None
            raise StageFailed(stage, summary, problem, reason=why)
    return summary


DATABASE_STAGES = ("load", "transform", "enrich")


@contextlib.contextmanager
def _watched(stage: str, settings: Settings, rec):
    """A stage that uses the database: its sessions named after the run (``application_name``), their
    peak count (and the server's) recorded in its metrics (:class:`~medical_etl.dbhealth.ConnectionWatch`)."""
    if stage not in DATABASE_STAGES:
        yield
        return
    from medical_etl.dbhealth import ConnectionWatch
    from medical_etl.jobs.process import stage_application_name

    app = stage_application_name(rec.run_id, stage)
    from medical_etl.transform.dbt import APPNAME_VAR

    saved = {k: os.environ.get(k) for k in ("PGAPPNAME", APPNAME_VAR)}
    os.environ.update({"PGAPPNAME": app, APPNAME_VAR: app})  # as a stage process has them
    try:
        try:
            params = conn_params(settings)
        except Exception as exc:  # noqa: BLE001 - the stage reports its own connection problems
            rec.metrics["db_connections_error"] = f"connections not watched: {mask(exc)}"
            params = None
        with ConnectionWatch(params, app, rec.metrics) if params else contextlib.nullcontext():
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def database_snapshot(settings: Settings) -> dict:
    """The database's health (:func:`~medical_etl.dbhealth.database_health`) for a job's record; never raises."""
    from medical_etl.dbhealth import database_health

    try:
        params = conn_params(settings)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"database health not recorded: {mask(exc)}"}
    return database_health(params)


def _metrics(summary: dict) -> dict:
    """Flat, log-friendly view of a summary (nested per-channel dicts kept as they are; of a dbt build's
    nodes, the slowest models only: ``slowest_models``)."""
    return {k: v for k, v in summary.items() if k not in ("run_id", "nodes")}
