"""One Dagster run is one job run, as ``run_job`` makes it: the job lock, the running marker, the
preflight checks, the job's run-log record, then the monitor (as cron_run.sh runs it after each job).

:func:`job_run` holds all of that around the whole Dagster run (a run-scoped resource under the
in-process executor: one process holds the lock for every step). A run that finds the lock taken
records ``skipped`` and its steps do nothing; a cron job that finds a Dagster run holding it does the
same. The steps (:mod:`.steps`) note each stage's outcome on the :class:`JobRun`; the job record is
written from them when the run ends, with the fields run_job writes.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from medical_etl.config import Settings
from medical_etl.filelock import LockHeld, acquire_lock
from medical_etl.jobs import job as job_runner
from medical_etl.jobs.definitions import STAGES, jobs
from medical_etl.live_runs import mark_running, reap_dead_runs
from medical_etl.runlog import configure_rotation, new_run_id, track_run

AD_HOC_JOB = "dagster"  # the run-log job of a run that is not one of the Makefile's jobs (a UI selection)
log = logging.getLogger(__name__)


@dataclass
class JobRun:
    """What the steps of one Dagster run share: which job this is in the run log, its run id, and
    what each stage did so far."""

    settings: Settings
    job: str
    stages: tuple[str, ...]
    run_id: str = field(default_factory=new_run_id)
    client: object = None
    skipped: str | None = None  # why the run does nothing: another job holds the lock
    results: dict = field(default_factory=dict)  # stage -> its result, as run_job's summary["stages"]
    failed: dict | None = None  # {"stage", "error", "transient"} of the stage that failed the job
    retried: dict = field(default_factory=dict)  # stage -> (retries, reason), as run_job's

    def options(self, stage: str) -> dict:
        """The stage's options in this job, as run_job gives them (weekly: a full refresh, 30 days re-read)."""
        if self.job in jobs():
            return job_runner.stage_options(self.job, stage, client=self.client)
        if stage == "scrape" and self.client is not None:
            return {"client": self.client}
        if stage == "enrich" and "transform" in self.stages:
            return {"build_models": "if_new"}  # as in a job: the transform step has just built them
        return {}


def stages_of(job: str | None, selected: set[str] | None) -> tuple[str, tuple[str, ...]]:
    """The run-log job and the stages, in run order, of a run of Dagster job ``job`` (our job name, or
    None) whose selection covers the stages ``selected`` (None: the whole job). A selection that is not
    the whole job (a re-execution from a failed step, a selection in the UI) is the job ``dagster``."""
    defined = jobs().get(job or "")
    chosen = tuple(s for s in STAGES if s in (selected if selected is not None else defined or ()))
    if defined and set(chosen) == set(defined):
        return job, defined
    return AD_HOC_JOB, chosen


def lock_wait_s(job: str, settings: Settings) -> float:
    """How long the job waits for the lock, as run_job waits (its definition's --lock-wait, LOCK_WAIT
    instead when set); 0 for a run that is not one of the jobs."""
    return job_runner.job_lock_wait_s(job, settings) if job in jobs() else 0.0


@contextmanager
def job_run(settings: Settings, job: str, stages: tuple[str, ...], *, client=None,
            dagster_run_id: str | None = None, partition: str | None = None,
            monitor: bool = True) -> Iterator[JobRun]:
    """Hold the job lock and the job's run-log record around a Dagster run; yield its :class:`JobRun`.
    The record names the Dagster run and, for a partitioned job, its ``partition``.

    Raises :class:`dagster.Failure` (after recording the job ``failed``) when the preflight checks find a
    missing input, as run_job refuses to start then; the run's steps do not run."""
    from dagster import Failure

    run = JobRun(settings, job, stages, client=client)
    configure_rotation(settings.runlog_max_mb)
    about = {"orchestrator": "dagster", "dagster_run_id": dagster_run_id}
    if partition:
        about["partition"] = partition
    try:
        lock = acquire_lock(settings.logs_path / job_runner.LOCK_NAME, lock_wait_s(job, settings))
    except LockHeld as held:
        lock, run.skipped = None, f"another job holds the lock ({held.holder})"
    if lock is None:
        with track_run(settings.logs_path, job=job, stage=None, run_id=run.run_id) as rec:
            rec.status, rec.reason = "skipped", run.skipped
            rec.metrics.update(stages=[], **about)
        log.warning("job %s: %s; this run does nothing", job, run.skipped)
        try:
            yield run
        finally:
            _monitor(settings, monitor)
        return
    marker = None
    try:
        reap_dead_runs(settings.logs_path)
        marker = mark_running(settings.logs_path, job, run.run_id, deadline_s(job, settings))
        refused = None
        with track_run(settings.logs_path, job=job, stage=None, run_id=run.run_id) as rec:
            rec.metrics.update(about)
            problems, why = _preflight(run)
            if problems:
                refused = "not started: " + "; ".join(str(p) for p in problems)
                run.failed = {"stage": problems[0].stage, "error": refused, "transient": why}
            else:
                try:
                    yield run
                except GeneratorExit:  # the run was stopped (terminated in the UI): the steps recorded theirs
                    rec.status, rec.reason = "cancelled", "the Dagster run was stopped"
            _close(rec, run)
        if refused:
            raise Failure(description=f"job {job}: {refused}", allow_retries=False)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
        job_runner.tidy_after_job(settings)
        lock.release()
        _monitor(settings, monitor)


def _close(rec, run: JobRun) -> None:
    """The job record's fields, as run_job fills them."""
    rec.metrics.update(stages=list(run.results), failed_stage=(run.failed or {}).get("stage"))
    if run.retried:
        rec.metrics.update(retries={k: n for k, (n, _) in run.retried.items()},
                           retry_reasons={k: why for k, (_, why) in run.retried.items()})
    if run.failed and rec.status != "cancelled":
        rec.status, rec.reason = "failed", f"stage {run.failed['stage']}: {run.failed['error']}"


def _preflight(run: JobRun):
    """run_job's checks (waiting for a database that is restarting, for a Makefile job)."""
    if run.job in jobs():
        return job_runner.preflight_with_retries(run.job, run.settings, run.client, run.retried)
    from medical_etl.jobs.preflight import preflight

    return preflight(run.stages, run.settings, client=run.client), None


def deadline_s(job: str, settings: Settings) -> float:
    """run_job's deadline for the job (a selection: that of the longest job)."""
    longest = job if job in jobs() else max(jobs(), key=lambda j: len(jobs()[j]))
    return job_runner.deadline_s(longest, settings, settings.stage_timeout_s)


def _monitor(settings: Settings, enabled: bool) -> None:
    """The monitor over the run log, as cron_run.sh runs it after each job: a failed run is delivered."""
    if not enabled:
        return
    from medical_etl.db import conn_params
    from medical_etl.monitor.evaluate import run_monitor

    try:
        try:
            db = conn_params(settings)
        except Exception as exc:  # noqa: BLE001 - as `medical-etl monitor`: judge the run log alone
            log.warning("monitor: warehouse not checked: %s", exc)
            db = None
        result, _ = run_monitor(settings.logs_path / "runs.jsonl", db=db)
        log.info("monitor: worst severity %s, %d alert(s) sent", result["worst_severity"] or "none",
                 len(result["sent"]))
    except Exception as exc:  # noqa: BLE001 - a broken monitor must not change the run's outcome
        log.warning("monitor after the run failed: %s", exc)
