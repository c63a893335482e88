"""The errors medical_etl raises, in two kinds: worth retrying, or not.

- :class:`TransientError`: the same call may succeed later without anyone changing anything (the
  database unreachable or restarting, a serialization failure, Telegram's network). The job runner
  reruns the stage (``STAGE_RETRIES``); the CLI exits 75 (``EX_TEMPFAIL``).
- :class:`PermanentError`: it fails the same way until something is changed (a setting, a file, a
  model, the data); ``setting`` names the variable to look at when one is to blame. The CLI exits 1
  (2 for a :class:`ConfigError`). One raised from a transient library error (a ``LoadError`` after
  the connection dropped for good) counts as transient: its cause decides.
- :class:`StageFailed` (a stage ran but did not fully succeed) and :class:`JobError` carry the
  failed stage's transient ``reason``, or None.

Each carries the ``stage`` it happened in when there is one. Errors of libraries (psycopg2,
Telethon) are classified the same way by :func:`medical_etl.jobs.retry.transient_reason`.
"""
from __future__ import annotations


class EtlError(Exception):
    """Base class: ``stage`` and ``setting`` (may be None) say where it happened and what to change."""

    transient = False

    def __init__(self, message: str, *, stage: str | None = None, setting: str | None = None):
        super().__init__(message)
        self.stage, self.setting = stage, setting


class TransientError(EtlError):
    """Retrying later may succeed; ``reason`` is a short label (e.g. ``database unreachable``)."""

    transient = True

    def __init__(self, message: str, *, reason: str, stage: str | None = None, setting: str | None = None):
        super().__init__(message, stage=stage, setting=setting)
        self.reason = reason


class PermanentError(EtlError):
    """Retrying cannot help until something is changed."""


class ConfigError(PermanentError, ValueError):
    """A setting holds a value that cannot be used (or a needed one is missing)."""

    def __init__(self, variable: str, problem: str, *, stage: str | None = None):
        super().__init__(f"{variable}: {problem}", stage=stage, setting=variable)
        self.variable = variable


class StageFailed(EtlError):
    """A stage ran but did not fully succeed (some channels failed, a dbt test failed).

    ``summary`` is the stage's summary; ``reason`` is the transient reason, or None when retrying
    would not help (then :attr:`transient` is false)."""

    def __init__(self, stage: str, summary: dict, message: str, reason: str | None = None):
        super().__init__(f"{stage}: {message}", stage=stage)
        self.summary, self.reason = summary, reason

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.reason is not None


class JobError(EtlError):
    """A job failed: ``summary`` is the job summary (``failed_stage``, ``error``, each stage's result);
    ``reason`` is the failed stage's transient reason (None: permanent)."""

    def __init__(self, summary: dict):
        failed = summary.get("failed_stage")
        super().__init__(f"job {summary['job']} failed at stage {failed}: {summary.get('error')}", stage=failed)
        self.summary, self.reason = summary, summary.get("transient")

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.reason is not None
