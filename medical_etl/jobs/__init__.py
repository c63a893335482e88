"""The orchestration layer: jobs, the job lock, stage processes, time limits and retries.

``run_job`` (:mod:`.job`) runs a job's stages with the stages and options its line in the Makefile gives
(:mod:`.repository`), under the job lock (:mod:`medical_etl.filelock`), each in a fresh interpreter
(:mod:`.process` starts and watches it, :mod:`.child` is its side) through
:func:`.stages.run_stage`, which turns the settings into each stage's explicit inputs and appends
the stage's run-log record. :mod:`.retry` tells transient failures from permanent ones and spaces
the retries; :mod:`.preflight` checks a job's inputs before its first stage; :mod:`.cancel` turns
SIGTERM into a clean, recorded stop.
"""
from medical_etl.errors import JobError, StageFailed
from medical_etl.jobs.cancel import JobCancelled
from medical_etl.jobs.definitions import jobs
from medical_etl.jobs.job import run_job
from medical_etl.jobs.stages import run_stage

__all__ = ["run_job", "run_stage", "jobs", "JobError", "JobCancelled", "StageFailed"]
