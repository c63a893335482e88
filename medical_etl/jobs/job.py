"""Jobs: ordered stages under one lock and one run id, each stage in its own process with a time limit.

``run_job("pipeline", settings)`` is what Make, cron and notebooks all call. A job that finds the
lock taken records ``skipped`` and returns; a failed stage stops the stages after it. Each stage
runs in a child process (so a hung stage can be ended, and a stage's memory is returned to the
system when it ends); the child dies with the job, even on ``kill -9``. SIGTERM cancels the job
cleanly (:mod:`medical_etl.jobs.cancel`).
"""
from __future__ import annotations

import logging
import time

from medical_etl import resources
from medical_etl.config import Settings
from medical_etl.errors import JobError
from medical_etl.filelock import LockHeld, acquire_lock
from medical_etl.jobs import retry
from medical_etl.jobs.cancel import JobCancelled, SigtermStop
from medical_etl.jobs.definitions import job_definitions, jobs
from medical_etl.jobs.process import run_with_retries
from medical_etl.jobs.stages import DATABASE_STAGES, database_snapshot
from medical_etl.live_runs import mark_running, reap_dead_runs
from medical_etl.runlog import RunLogWriteError, configure_rotation, new_run_id, track_run
from medical_etl.secrets import mask

LOCK_NAME = "pipeline.lock"
log = logging.getLogger(__name__)


def tidy_after_job(settings: Settings) -> None:
    from medical_etl.housekeeping import tidy_logs
    from medical_etl.jobs.stages import settings_dbt_paths

    try:
        done = tidy_logs(settings.logs_path, retention_days=settings.log_retention_days,
                         dbt_log_dir=settings_dbt_paths(settings)["log_path"])
        log.debug("log housekeeping: %s", done)
    except OSError as exc:  # a full or read-only disk must not fail a job that did its work
        log.warning("log housekeeping failed: %s", exc)


def job_lock_wait_s(job: str, settings: Settings) -> float:
    """How long ``job`` waits for the lock: its definition's --lock-wait (LOCK_WAIT instead when set);
    0 for a job defined without one (it records ``skipped`` at once)."""
    wait = job_definitions()[job].lock_wait_s
    return settings.lock_wait_s if wait and settings.lock_wait_s is not None else wait


def stage_options(job: str, stage: str, *, client=None, full_refresh: bool = False,
                  refresh_days: int | None = None) -> dict:
    """A stage's options in ``job``: the job's own (its definition's --full-refresh, --refresh-days), and
    those of this run (``full_refresh``, ``refresh_days``: a caller's, which win)."""
    defined = job_definitions()[job]
    opts: dict = {}
    if stage == "scrape":
        if client is not None:
            opts["client"] = client
        days = refresh_days if refresh_days is not None else defined.refresh_days
        if days is not None:
            opts["refresh_days"] = days
    if stage == "transform" and (full_refresh or defined.full_refresh):
        opts["full_refresh"] = True
    if stage == "enrich" and "transform" in jobs()[job]:
        # the transform stage has just built and tested the detection models: rebuild only for new photos
        opts["build_models"] = "if_new"
    return opts


def run_job(
    job: str,
    settings: Settings,
    *,
    client=None,
    full_refresh: bool = False,
    refresh_days: int | None = None,
    lock_wait_s: float | None = None,
    stage_timeout_s: float | None = None,
    run_id: str | None = None,
    stages: tuple[str, ...] | list[str] | None = None,
) -> dict:
    """Run a job's stages in order under the job lock; return the job summary.

    The job is its line in the Makefile (:mod:`medical_etl.jobs.definitions`): its stages and options;
    ``stages``, when given, must equal the line's. ``client`` is injected into the scrape stage (a
    TelegramClient or a stand-in). ``lock_wait_s`` is how long to wait for another job holding the lock
    (None: the job's --lock-wait, which LOCK_WAIT, ``settings.lock_wait_s``, replaces). Returns a
    ``skipped`` summary if another job holds the lock after that; raises
    :class:`JobError` (with the summary) when a stage fails, or before any stage runs when an
    input a stage needs is missing (see :mod:`medical_etl.jobs.preflight`), or when the job's
    run-log record cannot be written (``run_log_error``). On SIGTERM it ends the running stage,
    records the stage and the job ``cancelled`` and raises :class:`~medical_etl.jobs.cancel.JobCancelled`
    (a ``SystemExit`` of 143, with the ``summary``).
    """
    defined = jobs()
    if job not in defined:
        raise ValueError(f"unknown job {job!r}; jobs: {', '.join(defined)}")
    if stages is not None and tuple(stages) != defined[job]:  # e.g. a checkout's Makefile vs an older install
        raise ValueError(f"job {job}: stages {' '.join(stages)} differ from the job's definition "
                         f"({' '.join(defined[job])}, {resources.makefile()})")
    timeout = stage_timeout_s or settings.stage_timeout_s
    run_id = run_id or new_run_id()
    configure_rotation(settings.runlog_max_mb)
    if lock_wait_s is None:
        lock_wait_s = job_lock_wait_s(job, settings)
    try:
        lock = acquire_lock(settings.logs_path / LOCK_NAME, lock_wait_s)
    except LockHeld as held:
        skipped = {"job": job, "run_id": run_id, "status": "skipped",
                   "reason": f"another job holds the lock ({held.holder})"}
        try:
            with track_run(settings.logs_path, job=job, stage=None, run_id=run_id) as rec:
                rec.status, rec.reason = "skipped", skipped["reason"]
                rec.metrics.update(stages=[])
        except RunLogWriteError as exc:
            raise JobError({**skipped, "status": "failed", "error": str(exc), "run_log_error": str(exc)}) from exc
        return skipped
    stop = SigtermStop().install()
    summary: dict = {"job": job, "run_id": run_id, "stages": {}, "status": "success"}
    marker = cancelled = None
    retried: dict = {}
    try:
        reap_dead_runs(settings.logs_path)
        marker = mark_running(settings.logs_path, job, run_id, deadline_s(job, settings, timeout))
        with track_run(settings.logs_path, job=job, stage=None, run_id=run_id) as rec:
            try:
                with stop.armed():  # from here SIGTERM cancels the job
                    problems, why = preflight_with_retries(job, settings, client, retried)
                    if problems:
                        summary.update(status="failed", failed_stage=problems[0].stage, preflight=[str(p) for p in problems],
                                       error="not started: " + "; ".join(str(p) for p in problems), transient=why)
                    for stage in defined[job] if not problems else ():
                        opts = stage_options(job, stage, client=client, full_refresh=full_refresh,
                                             refresh_days=refresh_days)
                        status, result = run_with_retries(stage, settings, job, run_id, opts, timeout, retried)
                        summary["stages"][stage] = result if status == "ok" else {"status": "failed", **result}
                        if status != "ok":
                            summary.update(status="failed", failed_stage=stage, error=result.get("error"),
                                           transient=result.get("transient"))
                            # Some channels failing must not hold back the others' data: the job goes on
                            # (and still ends failed); anything else stops the stages after it.
                            partial = (result.get("summary") or {}).get("status") == "partial"
                            if not partial:
                                break
            except JobCancelled as exc:  # the stage that was running is ended and recorded
                cancelled = exc
                summary.update(status="cancelled", reason=exc.reason, cancelled_stage=exc.stage)
                if exc.stage:
                    summary["stages"][exc.stage] = {"status": "cancelled", "reason": exc.reason}
                rec.status, rec.reason = "cancelled", exc.reason
                rec.metrics.update(cancelled_stage=exc.stage)
            rec.metrics.update(stages=list(summary["stages"]), failed_stage=summary.get("failed_stage"))
            if any(s in DATABASE_STAGES for s in summary["stages"]):
                rec.metrics["database"] = database_snapshot(settings)
            if retried:  # a success after a retry is a success; the monitor warns about it
                rec.metrics.update(retries={k: n for k, (n, _) in retried.items()},
                                   retry_reasons={k: why for k, (_, why) in retried.items()})
                summary["retries"] = rec.metrics["retries"]
            if summary["status"] == "failed":
                rec.status, rec.reason = "failed", f"stage {summary['failed_stage']}: {summary['error']}"
    except RunLogWriteError as exc:  # the job's own record: an unrecorded run must not pass for a success
        summary["run_log_error"] = str(exc)
        if summary["status"] != "cancelled":  # a cancelled job already ends non-zero (143)
            summary["status"] = "failed"
            summary.setdefault("error", str(exc))
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
        tidy_after_job(settings)
        lock.release()
        stop.restore()
    if summary["status"] == "cancelled":
        log.warning("job %s %s: recorded as cancelled (stage %s ended)", job, cancelled, cancelled.stage)
        cancelled.summary = summary
        raise cancelled
    if summary["status"] == "failed":
        raise JobError(summary)
    return summary


def deadline_s(job: str, settings: Settings, timeout: float) -> float:
    """Longest a job can legitimately run: every stage at its time limit on every attempt, plus the waits."""
    tries = 1 + settings.stage_retries
    waits = sum(retry.backoff_s(n, settings.stage_retry_backoff_s, settings.stage_retry_backoff_max_s)
                for n in range(1, tries))
    return len(jobs()[job]) * (timeout * tries + waits) + waits + 300


def preflight_with_retries(job: str, settings: Settings, client, retried: dict):
    """The preflight checks; a database that is unreachable or restarting (and nothing else wrong)
    is waited for like a stage's transient failure, up to STAGE_RETRIES times."""
    attempt = 1
    while True:
        problems = _preflight(job, settings, client)
        why = (retry.message_reason(problems[0].message) or retry.DB_UNREACHABLE) \
            if len(problems) == 1 and problems[0].setting == "DB_*" else None
        if not why or attempt > settings.stage_retries:
            return problems, why
        delay = retry.backoff_s(attempt, settings.stage_retry_backoff_s, settings.stage_retry_backoff_max_s)
        log.warning("job %s: %s (%s); checking again in %g s", job, why, mask(problems[0]), delay)
        retried["preflight"] = (attempt, why)
        time.sleep(delay)
        attempt += 1


def _preflight(job: str, settings: Settings, client):
    from medical_etl.jobs.preflight import preflight

    problems = preflight(jobs()[job], settings, client=client)
    for p in problems:
        log.error("job %s cannot start: %s", job, mask(p))
    return problems
