"""Append-only JSON-lines run log (``LOGS_PATH/runs.jsonl``).

Every stage and job run appends exactly one record when it ends. Each record
is one ``write`` of one line under an exclusive ``flock``, so records from
concurrent processes never interleave or tear.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import resource
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .secrets import mask

log = logging.getLogger(__name__)

RUNLOG_NAME = "runs.jsonl"


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunLog:
    """The run log file; ``path`` may be the folder (LOGS_PATH) or the file itself."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        self.path = p if p.suffix == ".jsonl" else p / RUNLOG_NAME

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        line = mask(line.decode("utf-8")).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                written = os.write(fd, line)
                if written != len(line):  # a short write would tear the line: finish it
                    os.write(fd, line[written:])
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def records(self) -> Iterator[dict]:
        """Yield every well-formed record; torn or malformed lines are skipped."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    yield rec


@dataclass
class RunRecord:
    """What a unit of work fills while it runs: metrics and, optionally, a status."""

    run_id: str
    job: str
    stage: str | None
    metrics: dict = field(default_factory=dict)
    status: str | None = None  # None: success unless an exception escapes
    reason: str | None = None


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


@contextmanager
def track_run(
    runlog: RunLog | str | os.PathLike | None,
    job: str,
    stage: str | None = None,
    run_id: str | None = None,
) -> Iterator[RunRecord]:
    """Wrap a unit of work; append one record when it ends, whatever happens.

    A failing body is recorded as ``failed`` with its (masked) error and the
    exception is re-raised. A record that cannot be written is logged and never
    hides the body's own result or error.
    """
    if runlog is not None and not isinstance(runlog, RunLog):
        runlog = RunLog(runlog)
    rec = RunRecord(run_id=run_id or new_run_id(), job=job, stage=stage)
    started_at, t0, cpu0 = utc_now_iso(), time.perf_counter(), _cpu_seconds()
    error = None
    try:
        yield rec
    except BaseException as exc:
        error = {
            "type": type(exc).__name__,
            "message": mask(exc),
            "traceback": mask("".join(traceback.format_exception(exc)[-3:])),
        }
        raise
    finally:
        status = "failed" if error else (rec.status or "success")
        record = {
            "run_id": rec.run_id,
            "job": job,
            "stage": stage,
            "status": status,
            "started_at": started_at,
            "finished_at": utc_now_iso(),
            "duration_s": round(time.perf_counter() - t0, 3),
            "metrics": rec.metrics,
            "error": error,
            "reason": rec.reason,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "peak_rss_mb": _peak_rss_mb(),
            "cpu_s": round(_cpu_seconds() - cpu0, 3),
        }
        if runlog is not None:
            try:
                runlog.append(record)
            except Exception as exc:  # noqa: BLE001 - never mask the stage's outcome
                log.error("could not write run log record to %s: %s", runlog.path, exc)
