"""Jobs: ordered stages under one lock and one run id, each stage in its own process with a time limit.

``run_job("pipeline", settings)`` is what Make, cron and notebooks all call. A job that finds the
lock taken records ``skipped`` and returns; a failed stage stops the stages after it. Each stage
runs in a child process (so a hung stage can be ended, and a stage's memory is returned to the
system when it ends); the child dies with the job, even on ``kill -9``.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .runlog import RunLog, new_run_id, track_run
from .secrets import mask

JOBS: dict[str, tuple[str, ...]] = {
    "pipeline": ("scrape", "load", "transform", "enrich"),
    "weekly": ("scrape", "load", "transform", "enrich"),  # full dbt refresh, counts re-read for 30 days
    "scrape-load": ("scrape", "load"),
    "transform": ("transform",),
    "enrich": ("enrich",),
}
WEEKLY_REFRESH_DAYS = 30
LOCK_NAME = "pipeline.lock"


class JobError(RuntimeError):
    def __init__(self, summary: dict):
        failed = summary.get("failed_stage")
        super().__init__(f"job {summary['job']} failed at stage {failed}: {summary.get('error')}")
        self.summary = summary


@dataclass
class _Lock:
    fd: int
    path: Path

    def release(self) -> None:
        os.close(self.fd)


def acquire_lock(path: Path, wait_s: float = 0) -> _Lock | str:
    """flock the job lock (the kernel releases it even on kill -9); return the holder's note if taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                return holder or "unknown holder"
            time.sleep(min(5.0, max(0.05, deadline - time.monotonic())))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode(), 0)
    return _Lock(fd, path)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stage_child(conn, stage: str, settings: Settings, job: str, run_id: str, opts: dict) -> None:
    _die_with_parent()
    os.setpgid(0, 0)  # its own group, so a timeout ends the stage and whatever it started
    from .stages import StageFailed, run_stage

    try:
        summary = run_stage(stage, settings, job=job, run_id=run_id, **opts)
        conn.send(("ok", summary))
    except StageFailed as exc:
        conn.send(("failed", {"error": mask(exc), "summary": exc.summary}))
    except BaseException as exc:  # noqa: BLE001 - reported to the job, already in the run log
        conn.send(("error", {"error": f"{type(exc).__name__}: {mask(exc)}",
                             "traceback": mask("".join(traceback.format_exception(exc)[-3:]))}))
    finally:
        conn.close()


def _run_stage_process(stage: str, settings: Settings, job: str, run_id: str, opts: dict,
                       timeout_s: float) -> tuple[str, dict]:
    # spawn, not fork: a caller that already runs threads (a notebook with torch loaded, a test
    # runner) would hand the child locks held by threads that do not exist there.
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_stage_child, args=(send, stage, settings, job, run_id, opts),
                       name=f"stage-{stage}")
    t0 = time.perf_counter()
    proc.start()
    send.close()
    result = None
    deadline = t0 + timeout_s
    while result is None:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        if recv.poll(min(remaining, 1.0)):
            try:
                result = recv.recv()
            except EOFError:  # the child died without a word
                break
        elif not proc.is_alive() and not recv.poll(0):
            break
    if result is None and proc.is_alive():  # timed out: end the stage and its children
        _kill_group(proc.pid)
        proc.join(10)
        _record(settings, job, stage, run_id, t0, "timeout",
                f"stage exceeded its time limit of {timeout_s:g} s")
        return "failed", {"error": "timeout", "reason": "timeout"}
    proc.join()
    if result is None:
        why = f"stage process died (exit code {proc.exitcode})"
        _record(settings, job, stage, run_id, t0, why, why)
        return "failed", {"error": why}
    return result


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(2 if sig == signal.SIGTERM else 0)


def _record(settings: Settings, job: str, stage: str, run_id: str, t0: float, reason: str, message: str):
    """The stage could not write its own record (killed): write it for it."""
    rec = {"run_id": run_id, "job": job, "stage": stage, "status": "failed",
           "started_at": None, "finished_at": None, "duration_s": round(time.perf_counter() - t0, 3),
           "metrics": {}, "error": {"type": "StageTimeout" if reason == "timeout" else "StageDied",
                                    "message": message}, "reason": reason,
           "host": os.uname().nodename, "pid": os.getpid(), "peak_rss_mb": None, "cpu_s": None}
    try:
        RunLog(settings.logs_path).append(rec)
    except OSError:
        pass


def stage_options(job: str, stage: str, *, client=None, full_refresh: bool = False,
                  refresh_days: int | None = None) -> dict:
    opts: dict = {}
    if stage == "scrape":
        if client is not None:
            opts["client"] = client
        if job == "weekly":
            opts["refresh_days"] = WEEKLY_REFRESH_DAYS
        if refresh_days is not None:
            opts["refresh_days"] = refresh_days
    if stage == "transform" and (full_refresh or job == "weekly"):
        opts["full_refresh"] = True
    return opts


def run_job(
    job: str,
    settings: Settings,
    *,
    client=None,
    full_refresh: bool = False,
    refresh_days: int | None = None,
    lock_wait_s: float = 0,
    stage_timeout_s: float | None = None,
    run_id: str | None = None,
) -> dict:
    """Run a job's stages in order under the job lock; return the job summary.

    ``client`` is injected into the scrape stage (a TelegramClient or a stand-in). Returns a
    ``skipped`` summary if another job holds the lock after ``lock_wait_s``; raises
    :class:`JobError` (with the summary) when a stage fails.
    """
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
    timeout = stage_timeout_s or settings.stage_timeout_s
    run_id = run_id or new_run_id()
    lock = acquire_lock(settings.logs_path / LOCK_NAME, lock_wait_s)
    if isinstance(lock, str):
        with track_run(settings.logs_path, job=job, stage=None, run_id=run_id) as rec:
            rec.status, rec.reason = "skipped", f"another job holds the lock ({lock})"
            rec.metrics.update(stages=[])
        return {"job": job, "run_id": run_id, "status": "skipped", "reason": rec.reason}
    summary: dict = {"job": job, "run_id": run_id, "stages": {}, "status": "success"}
    try:
        with track_run(settings.logs_path, job=job, stage=None, run_id=run_id) as rec:
            for stage in JOBS[job]:
                opts = stage_options(job, stage, client=client, full_refresh=full_refresh,
                                     refresh_days=refresh_days)
                status, result = _run_stage_process(stage, settings, job, run_id, opts, timeout)
                summary["stages"][stage] = result if status == "ok" else {"status": "failed", **result}
                if status != "ok":
                    summary.update(status="failed", failed_stage=stage, error=result.get("error"))
                    # Some channels failing must not hold back the others' data: the job goes on
                    # (and still ends failed); anything else stops the stages after it.
                    partial = (result.get("summary") or {}).get("status") == "partial"
                    if not partial:
                        break
            rec.metrics.update(stages=list(summary["stages"]), failed_stage=summary.get("failed_stage"))
            if summary["status"] == "failed":
                rec.status, rec.reason = "failed", f"stage {summary['failed_stage']}: {summary['error']}"
    finally:
        lock.release()
    if summary["status"] == "failed":
        raise JobError(summary)
    return summary
