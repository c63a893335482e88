"""The edge between settings and stages: each stage run with explicit inputs, recorded in the run log.

The CLI, the scripts and the jobs all go through :func:`run_stage`, so a stage
always appends exactly one run-log record, whoever started it.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from . import retry, tracing
from .config import Settings
from .runlog import track_run

STAGES = ("scrape", "load", "transform", "enrich")
SAMPLE_EXPORT = Path(__file__).with_name("sample_export")


class StageFailed(RuntimeError):
    """A stage finished but did not fully succeed (e.g. some channels failed, a dbt test failed)."""

    def __init__(self, stage: str, summary: dict, message: str, transient: str | None = None):
        super().__init__(f"{stage}: {message}")
        self.stage, self.summary, self.transient = stage, summary, transient


def channels_from_settings(settings: Settings) -> list[str]:
    from .channels import parse_channels, read_channels_file

    if settings.telegram_channels:
        return parse_channels(settings.telegram_channels, source="TELEGRAM_CHANNELS")
    return read_channels_file(settings.telegram_channels_file)


def _export_dirs(source: str) -> list[Path]:
    root = SAMPLE_EXPORT if source == "sample" else Path(source)
    if (root / "result.json").is_file():
        return [root]
    dirs = sorted(p for p in root.iterdir() if (p / "result.json").is_file()) if root.is_dir() else []
    if not dirs:
        raise FileNotFoundError(f"TELEGRAM_SOURCE={source}: no Telegram Desktop export (result.json) found")
    return dirs


def scrape(settings: Settings, run_id: str, client=None, **opts) -> dict:
    """Scrape from ``client`` if given, else from TELEGRAM_SOURCE: ``api``, ``sample`` or an export folder."""
    from .progress import Progress
    from .scrape import scrape_telegram_data
    from .standin import StandInClient, read_desktop_export

    opts.setdefault("refresh_days", settings.refresh_days)
    opts.setdefault("flood_wait_cap_s", settings.flood_wait_cap_s)
    opts.setdefault("on_channel", Progress("scrape").channel)
    if client is not None:
        channels = opts.pop("channels", None) or channels_from_settings(settings)
        return scrape_telegram_data(tracing.traced_client(client), channels, settings.raw_data_path,
                                    run_id=run_id, **opts)
    if settings.telegram_source != "api":
        dirs = _export_dirs(settings.telegram_source)
        refused: list[dict] = []
        posts = [p for d in dirs for p in read_desktop_export(d, refused=refused)]
        opts.pop("channels", None)
        summary = scrape_telegram_data(tracing.traced_client(StandInClient(posts)), [d.name for d in dirs],
                                       settings.raw_data_path, run_id=run_id, **opts)
        return {**summary, "source": "sample" if settings.telegram_source == "sample" else "export",
                "files_refused": len(refused), "refused_files": refused}
    from .jobs import acquire_lock
    from .telegram import open_client

    channels = opts.pop("channels", None) or channels_from_settings(settings)
    # A Telethon session file must not be used by two processes at once (jobs already hold the
    # job lock; this also covers a single stage started by hand).
    lock = acquire_lock(Path(f"{settings.telegram_session}.lock"))
    if isinstance(lock, str):
        raise RuntimeError(f"Telegram session {settings.telegram_session} is in use by another process ({lock})")
    try:
        client = open_client(settings)
        try:
            return {**scrape_telegram_data(tracing.traced_client(client), channels, settings.raw_data_path,
                                           run_id=run_id, **opts), "source": "api"}
        finally:
            client.disconnect()
    finally:
        lock.release()


def _check_scrape(summary: dict) -> str | None:
    if summary["status"] != "success":
        errs = "; ".join(f"{n}: {c['error']}" for n, c in summary["channels"].items() if c["error"])
        return f"{summary['status']}: {errs}"
    return None


def load(settings: Settings, run_id: str, **opts) -> dict:
    from .load import load_raw_to_postgres
    from .progress import Progress

    opts.setdefault("batch_rows", settings.load_batch_rows)
    opts.setdefault("on_batch", Progress("load").batch)
    return load_raw_to_postgres(settings, settings.raw_data_path, run_id=run_id, **opts)


def transform(settings: Settings, run_id: str, **opts) -> dict:
    from .transform import run_dbt_transformations

    summary = run_dbt_transformations(settings, **opts)
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


def enrich(settings: Settings, run_id: str, **opts) -> dict:
    from .enrich import run_yolo_enrichment

    return run_yolo_enrichment(
        settings, settings.raw_data_path, model=settings.yolo_model, conf=settings.yolo_conf,
        iou=settings.yolo_iou, imgsz=settings.yolo_imgsz, batch=settings.yolo_batch,
        device=settings.yolo_device, workers=settings.yolo_workers or None,
        offline=settings.yolo_offline, **opts)


def _check_enrich(summary: dict) -> str | None:
    dbt = summary.get("dbt")
    if dbt and dbt["status"] != "success":
        names = ", ".join(f"{n['node']} ({n['status']})" for n in dbt["failing_nodes"]) or "see dbt log"
        return f"dbt build of the detection models failed: {names}"
    return None


RUNNERS = {
    "scrape": (scrape, _check_scrape),
    "load": (load, None),
    "transform": (transform, _check_transform),
    "enrich": (enrich, _check_enrich),
}


def run_stage(stage: str, settings: Settings, *, job: str | None = None, run_id: str | None = None,
              attempt: int | None = None, **opts) -> dict:
    """Run one stage, append its run-log record, return its summary.

    Raises :class:`StageFailed` (recorded as ``failed``, with the summary in the
    metrics) when the stage ran but did not fully succeed. A failure with a transient
    cause (see :mod:`medical_etl.retry`) is recorded with reason ``transient: ...``;
    ``attempt`` (a job's retry count, from 1) goes into the record.
    """
    func, check = RUNNERS[stage]
    with track_run(settings.logs_path, job=job or stage, stage=stage, run_id=run_id, attempt=attempt) as rec:
        # stdout is for results: what a library prints meanwhile (dbt's console lines) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            try:
                summary = func(settings, rec.run_id, **tracing.hooks(stage, opts))
            except Exception as exc:
                why = retry.transient_reason(exc, stage)
                rec.reason = f"transient: {why}" if why else None
                raise
        rec.metrics.update(_metrics(summary))
        problem = check(summary) if check else None
        if problem:
            why = retry.summary_reason(stage, summary)
            rec.reason = f"transient: {why}" if why else None
            raise StageFailed(stage, summary, problem, transient=why)
    return summary


def _metrics(summary: dict) -> dict:
    """Flat, log-friendly view of a summary (nested per-channel dicts kept as they are)."""
    return {k: v for k, v in summary.items() if k not in ("run_id",)}
