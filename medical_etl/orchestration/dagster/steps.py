"""A Dagster step runs its stage the way run_job does, and says which failures Dagster may retry.

:func:`run_step` runs the stage in its own process under the stage time limit
(:func:`medical_etl.jobs.process.run_stage_process`, which calls
:func:`medical_etl.jobs.stages.run_stage`: the stage appends its run-log record, with ``attempt``), and
notes the outcome on the run's :class:`~.job_run.JobRun`. A failure our error classes call transient
raises :class:`~medical_etl.errors.TransientError`, which the assets' :class:`dagster.RetryPolicy`
retries (up to STAGE_RETRIES, each attempt recorded); any other failure (a failed dbt test, a missing
weights file, a timeout) becomes a :class:`dagster.Failure` that bypasses the policy.
"""
from __future__ import annotations

import json

from dagster import Backoff, Failure, MetadataValue, RetryPolicy

from medical_etl.config import Settings
from medical_etl.errors import TransientError
from medical_etl.jobs.process import run_stage_process
from medical_etl.orchestration.dagster.job_run import JobRun

RUN_RESOURCE = "medical_etl_run"


def retry_policy(settings: Settings) -> RetryPolicy:
    """STAGE_RETRIES retries, the first after STAGE_RETRY_BACKOFF seconds, then exponentially longer
    (Dagster's schedule: ``(2**n - 1) * delay``). Only a TransientError is retried (see :func:`run_step`)."""
    return RetryPolicy(max_retries=settings.stage_retries, delay=settings.stage_retry_backoff_s,
                       backoff=Backoff.EXPONENTIAL)


def run_step(context, run: JobRun, stage: str, **opts) -> tuple[dict, Failure | None]:
    """Run ``stage`` once (this Dagster attempt); return its summary and the Failure to raise once the
    step has reported what the stage did (None: it succeeded, or only some channels failed and the
    job goes on, as in run_job; the job then ends failed). A retryable failure raises TransientError."""
    settings = run.settings
    attempt = context.retry_number + 1
    status, result = run_stage_process(stage, settings, run.job, run.run_id,
                                       {**run.options(stage), **opts, "attempt": attempt},
                                       settings.stage_timeout_s)
    if status == "ok":
        run.results[stage] = result
        return result, None
    why = result.get("transient")
    if why and attempt <= settings.stage_retries:
        run.retried[stage] = (attempt, why)
        context.log.warning(f"stage {stage} failed on attempt {attempt} ({why}: {result.get('error')}); "
                            "Dagster retries it")
        raise TransientError(f"stage {stage}: {result.get('error')}", reason=why, stage=stage)
    summary = result.get("summary") or {}
    run.results[stage] = {"status": "failed", **result}
    if not run.failed:
        run.failed = {"stage": stage, "error": result.get("error"), "transient": why}
    if summary.get("status") == "partial":  # the other channels' data goes on to the next stages
        context.log.error(f"stage {stage}: {result.get('error')}; the job goes on and ends failed")
        return summary, None
    return summary, Failure(description=f"stage {stage} failed: {result.get('error')}",
                            metadata={"run_id": run.run_id, "transient": why or "no",
                                      "error": MetadataValue.text(str(result.get("error")))},
                            allow_retries=False)


def end_step(run: JobRun, stage: str, failure: Failure | None) -> None:
    """Raise the step's failure; the run's last stage also raises when an earlier one failed without
    stopping the job (some channels), so the Dagster run ends failed as the job record does."""
    if failure is not None:
        raise failure
    if run.failed and stage == run.stages[-1]:
        raise Failure(description=f"job {run.job}: stage {run.failed['stage']} failed: {run.failed['error']}",
                      allow_retries=False)


def summary_metadata(summary: dict, drop: tuple[str, ...] = ("nodes", "run_id")) -> dict:
    """A stage summary as Dagster metadata: numbers and text as they are, nested values as JSON."""
    out = {}
    for key, value in summary.items():
        if key in drop:
            continue
        if isinstance(value, (dict, list, tuple)):  # through JSON: times and paths become text
            out[key] = MetadataValue.json(json.loads(json.dumps(value, default=str)))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value if value is not None else MetadataValue.null()
        else:
            out[key] = str(value)
    return out
