"""Append-only JSON-lines run log (``LOGS_PATH/runs.jsonl``), rotated by size.

Every stage and job run appends exactly one record when it ends. Each record
is one ``write`` of one line under an exclusive ``flock`` of ``runs.jsonl.lock``,
so records from concurrent processes never interleave. A write that fails (a full
disk) is undone, and a line an earlier writer left torn is ended before the next
record, so a torn line never swallows the next record. When the current
file would grow past ``RUNLOG_MAX_MB`` it is renamed, under the same lock, to the
next segment ``runs.000001.jsonl``, ``runs.000002.jsonl``, ... (housekeeping may
gzip them to ``.jsonl.gz``); no segment is ever deleted, so no record is lost.
Readers open every segment under a shared lock and read them, oldest first, as
one history; :meth:`RunLog.scan` yields the valid records (:func:`record_problem`)
and counts the lines it skips.
"""
from __future__ import annotations

import fcntl
import gzip
import io
import json
import logging
import os
import re
import resource
import socket
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medical_etl.errors import PermanentError
from medical_etl.secrets import mask

log = logging.getLogger(__name__)

RUNLOG_NAME = "runs.jsonl"
DEFAULT_MAX_MB = 50.0
_max_bytes = int(DEFAULT_MAX_MB * 1024 * 1024)


def configure_rotation(max_mb: float) -> None:
    """Set the size (RUNLOG_MAX_MB) at which this process rotates the run log (an edge calls this)."""
    global _max_bytes
    _max_bytes = max(1, int(max_mb * 1024 * 1024))


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunLogWriteError(PermanentError):
    """A record could not be written to the run log (a full or unwritable ``LOGS_PATH``)."""

    def __init__(self, path: Path, exc: BaseException):
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        super().__init__(f"could not write the run-log record to {path}: {why}", setting="LOGS_PATH")


# The fields a reader may rely on: absent or null, or of these types (``job``: always a string).
_FIELD_TYPES = {"run_id": str, "stage": str, "status": str, "reason": str, "host": str, "started_at": str,
                "finished_at": str, "metrics": dict, "error": (dict, str), "duration_s": (int, float),
                "peak_rss_mb": (int, float), "cpu_s": (int, float), "pid": int, "attempt": int}


def record_problem(rec) -> str | None:
    """Why ``rec`` is not a run record a reader can use, or None when it is."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if not isinstance(rec.get("job"), str):
        return "job is not a string"
    for key, types in _FIELD_TYPES.items():
        value = rec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            return f"{key} is a {type(value).__name__}"
    for key in ("started_at", "finished_at"):
        try:
            if rec.get(key) is not None:
                datetime.fromisoformat(rec[key].replace("Z", "+00:00"))
        except ValueError:
            return f"{key} is not an ISO 8601 time"
    err = rec.get("error")
    if isinstance(err, dict) and not isinstance(err.get("message") or "", str):
        return "error.message is not a string"
    return None


class RecordScan:
    """The valid records of some run-log lines, in order. Blank lines are ignored; once iterated,
    ``records`` counts the records yielded, ``malformed`` the lines that are not JSON (a torn or
    garbled line) and ``invalid`` those that are JSON but not a usable record (:func:`record_problem`)."""

    def __init__(self, lines: Iterable[bytes]):
        self._lines = lines
        self.records = self.malformed = self.invalid = 0

    @property
    def skipped(self) -> int:
        return self.malformed + self.invalid

    def __iter__(self) -> Iterator[dict]:
        for line in self._lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                self.malformed += 1
                continue
            problem = record_problem(rec)
            if problem:
                log.debug("run log: skipping a record: %s", problem)
                self.invalid += 1
                continue
            self.records += 1
            yield rec


class RunLog:
    """The run log file; ``path`` may be the folder (LOGS_PATH) or the file itself."""

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
        p = Path(path)
        self.path = p if p.suffix == ".jsonl" else p / RUNLOG_NAME
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.max_bytes = max_bytes
        self._segment = re.compile(re.escape(self.path.stem) + r"\.(\d{6,})\.jsonl(\.gz)?")

    def _lock(self, mode: int) -> int | None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            if mode == fcntl.LOCK_SH:  # a read-only folder: read without the lock
                return None
            raise
        fcntl.flock(fd, mode)
        return fd

    @staticmethod
    def _unlock(fd: int | None) -> None:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(self, record: dict) -> None:
        """Append ``record`` as one line; raises OSError when it cannot be written.

        A failed write is truncated away, so it leaves no torn line; a torn last line left anyway
        (a writer killed mid-write, or an older version) is ended with a newline first, so it stays
        one skipped line and never swallows this record."""
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        line = mask(line.decode("utf-8")).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        limit = self.max_bytes or _max_bytes
        lock = self._lock(fcntl.LOCK_EX)
        try:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > limit:
                self._rotate()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                written = 0
                try:
                    while written < len(line):  # a short write would tear the line: finish it
                        written += os.write(fd, line[written:])
                except OSError:
                    if written:
                        try:
                            os.ftruncate(fd, size)
                        except OSError:  # the next append ends the torn line instead
                            pass
                    raise
            finally:
                os.close(fd)
        finally:
            self._unlock(lock)

    def _numbered(self) -> dict[int, Path]:
        """Rotated segments by number; where both ``.jsonl`` and ``.jsonl.gz`` exist the gzip is whole."""
        out: dict[int, Path] = {}
        if not self.path.parent.is_dir():
            return out
        for p in self.path.parent.iterdir():
            m = self._segment.fullmatch(p.name)
            if m and (int(m.group(1)) not in out or m.group(2)):
                out[int(m.group(1))] = p
        return out

    def _rotate(self) -> Path:
        """Rename the current file to the next segment (the caller holds the exclusive lock)."""
        n = max(self._numbered(), default=0) + 1
        target = self.path.with_name(f"{self.path.stem}.{n:06d}.jsonl")
        os.rename(self.path, target)
        return target

    def segments(self) -> list[Path]:
        """Every file of the history, oldest first: the rotated segments, then the current file."""
        numbered = self._numbered()
        out = [numbered[k] for k in sorted(numbered)]
        return out + ([self.path] if self.path.exists() else [])

    def open_segments(self) -> list[tuple[io.BufferedIOBase, int | None]]:
        """Open every segment under a shared lock, each with its size then (None: a gzipped segment,
        complete): a rotation meanwhile cannot hide records from the reader, and a record appended
        meanwhile (perhaps half written yet) is beyond the size and not read."""
        lock = self._lock(fcntl.LOCK_SH) if self.path.parent.is_dir() else None
        files = []
        try:
            for p in self.segments():
                try:
                    fh = gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
                except FileNotFoundError:
                    continue
                files.append((fh, None if p.suffix == ".gz" else os.fstat(fh.fileno()).st_size))
        finally:
            self._unlock(lock)
        return files

    def copy_to(self, folder: Path) -> list[str]:
        """Copy every segment as it is (gzipped ones stay gzipped) into ``folder``; return the names.

        The segments are opened under the shared lock, so the copy holds whole records only and a
        rotation meanwhile neither hides nor doubles one."""
        lock = self._lock(fcntl.LOCK_SH) if self.path.parent.is_dir() else None
        opened = []
        try:
            for p in self.segments():
                try:
                    opened.append((p.name, open(p, "rb"), p.stat().st_size))
                except FileNotFoundError:
                    continue
        finally:
            self._unlock(lock)
        for name, fh, size in opened:
            with fh, open(Path(folder) / name, "wb") as out:
                out.write(fh.read(size))  # what was there under the lock: no record appended after
        return [name for name, _, _ in opened]

    def lines(self) -> Iterator[bytes]:
        """Every line of the history, oldest segment first, as it was when the segments were opened."""
        for fh, size in self.open_segments():
            with fh:
                if size is None:
                    yield from fh
                    continue
                for line in fh:
                    if size <= 0:
                        break
                    yield line[:size]
                    size -= len(line)

    def scan(self) -> RecordScan:
        """The valid records of every segment; after iterating, it counts the lines it skipped."""
        return RecordScan(self.lines())

    def records(self) -> Iterator[dict]:
        """Yield every valid record of every segment; torn, malformed or mistyped lines are skipped."""
        return iter(self.scan())

    def compress_segments(self) -> int:
        """gzip the rotated plain segments (never the current file); return how many."""
        done = 0
        for _, p in sorted(self._numbered().items()):
            if p.suffix == ".gz":
                stale = p.with_suffix("")  # a crash after the rename left the plain copy
                if stale.exists():
                    lock = self._lock(fcntl.LOCK_EX)
                    try:
                        stale.unlink(missing_ok=True)
                    finally:
                        self._unlock(lock)
                continue
            gz = p.with_name(p.name + ".gz")
            tmp = p.with_name(f".{p.name}.gz.tmp")
            with open(p, "rb") as src, gzip.open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.utime(tmp, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns))
            lock = self._lock(fcntl.LOCK_EX)
            try:
                os.replace(tmp, gz)
                p.unlink()
            finally:
                self._unlock(lock)
            done += 1
        return done


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
    attempt: int | None = None,
) -> Iterator[RunRecord]:
    """Wrap a unit of work; append one record when it ends, whatever happens.

    A failing body is recorded as ``failed`` with its (masked) error and the
    exception is re-raised. A record that cannot be written is logged; it never
    hides the body's own error, and after a body that ended without one it raises
    :class:`RunLogWriteError` (an unrecorded run must not pass for a success).
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
        if attempt is not None:
            record["attempt"] = attempt
        if runlog is not None:
            try:
                runlog.append(record)
            except Exception as exc:  # noqa: BLE001 - never mask the stage's own error
                log.error("could not write run log record to %s: %s", runlog.path, exc)
                if error is None:
                    raise RunLogWriteError(runlog.path, exc) from exc
